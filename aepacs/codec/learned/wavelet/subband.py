# A numba kernel file (over 400 lines): the range coder and its context model compile as one unit.
"""Context-adaptive binary range coding of wavelet subbands: the wavelet codec's entropy model.

Each coefficient is binarised -- zero?, sign, one?, the bit length of
``|v| - 2`` in unary, its top bit, the remaining bits -- and every binary
decision but the last bits is coded with an adaptive probability chosen by
its context:

* the coefficient's class: the low band, or level 1, 2, >=3 x (HL/LH, HH);
* a half-octave bucket of a weighted magnitude of what the decoder already
  has: the causal neighbours in the band (W, N, NW, NE, WW, NN), the parent
  in the next coarser band of the same orientation, and the co-located
  coefficients of the bands already coded at the same level;
* for the sign, the signs of the W and N neighbours.

The low band is coded as the residual of the median edge predictor (as
JPEG-LS). Probabilities are 15-bit, each the mean of a fast and a slow
estimate (shift 4 and 7), updated after every decision; their starting values
are the model's learned table (:func:`learn_init`), so the entropy model is
what the model was trained on, and every frame starts from it. The range coder
is LZMA's (32-bit range; its byte stream, with the carries added afterwards).
It is integer arithmetic only, compiled with numba, and decodes identically
everywhere.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from aepacs.codec.learned.rangecoder import M32, TOP, carry

PB = 15
ONE = 1 << PB
NB = 32  #: magnitude buckets
NU = 18  #: unary bins of the bit length
NCLS = 7  #: coefficient classes
SA, SB = 4, 7  #: adaptation shifts (fast, slow)
Z0 = 0
S0 = Z0 + NCLS * NB
G0 = S0 + NCLS * 9
U0 = G0 + NCLS * NB
M0 = U0 + NCLS * NB * NU
NCTX = M0 + NCLS * 24  #: number of adaptive contexts

__all__ = ["NCTX", "decode", "dequantize", "encode", "final_state", "quantize", "uniform_init"]


def uniform_init() -> np.ndarray:
    """Starting probabilities of an untrained model (all one half), uint16."""
    return np.full(NCTX, ONE // 2, np.uint16)


def _state(init: np.ndarray) -> np.ndarray:
    if init.shape != (NCTX,):
        raise ValueError(f"entropy model has {init.shape} contexts, coder needs {NCTX}")
    p = np.empty(2 * NCTX, np.int64)
    p[0::2] = init
    p[1::2] = init
    return p


@njit(cache=True, inline="always")
def _shift_low(low, pos, out):
    # emit the top byte of `low` and add its carry to the byte before; a byte that overflows
    # passes it on in carry(), once the stream is complete. Branch- and check-free: this runs
    # per output byte, and a store under a condition here made the whole coder 2.5x slower
    # (_encode_planes checks the room left once per row instead)
    out[pos - 1] += low >> 32
    out[pos] = (low >> 24) & 0xFF
    return (low & 0x00FFFFFF) << 8, pos + 1


#: The most bytes one coefficient can emit, for any int64 value (a bit length n <= 63): at most
#: 68 adaptive decisions (zero, sign, one, n + 1 unary, the top bit), none emitting more than
#: 2 bytes (a probability is at least 1/2**15 of a range of at least 2**24), and n - 2 raw
#: bits of at most 1 byte each: 197. _encode_planes checks this much room per row, so that its
#: byte stores need no check of their own.
MAX_BYTES_PER_COEFF = 200


@njit(cache=True, inline="always")
def _adapt(p, i, bit):
    # both estimates move toward the decision: fast (shift SA) and slow (shift SB)
    if bit == 0:
        p[2 * i] += (ONE - p[2 * i]) >> SA
        p[2 * i + 1] += (ONE - p[2 * i + 1]) >> SB
    else:
        p[2 * i] -= p[2 * i] >> SA
        p[2 * i + 1] -= p[2 * i + 1] >> SB


@njit(cache=True, inline="always")
def _put_bit(low, rng, pos, out, bound, bit):
    if bit == 0:
        rng = bound
    else:
        low += bound
        rng -= bound
    while rng < TOP:
        rng = (rng << 8) & M32
        low, pos = _shift_low(low, pos, out)
    return low, rng, pos


@njit(cache=True, inline="always")
def _enc(low, rng, pos, out, p, i, bit):
    bound = (rng >> PB) * ((p[2 * i] + p[2 * i + 1]) >> 1)
    _adapt(p, i, bit)
    return _put_bit(low, rng, pos, out, bound, bit)


@njit(cache=True, inline="always")
def _enc_bypass(low, rng, pos, out, bit):
    return _put_bit(low, rng, pos, out, rng >> 1, bit)


@njit(cache=True, inline="always")
def _get_bit(rng, code, pos, data, bound):
    if code < bound:
        rng = bound
        bit = 0
    else:
        code -= bound
        rng -= bound
        bit = 1
    while rng < TOP:
        rng = (rng << 8) & M32
        b = data[pos] if pos < data.shape[0] else 0
        code = ((code << 8) | b) & M32
        pos += 1
    return bit, rng, code, pos


@njit(cache=True, inline="always")
def _dec(rng, code, pos, data, p, i):
    bit, rng, code, pos = _get_bit(rng, code, pos, data, (rng >> PB) * ((p[2 * i] + p[2 * i + 1]) >> 1))
    _adapt(p, i, bit)
    return bit, rng, code, pos


@njit(cache=True, inline="always")
def _dec_bypass(rng, code, pos, data):
    return _get_bit(rng, code, pos, data, rng >> 1)


@njit(cache=True, inline="always")
def _bitlen(v):
    n = 0
    while v > 0:
        v >>= 1
        n += 1
    return n


def _make_lut():
    lut = np.zeros(1 << 16, np.int64)
    for a in range(1, 1 << 16):
        n = a.bit_length() - 1
        sb = (a >> (n - 1)) & 1 if n > 0 else 0
        lut[a] = min(1 + 2 * n + sb, NB - 1)
    return lut


LUT = _make_lut()


@njit(cache=True, inline="always")
def _bucket(a):
    if a < 65536:
        return LUT[a]
    if a == 0:
        return 0
    n = _bitlen(a) - 1
    sb = (a >> (n - 1)) & 1 if n > 0 else 0
    b = 1 + 2 * n + sb
    return b if b < NB else NB - 1


@njit(cache=True, inline="always")
def _pmag(B, q, y, x, py0, px0, hp, s1y, s1x, s2y, s2x, nsib):
    yy = y + 2
    xx = x + 2
    a = (4 * (abs(B[yy, xx - 1]) + abs(B[yy - 1, xx])) + 2 * (abs(B[yy - 1, xx - 1]) + abs(B[yy - 1, xx + 1]))
         + abs(B[yy, xx - 2]) + abs(B[yy - 2, xx]))
    if hp:
        a += 3 * abs(q[py0 + (y >> 1), px0 + (x >> 1)])
    if nsib >= 1:
        a += 2 * abs(q[s1y + y, s1x + x])
    if nsib >= 2:
        a += 2 * abs(q[s2y + y, s2x + x])
    return a


@njit(cache=True, inline="always")
def _psign(B, y, x):
    v = B[y + 2, x + 1]
    sw = 1 if v > 0 else (2 if v < 0 else 0)
    v = B[y + 1, x + 2]
    sn = 1 if v > 0 else (2 if v < 0 else 0)
    return sw * 3 + sn


@njit(cache=True, inline="always")
def _geometry(H, W, levels, lv, o):
    h = H >> lv
    w = W >> lv
    y0 = h if o >= 1 else 0
    x0 = w if o != 1 else 0
    if lv < levels:
        h2 = H >> (lv + 1)
        w2 = W >> (lv + 1)
        py0 = h2 if o >= 1 else 0
        px0 = w2 if o != 1 else 0
        hp = 1
    else:
        py0 = 0
        px0 = 0
        hp = 0
    cls = 1 + 2 * (min(lv, 3) - 1) + (1 if o == 2 else 0)
    return h, w, y0, x0, py0, px0, hp, o, 0, w, h, 0, cls


@njit(cache=True, inline="always")
def _ll_pred(q, y, x):
    if y == 0 and x == 0:
        return 0
    if y == 0:
        return q[y, x - 1]
    if x == 0:
        return q[y - 1, x]
    a = q[y, x - 1]
    b = q[y - 1, x]
    c = q[y - 1, x - 1]
    mx = max(a, b)
    mn = min(a, b)
    if c >= mx:
        return mn
    if c <= mn:
        return mx
    return a + b - c


@njit(cache=True, inline="always")
def _ll_act(q, y, x):
    if y == 0 or x == 0:
        return 64
    return abs(q[y, x - 1] - q[y - 1, x - 1]) + abs(q[y - 1, x] - q[y - 1, x - 1])


@njit(cache=True, inline="always")
def _put(low, rng, pos, out, p, v, cls, bk, sc):
    a = abs(v)
    low, rng, pos = _enc(low, rng, pos, out, p, Z0 + cls * NB + bk, 1 if a > 0 else 0)
    if a == 0:
        return low, rng, pos
    low, rng, pos = _enc(low, rng, pos, out, p, S0 + cls * 9 + sc, 1 if v < 0 else 0)
    low, rng, pos = _enc(low, rng, pos, out, p, G0 + cls * NB + bk, 1 if a > 1 else 0)
    if a == 1:
        return low, rng, pos
    r = a - 2
    n = _bitlen(r)
    base = U0 + (cls * NB + bk) * NU
    for i in range(n + 1):
        bit = 1 if n > i else 0
        low, rng, pos = _enc(low, rng, pos, out, p, base + min(i, NU - 1), bit)
    if n >= 2:
        low, rng, pos = _enc(low, rng, pos, out, p, M0 + cls * 24 + min(n, 23), (r >> (n - 2)) & 1)
        for k in range(n - 3, -1, -1):
            low, rng, pos = _enc_bypass(low, rng, pos, out, (r >> k) & 1)
    return low, rng, pos


@njit(cache=True, inline="always")
def _get(rng, code, pos, data, p, cls, bk, sc):
    bit, rng, code, pos = _dec(rng, code, pos, data, p, Z0 + cls * NB + bk)
    if bit == 0:
        return 0, rng, code, pos
    neg, rng, code, pos = _dec(rng, code, pos, data, p, S0 + cls * 9 + sc)
    bit, rng, code, pos = _dec(rng, code, pos, data, p, G0 + cls * NB + bk)
    if bit == 0:
        return (-1 if neg else 1), rng, code, pos
    base = U0 + (cls * NB + bk) * NU
    n = 0
    while n < 40:
        bit, rng, code, pos = _dec(rng, code, pos, data, p, base + min(n, NU - 1))
        if bit == 0:
            break
        n += 1
    if n < 2:
        r = n
    else:
        r = 1 << (n - 1)
        bit, rng, code, pos = _dec(rng, code, pos, data, p, M0 + cls * 24 + min(n, 23))
        r |= bit << (n - 2)
        for k in range(n - 3, -1, -1):
            bit, rng, code, pos = _dec_bypass(rng, code, pos, data)
            r |= bit << k
    a = r + 2
    return (-a if neg else a), rng, code, pos


@njit(cache=True, nogil=True)
def _encode_planes(q, levels, out, p):
    planes, rows, cols = q.shape
    low, rng = 0, M32
    out[0] = 0  # the byte a carry out of the first `low` lands in (the decoder reads it first)
    pos = 1
    hl, wl = rows >> levels, cols >> levels
    for c in range(planes):
        qc = q[c]
        for y in range(hl):
            if pos + MAX_BYTES_PER_COEFF * (wl + 4) > out.shape[0]:
                return -1  # no room: the caller retries with a larger buffer
            for x in range(wl):
                v = qc[y, x] - _ll_pred(qc, y, x)
                low, rng, pos = _put(low, rng, pos, out, p, v, 0, _bucket(_ll_act(qc, y, x)), 0)
        for lv in range(levels, 0, -1):
            for o in range(3):
                h, w, y0, x0, py0, px0, hp, nsib, s1y, s1x, s2y, s2x, cls = _geometry(rows, cols, levels, lv, o)
                B = np.zeros((h + 2, w + 3), np.int64)
                for y in range(h):
                    if pos + MAX_BYTES_PER_COEFF * (w + 4) > out.shape[0]:
                        return -1
                    for x in range(w):
                        bk = _bucket(_pmag(B, qc, y, x, py0, px0, hp, s1y, s1x, s2y, s2x, nsib))
                        v = qc[y0 + y, x0 + x]
                        low, rng, pos = _put(low, rng, pos, out, p, v, cls, bk, _psign(B, y, x))
                        B[y + 2, x + 2] = v
    for _ in range(4):
        low, pos = _shift_low(low, pos, out)
    return pos


@njit(cache=True, nogil=True)
def _decode_planes(data, planes, rows, cols, levels, p):
    q = np.zeros((planes, rows, cols), np.int64)
    rng, code, pos = M32, 0, 0
    for _ in range(5):
        b = data[pos] if pos < data.shape[0] else 0
        code = ((code << 8) | b) & M32
        pos += 1
    hl, wl = rows >> levels, cols >> levels
    for c in range(planes):
        qc = q[c]
        for y in range(hl):
            for x in range(wl):
                v, rng, code, pos = _get(rng, code, pos, data, p, 0, _bucket(_ll_act(qc, y, x)), 0)
                qc[y, x] = v + _ll_pred(qc, y, x)
        for lv in range(levels, 0, -1):
            for o in range(3):
                h, w, y0, x0, py0, px0, hp, nsib, s1y, s1x, s2y, s2x, cls = _geometry(rows, cols, levels, lv, o)
                B = np.zeros((h + 2, w + 3), np.int64)
                for y in range(h):
                    for x in range(w):
                        bk = _bucket(_pmag(B, qc, y, x, py0, px0, hp, s1y, s1x, s2y, s2x, nsib))
                        v, rng, code, pos = _get(rng, code, pos, data, p, cls, bk, _psign(B, y, x))
                        qc[y0 + y, x0 + x] = v
                        B[y + 2, x + 2] = v
    return q, pos


def _code(q: np.ndarray, levels: int, init: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(the coded bytes, the final probability state) of planes `q` from `init`."""
    q = np.ascontiguousarray(q, dtype=np.int64)
    size = 2 * q.size + MAX_BYTES_PER_COEFF * (q.shape[-1] + 4) + 1024
    while True:
        out, p = np.empty(size, np.int32), _state(init)
        n = _encode_planes(q, levels, out, p)
        if n >= 0:
            carry(out, n)
            return out[:n].astype(np.uint8), p
        size *= 2


def encode(q: np.ndarray, levels: int, init: np.ndarray) -> bytes:
    """Code integer subband planes ``(planes, rows, cols)`` (Mallat layout) from `init`."""
    return _code(q, levels, init)[0].tobytes()


def final_state(q: np.ndarray, levels: int, init: np.ndarray) -> np.ndarray:
    """The probabilities after coding `q` from `init` (uint16): what training averages."""
    p = _code(q, levels, init)[1]
    return ((p[0::2] + p[1::2]) >> 1).astype(np.uint16)


def decode(data: bytes, shape: tuple[int, int, int], levels: int, init: np.ndarray) -> np.ndarray:
    """Undo :func:`encode`; raises ``ValueError`` if `data` is not exactly one such stream."""
    buf = np.frombuffer(data, np.uint8)
    q, used = _decode_planes(buf, shape[0], shape[1], shape[2], levels, _state(init))
    if used - 4 > len(buf) or used < len(buf) - 4:  # the coder reads a few bytes ahead of what it emits
        raise ValueError("subband stream is truncated or has trailing bytes")
    return q


@njit(cache=True, nogil=True)
def _quantize(c, levels, steps, r, out):
    rows, cols = c.shape
    for y in range(rows):
        for x in range(cols):
            s = steps[_band_of(y, x, rows, cols, levels)]
            v = c[y, x]
            a = (abs(v) * 256 + ((s * r) >> 8)) // s
            out[y, x] = -a if v < 0 else a


@njit(cache=True, nogil=True)
def _dequantize(q, levels, steps, bias, out):
    rows, cols = q.shape
    for y in range(rows):
        for x in range(cols):
            s = steps[_band_of(y, x, rows, cols, levels)]
            v = q[y, x]
            if v == 0:
                out[y, x] = 0
            else:
                a = (abs(v) * s + ((s * bias) >> 8) + 128) >> 8
                out[y, x] = -a if v < 0 else a


@njit(cache=True, inline="always")
def _band_of(y, x, rows, cols, levels):
    # index into a flattened (levels + 1, 3) table: 0 = low band, 3*l + o = level l, orientation o
    for lv in range(1, levels + 1):
        h, w = rows >> lv, cols >> lv
        if y >= h or x >= w:
            if y < h:
                return 3 * lv
            if x < w:
                return 3 * lv + 1
            return 3 * lv + 2
    return 0


#: Rounding offset and reconstruction bias of the quantizer, in 1/256 of a step.
#: ``|q| = floor(|c| / step + 70/256)`` (a dead zone, tuned on CT against JPEG 2000), rebuilt at
#: ``(|q| + 44/256) * step``; a step of one (256) is exact both ways.
ROUND, BIAS = 70, 44


def quantize(c: np.ndarray, levels: int, steps: np.ndarray) -> np.ndarray:
    """Dead-zone quantization of subbands `c` (2-D) by per-band steps ``(levels + 1, 3)`` in 1/256."""
    out = np.empty_like(c)
    _quantize(c, levels, np.ascontiguousarray(steps, dtype=np.int64).ravel(), ROUND, out)
    return out


def dequantize(q: np.ndarray, levels: int, steps: np.ndarray) -> np.ndarray:
    """Subband values rebuilt from the indices of :func:`quantize` (integers)."""
    out = np.empty_like(q)
    _dequantize(q, levels, np.ascontiguousarray(steps, dtype=np.int64).ravel(), BIAS, out)
    return out
