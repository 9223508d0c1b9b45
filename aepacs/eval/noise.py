"""The paper's noise experiment: noise added with SimpleITK's filters.

Noise is applied to the frame scaled to [0, 1], then mapped back to the
stored range (rounded, clipped), so every kind meets every modality at a
comparable strength.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

KINDS = ("salt-and-pepper", "speckle", "poisson", "gaussian")


def add_noise(image: np.ndarray, kind: str, seed: int = 0) -> np.ndarray:
    """`image` ``(rows, cols, samples)`` with `kind` noise, same dtype range."""
    lo, hi = int(image.min()), int(image.max())
    span = max(hi - lo, 1)
    out = np.empty(image.shape, dtype=np.int64)
    for s in range(image.shape[2]):
        img = sitk.GetImageFromArray((image[..., s].astype(np.float64) - lo) / span)
        if kind == "salt-and-pepper":
            noisy = sitk.SaltAndPepperNoise(img, 0.01, seed)
        elif kind == "speckle":
            noisy = sitk.SpeckleNoise(img, 0.1, seed)
        elif kind == "poisson":
            noisy = sitk.ShotNoise(img, 1000.0, seed)
        elif kind == "gaussian":
            noisy = sitk.AdditiveGaussianNoise(img, 0.02, 0.0, seed)
        else:
            raise ValueError(f"unknown noise {kind!r}; choose from {', '.join(KINDS)}")
        arr = sitk.GetArrayFromImage(noisy)
        out[..., s] = np.round(np.clip(arr, 0.0, 1.0) * span + lo)  # salt and pepper hit the type's limits
    return out
