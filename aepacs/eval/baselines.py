"""Standard codecs in the same run: JPEG 2000, HTJ2K, JPEG-XL at a byte budget, and lossless.

Lossy, through imagecodecs: JPEG 2000 is OpenJPEG (irreversible 9/7), its rate
set by a quality in dB; HTJ2K is OpenJPH (irreversible 9/7), its rate set by a
quantization step; JPEG-XL is libjxl at effort 7, its rate set by a Butteraugli
distance. Each budget is met by bisection on that parameter: the largest
stream not over the budget wins.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import imagecodecs
import numpy as np

from aepacs.codec.lossless import JpegLsCodec

#: the lossy standard codecs compared at equal bytes: (family, label)
LOSSY = (("jpeg2000", "JPEG 2000 (OpenJPEG, 9/7)"), ("htj2k-lossy", "HTJ2K (OpenJPH, 9/7)"),
         ("jpegxl-lossy", "JPEG-XL (libjxl effort 7)"))

Coder = tuple[Callable[[float], "bytes | bytearray"], Callable[..., np.ndarray], float, float, int]


def unsigned(image: np.ndarray) -> tuple[np.ndarray, int, int]:
    """A frame ``(rows, cols, samples)`` as the unsigned array the codecs take: (array, offset, bits)."""
    lo = int(image.min())
    work = image.astype(np.int64) - lo
    bits = max(int(work.max()).bit_length(), 2)
    work = work.astype(np.uint8 if bits <= 8 else np.uint16)
    return (work[..., 0] if work.shape[2] == 1 else work), lo, bits


def _coder(family: str, work: np.ndarray, bits: int) -> Coder:
    """(encode(x), decode, lowest x, highest x, bisection steps): a larger ``x`` gives more bytes."""
    if family == "jpeg2000":  # x: OpenJPEG's quality layer target in dB
        return (lambda x: imagecodecs.jpeg2k_encode(work, level=x, reversible=False,
                                                    bitspersample=bits),
                imagecodecs.jpeg2k_decode, 1.0, 160.0, 14)
    if family == "htj2k-lossy":  # x: -log2 of OpenJPH's base quantization step (of the 16-bit range)
        # always as 16-bit samples: imagecodecs' irreversible HTJ2K of 8-bit arrays wraps around
        # (seen with 2026.3.6: 23 dB at 1.5 bpp on US1_UNCR, and not monotone in the step)
        wide = work.astype(np.uint16)
        return (lambda x: imagecodecs.htj2k_encode(wide, level=2.0 ** -x, reversible=False),
                imagecodecs.htj2k_decode, 0.0, 30.0, 15)
    if family == "jpegxl-lossy":  # x: -log2 of libjxl's Butteraugli distance (0.01 .. 25)
        return (lambda x: imagecodecs.jpegxl_encode(work, distance=2.0 ** -x, effort=7, bitspersample=bits),
                imagecodecs.jpegxl_decode, -math.log2(25.0), -math.log2(0.01), 11)
    raise ValueError(f"unknown lossy codec {family!r}")


def at_budget(family: str, image: np.ndarray, budget: int) -> tuple[int, np.ndarray, float, float]:
    """One frame ``(rows, cols, samples)`` through a lossy standard codec in at most `budget` bytes.

    The codec's rate parameter is bisected: the largest stream not over the
    budget wins (the smallest the codec makes when none fits).

    Parameters
    ----------
    family : str
        One of :data:`LOSSY`.
    image : ndarray
        Integer pixels ``(rows, cols, samples)``.
    budget : int
        Bytes the stream may take.

    Returns
    -------
    (bytes, decoded, encode ms, decode ms)
        The decoded frame in the input's value range (int64).
    """
    work, lo, bits = unsigned(image)
    encode, decode, low, high, rounds = _coder(family, work, bits)
    best, x = None, low
    for _ in range(rounds):
        mid = (low + high) / 2
        stream = encode(mid)
        if len(stream) <= budget:
            best, low, x = stream, mid, mid
        else:
            high = mid
    if best is None:
        best = encode(x)
    t0 = time.perf_counter()
    encode(x)
    t1 = time.perf_counter()
    decoded = decode(best)
    t2 = time.perf_counter()
    decoded = decoded.reshape(image.shape).astype(np.int64) + lo
    return len(best), decoded, 1000 * (t1 - t0), 1000 * (t2 - t1)


def j2k_at_budget(image: np.ndarray, budget: int) -> tuple[int, np.ndarray, float, float]:
    """JPEG 2000 of one frame ``(rows, cols, samples)`` in at most `budget` bytes (:func:`at_budget`)."""
    return at_budget("jpeg2000", image, budget)


def jpegls_bytes(image: np.ndarray) -> tuple[int, float]:
    """JPEG-LS lossless size of one frame and its encode time (ms)."""
    image = image.astype(np.int16 if image.min() < 0 else np.uint16)
    t0 = time.perf_counter()
    n = len(JpegLsCodec().encode(image[None], None))
    return n, 1000 * (time.perf_counter() - t0)


#: the lossless baselines besides JPEG-LS: (family, label)
LOSSLESS = (("jpegxl", "JPEG-XL lossless (libjxl effort 7)"), ("jpeg2000-lossless", "JPEG 2000 lossless (5/3)"),
            ("htj2k", "HTJ2K lossless"))


def lossless_sizes(image: np.ndarray) -> dict[str, tuple[int, float]]:
    """Bytes and encode ms of one frame ``(rows, cols, samples)`` for each of :data:`LOSSLESS`."""
    work, _, bits = unsigned(image)
    coders = {"jpegxl": lambda: imagecodecs.jpegxl_encode(work, lossless=True, effort=7),
              "jpeg2000-lossless": lambda: imagecodecs.jpeg2k_encode(work, level=0, reversible=True,
                                                                     bitspersample=bits),
              "htj2k": lambda: imagecodecs.htj2k_encode(work, level=0)}
    out = {}
    for family, code in coders.items():
        t0 = time.perf_counter()
        n = len(code())
        out[family] = (n, 1000 * (time.perf_counter() - t0))
    return out
