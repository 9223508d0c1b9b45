"""The quality gate's measures, held to their references: scikit-image's SSIM and numpy's MSE."""

from __future__ import annotations

import numpy as np
import pytest
from skimage.metrics import structural_similarity

from aepacs.codec.quality import mse, psnr, ssim
from tests.conftest import ct_slices


def reference_ssim(original: np.ndarray, decoded: np.ndarray) -> float:
    rng = float(max(int(original.max()) - int(original.min()), 1))
    values = []
    for a, b in zip(original.astype(np.float64), decoded.astype(np.float64), strict=False):
        win = min(7, *(s - (1 - s % 2) for s in a.shape[:2]))
        values.append(structural_similarity(a, b, data_range=rng, channel_axis=2, win_size=win))
    return float(np.mean(values))


def degraded(pixels: np.ndarray, sigma: float, seed: int) -> np.ndarray:
    noisy = pixels + np.random.default_rng(seed).normal(0, sigma, pixels.shape).round()
    return np.clip(noisy, np.iinfo(pixels.dtype).min, np.iinfo(pixels.dtype).max).astype(pixels.dtype)


@pytest.mark.parametrize("sigma", [1.0, 20.0, 300.0])
def test_ssim_equals_scikit_image_on_real_ct(sigma: float) -> None:
    original = ct_slices(2)
    decoded = degraded(original, sigma, seed=int(sigma))
    assert ssim(original, decoded) == pytest.approx(reference_ssim(original, decoded), abs=1e-12)
    assert ssim(original, original) == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("shape", [(2, 37, 50, 3), (1, 7, 7, 1), (1, 5, 9, 1), (1, 64, 33, 1)])
def test_ssim_equals_scikit_image_on_odd_shapes_and_colour(shape: tuple[int, ...]) -> None:
    rng = np.random.default_rng(len(shape) + shape[1])
    original = rng.integers(0, 255, shape).astype(np.uint8)
    decoded = degraded(original, 25.0, seed=shape[2])
    assert ssim(original, decoded) == pytest.approx(reference_ssim(original, decoded), abs=1e-12)


def test_mse_and_psnr() -> None:
    original = ct_slices(1)
    decoded = degraded(original, 5.0, seed=3)
    diff = original.astype(np.float64) - decoded
    assert mse(original, decoded) == pytest.approx(float(np.mean(diff * diff)), rel=1e-12)
    span = float(int(original.max()) - int(original.min()))
    assert psnr(original, decoded) == pytest.approx(10 * np.log10(span**2 / np.mean(diff * diff)), rel=1e-12)
    assert psnr(original, original) == float("inf")
