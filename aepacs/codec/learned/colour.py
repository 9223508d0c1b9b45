"""JPEG 2000's reversible colour transform (RCT), as every learned codec codes colour frames."""

from __future__ import annotations

import numpy as np

__all__ = ["inverse_rct", "rct"]


def rct(frame: np.ndarray) -> np.ndarray:
    """Reversible colour transform of a ``(rows, cols, 3)`` frame -> planes ``(3, rows, cols)`` (Y, Cb, Cr)."""
    r, g, b = (frame[..., i].astype(np.int64) for i in range(3))
    return np.stack([(r + 2 * g + b) >> 2, b - g, r - g])


def inverse_rct(planes: np.ndarray) -> np.ndarray:
    """Undo :func:`rct`: planes ``(3, rows, cols)`` -> ``(rows, cols, 3)``."""
    y, cb, cr = planes
    g = y - ((cb + cr) >> 2)
    return np.stack([cr + g, g, cb + g], axis=-1)
