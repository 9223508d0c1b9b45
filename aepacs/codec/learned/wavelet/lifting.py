"""Integer-to-integer lifting wavelet: the wavelet codec's analysis and synthesis.

A lifting step adds to one polyphase half a rounded, fixed-point filter of the
other half, so each step -- and the whole transform -- is undone exactly by
subtracting the same integer (after Calderbank et al. 1998; the learned
lifting of iWave, Ma et al. 2020, keeps the same structure). Quantizing the
coefficients gives the lossy codec; not quantizing them gives the lossless
one, with no residual to code.

Every step is symmetric: predict steps ``d[i] += R(sum_j t_j (s[i-j] + s[i+1+j]))``,
update steps ``s[i] += R(sum_j t_j (d[i-1-j] + d[i+j]))``, with ``R(v) =
(v + 2^(P-1)) >> P`` and whole-sample symmetric extension at the edges. Steps
alternate predict, update, predict, ...; with the four one-tap steps of
:data:`CDF97` this is the CDF 9/7 wavelet of JPEG 2000 without its final
scaling. Taps are integers with :data:`P` fraction bits, so the transform is
integer arithmetic throughout and gives the same coefficients on every
machine.

2-D: ``levels`` dyadic levels in Mallat layout (rows, then columns, each level
on the top-left low band). Both sides must be multiples of ``2**levels``.
"""

from __future__ import annotations

import numpy as np
from numba import njit

P = 14  #: fraction bits of the lifting taps

#: CDF 9/7 lifting constants (alpha, beta, gamma, delta), one tap per step.
CDF97 = np.array([[round(c * (1 << P))] for c in
                  (-1.586134342059924, -0.052980118572961, 0.882911075530934, 0.443506852043971)],
                 dtype=np.int64)

__all__ = ["CDF97", "P", "band_norms", "forward", "inverse"]


@njit(cache=True, inline="always")
def _reflect_s(i: int, h: int) -> int:
    """Index `i` of the even half (length `h`) under whole-sample symmetric extension."""
    if i < 0:
        i = -i
    if i >= h:
        i = 2 * h - 1 - i
    return min(max(i, 0), h - 1)


@njit(cache=True, inline="always")
def _reflect_d(i: int, h: int) -> int:
    """Index `i` of the odd half (length `h`) under whole-sample symmetric extension."""
    if i < 0:
        i = -i - 1
    if i >= h:
        i = 2 * h - 2 - i
    return min(max(i, 0), h - 1)


@njit(cache=True, nogil=True)
def _steps(s: np.ndarray, d: np.ndarray, h: int, taps: np.ndarray, sign: int, order: np.ndarray) -> None:
    half = 1 << (P - 1)
    ntap = taps.shape[1]
    for k in order:
        t = taps[k]
        if k % 2 == 0:  # predict: d from s
            for i in range(h):
                acc = 0
                if i - ntap + 1 >= 0 and i + ntap < h:
                    for j in range(ntap):
                        acc += t[j] * (s[i - j] + s[i + 1 + j])
                else:
                    for j in range(ntap):
                        acc += t[j] * (s[_reflect_s(i - j, h)] + s[_reflect_s(i + 1 + j, h)])
                d[i] += sign * ((acc + half) >> P)
        else:  # update: s from d
            for i in range(h):
                acc = 0
                if i - ntap >= 0 and i + ntap - 1 < h:
                    for j in range(ntap):
                        acc += t[j] * (d[i - 1 - j] + d[i + j])
                else:
                    for j in range(ntap):
                        acc += t[j] * (d[_reflect_d(i - 1 - j, h)] + d[_reflect_d(i + j, h)])
                s[i] += sign * ((acc + half) >> P)


@njit(cache=True, nogil=True)
def _forward_1d(line: np.ndarray, n: int, buf: np.ndarray, taps: np.ndarray) -> None:
    h = n // 2
    s = buf[:h]
    d = buf[h:n]
    for i in range(h):
        s[i] = line[2 * i]
        d[i] = line[2 * i + 1]
    _steps(s, d, h, taps, 1, np.arange(taps.shape[0]))
    line[:n] = buf[:n]


@njit(cache=True, nogil=True)
def _inverse_1d(line: np.ndarray, n: int, buf: np.ndarray, taps: np.ndarray) -> None:
    h = n // 2
    buf[:n] = line[:n]
    s = buf[:h]
    d = buf[h:n]
    _steps(s, d, h, taps, -1, np.arange(taps.shape[0] - 1, -1, -1))
    for i in range(h):
        line[2 * i] = s[i]
        line[2 * i + 1] = d[i]


@njit(cache=True, nogil=True)
def _steps_rows(s: np.ndarray, d: np.ndarray, h: int, w: int, taps: np.ndarray, sign: int,
                order: np.ndarray) -> None:
    """:func:`_steps` on whole rows: row ``i`` of `s`/`d` is sample ``i`` of `w` columns at once."""
    half = 1 << (P - 1)
    ntap = taps.shape[1]
    acc = np.empty(w, np.int64)
    for k in order:
        t = taps[k]
        predict = k % 2 == 0
        for i in range(h):
            acc[:] = 0
            for j in range(ntap):
                if predict:  # d from s
                    a, b = _reflect_s(i - j, h), _reflect_s(i + 1 + j, h)
                    for x in range(w):
                        acc[x] += t[j] * (s[a, x] + s[b, x])
                else:  # s from d
                    a, b = _reflect_d(i - 1 - j, h), _reflect_d(i + j, h)
                    for x in range(w):
                        acc[x] += t[j] * (d[a, x] + d[b, x])
            out = d if predict else s
            for x in range(w):
                out[i, x] += sign * ((acc[x] + half) >> P)


@njit(cache=True, nogil=True)
def forward(img: np.ndarray, levels: int, taps: np.ndarray) -> None:
    """Transform `img` (2-D int64, C order) in place into `levels` levels of subbands."""
    rows, cols = img.shape
    buf = np.empty(max(rows, cols), np.int64)
    block = np.empty((rows, cols), np.int64)
    for lv in range(levels):
        h, w = rows >> lv, cols >> lv
        for y in range(h):
            _forward_1d(img[y], w, buf, taps)
        h2 = h // 2  # columns: even rows to the top half, odd to the bottom, lifted row-wise
        for i in range(h2):
            block[i, :w] = img[2 * i, :w]
            block[h2 + i, :w] = img[2 * i + 1, :w]
        _steps_rows(block[:h2], block[h2:h], h2, w, taps, 1, np.arange(taps.shape[0]))
        img[:h, :w] = block[:h, :w]


@njit(cache=True, nogil=True)
def inverse(img: np.ndarray, levels: int, taps: np.ndarray) -> None:
    """Undo :func:`forward` in place, exactly."""
    rows, cols = img.shape
    buf = np.empty(max(rows, cols), np.int64)
    block = np.empty((rows, cols), np.int64)
    for lv in range(levels - 1, -1, -1):
        h, w = rows >> lv, cols >> lv
        h2 = h // 2
        block[:h, :w] = img[:h, :w]
        _steps_rows(block[:h2], block[h2:h], h2, w, taps, -1, np.arange(taps.shape[0] - 1, -1, -1))
        for i in range(h2):
            img[2 * i, :w] = block[i, :w]
            img[2 * i + 1, :w] = block[h2 + i, :w]
        for y in range(h):
            _inverse_1d(img[y], w, buf, taps)


def _synthesis_norm(taps: np.ndarray, levels: int, pos: int, size: int) -> float:
    """L2 norm of the 1-D synthesis basis of coefficient `pos` in a `levels`-level line of `size`."""
    amp = 1 << 20
    line, buf = np.zeros(size, np.int64), np.empty(size, np.int64)
    line[pos] = amp
    for lv in range(levels - 1, -1, -1):
        _inverse_1d(line, size >> lv, buf, taps)
    return float(np.sqrt((line.astype(np.float64) ** 2).sum())) / amp


def band_norms(taps: np.ndarray, levels: int, size: int = 512) -> np.ndarray:
    """L2 norm of each subband's synthesis basis function, ``(levels + 1, 3)``.

    Row 0 holds the low band (in column 0); row ``l`` the HL, LH, HH bands of
    level ``l``. The 2-D transform is separable, so each norm is the product
    of two 1-D norms, measured by synthesising a large impulse in the middle
    of a band of a `size`-sample line. Quantization steps divided by these
    norms spread the error evenly.
    """
    out = np.zeros((levels + 1, 3))
    for lv in range(1, levels + 1):
        h = size >> lv
        low = _synthesis_norm(taps, lv, h // 2, size)
        high = _synthesis_norm(taps, lv, h + h // 2, size)
        out[lv] = (high * low, low * high, high * high)
    low = _synthesis_norm(taps, levels, (size >> levels) // 2, size)
    out[0, 0] = low * low
    return out
