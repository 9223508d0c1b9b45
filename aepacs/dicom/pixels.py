"""Native (uncompressed) pixel data: its description and its array view.

:class:`PixelMeta` is what the Image Pixel module says about stored native
pixels (size, frames, samples, bits, sign, planar configuration, byte order);
:func:`pixels_from_bytes` views the stored bytes as a canonical
``(frames, rows, columns, samples)`` array and :func:`pixels_to_bytes` writes
one back, so every codec receives the same shape whatever the stored layout.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from aepacs.errors import CodecError


@dataclass(frozen=True)
class PixelMeta:
    """What an image codec needs to know about native (uncompressed) pixel data."""

    rows: int
    columns: int
    frames: int
    samples: int
    bits_allocated: int
    bits_stored: int
    signed: bool
    planar: int
    photometric: str
    big_endian: bool
    modality: str = ""

    @property
    def dtype(self) -> np.dtype[Any]:
        """The stored dtype, with the stored byte order."""
        order = ">" if self.big_endian else "<"
        return np.dtype(f"{order}{'i' if self.signed else 'u'}{self.bits_allocated // 8}")

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """Canonical array shape: (frames, rows, columns, samples)."""
        return (self.frames, self.rows, self.columns, self.samples)

    @property
    def nbytes(self) -> int:
        """Bytes of pixel data, without any trailing padding byte."""
        return self.frames * self.rows * self.columns * self.samples * (self.bits_allocated // 8)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PixelMeta:
        return cls(**d)


def pixels_from_bytes(value: bytes, meta: PixelMeta) -> np.ndarray:
    """View stored native pixel bytes as a canonical ``(frames, rows, cols, samples)`` array."""
    if len(value) < meta.nbytes:
        raise CodecError(f"pixel data has {len(value)} bytes, expected {meta.nbytes}")
    flat = np.frombuffer(value, dtype=meta.dtype, count=meta.nbytes // meta.dtype.itemsize)
    if meta.planar == 1 and meta.samples > 1:
        return flat.reshape(meta.frames, meta.samples, meta.rows, meta.columns).transpose(0, 2, 3, 1)
    return flat.reshape(meta.shape)


def pixels_to_bytes(pixels: np.ndarray, meta: PixelMeta) -> bytes:
    """Inverse of :func:`pixels_from_bytes` (without the padding byte)."""
    arr = np.asarray(pixels).astype(meta.dtype, copy=False)
    if meta.planar == 1 and meta.samples > 1:
        arr = arr.transpose(0, 3, 1, 2)
    return np.ascontiguousarray(arr).tobytes()
