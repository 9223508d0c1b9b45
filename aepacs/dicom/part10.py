"""Split a DICOM Part 10 byte stream around its top-level pixel data.

``parse(data)`` returns the dataset without pixel data (for routing and the
index) and three byte ranges of the original stream::

    prefix  everything before the pixel element's value (element header included)
    pixels  the value of (7FE0,0010) Pixel Data, Float or Double Float Pixel Data
    suffix  everything after it (trailing padding, elements after pixel data)

``prefix + pixels + suffix == data`` always holds, so an archive that keeps
the three parts can return the exact bytes it received. Streams whose pixel
data cannot be located byte-exactly (deflated transfer syntax, no pixel
data, truncated elements) come back with ``pixels == b""`` and the whole
stream as prefix: they are then stored whole.
"""

from __future__ import annotations

import struct
import warnings
from dataclasses import dataclass
from io import BytesIO
from typing import Any

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)
from pydicom.valuerep import EXPLICIT_VR_LENGTH_32, VR

from aepacs.dicom.pixels import PixelMeta
from aepacs.errors import InputError

PIXEL_DATA = 0x7FE00010
PIXEL_TAGS = (PIXEL_DATA, 0x7FE00008, 0x7FE00009)
NATIVE_SYNTAXES = (ImplicitVRLittleEndian, ExplicitVRLittleEndian, ExplicitVRBigEndian)
#: The VRs pydicom knows, and those of them with a 4-byte length in explicit VR (SV and UV included).
KNOWN_VRS = frozenset(vr.value.encode() for vr in VR if len(vr.value) == 2)
LONG_VRS = frozenset(vr.value.encode() for vr in EXPLICIT_VR_LENGTH_32)
_ITEM, _SEQ_DELIM = 0xFFFEE000, 0xFFFEE0DD
MAX_TRAILER = 1024  # bytes of padding after native pixels kept beside an image codec's stream


@dataclass(frozen=True)
class Part10:
    """A Part 10 stream split around its top-level pixel data."""

    dataset: Dataset
    prefix: bytes
    pixels: bytes
    suffix: bytes
    pixel_tag: int | None
    encapsulated: bool
    meta: PixelMeta | None
    #: Why the dataset is inconsistent (pixel data truncated or not matching
    #: Rows x Columns x ...), or None. Such data can still be sealed whole,
    #: byte for byte; the archive refuses it (DICOM status 0xA900).
    problem: str | None = None

    @property
    def whole(self) -> bool:
        """True when the stream is kept whole (no pixel data split out)."""
        return self.pixel_tag is None


def read_dataset(data: bytes, *, stop_before_pixels: bool = True) -> tuple[Dataset, int]:
    """Read a Part 10 stream with pydicom; return the dataset and where reading stopped.

    Raises
    ------
    InputError
        The bytes are not a DICOM Part 10 stream pydicom can read.
    """
    fp = BytesIO(data)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(fp, stop_before_pixels=stop_before_pixels)
    except InvalidDicomError as exc:
        raise InputError(f"not a DICOM Part 10 file ({exc})") from None
    except Exception as exc:  # pydicom raises many types on damaged input
        raise InputError(f"unreadable DICOM data ({type(exc).__name__}: {exc})") from None
    if len(ds) == 0:
        raise InputError("empty DICOM dataset")
    return ds, fp.tell()


def _element_bounds(data: bytes, pos: int, implicit: bool, little: bool) -> tuple[int, int, int, bool] | None:
    """Return (tag, value start, value end, undefined length) of the element at `pos`."""
    end = ">" if not little else "<"
    if pos + 8 > len(data):
        return None
    group, elem = struct.unpack_from(f"{end}HH", data, pos)
    tag = group << 16 | elem
    vr = data[pos + 4:pos + 6]
    if implicit or not (vr.isalpha() and vr.isupper()):
        # implicit, or an explicit-VR file that wrote this element implicitly (pydicom reads those too)
        (length,) = struct.unpack_from(f"{end}I", data, pos + 4)
        start = pos + 8
    elif vr in LONG_VRS:
        if pos + 12 > len(data):
            return None
        (length,) = struct.unpack_from(f"{end}I", data, pos + 8)
        start = pos + 12
    else:
        (length,) = struct.unpack_from(f"{end}H", data, pos + 6)
        start = pos + 8
    if length == 0xFFFFFFFF:
        # encapsulated: items up to and including the sequence delimiter
        p = start
        while p + 8 <= len(data):
            item_g, item_e, item_len = struct.unpack_from(f"{end}HHI", data, p)
            item_tag = item_g << 16 | item_e
            p += 8
            if item_tag == _SEQ_DELIM:
                return tag, start, p, True
            if item_tag != _ITEM or item_len == 0xFFFFFFFF or p + item_len > len(data):
                return None
            p += item_len
        return None
    if start + length > len(data):
        return None
    return tag, start, start + length, False


def _pixel_meta(ds: Dataset) -> PixelMeta | None:
    """Describe native pixel data when an image codec can handle it, else None."""
    try:
        bits = int(ds.BitsAllocated)
        samples = int(ds.get("SamplesPerPixel", 1))
        meta = PixelMeta(
            rows=int(ds.Rows), columns=int(ds.Columns),
            frames=int(ds.get("NumberOfFrames", 1) or 1),
            samples=samples, bits_allocated=bits,
            bits_stored=int(ds.get("BitsStored", bits) or bits),
            signed=int(ds.get("PixelRepresentation", 0) or 0) == 1,
            planar=int(ds.get("PlanarConfiguration", 0) or 0),
            photometric=str(ds.get("PhotometricInterpretation", "")),
            big_endian=ds.file_meta.TransferSyntaxUID == ExplicitVRBigEndian,
            modality=str(ds.get("Modality", "")),
        )
    except Exception:  # missing, not numbers, or values pydicom cannot convert: no image codec then
        return None
    if bits not in (8, 16) or samples not in (1, 3) or min(meta.rows, meta.columns, meta.frames) < 1:
        return None
    if meta.photometric.startswith("YBR") and meta.photometric != "YBR_FULL":
        return None  # sub-sampled layouts
    return meta


def parse(data: bytes) -> Part10:
    """Split `data` (a Part 10 stream) around its top-level pixel data.

    Raises
    ------
    InputError
        The bytes are not a DICOM Part 10 stream pydicom can read.
    """
    ds, stop = read_dataset(data)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return _split(data, ds, stop)


def expected_pixel_bytes(values: Any) -> int | None:
    """Bytes of native Pixel Data that Rows, Columns, frames, samples and bits imply (no padding).

    `values` is anything that answers ``.get(keyword)``: a pydicom Dataset, or
    the values a structural scan read (:mod:`aepacs.dicom.scan`).
    """
    try:
        bits = int(values.get("BitsAllocated"))
        samples = int(values.get("SamplesPerPixel", 1) or 1)
        if str(values.get("PhotometricInterpretation", "")) in ("YBR_FULL_422", "YBR_PARTIAL_422"):
            samples = 2  # two chroma samples shared by each pair of pixels
        frames = int(str(values.get("NumberOfFrames", 1) or 1))
        count = int(values.get("Rows")) * int(values.get("Columns")) * frames * samples
    except Exception:  # missing, not numbers, or values pydicom cannot convert
        return None
    return (count * bits + 7) // 8


def pixel_problem(length: int, values: Any) -> str | None:
    """Why native pixel data of `length` bytes contradicts its image description, or None."""
    expected = expected_pixel_bytes(values)
    if expected is None:
        return "pixel data without a valid Rows/Columns/Bits Allocated description"
    if length < expected:
        return f"pixel data has {length} bytes where the image description implies {expected}"
    return None


def _split(data: bytes, ds: Dataset, stop: int) -> Part10:
    def whole(problem: str | None = None) -> Part10:
        return Part10(ds, data, b"", b"", None, False, None, problem)

    ts = ds.file_meta.get("TransferSyntaxUID")
    if ts is None or ts == DeflatedExplicitVRLittleEndian or stop >= len(data):
        return whole()
    implicit, little = ds.original_encoding
    if implicit is None or little is None:
        return whole()
    bounds = _element_bounds(data, stop, bool(implicit), bool(little))
    if bounds is None:
        return whole("pixel data truncated or malformed")
    if bounds[0] not in PIXEL_TAGS:
        return whole()
    tag, start, end, undefined = bounds
    meta, problem = None, None
    if tag == PIXEL_DATA and not undefined and ts in NATIVE_SYNTAXES:
        problem = pixel_problem(end - start, ds)
        if problem is None and end - start - (expected_pixel_bytes(ds) or 0) <= MAX_TRAILER:
            meta = _pixel_meta(ds)  # excess bytes (padding) are kept as the codec's trailer
    return Part10(ds, data[:start], data[start:end], data[end:], tag, undefined, meta, problem)


def _meta_element(group_elem: int, vr: bytes, value: bytes) -> bytes:
    if vr == b"OB":
        return struct.pack("<HH2sHI", 0x0002, group_elem, vr, 0, len(value)) + value
    return struct.pack("<HH2sH", 0x0002, group_elem, vr, len(value)) + value


def _even(text: str, pad: bytes) -> bytes:
    raw = text.encode("ascii")
    return raw + pad if len(raw) % 2 else raw


def file_meta_prefix(sop_class_uid: str, sop_instance_uid: str, transfer_syntax: str,
                     implementation_uid: str, implementation_version: str) -> bytes:
    """The 128-byte preamble, ``DICM`` and the File Meta Information of a received dataset.

    The same bytes pydicom's ``write_file_meta_info`` writes for those
    elements (the tests hold it to that), without building a dataset: it runs
    once per instance received, where pydicom took 0.2 ms.
    """
    elements = b"".join([
        _meta_element(0x0001, b"OB", b"\x00\x01"),
        _meta_element(0x0002, b"UI", _even(sop_class_uid, b"\x00")),
        _meta_element(0x0003, b"UI", _even(sop_instance_uid, b"\x00")),
        _meta_element(0x0010, b"UI", _even(transfer_syntax, b"\x00")),
        _meta_element(0x0012, b"UI", _even(implementation_uid, b"\x00")),
        _meta_element(0x0013, b"SH", _even(implementation_version, b" ")),
    ])
    return b"\x00" * 128 + b"DICM" + struct.pack("<HH2sHI", 0x0002, 0x0000, b"UL", 4, len(elements)) + elements
