"""A fast structural scan of a Part 10 stream: what the archive's status checks need.

:func:`scan` walks the top-level elements with :mod:`struct` (sequences are
stepped over item by item) and returns the required UIDs, the image
description and the bounds of the pixel data. It does not build a pydicom
dataset. It answers the same questions as ``parse`` + ``check`` in a small
fraction of the time, and returns None where it does not know enough
(deflated streams, unusual framing); the caller then uses pydicom.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian, ImplicitVRLittleEndian

from aepacs.codec.part10 import _LONG_VRS, NATIVE_SYNTAXES, PIXEL_DATA, PIXEL_TAGS, pixel_problem

_ITEM, _ITEM_DELIM, _SEQ_DELIM = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
UIDS = {0x00080016: "SOPClassUID", 0x00080018: "SOPInstanceUID", 0x0020000D: "StudyInstanceUID",
        0x0020000E: "SeriesInstanceUID"}
SHORTS = {0x00280010: "Rows", 0x00280011: "Columns", 0x00280100: "BitsAllocated", 0x00280002: "SamplesPerPixel"}
TEXTS = {0x00280008: "NumberOfFrames", 0x00280004: "PhotometricInterpretation", 0x00080060: "Modality"}


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
    """(tag, VR or None, value length, value start) of the element at `pos`."""
    if pos + 8 > len(data):
        raise _Malformed
    group, elem = struct.unpack_from(f"{fmt}HH", data, pos)
    tag = group << 16 | elem
    if tag in (_ITEM, _ITEM_DELIM, _SEQ_DELIM):
        return tag, None, struct.unpack_from(f"{fmt}I", data, pos + 4)[0], pos + 8
    vr = data[pos + 4:pos + 6]
    if implicit or not (vr.isalpha() and vr.isupper()):
        return tag, None, struct.unpack_from(f"{fmt}I", data, pos + 4)[0], pos + 8
    if vr in _LONG_VRS:
        if pos + 12 > len(data):
            raise _Malformed
        return tag, vr, struct.unpack_from(f"{fmt}I", data, pos + 8)[0], pos + 12
    return tag, vr, struct.unpack_from(f"{fmt}H", data, pos + 6)[0], pos + 8


def _skip_undefined(data: bytes, pos: int, implicit: bool, fmt: str) -> int:
    """Step over the items of an undefined-length sequence; return the position after its delimiter."""
    while True:
        tag, _, length, start = _header(data, pos, True, fmt)
        if tag == _SEQ_DELIM:
            return start
        if tag != _ITEM:
            raise _Malformed
        if length != 0xFFFFFFFF:
            pos = start + length
            continue
        pos = start  # an item of undefined length: its elements, up to the item delimiter
        while True:
            tag, vr, length, start = _header(data, pos, implicit, fmt)
            if tag == _ITEM_DELIM:
                pos = start
                break
            if length == 0xFFFFFFFF:
                pos = _skip_undefined(data, start, implicit or vr == b"UN", fmt)
            else:
                pos = start + length
            if pos > len(data):
                raise _Malformed


def scan(data: bytes) -> Scan | None:
    """Scan a Part 10 stream; None when only a full parse can tell (deflate, no preamble, ...)."""
    if len(data) < 132 or data[128:132] != b"DICM":
        return None
    try:
        pos, ts = 132, None
        while pos + 8 <= len(data) and data[pos:pos + 2] == b"\x02\x00":  # file meta: explicit VR LE
            tag, vr, length, start = _header(data, pos, False, "<")
            if tag == 0x00020010:
                ts = _text(data[start:start + length])
            pos = start + length
        if ts is None or ts == DeflatedExplicitVRLittleEndian:
            return None
        implicit, fmt = ts == ImplicitVRLittleEndian, ">" if ts == ExplicitVRBigEndian else "<"
        uids: dict[str, str] = {}
        image: dict[str, str | int] = {}
        pixel_tag = pixel_length = None
        while pos < len(data):
            tag, vr, length, start = _header(data, pos, implicit, fmt)
            if tag in PIXEL_TAGS and pixel_tag is None:
                pixel_tag, pixel_length = tag, (None if length == 0xFFFFFFFF else length)
            if length == 0xFFFFFFFF:
                pos = _skip_undefined(data, start, implicit or vr == b"UN", fmt)
                continue
            end = start + length
            if end > len(data):
                if tag in PIXEL_TAGS:
                    return Scan(uids, image, pixel_tag, pixel_length, ts, "pixel data truncated or malformed")
                raise _Malformed
            if tag in UIDS:
                uids[UIDS[tag]] = _text(data[start:end])
            elif tag in SHORTS and length == 2:
                image[SHORTS[tag]] = struct.unpack_from(f"{fmt}H", data, start)[0]
            elif tag in TEXTS:
                image[TEXTS[tag]] = _text(data[start:end])
            pos = end
    except (_Malformed, struct.error):
        return None  # let the full parser decide what it is
    return Scan(uids, image, pixel_tag, pixel_length, ts, None)


def problem(s: Scan) -> str | None:
    """The same pixel-data verdict as :func:`aepacs.codec.part10.parse` gives, from a scan."""
    if s.problem:
        return s.problem
    if s.pixel_tag == PIXEL_DATA and s.pixel_length is not None and s.transfer_syntax in NATIVE_SYNTAXES:
        return pixel_problem(s.pixel_length, s.image)
    return None
