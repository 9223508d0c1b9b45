"""WADO-RS pixel resources of one decoded instance: frames, pixel bulk data, rendered images (PS3.18 8.7, 9.5).

Pure functions of a pydicom dataset. Frames go in the first form the
request's ``Accept`` header takes (:func:`frames`): native samples (sliced
from a native instance's Pixel Data, decoded from an encapsulated one), an
encapsulated instance's frames as stored (``transfer-syntax=*``), or
monochrome frames coded losslessly in JPEG-LS, JPEG 2000 or HTJ2K
(``image/jls``, ``image/jp2``, ``image/jphc``); nothing acceptable is 406.
Rendered images apply the Modality LUT (rescale) and a window -- the
request's ``window=center,width[,function]``, else the instance's, else its
range -- and are encoded as PNG or JPEG.
"""

from __future__ import annotations

from collections.abc import Sequence

import imagecodecs
import numpy as np
from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames
from pydicom.uid import ExplicitVRLittleEndian, HTJ2KLossless, JPEG2000Lossless, JPEGLSLossless

from aepacs.errors import InputError
from aepacs.web.multipart import media_type

__all__ = ["MEDIA", "NoSuchFrame", "NotAcceptable", "PixelError", "accepted", "frame_list", "frames", "native",
           "rendered", "window_of"]


class PixelError(InputError):
    """A pixel resource that cannot be served as asked (a bad parameter: 400)."""


class NoSuchFrame(PixelError):
    """No pixel data, or a frame beyond the last (404)."""


def frame_list(text: str) -> list[int]:
    """``1,3,2`` -> ``[1, 3, 2]`` (1-based, in the order asked)."""
    try:
        numbers = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise PixelError(f"frame list {text!r} is not comma-separated numbers") from None
    if not numbers or min(numbers) < 1:
        raise PixelError(f"frame list {text!r}: frames are numbered from 1")
    return numbers


def _count(ds: Dataset) -> int:
    return int(ds.get("NumberOfFrames", 1) or 1)


#: the compressed frame media types (PS3.18 Table 8.7.3-5) -> the lossless transfer syntax each is coded in here
MEDIA = {"image/jls": JPEGLSLossless, "image/x-jls": JPEGLSLossless, "image/jp2": JPEG2000Lossless,
         "image/jphc": HTJ2KLossless}
OCTET = "application/octet-stream"
_ANY = ("*", "*/*", "application/*", OCTET)


class NotAcceptable(PixelError):
    """None of the media types and transfer syntaxes a request accepts can be produced (406)."""


def accepted(header: str) -> list[tuple[str, str | None]]:
    """The (media type, transfer syntax or None) pairs of an ``Accept`` header, most preferred first.

    ``multipart/related; type="image/jls"; transfer-syntax=…`` counts as its
    ``type``; the ``q`` values order the list, ties in the order given.
    """
    ranked: list[tuple[float, int, str, str | None]] = []
    for n, item in enumerate(header.split(",")):
        kind, params = media_type(item)
        if kind == "multipart/related":
            kind = params.get("type", "*/*").lower()
        try:
            q = float(params.get("q", "1"))
        except ValueError:
            q = 0.0
        if kind and q > 0:
            ranked.append((-q, n, kind, params.get("transfer-syntax")))
    return [(kind, syntax) for _, _, kind, syntax in sorted(ranked)] or [("*/*", None)]


def frames(ds: Dataset, numbers: Sequence[int], accept: str = "*/*") -> tuple[list[bytes], str, str]:
    """The frames `numbers` of `ds` in the first form the ``Accept`` header `accept` takes; their media
    type and transfer syntax.

    Offered: the native samples (``application/octet-stream``, Explicit VR
    Little Endian), a compressed instance's frames as stored
    (``transfer-syntax=*`` or its own syntax), and monochrome frames coded
    losslessly in JPEG-LS (``image/jls``), JPEG 2000 (``image/jp2``) or HTJ2K
    (``image/jphc``).

    Raises
    ------
    PixelError
        No pixel data or a frame beyond the last (:class:`NoSuchFrame`), 1-bit
        samples (not byte-aligned), nothing acceptable (:class:`NotAcceptable`).
    """
    if "PixelData" not in ds:
        raise NoSuchFrame("the instance has no pixel data")
    count = _count(ds)
    if max(numbers) > count:
        raise NoSuchFrame(f"the instance has {count} frame{'s' * (count != 1)}, not {max(numbers)}")
    stored = ds.file_meta.TransferSyntaxUID
    for kind, syntax in accepted(accept):
        if kind in _ANY and syntax == "*" and stored.is_compressed:
            return _stored(ds, numbers, count), OCTET, str(stored)
        if kind in _ANY and syntax in (None, "*", ExplicitVRLittleEndian):
            return native(ds, numbers), OCTET, ExplicitVRLittleEndian
        if kind not in MEDIA:
            continue
        wanted = MEDIA[kind] if syntax in (None, "*") else syntax
        if stored.is_compressed and wanted == stored:
            return _stored(ds, numbers, count), kind, str(stored)
        if wanted == MEDIA[kind] and _codable(ds):
            return _transcoded(ds, numbers, wanted), kind, wanted
    raise NotAcceptable(f"cannot produce any of: {accept}; offered: {OCTET} (native, or transfer-syntax=* as "
                        f"stored), and for monochrome images {', '.join(sorted(MEDIA))} (lossless)")


def _stored(ds: Dataset, numbers: Sequence[int], count: int) -> list[bytes]:
    stored = list(generate_frames(ds.PixelData, number_of_frames=count))
    return [stored[n - 1] for n in numbers]


def native(ds: Dataset, numbers: Sequence[int]) -> list[bytes]:
    """Frames `numbers` as native little-endian samples (decoded where the instance is compressed).

    Raises
    ------
    PixelError
        1-bit samples (not byte-aligned).
    """
    syntax = ds.file_meta.TransferSyntaxUID
    if int(ds.BitsAllocated) % 8:
        raise PixelError("1-bit frames are not byte-aligned: retrieve the instance")
    if syntax.is_little_endian and not syntax.is_compressed:  # sliced as stored
        size = int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel", 1)) * int(ds.BitsAllocated) // 8
        data = bytes(ds.PixelData)
        return [data[(n - 1) * size:n * size] for n in numbers]
    array = ds.pixel_array.reshape(_count(ds), -1)  # compressed, or big endian
    return [array[n - 1].astype(array.dtype.newbyteorder("<")).tobytes() for n in numbers]


def _codable(ds: Dataset) -> bool:
    """Whether frames of `ds` can be coded in the compressed media types: monochrome, 8 or 16 bits."""
    return (int(ds.get("SamplesPerPixel", 1)) == 1 and int(ds.BitsAllocated) in (8, 16)
            and str(ds.get("PhotometricInterpretation", "")).startswith("MONOCHROME"))


def _transcoded(ds: Dataset, numbers: Sequence[int], syntax: str) -> list[bytes]:
    array = ds.pixel_array.reshape(_count(ds), int(ds.Rows), int(ds.Columns))
    out = []
    for n in numbers:
        frame = np.ascontiguousarray(array[n - 1])
        if syntax == JPEGLSLossless:  # CharLS takes unsigned samples: a signed one's two's-complement bits
            out.append(bytes(imagecodecs.jpegls_encode(frame.view(frame.dtype.str.replace("i", "u")))))
        elif syntax == JPEG2000Lossless:
            out.append(bytes(imagecodecs.jpeg2k_encode(frame, level=0, codecformat="J2K", reversible=True)))
        else:
            out.append(bytes(imagecodecs.htj2k_encode(frame, reversible=True)))
    return out


def window_of(ds: Dataset, param: str | None, values: np.ndarray) -> tuple[float, float]:
    """(center, width) in rescaled units: the request's ``window=`` first, then the instance's, then its range."""
    if param:
        try:
            center, width = (float(v) for v in param.split(",")[:2])
        except ValueError:
            raise PixelError(f"window={param!r}: expected center,width[,function]") from None
        if width <= 0:
            raise PixelError("window width must be positive")
        return center, width
    if "WindowCenter" in ds and "WindowWidth" in ds:
        c, w = ds.WindowCenter, ds.WindowWidth
        c = float(c[0] if isinstance(c, Sequence) and not isinstance(c, str) else c)
        w = float(w[0] if isinstance(w, Sequence) and not isinstance(w, str) else w)
        if w > 0:
            return c, w
    lo, hi = float(values.min()), float(values.max())
    return (lo + hi) / 2, max(hi - lo, 1.0)


def rendered(ds: Dataset, frame: int = 1, *, window: str | None = None, media_type: str = "image/png",
             quality: int = 90) -> bytes:
    """One frame as a displayable 8-bit PNG or JPEG (colour kept as RGB).

    Raises
    ------
    PixelError
        No pixel data, no such frame, a bad window, an unsupported media type.
    """
    if "PixelData" not in ds:
        raise NoSuchFrame("the instance has no pixel data")
    count = _count(ds)
    if frame > count:
        raise NoSuchFrame(f"the instance has {count} frame{'s' * (count != 1)}, not {frame}")
    array = ds.pixel_array
    image = array[frame - 1] if count > 1 else array
    if int(ds.get("SamplesPerPixel", 1)) == 3:  # pydicom gives YBR as RGB already
        out = np.clip(image, 0, 255).astype(np.uint8) if image.dtype != np.uint8 else image
    else:
        values = image.astype(np.float64) * float(ds.get("RescaleSlope", 1) or 1) + float(ds.get("RescaleIntercept", 0)
                                                                                         or 0)
        center, width = window_of(ds, window, values)
        scaled = np.clip((values - (center - 0.5 - (width - 1) / 2)) / max(width - 1, 1) * 255, 0, 255)
        if str(ds.get("PhotometricInterpretation", "")) == "MONOCHROME1":
            scaled = 255 - scaled
        out = scaled.round().astype(np.uint8)
    if media_type == "image/png":
        return bytes(imagecodecs.png_encode(out))
    if media_type == "image/jpeg":
        return bytes(imagecodecs.jpeg8_encode(out, level=quality))
    raise PixelError(f"rendered media type {media_type} is not offered (image/png, image/jpeg)")
