"""What every learned codec shares: the model it reads, its mode and operating point, the checks.

A generation (:mod:`aepacs.codec.learned.wavelet`, the legacy
:mod:`aepacs.codec.learned.factorized`) subclasses :class:`LearnedCodec`,
names its architecture and loads its weights in :meth:`LearnedCodec._load`;
the constructor, the mode and gain checks, the input check and the codec id
are here once.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any, ClassVar, Protocol, TypeVar

import numpy as np

from aepacs.dicom.pixels import PixelMeta
from aepacs.errors import CodecError

MODES = ("lossy", "lossless")
T = TypeVar("T")


class ModelFiles(Protocol):
    """What a codec reads of a model: a verified registry model or a training draft."""

    @property
    def ref(self) -> str: ...

    @property
    def arch(self) -> str: ...

    @property
    def manifest(self) -> dict[str, Any]: ...

    def tensors(self, filename: str) -> dict[str, np.ndarray]: ...

    def cached(self, key: Hashable, make: Callable[[], T]) -> T: ...


class LearnedCodec:
    """A registry model as an image codec of ``(frames, rows, columns, samples)`` integers.

    Parameters
    ----------
    model : ModelFiles
        A verified model of the subclass's architecture.
    mode : {"lossy", "lossless"}
    gain : int, optional
        Lossy operating point ``0..gains-1``; default: the model's ``default_gain``.
    target_psnr : float, optional
        Lossy only: per frame, the smallest gain whose PSNR reaches this.
    """

    arch: ClassVar[str]
    #: how messages name the codec ("wavelet codec takes ...")
    kind: ClassVar[str]
    #: the first four bytes of its stream
    magic: ClassVar[bytes]
    #: whether it has lossy operating points (a lossless-only codec still decodes when made
    #: with the default mode, as a retrieval does; it refuses to encode in ``lossy``)
    lossy: ClassVar[bool] = True

    def __init__(self, model: ModelFiles, mode: str = "lossy", *, gain: int | None = None,
                 target_psnr: float | None = None) -> None:
        if model.arch != self.arch:
            raise CodecError(f"model {model.ref} ({model.arch}) is not a {self.arch} model")
        if mode not in MODES:
            raise CodecError(f"unknown learned mode {mode!r}")
        self.model, self.mode, self.target_psnr = model, mode, target_psnr
        self.gains = self._load(model)
        self.gain = int(model.manifest.get("default_gain", self.gains // 2)) if gain is None else gain
        if not 0 <= self.gain < self.gains:
            raise CodecError(f"gain {self.gain} outside 0..{self.gains - 1} of {model.ref}")
        self.channels = int(model.manifest["hyper"]["channels"])
        self.id = f"ae:{model.ref}"

    def _load(self, model: ModelFiles) -> int:
        """Read the weights this codec needs; return the number of lossy operating points."""
        raise NotImplementedError

    def _check(self, pixels: np.ndarray) -> None:
        if pixels.ndim != 4 or pixels.dtype.kind not in "ui" or pixels.size == 0:
            raise CodecError(f"{self.kind} takes integer frames, not {pixels.dtype} {pixels.shape}")
        if int(pixels.min()) < -(1 << 15) or int(pixels.max()) >= (1 << 16):
            raise CodecError(f"{self.kind} takes values of at most 16 bits")
        if pixels.shape[3] != self.channels:
            raise CodecError(f"{self.model.ref} codes {self.channels}-sample images, not {pixels.shape[3]}")

    def encode(self, pixels: np.ndarray, meta: PixelMeta | None = None) -> bytes:
        """Code frames ``(frames, rows, columns, samples)``."""
        raise NotImplementedError

    def encode_reconstruct(self, pixels: np.ndarray) -> tuple[bytes, np.ndarray]:
        """The stream and the pixels every decoder will rebuild from it (int64)."""
        raise NotImplementedError

    def decode(self, data: bytes, meta: PixelMeta | None = None) -> np.ndarray:
        """Rebuild the frames; integer only, so every machine gets the same pixels."""
        raise NotImplementedError

    @staticmethod
    def frame_gains(data: bytes) -> list[int]:
        """The gain each frame of a stream of this codec was coded at."""
        raise NotImplementedError
