"""Rate-distortion optimised quantization of wavelet subbands (encoder side only).

The dead-zone quantizer of :mod:`.subband` picks each index from the
coefficient alone. This pass revisits every detail-band index in the
entropy coder's own order, with the coder's adaptive probabilities exactly
as they will be when that coefficient is coded, and keeps whichever of
``0, f - 1, f, f + 1`` (``f = floor(|c| / step)``) costs least in

    J = (|c| - rebuilt(k))**2 / step**2  +  lambda * bits(k)

-- squared error in steps (the steps are equal-slope, so one lambda serves
every band) plus the code length under the current probabilities. The
chosen index then updates the probabilities and the neighbourhood that picks
later contexts, as coding it will. The decoder is untouched: it reads
indices, however they were chosen.

Integers only (costs from a table of ``-log2`` computed once), so an
encoder gives the same stream on every machine.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from aepacs.codec.learned.wavelet.subband import (
    G0,
    M0,
    NB,
    NU,
    ONE,
    S0,
    U0,
    Z0,
    _adapt,
    _bitlen,
    _bucket,
    _geometry,
    _ll_act,
    _ll_pred,
    _pmag,
    _psign,
    _state,
)

__all__ = ["optimise"]


def _costs() -> np.ndarray:
    # -log2(p / 2**15) in 1/256 bit for p = 0..2**15 (p = 0 costs as p = 1): computed in float once,
    # then only looked up
    t = np.zeros(ONE + 1, np.int64)
    for p in range(1, ONE + 1):
        t[p] = round(-256 * math.log2(p / ONE))
    t[0] = t[1]
    return t


COST = _costs()


@njit(cache=True, inline="always")
def _bit(p, i, bit):
    p0 = (p[2 * i] + p[2 * i + 1]) >> 1  # P(0), as the coder uses it
    return COST[p0] if bit == 0 else COST[ONE - p0]


@njit(cache=True, inline="always")
def _step(p, i, bit, learn):
    # one decision's code length; with `learn`, its probability moves as coding it moves it
    cost = _bit(p, i, bit)
    if learn:
        _adapt(p, i, bit)
    return cost


@njit(cache=True, inline="always")
def _tail(p, r, base, m, learn):
    # the bit length of r = |v| - 2 in unary, its top bit and the raw bits, as subband._put codes them
    n = _bitlen(r)
    cost = 0
    for k in range(n + 1):
        cost += _step(p, base + min(k, NU - 1), 1 if n > k else 0, learn)
    if n >= 2:
        cost += _step(p, m + min(n, 23), (r >> (n - 2)) & 1, learn) + 256 * (n - 2)
    return cost


@njit(cache=True)
def _value(p, v, cls, bk, sc, learn):
    """The code length of `v` (1/256 bit) in its context, as ``subband._put`` binarises it; with
    `learn`, the probabilities also move as coding `v` moves them."""
    a = abs(v)
    cost = _step(p, Z0 + cls * NB + bk, 1 if a > 0 else 0, learn)
    if a == 0:
        return cost
    cost += _step(p, S0 + cls * 9 + sc, 1 if v < 0 else 0, learn)
    cost += _step(p, G0 + cls * NB + bk, 1 if a > 1 else 0, learn)
    if a == 1:
        return cost
    return cost + _tail(p, a - 2, U0 + (cls * NB + bk) * NU, M0 + cls * 24, learn)


@njit(cache=True, inline="always")
def _rebuilt(k, s, bias):
    # subband._dequantize of index k >= 0 at step s (1/256)
    return 0 if k == 0 else (k * s + ((s * bias) >> 8) + 128) >> 8


@njit(cache=True, nogil=True)
def _optimise(c, q, levels, steps, bias, lam, p):
    planes, rows, cols = q.shape
    hl, wl = rows >> levels, cols >> levels
    for ch in range(planes):
        qc = q[ch]
        cc = c[ch]
        for y in range(hl):  # the low band is kept; its decisions still move the probabilities
            for x in range(wl):
                _value(p, qc[y, x] - _ll_pred(qc, y, x), 0, _bucket(_ll_act(qc, y, x)), 0, True)
        for lv in range(levels, 0, -1):
            for o in range(3):
                h, w, y0, x0, py0, px0, hp, nsib, s1y, s1x, s2y, s2x, cls = _geometry(rows, cols, levels, lv, o)
                s = steps[ch, 3 * lv + o]
                B = np.zeros((h + 2, w + 3), np.int64)
                for y in range(h):
                    for x in range(w):
                        bk = _bucket(_pmag(B, qc, y, x, py0, px0, hp, s1y, s1x, s2y, s2x, nsib))
                        sc = _psign(B, y, x)
                        cv = cc[y0 + y, x0 + x]
                        ac = abs(cv)
                        f = (ac * 256) // s
                        # the decisions every candidate shares: zero?, then sign and one?
                        iz = Z0 + cls * NB + bk
                        ig = G0 + cls * NB + bk
                        nonzero = _bit(p, iz, 1) + _bit(p, S0 + cls * 9 + sc, 1 if cv < 0 else 0)
                        best = 0
                        bestj = -1
                        for k in (0, f - 1, f, f + 1):
                            if k < 0 or (k == 0 and bestj >= 0):
                                continue
                            e = ac - _rebuilt(k, s, bias)
                            en = (abs(e) << 16) // s  # the error in 1/256 of a step
                            j = en * en
                            if bestj >= 0 and j >= bestj:  # the rate only adds
                                continue
                            if k == 0:
                                j += lam * _bit(p, iz, 0)
                            elif k == 1:
                                j += lam * (nonzero + _bit(p, ig, 0))
                            else:
                                j += lam * (nonzero + _bit(p, ig, 1)
                                            + _tail(p, k - 2, U0 + (cls * NB + bk) * NU, M0 + cls * 24, False))
                            if bestj < 0 or j < bestj:
                                bestj = j
                                best = -k if cv < 0 else k
                        qc[y0 + y, x0 + x] = best
                        B[y + 2, x + 2] = best
                        _value(p, best, cls, bk, sc, True)


def optimise(c: np.ndarray, q: np.ndarray, levels: int, steps: np.ndarray, bias: int, lam: int,
             init: np.ndarray) -> np.ndarray:
    """Rate-distortion optimised indices for coefficients `c` ``(planes, H, W)``.

    Parameters
    ----------
    c : numpy.ndarray
        The unquantized subband planes (Mallat layout, int64).
    q : numpy.ndarray
        Their dead-zone indices (:func:`.subband.quantize`); the low band is kept.
    levels : int
        Decomposition levels.
    steps : numpy.ndarray
        Per plane, per band steps ``(planes, levels + 1, 3)`` in 1/256.
    bias : int
        The decoder's reconstruction bias (1/256 of a step).
    lam : int
        Lagrange multiplier, in 1/65536 step**2 per 1/256 bit (``lam / 256`` step**2 per bit).
    init : numpy.ndarray
        The entropy model's starting probabilities (the coder's `init`).

    Returns
    -------
    numpy.ndarray
        New indices, same shape; :func:`.subband.encode` codes them as any others.
    """
    out = np.array(q, dtype=np.int64, order="C")
    flat = np.ascontiguousarray(steps, dtype=np.int64).reshape(len(steps), -1)
    _optimise(np.ascontiguousarray(c, dtype=np.int64), out, levels, flat, bias, lam, _state(init))
    return out
