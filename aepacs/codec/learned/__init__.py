"""Learned image codecs: one subpackage per generation, one table of architectures.

``mixing``      the lossless codec of the ``@4`` models: adaptive prediction and a gated
                mixing network, numba loops (:mod:`aepacs.codec.learned.mixing`)
``wavelet``     the codec of the ``@2`` and ``@3`` models: integer lifting and a learned
                context model, numba loops (:mod:`aepacs.codec.learned.wavelet`)
``factorized``  the legacy ``@1`` decoder (and encoder): a convolutional analysis, an integer
                synthesis, a factorized prior (:mod:`aepacs.codec.learned.factorized`)

Shared by the generations: :mod:`~aepacs.codec.learned.colour` (the RCT) and
:mod:`~aepacs.codec.learned.rangecoder` (the range coder's constants and carry pass).

:data:`ARCHITECTURES` is the only place an architecture name (a model
manifest's ``arch``) is mapped to its codec class. A generation's module is
imported when a model of it is first used, so a process that never meets an
``@1`` object never imports torch, which that generation needs.
"""

from __future__ import annotations

import importlib

from aepacs.codec.learned.base import MODES, LearnedCodec, ModelFiles
from aepacs.errors import CodecError

#: architecture name -> "module:class" of its codec
ARCHITECTURES: dict[str, str] = {
    "mixing": "aepacs.codec.learned.mixing.codec:MixingCodec",
    "wavelet": "aepacs.codec.learned.wavelet.codec:WaveletCodec",
    "factorized": "aepacs.codec.learned.factorized.codec:FactorizedCodec",
}

__all__ = ["ARCHITECTURES", "MODES", "LearnedCodec", "ModelFiles", "architecture", "codec_for"]


def architecture(name: str) -> type[LearnedCodec]:
    """The codec class of architecture `name`.

    Raises
    ------
    CodecError
        No codec is registered under `name` (a model that is not a codec, such as
        the paper's baseline, or one written by a newer aepacs), or it needs a
        package this install lacks (torch, for the ``factorized`` generation).
    """
    try:
        module, _, cls = ARCHITECTURES[name].partition(":")
    except KeyError:
        raise CodecError(f"no codec for architecture {name!r} (codecs: {', '.join(ARCHITECTURES)})") from None
    try:
        codec: type[LearnedCodec] = getattr(importlib.import_module(module), cls)
    except ImportError as exc:  # the factorized generation's torch, on an install without the train extra
        raise CodecError(f"the {name} codec needs {exc.name or 'a package not installed'} "
                         f"(pip install 'aepacs[train]')") from None
    return codec


def codec_for(model: ModelFiles, mode: str = "lossy", *, gain: int | None = None,
              target_psnr: float | None = None) -> LearnedCodec:
    """The codec of a registry model, by its architecture.

    Every codec takes ``(frames, rows, columns, samples)`` integers, has
    ``gains`` lossy operating points and ``encode_reconstruct``; every sealed
    object names the model version, so old architectures keep decoding. One
    codec per model and settings per process: a target-PSNR search starts
    where the last one ended (slices of a series need about the same gain).
    """
    return model.cached(("codec", mode, gain, target_psnr),
                        lambda: architecture(model.arch)(model, mode, gain=gain, target_psnr=target_psnr))
