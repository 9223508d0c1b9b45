"""Entropy coding of integer arrays under a fixed family of discrete Laplace tables.

Every symbol is coded with one of :data:`SCALES` two-sided geometric
("discrete Laplace") distributions over ``[-SUPPORT, SUPPORT]`` plus an
escape symbol; values outside the support are escaped and stored verbatim
after the ANS stream. The tables are built from exact integer arithmetic
(:mod:`decimal` for the few constants, Python integers for the powers), so
an encoder and a decoder on any two machines derive the same frequencies
bit for bit: only integers ever decide how a stream decodes.

Symbols are grouped by table; the groups are coded one after another into
one ANS stream (``constriction``). A caller passes, per symbol, the table
index it wants (the learned prior's per-channel scale, or a residual
context's scale); the decoder passes the same indices.
"""

from __future__ import annotations

import struct
from decimal import Decimal, localcontext
from functools import cache

import constriction
import numpy as np

from aepacs.errors import CodecError

SUPPORT = 8191
"""Values in ``[-SUPPORT, SUPPORT]`` are coded by the tables; others are escaped."""
SCALES = 64
"""Number of tables. Table ``s`` has Laplace scale ``b = 0.08 * 2**(s/4)``."""
_ESC = 2 * SUPPORT + 1
_FRAC = 48  # fixed-point fraction bits of the powers
_TOTAL = 1 << 30  # frequencies are integers summing to about this


def index_for_scales(b: np.ndarray) -> np.ndarray:
    """Nearest table index for each Laplace scale in `b` (encoder side only)."""
    with np.errstate(divide="ignore"):
        s = np.round(4 * np.log2(np.maximum(np.asarray(b, dtype=np.float64), 1e-9) / 0.08))
    return np.clip(s, 0, SCALES - 1).astype(np.int64)


def index_for_mean_abs(sums: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Table index per group from its sum and count of absolute values (the Laplace scale's estimate)."""
    return index_for_scales(np.maximum(np.asarray(sums) / np.maximum(counts, 1), 0.08))


@cache
def frequencies(index: int) -> np.ndarray:
    """Integer frequencies of table `index`: ``2*SUPPORT + 2`` entries, the last the escape."""
    index = int(index)
    if not 0 <= index < SCALES:
        raise CodecError(f"entropy table {index} out of range")
    with localcontext() as ctx:
        ctx.prec = 40
        b = Decimal("0.08") * (Decimal(2) ** (Decimal(index) / 4))
        theta = int((Decimal(-1) / b).exp() * (1 << _FRAC))
    one = 1 << _FRAC
    powers = [one]
    for _ in range(SUPPORT + 1):
        powers.append((powers[-1] * theta) >> _FRAC)
    # mass of |k| = n is theta^n for n > 0 (twice: both signs), 1 at 0; tail beyond SUPPORT
    norm = one + 2 * ((theta * one) // max(one - theta, 1))
    freq = [max(1, (p * _TOTAL) // norm) for p in powers[:SUPPORT + 1]]
    tail = max(1, (2 * ((powers[SUPPORT + 1] * one) // max(one - theta, 1)) * _TOTAL) // norm)
    table = np.array(freq[:0:-1] + freq + [tail], dtype=np.float64)  # exact integers < 2**53
    return table


@cache
def _model(index: int) -> constriction.stream.model.Categorical:
    return constriction.stream.model.Categorical(frequencies(index), perfect=False)


def _groups(tables: np.ndarray) -> tuple[np.ndarray, list[tuple[int, int, int]]]:
    """Order that sorts values by table, and the (start, end, table) runs of that order."""
    if tables.size and (tables.min() < 0 or tables.max() >= SCALES):
        raise CodecError("entropy table index out of range")
    order = np.argsort(tables.astype(np.uint8), kind="stable")  # radix sort: table indices are < 64
    tab = tables[order]
    bounds = np.flatnonzero(np.diff(tab)) + 1
    starts, ends = np.concatenate([[0], bounds]), np.concatenate([bounds, [tab.size]])
    return order, [(int(a), int(b), int(tab[a])) for a, b in zip(starts, ends, strict=False) if b > a]


def _symbols(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    v = values.astype(np.int64, copy=False)
    escaped = np.abs(v) > SUPPORT
    sym = np.where(escaped, _ESC, v + SUPPORT).astype(np.int32)
    return sym, v[escaped]


def encode(values: np.ndarray, tables: np.ndarray | int) -> bytes:
    """Code the integers `values` with the table index given for each.

    Parameters
    ----------
    values : ndarray of int
        Any shape; coded in C order.
    tables : ndarray of int
        Table index per value, broadcastable to `values`.

    Returns
    -------
    bytes
        ``u32 words, u32 escapes`` then the ANS words (little-endian u32)
        and the escaped values (little-endian i32).
    """
    values = np.asarray(values)
    tables = np.broadcast_to(np.asarray(tables, dtype=np.int64), values.shape).ravel()
    values = values.ravel()
    order, runs = _groups(tables)
    sym, escaped = _symbols(values)
    if escaped.size and np.abs(escaped).max() >= 2**31:
        raise CodecError("value too large for the entropy coder")
    sym = sym[order]
    coder = constriction.stream.stack.AnsCoder()
    for a, b, table in reversed(runs):  # ANS is a stack: last group first
        coder.encode_reverse(sym[a:b], _model(table))
    words = coder.get_compressed().astype("<u4")
    return b"".join([struct.pack("<II", words.size, escaped.size), words.tobytes(),
                     escaped.astype("<i4").tobytes()])


def decode(data: bytes, tables: np.ndarray) -> np.ndarray:
    """Inverse of :func:`encode`: the values, flat, in C order of `tables`.

    Raises
    ------
    CodecError
        The stream is truncated or does not fit the tables.
    """
    tables = np.asarray(tables, dtype=np.int64).ravel()
    try:
        nwords, nesc = struct.unpack_from("<II", data)
        words = np.frombuffer(data, dtype="<u4", count=nwords, offset=8).astype(np.uint32)
        escaped = np.frombuffer(data, dtype="<i4", count=nesc, offset=8 + 4 * nwords).astype(np.int64)
    except (struct.error, ValueError):
        raise CodecError("entropy stream truncated") from None
    if len(data) != 8 + 4 * nwords + 4 * nesc:
        raise CodecError("entropy stream has trailing or missing bytes")
    order, runs = _groups(tables)
    coder = constriction.stream.stack.AnsCoder(words)
    sym = np.empty(tables.size, dtype=np.int64)
    for a, b, table in runs:
        sym[a:b] = coder.decode(_model(table), b - a)
    out = np.empty(tables.size, dtype=np.int64)
    out[order] = sym - SUPPORT
    esc = np.flatnonzero(out == _ESC - SUPPORT)
    if esc.size != escaped.size:
        raise CodecError("entropy stream escape count mismatch")
    out[esc] = escaped
    return out


def bits(values: np.ndarray, index: int) -> float:
    """Ideal code length in bits of `values` under table `index` (escapes at 32 bits extra)."""
    sym, escaped = _symbols(np.asarray(values).ravel())
    f = frequencies(int(index))
    p = f[sym] / f.sum()
    return float(-np.log2(p).sum() + 32 * escaped.size)
