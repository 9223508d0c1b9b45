"""WADO-RS pixel resources of one decoded instance: frames, pixel bulk data, rendered images (PS3.18 8.7, 9.5).

Pure functions of a pydicom dataset. Frames of a native (uncompressed)
instance are sliced from its Pixel Data as stored (Explicit VR Little Endian
samples); those of an encapsulated one are its compressed frames as stored,
in its own transfer syntax; a client that accepts neither gets them decoded.
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
from pydicom.uid import ExplicitVRLittleEndian

from aepacs.errors import InputError

__all__ = ["NoSuchFrame", "PixelError", "frame_list", "frames", "rendered", "window_of"]


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


def frames(ds: Dataset, numbers: Sequence[int], accept_stored: bool) -> tuple[list[bytes], str]:
    """The frames `numbers` of `ds` and the transfer syntax they are in.

    `accept_stored`: the client takes a compressed instance's frames as stored
    (``transfer-syntax=*`` or that syntax); otherwise they are decoded.

    Raises
    ------
    PixelError
        No pixel data, a frame beyond the last, or 1-bit samples (not byte-aligned).
    """
    if "PixelData" not in ds:
        raise NoSuchFrame("the instance has no pixel data")
    count = _count(ds)
    if max(numbers) > count:
        raise NoSuchFrame(f"the instance has {count} frame{'s' * (count != 1)}, not {max(numbers)}")
    syntax = ds.file_meta.TransferSyntaxUID
    if syntax.is_compressed and accept_stored:
        stored = list(generate_frames(ds.PixelData, number_of_frames=count))
        return [stored[n - 1] for n in numbers], str(syntax)
    if syntax.is_compressed:
        array = ds.pixel_array.reshape(count, -1)
        return [array[n - 1].astype(array.dtype.newbyteorder("<")).tobytes() for n in numbers], ExplicitVRLittleEndian
    if int(ds.BitsAllocated) % 8:
        raise PixelError("1-bit frames are not byte-aligned: retrieve the instance")
    size = int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel", 1)) * int(ds.BitsAllocated) // 8
    data = bytes(ds.PixelData)
    if syntax.is_little_endian:
        return [data[(n - 1) * size:n * size] for n in numbers], ExplicitVRLittleEndian
    array = ds.pixel_array.reshape(count, -1)  # big endian: samples in little-endian order
    return [array[n - 1].astype(array.dtype.newbyteorder("<")).tobytes() for n in numbers], ExplicitVRLittleEndian


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
