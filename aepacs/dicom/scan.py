"""A fast structural scan of a Part 10 stream: what the archive's status checks need.

:func:`scan` walks the elements with :mod:`struct`, iteratively (nested
sequences on an explicit stack, their depth bounded), and returns the
required UIDs, the image description, the attributes the index keeps and
the bounds of the pixel data. It does not build a pydicom dataset. It
answers the same questions as ``parse`` + ``check`` in a small fraction of
the time, and returns None where it does not know enough (deflated
streams, unusual framing); the caller then uses pydicom.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from pydicom.datadict import DicomDictionary
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian, ImplicitVRLittleEndian

from aepacs.dicom.attributes import ATTRIBUTES
from aepacs.dicom.part10 import KNOWN_VRS as _KNOWN_VRS
from aepacs.dicom.part10 import LONG_VRS as _LONG_VRS
from aepacs.dicom.part10 import NATIVE_SYNTAXES, PIXEL_DATA, PIXEL_TAGS, pixel_problem

_ITEM, _ITEM_DELIM, _SEQ_DELIM = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
#: Sequences nested deeper than this are refused (``ingest.max_sequence_depth``): real objects
#: (SR content trees, RT structure sets) nest well under 16, and pydicom's recursive parse
#: fails somewhere past 150 levels, on whichever thread reads it.
DEFAULT_MAX_DEPTH = 32
UIDS = {0x00080016: "SOPClassUID", 0x00080018: "SOPInstanceUID", 0x0020000D: "StudyInstanceUID",
        0x0020000E: "SeriesInstanceUID"}
SHORTS = {0x00280010: "Rows", 0x00280011: "Columns", 0x00280100: "BitsAllocated", 0x00280002: "SamplesPerPixel"}
TEXTS = {0x00280008: "NumberOfFrames", 0x00280004: "PhotometricInterpretation", 0x00080060: "Modality",
         # what the index keeps, for an instance archived from its scan alone (ingest.dataset_from_scan)
         **{a.tag: a.keyword for a in ATTRIBUTES if a.source == "dataset" and a.vr not in ("UI", "US")}}

#: The VR the scan reads each of its checked attributes as (the one the data dictionary gives).
_READ_AS = {**{t: b"UI" for t in UIDS}, **{t: b"US" for t in SHORTS}, 0x00280008: b"IS", 0x00280004: b"CS",
            0x00080060: b"CS",
            0x00080005: b"CS"}  # Specific Character Set: pydicom reads it first, to decode the rest


class _Malformed(Exception):
    pass


@dataclass(frozen=True)
class Scan:
    """What the status checks need of a Part 10 stream."""

    uids: dict[str, str]
    image: dict[str, str | int]
    pixel_tag: int | None
    pixel_length: int | None  # None: undefined (encapsulated)
    transfer_syntax: str
    problem: str | None  # framing error found by the scan


def _text(raw: bytes) -> str:
    return raw.decode("ascii", "replace").strip("\0 ")


def _header(data: bytes, pos: int, implicit: bool, fmt: str) -> tuple[int, bytes | None, int, int]:
    """(tag, VR or None, value length, value start) of the element at `pos`.

    Reads VRs as pydicom does: a known VR is explicit; bytes outside ``AA``..``ZZ``
    mean an element written implicitly in an explicit-VR stream. Anything else
    (an unknown VR, which pydicom refuses once the value is read) is left to the
    full parse.
    """
    if pos + 8 > len(data):
        raise _Malformed
    group, elem = struct.unpack_from(f"{fmt}HH", data, pos)
    tag = group << 16 | elem
    if tag in (_ITEM, _ITEM_DELIM, _SEQ_DELIM):
        return tag, None, struct.unpack_from(f"{fmt}I", data, pos + 4)[0], pos + 8
    vr = data[pos + 4:pos + 6]
    if implicit or (vr not in _KNOWN_VRS and not b"AA" <= vr <= b"ZZ"):
        return tag, None, struct.unpack_from(f"{fmt}I", data, pos + 4)[0], pos + 8
    if vr not in _KNOWN_VRS:
        raise _Malformed
    if vr in _LONG_VRS:
        if pos + 12 > len(data):
            raise _Malformed
        return tag, vr, struct.unpack_from(f"{fmt}I", data, pos + 8)[0], pos + 12
    return tag, vr, struct.unpack_from(f"{fmt}H", data, pos + 6)[0], pos + 8


def _sequence_tags() -> frozenset[int]:
    """Tags the data dictionary defines as SQ: pydicom parses those as sequences whatever VR was written."""
    return frozenset(tag for tag, entry in DicomDictionary.items() if entry[0] == "SQ")


_SQ_TAGS = _sequence_tags()
_DATASET, _ITEM_BODY, _SEQUENCE, _FRAGMENTS = range(4)
_UNDEFINED = 0xFFFFFFFF


class _TooDeep(Exception):
    pass


def _is_sequence(tag: int, vr: bytes | None, length: int) -> bool:
    """Whether pydicom reads this element as a sequence (and so descends into it)."""
    if vr == b"SQ" or length == _UNDEFINED:
        return True
    return (vr is None or vr == b"UN") and tag in _SQ_TAGS


def scan(data: bytes, max_depth: int = DEFAULT_MAX_DEPTH) -> Scan | None:
    """Scan a Part 10 stream; None when only a full parse can tell (deflate, no preamble, ...).

    The walk is iterative: nested sequences (of defined or undefined length) are
    followed on an explicit stack, and a stream whose sequences nest deeper than
    `max_depth` gets the problem ``sequences nested deeper than N``, a verdict
    of its own (the full parse recurses and would fail far deeper, on the worker).
    """
    if len(data) < 132 or data[128:132] != b"DICM":
        return None
    try:
        return _scan(data, max_depth)
    except _TooDeep:
        return Scan({}, {}, None, None, "", f"sequences nested deeper than {max_depth} levels")
    except (_Malformed, struct.error):
        return None  # let the full parser decide what it is


def _scan(data: bytes, max_depth: int) -> Scan | None:
    pos, ts = 132, None
    while pos + 8 <= len(data) and data[pos:pos + 2] == b"\x02\x00":  # file meta: explicit VR LE
        tag, vr, length, start = _header(data, pos, False, "<")
        if tag == 0x00020010:
            ts = _text(data[start:start + length])
        pos = start + length
    if ts is None or ts == DeflatedExplicitVRLittleEndian:
        return None
    implicit, fmt = ts == ImplicitVRLittleEndian, ">" if ts == ExplicitVRBigEndian else "<"
    if pos + 6 <= len(data):
        looks_implicit = not (0x40 < data[pos + 4] < 0x5B and 0x40 < data[pos + 5] < 0x5B)
        if looks_implicit != implicit:
            return None  # pydicom reads the whole dataset in the other encoding: let it
    uids: dict[str, str] = {}
    image: dict[str, str | int] = {}
    pixel_tag = pixel_length = None
    # open containers: (kind, end or None when delimited, implicit VR inside)
    stack: list[tuple[int, int | None, bool]] = [(_DATASET, len(data), implicit)]
    depth = 0  # sequences open
    while stack:
        kind, end, imp = stack[-1]
        if end is not None and pos >= end:
            if pos > end:
                raise _Malformed  # an element ran past the end of its item or sequence
            stack.pop()
            depth -= kind in (_SEQUENCE, _FRAGMENTS)
            continue
        if kind in (_SEQUENCE, _FRAGMENTS):
            tag, _, length, start = _header(data, pos, True, fmt)
            if tag == _SEQ_DELIM and end is None:
                stack.pop()
                depth -= 1
                pos = start
            elif tag != _ITEM:
                raise _Malformed
            elif kind == _FRAGMENTS or length != _UNDEFINED and start + length > (end or len(data)):
                if length == _UNDEFINED:
                    raise _Malformed
                pos = start + length  # a pixel fragment, or an overrunning item (found when popped)
            else:
                stack.append((_ITEM_BODY, None if length == _UNDEFINED else start + length, imp))
                pos = start
            continue
        tag, vr, length, start = _header(data, pos, imp, fmt)
        if tag == _ITEM_DELIM and kind == _ITEM_BODY and end is None:
            stack.pop()
            pos = start
            continue
        if tag in (_ITEM, _ITEM_DELIM, _SEQ_DELIM):
            raise _Malformed  # a delimiter where an element belongs
        top = kind == _DATASET
        if top and tag in PIXEL_TAGS and pixel_tag is None:
            pixel_tag, pixel_length = tag, (None if length == _UNDEFINED else length)
        if top and tag in PIXEL_TAGS and length == _UNDEFINED:
            stack.append((_FRAGMENTS, None, imp))
            depth += 1
            pos = start
            continue
        if _is_sequence(tag, vr, length):
            depth += 1
            if depth > max_depth:
                raise _TooDeep
            if length != _UNDEFINED and start + length > (end or len(data)):
                raise _Malformed
            stack.append((_SEQUENCE, None if length == _UNDEFINED else start + length, imp or vr == b"UN"))
            pos = start
            continue
        value_end = start + length
        if value_end > len(data):
            if top and tag in PIXEL_TAGS:
                return Scan(uids, image, pixel_tag, pixel_length, ts, "pixel data truncated or malformed")
            raise _Malformed
        if top:
            if tag in _READ_AS and vr is not None and vr != _READ_AS[tag]:
                raise _Malformed  # pydicom would read another type of value: let it say what it is
            if tag in UIDS:
                uids[UIDS[tag]] = _text(data[start:value_end])
            elif tag in SHORTS and length == 2:
                image[SHORTS[tag]] = struct.unpack_from(f"{fmt}H", data, start)[0]
            elif tag in SHORTS:
                raise _Malformed
            elif tag in TEXTS:
                image[TEXTS[tag]] = _text(data[start:value_end])
        pos = value_end
    return Scan(uids, image, pixel_tag, pixel_length, ts, None)


def problem(s: Scan) -> str | None:
    """The same pixel-data verdict as :func:`aepacs.dicom.part10.parse` gives, from a scan."""
    if s.problem:
        return s.problem
    if s.pixel_tag == PIXEL_DATA and s.pixel_length is not None and s.transfer_syntax in NATIVE_SYNTAXES:
        return pixel_problem(s.pixel_length, s.image)
    return None
