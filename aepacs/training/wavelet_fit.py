"""Training a wavelet model: lifting taps on rate + lambda * distortion, then the entropy model.

Two pure fits, run in turn by :func:`aepacs.training.train.train` for
``--arch wavelet``:

* :func:`fit_taps` -- the analysis/synthesis transform. Each lifting step gets
  :data:`TAPS_PER_STEP` symmetric taps, starting from CDF 9/7 (the JPEG 2000
  wavelet, its extra taps zero). The loss is the real codec's
  ``rate + lambda * distortion`` summed over :data:`TAP_GAINS` and the lossless
  mode, measured by coding the training frames: bits of the range-coded
  stream, squared error of the reconstruction. The rounding in every lifting
  step makes that loss piecewise constant in the taps, so instead of gradients
  it takes coordinate steps on the integer taps (halving the step when no
  coordinate improves), which also keeps the fit exactly reproducible. The
  taps stay within :data:`TAP_RADIUS` of CDF 9/7: unconfined, the fit on the
  US training frames (mostly one JPEG-compressed clip) moved the last update
  step from 0.44 to -0.02, gained 9 dB on those frames and lost 1.4 dB on a
  held-out US image. CDF 9/7 is the prior; the fit is a fine-tune around it.
* :func:`fit_init` -- the entropy model: the range coder's starting
  probability per context, the mean of where adaptation leaves each context
  when the training frames are coded, iterated to a fixed point (the estimate
  that minimises the training frames' rate).

``lambda`` per gain is the slope of the operational rate-distortion curve at
that gain for CDF 9/7, ``1 / (2 ln 2 * D0)`` bits per unit of mean squared
error, where ``D0`` is the mean squared error CDF 9/7 gives there (a uniform
quantizer at high rate trades one bit per pixel for 6.02 dB). A tap change that
saves 1 % of the bits or 1 % of the distortion at a gain counts the same.
"""

from __future__ import annotations

import functools
import math
import sys
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
from tqdm import tqdm

from aepacs.codec.learned.wavelet import lifting, subband
from aepacs.codec.learned.wavelet.codec import WaveletCodec, band_weights
from aepacs.codec.learned.wavelet.lifting import CDF97, P

T = TypeVar("T")

#: Gains the entropy model is fitted at (``None``: lossless).
INIT_GAINS: tuple[int | None, ...] = (None, 8, 12, 16, 20, 24, 28, 32, 36)
#: Gains (and lossless) whose rate + lambda * distortion the taps are fitted to.
TAP_GAINS: tuple[int | None, ...] = (None, 12, 16, 20, 24)
#: Symmetric taps per lifting step.
TAPS_PER_STEP = 2
#: Coordinate step sizes tried, in units of ``2**-P``.
TAP_STEPS = (1024, 512, 256, 128, 64)
#: Largest distance of any tap from CDF 9/7, in units of ``2**-P`` (1/16).
TAP_RADIUS = 1024

__all__ = ["Draft", "INIT_GAINS", "TAP_GAINS", "TAP_RADIUS", "TAPS_PER_STEP", "cdf97_taps", "fit_init", "fit_taps"]

Frames = Sequence[np.ndarray]  # each (rows, cols, samples)


@functools.lru_cache(maxsize=4)
def _band_weights(taps: bytes) -> np.ndarray:
    return band_weights(np.frombuffer(taps, np.int64).reshape(4, -1))


@dataclass
class Draft:
    """A wavelet model not (yet) in the registry: what training codes with.

    It has what :class:`~aepacs.codec.learned.wavelet.codec.WaveletCodec` reads
    from a registry model (:class:`~aepacs.codec.learned.base.ModelFiles`).
    """

    channels: int
    init: np.ndarray = field(default_factory=subband.uniform_init)
    taps: np.ndarray = field(default_factory=lambda: lifting.CDF97.copy())
    #: fraction bits of the lossy transform (the manifest's ``hyper.precision``)
    precision: int = 0
    #: the lossy encoder's rate-distortion multiplier (the manifest's ``hyper.rdo``; 0: none)
    rdo: int = 0
    arch: str = "wavelet"
    ref: str = "draft"
    _cache: dict[Hashable, Any] = field(default_factory=dict, repr=False)

    @property
    def manifest(self) -> dict[str, Any]:
        return {"hyper": {"channels": self.channels, "precision": self.precision, "rdo": self.rdo}}

    def tensors(self, filename: str = "wavelet.safetensors") -> dict[str, np.ndarray]:
        """The weight file's tensors: taps, starting probabilities, band weights."""
        return {"taps": self.taps.astype(np.int64), "init": self.init.astype(np.int32),
                "band_weights": _band_weights(self.taps.astype(np.int64).tobytes())}

    def cached(self, key: Hashable, make: Callable[[], T]) -> T:
        if key not in self._cache:
            self._cache[key] = make()
        value: T = self._cache[key]
        return value


def cdf97_taps(per_step: int = TAPS_PER_STEP) -> np.ndarray:
    """CDF 9/7 lifting taps widened to `per_step` taps per step (the extra ones zero)."""
    taps = np.zeros((4, per_step), np.int64)
    taps[:, :1] = CDF97
    return taps


def _rate_distortion(channels: int, init: np.ndarray, taps: np.ndarray, frame: np.ndarray,
                     gain: int | None, precision: int, rdo: int) -> tuple[int, float]:
    """(bits, sum of squared errors) of one frame coded at `gain` with these taps."""
    codec = WaveletCodec(Draft(channels, init, taps, precision, rdo), "lossless" if gain is None else "lossy",
                         gain=gain)
    stream, recon = codec.encode_reconstruct(frame[None])
    err = recon[0] - frame
    return 8 * len(stream), float((err.astype(np.float64) ** 2).sum())


def _measure(channels: int, init: np.ndarray, taps: np.ndarray, frames: Frames, pool: ThreadPoolExecutor,
             precision: int, rdo: int) -> np.ndarray:
    """Per gain of :data:`TAP_GAINS`: (bits per pixel, mean squared error) over `frames`."""
    jobs = [(f, g) for g in TAP_GAINS for f in frames]
    out = list(pool.map(lambda job: _rate_distortion(channels, init, taps, job[0], job[1], precision, rdo), jobs))
    pixels = sum(f.size for f in frames)
    rd = np.array(out, np.float64).reshape(len(TAP_GAINS), len(frames), 2).sum(axis=1)
    return rd / pixels


def fit_taps(frames: Frames, channels: int, init: np.ndarray, *, progress: bool = True, precision: int = 0,
             rdo: int = 0, log: Callable[[str], None] | None = None) -> tuple[np.ndarray, dict[str, object]]:
    """Lifting taps minimising rate + lambda * distortion on `frames`; see the module docstring.

    Parameters
    ----------
    frames : sequence of ndarray
        Training frames ``(rows, cols, samples)`` of integer pixels.
    channels : int
        Samples per pixel (1 or 3).
    init : ndarray
        The entropy model's starting probabilities to code with.
    precision : int
        Fraction bits of the lossy transform (the model's ``hyper.precision``).
    rdo : int
        The lossy encoder's rate-distortion multiplier (the model's ``hyper.rdo``).

    Returns
    -------
    taps : ndarray
        ``(4, TAPS_PER_STEP)`` int64 taps with :data:`~aepacs.codec.learned.wavelet.lifting.P` fraction bits.
    report : dict
        The lambdas, and the loss and per-gain rate/distortion before and after.
    """
    taps = start = cdf97_taps()
    with ThreadPoolExecutor(2) as pool:
        rd0 = _measure(channels, init, taps, frames, pool, precision, rdo)
        lam = np.array([0.0 if g is None else 1 / (2 * math.log(2) * max(rd0[i, 1], 1e-12))
                        for i, g in enumerate(TAP_GAINS)])

        def loss(rd: np.ndarray) -> float:
            return float((rd[:, 0] + lam * rd[:, 1]).sum())

        best = loss(rd0)
        rd_best = rd0
        bar = tqdm(desc="fit taps", unit="trial", disable=not progress, file=sys.stderr)
        for step in TAP_STEPS:
            improved = True
            while improved:
                improved = False
                for k in range(taps.size):
                    for sign in (1, -1):
                        trial = taps.copy()
                        trial.flat[k] += sign * step
                        if abs(int(trial.flat[k]) - int(start.flat[k])) > TAP_RADIUS:
                            continue
                        rd = _measure(channels, init, trial, frames, pool, precision, rdo)
                        bar.update()
                        if loss(rd) < best - 1e-9:
                            taps, best, rd_best, improved = trial, loss(rd), rd, True
                            bar.set_postfix(loss=f"{best:.4f}")
                            break
        bar.close()
    if log is not None:
        log(f"taps: loss {loss(rd0):.4f} -> {best:.4f}")
    gains = ["lossless" if g is None else g for g in TAP_GAINS]
    report = {
        "gains": gains,
        "lambda": [round(float(v), 6) for v in lam],
        "loss": {"cdf97": round(loss(rd0), 5), "fitted": round(best, 5)},
        "cdf97": [{"gain": g, "bpp": round(float(b), 4), "mse": round(float(d), 4)}
                  for g, (b, d) in zip(gains, rd0, strict=False)],
        "fitted": [{"gain": g, "bpp": round(float(b), 4), "mse": round(float(d), 4)}
                   for g, (b, d) in zip(gains, rd_best, strict=False)],
        "steps": list(TAP_STEPS), "radius": TAP_RADIUS,
        "fraction_bits": P,
    }
    return taps, report


def fit_init(frames: Frames, channels: int, taps: np.ndarray, epochs: int, *, progress: bool = True,
             precision: int = 0, rdo: int = 0, start: np.ndarray | None = None, done: int = 0,
             checkpoint: Callable[[int, np.ndarray], None] | None = None) -> np.ndarray:
    """The entropy model's starting probabilities for `taps`; see the module docstring.

    `start` and `done` resume from a checkpoint (the table after epoch `done`);
    `checkpoint(epoch, table)` is called after each epoch.
    """
    init = subband.uniform_init() if start is None else start
    bar = tqdm(total=(epochs - done) * len(frames) * len(INIT_GAINS), desc="fit entropy model", unit="frame",
               disable=not progress, file=sys.stderr)
    for epoch in range(done, epochs):
        total, n = np.zeros(subband.NCTX), 0
        for frame in frames:
            for gain in INIT_GAINS:
                mode = "lossless" if gain is None else "lossy"
                codec = WaveletCodec(Draft(channels, init, taps, precision, rdo), mode, gain=gain)
                q, levels = codec.subbands(frame)
                total += subband.final_state(q, levels, init)
                n += 1
                bar.update()
        init = np.round(total / n).astype(np.uint16)
        if checkpoint is not None:
            checkpoint(epoch + 1, init)
    bar.close()
    return init
