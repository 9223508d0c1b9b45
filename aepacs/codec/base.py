"""The codec interface and the description of the pixels a codec receives.

A codec turns pixels into bytes and back::

    encode(pixels: np.ndarray, meta: PixelMeta) -> bytes
    decode(data: bytes, meta: PixelMeta) -> np.ndarray

Image codecs receive native pixel arrays shaped ``(frames, rows, columns,
samples)`` in the stored dtype; byte codecs (zstd, raw) receive a 1-D
``uint8`` array of the stored bytes and ignore `meta`. Codecs are looked up
by their ``id``, which is recorded in every sealed object.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

from aepacs.dicom.pixels import PixelMeta


@runtime_checkable
class Codec(Protocol):
    """What every codec provides."""

    id: str

    def encode(self, pixels: np.ndarray, meta: PixelMeta | None) -> bytes: ...

    def decode(self, data: bytes, meta: PixelMeta | None) -> np.ndarray: ...
