# A numba kernel file: the predictor, the context mixer and the range coder compile as one unit.
"""Lossless coding of one integer plane: adaptive prediction and a gated mixing network.

Per pixel, in raster order, from what the decoder already has:

1. **prediction** (in 1/16 of a grey level): six classical predictors (N, W,
   the gradient ``N + W - NW``, ``W + NE - N``, ``(N + NE) / 2``, a gradient-
   corrected N) are blended by the inverse of their recent error around the
   pixel (as JPEG-XL's weighted predictor); a normalised-LMS filter over the
   24 causal neighbours within 3 pixels corrects the blend, its weights
   adapted after every pixel (starting from the trained ones) and applied only
   while its recent error is at most 1/8 above the blend's own (on images where
   it does not help -- ultrasound graphics, the edge of a CT field of view --
   it steps aside). (A per-context
   bias cancellation as in JPEG-LS, tried on top, cost 0.1-4 % on held-out
   images once the LMS filter was there, and was removed.) A chroma plane also has a seventh
   predictor: the value it last had where the plane coded before it had the
   value it has here (a colour map is a curve in RGB), taken as it is where it
   was exact all around the pixel.
2. **binarisation** of the residual: zero?, sign, the bit length of
   ``|v| - 1`` in unary, the top four bits below the leading one; lower bits
   are sent raw.
3. **probability of each binary decision**: six context models (activity,
   the best predictor's error and the signs of the LMS correction and the last residual,
   local texture, the neighbours' residual sizes and flatness, the predicted
   level, the signed residuals of W, N and NE) each hold an adaptive
   probability (its rate falling from 1/2 to 1/128 with use, the contexts
   laid out so that one pixel's decisions share cache lines); a small network
   mixes them in the
   logistic domain (one weight vector per decision node, activity and
   flatness class: a gated linear network, trained online by gradient descent
   on code length, from the trained weights), and an adaptive probability map
   refines the mix.
4. a 32-bit binary range coder (LZMA's) codes the decision at that probability.

Everything is integer arithmetic, so the decoder's probabilities equal the
encoder's on every machine. The trained state (:func:`initial_state`) is the
starting point of every plane; :func:`final_state` gives what a plane leaves,
which training averages over the training images.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from aepacs.codec.learned.rangecoder import M32, TOP, carry

NU = 20  #: unary nodes of the bit length
NT = 15  #: mantissa-tree nodes per bit length (top four bits)
NNODE = 2 + NU + NU * NT  #: binary decision nodes
NWN = 2 + NU + NU  #: mixer weight nodes (mantissa trees share one per bit length)
NB = 40  #: activity buckets
NCB = 12  #: coarse activity classes
NIN = 7  #: mixer inputs: six models and a bias
NSEL = NWN * NCB * 3  #: mixer weight sets and probability-map rows
S0 = NNODE * NB
S1 = NNODE * NB * 4
S2 = NNODE * NCB * 16
S3 = NNODE * 8 * 8 * 3
S4 = NNODE * NCB * 16
S5 = NNODE * 7 * 7 * 7
NS = S0 + S1 + S2 + S3 + S4 + S5  #: adaptive probabilities
NP = 7  #: blended predictors (the seventh only for chroma planes)
R3 = 3  #: radius of the LMS filter
NTAP = 24  #: its causal taps
MU = 262  #: LMS step, 0.004 in 1/65536
LR = 2  #: mixer learning rate, in 1/4
LIMIT = 126  #: after this many updates a probability adapts at 1/128
PAD = 4
#: parts :func:`encode` can switch off for an ablation (never in a stored stream)
NO_LMS, NO_MIXER = 1, 2
#: room per pixel: 16-bit residuals take at most 23 adaptive decisions (zero, sign, 17 unary, 4
#: mantissa) of at most 2 bytes each (a probability is at least 1/65536 of a range of at least
#: 2**24) and 14 raw bits
MAX_BYTES_PER_PIXEL = 64

__all__ = ["NS", "NSEL", "NTAP", "decode", "encode", "final_state", "initial_state"]


def _tables() -> tuple[np.ndarray, np.ndarray]:
    # stretch(p) = ln(p / (1 - p)) of a 12-bit p, in 1/256, and its inverse: computed once in
    # float here, then only looked up -- the tables are the same integers on every machine that
    # rounds IEEE doubles correctly (the known-answer stream test would see a difference)
    st = np.zeros(4096, np.int64)
    for p in range(4096):
        q = (p + 0.5) / 4096
        st[p] = max(-2047, min(2047, round(256 * math.log(q / (1 - q)))))
    sq = np.zeros(4096, np.int64)
    for x in range(-2048, 2048):
        sq[x + 2048] = max(1, min(4095, int(4096 / (1 + math.exp(-x / 256)))))
    return st, sq


ST, SQ = _tables()
#: 65536 / (n + 2): a probability's adaptation rate after n updates
RECIP24 = np.array([0] + [(1 << 24) // e for e in range(1, 4096)], np.int64)
RECIP = np.array([65536 // (n + 2) for n in range(256)], np.int64)


def initial_state() -> dict[str, np.ndarray]:
    """The untrained starting state: even odds, equal mixer weights, a zero LMS filter."""
    apm = np.empty((NSEL, 34), np.int64)
    for j in range(34):
        apm[:, j] = SQ[min(max(j * 128 - 2048, -2047), 2047) + 2048] * 16
    wts = np.full((NSEL, NIN), (1 << 16) // 5, np.int64)
    wts[:, NIN - 1] = 0
    return {"slots": np.full(NS, 32768, np.int64), "counts": np.zeros(NS, np.int64), "mixer": wts,
            "apm": apm, "lms": np.zeros(NTAP, np.int64)}


@njit(cache=True, inline="always")
def _bucket(a):
    if a <= 0:
        return 0
    n = 0
    v = a
    while v > 1:
        v >>= 1
        n += 1
    sb = (a >> (n - 1)) & 1 if n > 0 else 0
    b = 1 + 2 * n + sb
    return b if b < NB else NB - 1


@njit(cache=True, inline="always")
def _sq3(r):
    a = abs(r)
    q = 0 if a == 0 else (1 if a <= 2 else (2 if a <= 8 else 3))
    return 3 + q if r > 0 else 3 - q


@njit(cache=True, inline="always")
def _squash(x):
    if x > 2047:
        x = 2047
    if x < -2047:
        x = -2047
    return SQ[x + 2048]


@njit(cache=True, inline="always")
def _shift_low(rc, out):
    # emit the top byte of `low`; its carry goes into the byte before (resolved by carry())
    low = rc[0]
    pos = rc[2]
    out[pos - 1] += low >> 32
    out[pos] = (low >> 24) & 0xFF
    rc[0] = (low & 0x00FFFFFF) << 8
    rc[2] = pos + 1


@njit(cache=True, inline="always")
def _code(rc, buf, enc, bound, bit):
    # one binary decision with P(0) = bound / range; rc = [low or code, range, pos]
    if enc:
        if bit == 0:
            rc[1] = bound
        else:
            rc[0] += bound
            rc[1] -= bound
        while rc[1] < TOP:
            rc[1] = (rc[1] << 8) & M32
            _shift_low(rc, buf)
        return bit
    if rc[0] < bound:
        rc[1] = bound
        bit = 0
    else:
        rc[0] -= bound
        rc[1] -= bound
        bit = 1
    while rc[1] < TOP:
        rc[1] = (rc[1] << 8) & M32
        pos = rc[2]
        b = buf[pos] if pos < buf.shape[0] else 0
        rc[0] = ((rc[0] << 8) | b) & M32
        rc[2] = pos + 1
    return bit


@njit(cache=True, inline="always")
def _mixed(rc, buf, enc, bit, sc, base, node, wts, apm, sel, xin, ablate):
    """Code one decision under the mixed probability of the six models at `base` + `node`; update."""
    dot = 0
    for m in range(NIN - 1):
        xin[m] = ST[sc[2 * (base[m] + node)] >> 4]
    xin[NIN - 1] = 256
    for m in range(NIN):
        dot += wts[sel, m] * xin[m]
    pm = _squash(dot >> 16)
    s = ST[pm] + 2048
    lo = s >> 7
    w = s & 127
    a0 = apm[sel, lo]
    a1 = apm[sel, lo + 1]
    p = (pm * 16 + ((a0 * (128 - w) + a1 * w) >> 7)) >> 1  # P(1), 16 bits
    if ablate & NO_MIXER:  # the activity model's probability alone
        p = sc[2 * (base[0] + node)]
    if p < 1:
        p = 1
    if p > 65535:
        p = 65535
    bit = _code(rc, buf, enc, (rc[1] >> 16) * (65536 - p), bit)
    err = (((bit << 12) - pm) * LR) >> 2
    for m in range(NIN):
        wts[sel, m] += (xin[m] * err) >> 10
    tgt = bit << 16
    if w < 64:
        apm[sel, lo] += (tgt - a0) >> 6
    else:
        apm[sel, lo + 1] += (tgt - a1) >> 6
    for m in range(NIN - 1):
        i = 2 * (base[m] + node)
        n = sc[i + 1]
        if n < LIMIT:
            sc[i] += (((bit << 16) - sc[i]) * RECIP[n]) >> 16
        else:
            sc[i] += ((bit << 16) - sc[i]) >> 7
        if n < 255:
            sc[i + 1] = n + 1
    return bit


@njit(cache=True, nogil=True)
def _run(img, side, vmax, buf, enc, slots, cnt, wts, apm, lw, ablate):
    sc = np.empty(2 * NS, np.int32)
    for i in range(NS):
        sc[2 * i] = slots[i]
        sc[2 * i + 1] = cnt[i]
    base = np.zeros(NIN - 1, np.int64)
    ea0 = 0  # recent |error| without and with the LMS correction (1/16, x16)
    ea1 = 0
    """Code plane `img` (values 0..vmax) into `buf` (enc) or decode it from `buf` into `img`."""
    H, W = img.shape
    x = np.zeros((H + PAD, W + 2 * PAD), np.int64)
    err = np.zeros((NP, H + PAD, W + 2 * PAD), np.int64)
    E = np.zeros((H + PAD, W + 2 * PAD), np.int64)
    R = np.zeros((H + PAD, W + 2 * PAD), np.int64)
    preds = np.zeros(NP, np.int64)
    npred = NP if side.shape[0] > 1 else NP - 1
    # chroma: the value this plane last had where the plane before it had the same value (a colour
    # map is a curve in RGB, so one channel's value names the others'); -1: not seen yet
    seen = np.full(1 << 17 if side.shape[0] > 1 else 1, -1, np.int64)
    xin = np.zeros(NIN, np.int64)
    u = np.zeros(NTAP, np.int64)
    oy = np.zeros(NTAP, np.int64)
    ox = np.zeros(NTAP, np.int64)
    t = 0
    for dy in range(-R3, 1):
        for dx in range(-R3, R3 + 1):
            if dy < 0 or dx < 0:
                oy[t] = dy
                ox[t] = dx
                t += 1
    rc = np.zeros(3, np.int64)
    if enc:
        rc[1] = M32
        buf[0] = 0  # the byte a carry out of the first `low` lands in
        rc[2] = 1
    else:
        rc[1] = M32
        for _ in range(5):
            b = buf[rc[2]] if rc[2] < buf.shape[0] else 0
            rc[0] = ((rc[0] << 8) | b) & M32
            rc[2] += 1
    vr = vmax + 1
    for y in range(PAD, H + PAD):
        if enc and rc[2] + MAX_BYTES_PER_PIXEL * (W + 4) > buf.shape[0]:
            return -1  # no room: the caller retries with a larger buffer
        if y > PAD:  # the pads of this row: the row above's first and last values (causal)
            for q in range(PAD):
                x[y, q] = x[y - 1, PAD]
                x[y, W + PAD + q] = x[y - 1, W + PAD - 1]
        for xx in range(PAD, W + PAD):
            N = x[y - 1, xx]
            Wv = x[y, xx - 1]
            NW = x[y - 1, xx - 1]
            NE = x[y - 1, xx + 1]
            NN = x[y - 2, xx]
            WW = x[y, xx - 2]
            if y == PAD:
                if xx == PAD:
                    Wv = 0
                N = Wv
                NW = Wv
                NE = Wv
                NN = Wv
            if xx == PAD and y > PAD:
                Wv = N
                WW = N
                NW = N
            if xx == PAD + 1:
                WW = Wv
            if y == PAD + 1:
                NN = N
            if xx == W + PAD - 1 and y > PAD:
                NE = N
            preds[0] = 16 * N
            preds[1] = 16 * Wv
            preds[2] = 16 * (N + Wv - NW)
            preds[3] = 16 * (Wv + NE - N)
            preds[4] = 8 * (N + NE)
            preds[5] = 16 * N + 4 * (NE - NW) + 4 * (Wv - NW)
            if npred == NP:
                sk = side[y - PAD, xx - PAD] + (1 << 16)
                preds[6] = 16 * seen[sk] if seen[sk] >= 0 else preds[0]
            sw = 0
            sp = 0
            e6 = 0
            beste = 1 << 60
            for i in range(npred):
                e = (err[i, y - 1, xx] + err[i, y, xx - 1] + err[i, y - 1, xx - 1] + err[i, y - 1, xx + 1]
                     + ((err[i, y - 2, xx] + err[i, y, xx - 2]) >> 1) + 1)
                if e < beste:
                    beste = e
                if i == 6:
                    e6 = e
                wi = RECIP24[e] if e < 4096 else (1 << 24) // e
                sw += wi
                sp += wi * preds[i]
            p16 = (sp + (sw >> 1)) // sw if sw > 0 else preds[0]
            # a chroma value the colour map has named exactly around this pixel is taken as it is
            exact = npred == NP and e6 == 1
            if exact:
                p16 = preds[6]
            act = (E[y - 1, xx] * 2 + E[y, xx - 1] * 2 + E[y - 1, xx - 1] + E[y - 1, xx + 1]
                   + (E[y - 2, xx] >> 1) + (E[y, xx - 2] >> 1))
            isflat = (Wv == N and N == NW and N == NE and N == NN and N == WW) or exact
            # the LMS correction of the blend, clipped to what the neighbourhood makes plausible
            nrm = 256
            c = 0
            for k in range(NTAP):
                u[k] = 16 * x[y + oy[k], xx + ox[k]] - p16
                nrm += u[k] * u[k]
                c += lw[k] * u[k]
            c >>= 16
            lim = 16 + 8 * (abs(N - Wv) + abs(N - NW) + abs(N - NE) + abs(Wv - NW)) + (act >> 2)
            if c > lim:
                c = lim
            if c < -lim:
                c = -lim
            if isflat or ablate & NO_LMS:
                c = 0
            p0 = p16
            p16 += c if ea1 <= ea0 + (ea0 >> 3) else 0
            plms = p0 + c
            bk = _bucket(act >> 2)
            tb = ((1 if 16 * Wv > p16 else 0) + 2 * (1 if p16 < 16 * N else 0) + 4 * (1 if p16 < 16 * NE else 0)
                  + 8 * (1 if p16 < 16 * NW else 0))
            pred = (p16 + 8) >> 4
            if pred < 0:
                pred = 0
            if pred > vmax:
                pred = vmax
            cb = min(bk >> 2, NCB - 1)
            bb = _bucket(beste >> 2) >> 1
            sgn = (1 if c > 0 else 0) + 2 * (1 if R[y, xx - 1] > 0 else 0)
            qw = min(_bucket(abs(R[y, xx - 1])) >> 1, 7)
            qn = min(_bucket(abs(R[y - 1, xx])) >> 1, 7)
            flat = 0 if isflat else (1 if abs(N - Wv) + abs(NE - NW) < 4 else 2)
            if side.shape[0] > 1:  # a chroma plane: the plane coded before it, at this pixel
                sv = side[y - PAD, xx - PAD]
                lvl = 2 * _sq3(sv - (side[y - PAD, xx - PAD - 1] if xx > PAD else 0)) + (1 if sv != 0 else 0)
            else:
                lvl = ((pred * 16) // vr) if vr > 0 else 0
            base[0] = bk * NNODE
            base[1] = S0 + (bb * 4 + sgn) * NNODE
            base[2] = S0 + S1 + (cb * 16 + tb) * NNODE
            base[3] = S0 + S1 + S2 + ((qw * 8 + qn) * 3 + flat) * NNODE
            base[4] = S0 + S1 + S2 + S3 + (cb * 16 + lvl) * NNODE
            msel = (cb * 3 + flat) * NWN
            base[5] = S0 + S1 + S2 + S3 + S4 + ((_sq3(R[y, xx - 1]) * 7 + _sq3(R[y - 1, xx])) * 7
                                                + _sq3(R[y - 1, xx + 1])) * NNODE
            if enc:
                v = img[y - PAD, xx - PAD] - pred
                a = abs(v)
                r = a - 1
            else:
                v = 0
                a = 0
                r = 0
            # zero?
            node = 0
            for step in range(3 + NU + 4):
                if step == 0:
                    node = 0
                    bit = 1 if a > 0 else 0
                elif step == 1:
                    node = 1
                    bit = 1 if v < 0 else 0
                else:
                    break
                sel = msel + node
                bit = _mixed(rc, buf, enc, bit, sc, base, node, wts, apm, sel, xin, ablate)
                if step == 0:
                    if bit == 0:
                        break
                    if not enc:
                        a = 1
                elif step == 1 and not enc:
                    v = -1 if bit else 1
            if a > 0:
                # the bit length of |v| - 1, in unary
                if enc:
                    nlen = 0
                    tt = r
                    while tt > 0:
                        tt >>= 1
                        nlen += 1
                else:
                    nlen = 0
                i = 0
                while True:
                    node = 2 + min(i, NU - 1)
                    bit = 1 if (enc and nlen > i) else 0
                    sel = msel + node
                    bit = _mixed(rc, buf, enc, bit, sc, base, node, wts, apm, sel, xin, ablate)
                    if bit == 0 or i >= 40:
                        break
                    i += 1
                if not enc:
                    nlen = i
                    r = (1 << (nlen - 1)) if nlen >= 1 else 0
                if nlen >= 2:
                    nm = min(nlen - 1, 4)
                    pref = 1
                    wn = 2 + NU + min(nlen, NU - 1)
                    for k in range(nm):
                        sh = nlen - 2 - k
                        bit = (r >> sh) & 1 if enc else 0
                        node = 2 + NU + min(nlen, NU - 1) * NT + pref - 1
                        sel = msel + wn
                        bit = _mixed(rc, buf, enc, bit, sc, base, node, wts, apm, sel, xin, ablate)
                        pref = 2 * pref + bit
                        if not enc:
                            r |= bit << sh
                    for k in range(nlen - 2 - nm, -1, -1):
                        bit = (r >> k) & 1 if enc else 0
                        bit = _code(rc, buf, enc, rc[1] >> 1, bit)
                        if not enc:
                            r |= bit << k
                if not enc:
                    a = r + 1
                    v = -a if v < 0 else a
            val = pred + v
            if not enc:
                if val < 0 or val > vmax:
                    return -2  # not a stream of this coder
                img[y - PAD, xx - PAD] = val
            x[y, xx] = val
            # updates: the LMS filter, the predictors' errors
            ea0 += (abs(16 * val - p0) * 16 - ea0) >> 5
            ea1 += (abs(16 * val - plms) * 16 - ea1) >> 5
            g = (MU * (16 * val - plms)) << 16
            g = g // nrm if g >= 0 else -((-g) // nrm)  # rounded to zero and to nearest: a floor
            for k in range(NTAP):  # would drift every weight by half a unit per pixel
                lw[k] += (g * u[k] + 32768) >> 16
            if npred == NP:
                seen[sk] = val
            for i in range(npred):
                err[i, y, xx] = abs(preds[i] - 16 * val)
            E[y, xx] = abs(16 * val - p16)
            R[y, xx] = v
    for i in range(NS):
        slots[i] = sc[2 * i]
        cnt[i] = sc[2 * i + 1]
    if enc:
        for _ in range(5):
            _shift_low(rc, buf)
    return rc[2]


def _copy(state: dict[str, np.ndarray]) -> tuple[np.ndarray, ...]:
    return tuple(np.array(state[k], dtype=np.int64, order="C") for k in ("slots", "counts", "mixer", "apm", "lms"))


def _state_dict(arrays: tuple[np.ndarray, ...]) -> dict[str, np.ndarray]:
    return dict(zip(("slots", "counts", "mixer", "apm", "lms"), arrays, strict=True))


_NO_SIDE = np.zeros((1, 1), np.int64)


def _side(side: np.ndarray | None) -> np.ndarray:
    return _NO_SIDE if side is None else np.ascontiguousarray(side, dtype=np.int64)


def _encode(plane: np.ndarray, vmax: int, state: dict[str, np.ndarray], ablate: int = 0,
            side: np.ndarray | None = None) -> tuple[bytes, tuple[np.ndarray, ...]]:
    img = np.ascontiguousarray(plane, dtype=np.int64)
    size = 2 * img.size + MAX_BYTES_PER_PIXEL * (img.shape[1] + 4) + 1024
    while True:
        arrays = _copy(state)
        buf = np.zeros(size, np.int64)
        n = _run(img, _side(side), vmax, buf, True, *arrays, ablate)  # type: ignore[call-arg]
        if n >= 0:
            carry(buf, n)
            return buf[:n].astype(np.uint8).tobytes(), arrays
        size *= 2


def encode(plane: np.ndarray, vmax: int, state: dict[str, np.ndarray], ablate: int = 0,
           side: np.ndarray | None = None) -> bytes:
    """Code a 2-D plane of integers ``0..vmax`` starting from model `state`.

    `side`, for a chroma plane: the plane coded before it (same shape), whose
    values at each pixel are a context (the decoder has it already).

    `ablate` (``NO_LMS | NO_MIXER``) switches parts off, for measuring
    what each is worth; such a stream decodes only with the same `ablate`, so
    the codec never writes one.
    """
    return _encode(plane, vmax, state, ablate, side)[0]


def final_state(plane: np.ndarray, vmax: int, state: dict[str, np.ndarray], side: np.ndarray | None = None
                ) -> dict[str, np.ndarray]:
    """The model state after coding `plane` from `state`: what training averages."""
    return _state_dict(_encode(plane, vmax, state, 0, side)[1])


def decode(data: bytes, rows: int, cols: int, vmax: int, state: dict[str, np.ndarray],
           side: np.ndarray | None = None) -> np.ndarray:
    """Undo :func:`encode`; raises ``ValueError`` unless `data` is exactly one such stream."""
    buf = np.frombuffer(data, np.uint8).astype(np.int64)
    img = np.zeros((rows, cols), np.int64)
    used = _run(img, _side(side), vmax, buf, False, *_copy(state), 0)  # type: ignore[call-arg]
    if used == -2 or used - 5 > len(buf) or used < len(buf) - 5:
        raise ValueError("mixing stream is corrupt, truncated or has trailing bytes")
    return img
