"""Image quality measures, always over the original's stored value range.

PSNR and SSIM use ``data_range = max - min`` of the original stored values
(SSIM as scikit-image computes it by default: a uniform 7×7 window, sample
covariances, K1 0.01, K2 0.03, the mean over windows inside the image), so a
12-bit CT and an 8-bit photo are judged on their own scales. Both are
computed in one pass each (numba): the quality gate measures every lossy
object it stores. For CT, :func:`window_psnr` also measures
inside a clinical window after the rescale (soft tissue: W 400 / L 40 HU),
because full-range PSNR flatters CT: most of its range is air.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit


def _range(original: np.ndarray) -> float:
    return float(max(int(original.max()) - int(original.min()), 1))


@njit(cache=True)
def _sum_sq_diff(a: np.ndarray, b: np.ndarray) -> float:
    total = 0.0
    for i in range(a.size):
        d = float(a[i]) - float(b[i])
        total += d * d
    return total


def mse(original: np.ndarray, decoded: np.ndarray) -> float:
    """Mean squared error in stored units."""
    a, b = np.broadcast_arrays(original, decoded)
    return _sum_sq_diff(np.ascontiguousarray(a).reshape(-1), np.ascontiguousarray(b).reshape(-1)) / max(a.size, 1)


def psnr(original: np.ndarray, decoded: np.ndarray) -> float:
    """PSNR in dB with data range max - min of `original` (inf when identical)."""
    err = mse(original, decoded)
    return math.inf if err == 0 else 10 * math.log10(_range(original) ** 2 / err)


@njit(cache=True)
def _mean_ssim(a: np.ndarray, b: np.ndarray, win: int, c1: float, c2: float) -> float:
    """Mean SSIM of one plane over every `win`×`win` window inside it (scikit-image's crop)."""
    rows, cols = a.shape
    out_r, out_c = rows - win + 1, cols - win + 1
    n = float(win * win)
    cov = n / (n - 1.0)
    # column sums over `win` rows of a, b, a², b², ab, for one output row at a time
    col = np.zeros((5, cols))
    for r in range(win):
        for j in range(cols):
            x, y = float(a[r, j]), float(b[r, j])
            col[0, j] += x
            col[1, j] += y
            col[2, j] += x * x
            col[3, j] += y * y
            col[4, j] += x * y
    total = 0.0
    for i in range(out_r):
        if i > 0:  # slide the column sums down one row
            for j in range(cols):
                x0, y0 = float(a[i - 1, j]), float(b[i - 1, j])
                x1, y1 = float(a[i + win - 1, j]), float(b[i + win - 1, j])
                col[0, j] += x1 - x0
                col[1, j] += y1 - y0
                col[2, j] += x1 * x1 - x0 * x0
                col[3, j] += y1 * y1 - y0 * y0
                col[4, j] += x1 * y1 - x0 * y0
        for j in range(out_c):
            sx = sy = sxx = syy = sxy = 0.0
            for k in range(j, j + win):
                sx += col[0, k]
                sy += col[1, k]
                sxx += col[2, k]
                syy += col[3, k]
                sxy += col[4, k]
            ux, uy = sx / n, sy / n
            vx = cov * (sxx / n - ux * ux)
            vy = cov * (syy / n - uy * uy)
            vxy = cov * (sxy / n - ux * uy)
            total += ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    return total / (out_r * out_c)


def ssim(original: np.ndarray, decoded: np.ndarray) -> float:
    """Mean SSIM per frame (scikit-image's definition, data range of `original`), averaged over frames.

    Arrays are ``(frames, rows, columns, samples)``; a frame's SSIM is the mean
    over its samples (channels). Tiny frames (under 7 pixels a side) are
    measured with a smaller window.
    """
    rng = _range(original)
    c1, c2 = (0.01 * rng) ** 2, (0.03 * rng) ** 2
    values = []
    for a, b in zip(original, decoded, strict=False):
        win = min(7, *(s - (1 - s % 2) for s in a.shape[:2]))
        if win < 3:
            values.append(1.0 if np.array_equal(a, b) else 0.0)
            continue
        values.append(float(np.mean([_mean_ssim(np.ascontiguousarray(a[..., c]), np.ascontiguousarray(b[..., c]),
                                                win, c1, c2) for c in range(a.shape[2])])))
    return float(np.mean(values))


def window_psnr(original: np.ndarray, decoded: np.ndarray, slope: float, intercept: float,
                width: float = 400.0, level: float = 40.0) -> float:
    """PSNR inside a display window (HU after the rescale), peak = the window width."""
    lo, hi = level - width / 2, level + width / 2
    a = np.clip(original.astype(np.float64) * slope + intercept, lo, hi)
    b = np.clip(decoded.astype(np.float64) * slope + intercept, lo, hi)
    err = float(np.mean((a - b) ** 2))
    return math.inf if err == 0 else 10 * math.log10(width**2 / err)
