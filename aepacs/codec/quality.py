"""Image quality measures, always over the original's stored value range.

PSNR and SSIM use ``data_range = max - min`` of the original stored values
(SSIM as scikit-image computes it), so a 12-bit CT and an 8-bit photo are
judged on their own scales. For CT, :func:`window_psnr` also measures
inside a clinical window after the rescale (soft tissue: W 400 / L 40 HU),
because full-range PSNR flatters CT: most of its range is air.
"""

from __future__ import annotations

import math

import numpy as np


def _range(original: np.ndarray) -> float:
    return float(max(int(original.max()) - int(original.min()), 1))


def mse(original: np.ndarray, decoded: np.ndarray) -> float:
    """Mean squared error in stored units."""
    d = original.astype(np.float64) - decoded.astype(np.float64)
    return float(np.mean(d * d))


def psnr(original: np.ndarray, decoded: np.ndarray) -> float:
    """PSNR in dB with data range max - min of `original` (inf when identical)."""
    err = mse(original, decoded)
    return math.inf if err == 0 else 10 * math.log10(_range(original) ** 2 / err)


def ssim(original: np.ndarray, decoded: np.ndarray) -> float:
    """Mean SSIM per frame (scikit-image, data range of `original`), averaged over frames.

    Arrays are ``(frames, rows, columns, samples)``; tiny frames (under 7
    pixels a side) are measured with a smaller window.
    """
    from skimage.metrics import structural_similarity

    rng = _range(original)
    values = []
    for a, b in zip(original.astype(np.float64), decoded.astype(np.float64)):
        win = min(7, *(s - (1 - s % 2) for s in a.shape[:2]))
        if win < 3:
            values.append(1.0 if np.array_equal(a, b) else 0.0)
            continue
        values.append(structural_similarity(a, b, data_range=rng, channel_axis=2, win_size=win))
    return float(np.mean(values))


def window_psnr(original: np.ndarray, decoded: np.ndarray, slope: float, intercept: float,
                width: float = 400.0, level: float = 40.0) -> float:
    """PSNR inside a display window (HU after the rescale), peak = the window width."""
    lo, hi = level - width / 2, level + width / 2
    a = np.clip(original.astype(np.float64) * slope + intercept, lo, hi)
    b = np.clip(decoded.astype(np.float64) * slope + intercept, lo, hi)
    err = float(np.mean((a - b) ** 2))
    return math.inf if err == 0 else 10 * math.log10(width**2 / err)
