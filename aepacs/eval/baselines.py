"""Standard codecs in the same run: JPEG 2000 at a byte budget; JPEG-LS, JPEG-XL, JPEG 2000, HTJ2K lossless.

JPEG 2000 is OpenJPEG through imagecodecs (irreversible 9/7 wavelet). Its
rate is set by a quality in dB, so the budget is met by bisection on that
quality: the largest stream not over the budget wins.
"""

from __future__ import annotations

import time

import imagecodecs
import numpy as np

from aepacs.codec.lossless import JpegLsCodec


def j2k_at_budget(image: np.ndarray, budget: int) -> tuple[int, np.ndarray, float, float]:
    """JPEG 2000 of one frame ``(rows, cols, samples)`` in at most `budget` bytes.

    Returns
    -------
    (bytes, decoded, encode ms, decode ms)
        The decoded frame in the input's value range (int64).
    """
    lo = int(image.min())
    work = (image.astype(np.int64) - lo)
    bits = max(int(work.max()).bit_length(), 2)
    work = work.astype(np.uint8 if bits <= 8 else np.uint16)
    if work.shape[2] == 1:
        work = work[..., 0]
    best, low, high = None, 1.0, 160.0
    for _ in range(14):
        mid = (low + high) / 2
        stream = imagecodecs.jpeg2k_encode(work, level=mid, reversible=False,  # type: ignore[arg-type]
                                          bitspersample=bits)  # (a float level is a PSNR/ratio target)
        if len(stream) <= budget:
            best, low = stream, mid
        else:
            high = mid
    if best is None:
        best = imagecodecs.jpeg2k_encode(work, level=1.0, reversible=False,  # type: ignore[arg-type]
                                        bitspersample=bits)
    t0 = time.perf_counter()
    imagecodecs.jpeg2k_encode(work, level=low, reversible=False, bitspersample=bits)  # type: ignore[arg-type]
    t1 = time.perf_counter()
    decoded = imagecodecs.jpeg2k_decode(best)
    t2 = time.perf_counter()
    decoded = decoded.reshape(image.shape).astype(np.int64) + lo
    return len(best), decoded, 1000 * (t1 - t0), 1000 * (t2 - t1)


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
    work = image.astype(np.int64) - int(image.min())
    bits = max(int(work.max()).bit_length(), 2)
    work = work.astype(np.uint8 if bits <= 8 else np.uint16)
    if work.shape[2] == 1:
        work = work[..., 0]
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
