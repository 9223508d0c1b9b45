"""Coding one frame's integer latent: the entropy model of the learned codec.

The latent ``q`` has 16 channels per image channel at 1/4 resolution; the
first of each 16 (the "lead" channel, the block transform's DC term) holds
a small, smooth copy of the image. The model, integers only:

1. each lead plane is decorrelated by a multi-level integer Haar
   (S-transform, exactly invertible) and coded under forward-adaptive
   scales: one discrete-Laplace table index per 8x8 block of the
   transformed plane (the side information, coded as differences);
2. every other channel is coded under a context: the bit length of the
   local activity of its lead plane (already decoded), one table index per
   (channel, context) sent as side information. Edges in the small image
   are where the detail channels carry energy.

:func:`encode` and :func:`decode` are inverses; both see only integers.
"""

from __future__ import annotations

import struct

import numpy as np

from aepacs.codec.learned.factorized import entropy
from aepacs.errors import CodecError

LEAD_EVERY = 16
BLOCK = 8
HAAR_LEVELS = 4
CONTEXTS = 12
_SIDE_TABLE = int(entropy.index_for_scales(np.array([1.0]))[0])
_LENGTHS = struct.Struct(">III")  # side, lead and other-channel stream bytes


def _s_forward(x: np.ndarray, axis: int) -> np.ndarray:
    """One S-transform step along `axis`: [floor means | differences] (odd tail kept in the means)."""
    x = np.moveaxis(x, axis, -1)
    n = x.shape[-1]
    a, b = x[..., 0:n - 1:2], x[..., 1:n:2]
    d = a - b
    s = b + (d >> 1)
    if n % 2:
        s = np.concatenate([s, x[..., -1:]], axis=-1)
    return np.moveaxis(np.concatenate([s, d], axis=-1), -1, axis)


def _s_inverse(y: np.ndarray, axis: int) -> np.ndarray:
    y = np.moveaxis(y, axis, -1)
    n = y.shape[-1]
    ns = (n + 1) // 2
    s, d = y[..., :ns], y[..., ns:]
    pairs = d.shape[-1]
    b = s[..., :pairs] - (d >> 1)
    a = d + b
    out = np.empty(y.shape, dtype=y.dtype)
    out[..., 0:2 * pairs:2], out[..., 1:2 * pairs:2] = a, b
    if n % 2:
        out[..., -1] = s[..., -1]
    return np.moveaxis(out, -1, axis)


def _sizes(h: int, w: int) -> list[tuple[int, int]]:
    sizes = []
    for _ in range(HAAR_LEVELS):
        if h < 2 or w < 2:
            break
        sizes.append((h, w))
        h, w = (h + 1) // 2, (w + 1) // 2
    return sizes


def haar(plane: np.ndarray) -> np.ndarray:
    """Multi-level 2-D integer Haar of a plane (Mallat layout)."""
    out = plane.astype(np.int64).copy()
    for h, w in _sizes(*plane.shape):
        out[:h, :w] = _s_forward(_s_forward(out[:h, :w], 1), 0)
    return out


def inverse_haar(coeffs: np.ndarray) -> np.ndarray:
    """Inverse of :func:`haar`."""
    out = coeffs.astype(np.int64).copy()
    for h, w in reversed(_sizes(*coeffs.shape)):
        out[:h, :w] = _s_inverse(_s_inverse(out[:h, :w], 0), 1)
    return out


def _block_tables(plane: np.ndarray) -> np.ndarray:
    h, w = plane.shape
    bh, bw = -(-h // BLOCK), -(-w // BLOCK)
    a = np.zeros((bh * BLOCK, bw * BLOCK))
    a[:h, :w] = np.abs(plane)
    n = np.zeros_like(a)
    n[:h, :w] = 1
    sums = a.reshape(bh, BLOCK, bw, BLOCK).sum(axis=(1, 3))
    counts = n.reshape(bh, BLOCK, bw, BLOCK).sum(axis=(1, 3))
    return entropy.index_for_mean_abs(sums, counts)


def _expand(tables: np.ndarray, h: int, w: int) -> np.ndarray:
    return np.repeat(np.repeat(tables, BLOCK, axis=-2), BLOCK, axis=-1)[..., :h, :w]


def bit_lengths(a: np.ndarray) -> np.ndarray:
    """``int.bit_length`` of each non-negative integer in `a`, vectorised."""
    a = np.array(a, dtype=np.int64)
    out = np.zeros(a.shape, dtype=np.int64)
    while a.any():
        out[a > 0] += 1
        a >>= 1
    return out


def context_tables(values: np.ndarray, ctx: np.ndarray, n: int) -> np.ndarray:
    """Per context ``0..n-1``, the table fitting the mean |value| found in it (encoder side)."""
    sums = np.bincount(ctx.ravel(), weights=np.abs(values).ravel(), minlength=n)
    return entropy.index_for_mean_abs(sums, np.bincount(ctx.ravel(), minlength=n))


def contexts(lead: np.ndarray) -> np.ndarray:
    """Context per position: bit length of the lead plane's central-difference activity."""
    p = np.pad(lead, 1, mode="edge")
    activity = np.abs(p[1:-1, 2:] - p[1:-1, :-2]) + np.abs(p[2:, 1:-1] - p[:-2, 1:-1])
    return np.minimum(bit_lengths(activity), CONTEXTS - 1)


def _leads(m: int) -> list[int]:
    return list(range(0, m, LEAD_EVERY))


def encode(q: np.ndarray) -> bytes:
    """Code a latent ``(M, h, w)`` (``M`` a multiple of 16)."""
    m, h, w = q.shape
    if m % LEAD_EVERY:
        raise CodecError(f"latent has {m} channels, not a multiple of {LEAD_EVERY}")
    q = q.astype(np.int64)
    leads = _leads(m)
    coeffs = np.stack([haar(q[c]) for c in leads])
    blocks = np.stack([_block_tables(c) for c in coeffs])
    ctx_tables = np.zeros((m, CONTEXTS), dtype=np.int64)
    values, tables = [coeffs], [_expand(blocks, h, w)]
    lead_ctx = {c: contexts(q[c]) for c in leads}
    for c in range(m):
        if c in leads:
            continue
        ctx = lead_ctx[c - c % LEAD_EVERY]
        ctx_tables[c] = context_tables(q[c], ctx, CONTEXTS)
        values.append(q[c][None])
        tables.append(ctx_tables[c][ctx][None])
    side = entropy.encode(np.diff(np.concatenate([blocks.ravel(), ctx_tables.ravel()]), prepend=0), _SIDE_TABLE)
    lead = entropy.encode(values[0], tables[0])
    rest = entropy.encode(np.concatenate(values[1:]), np.concatenate(tables[1:])) if m > len(leads) else b""
    return _LENGTHS.pack(len(side), len(lead), len(rest)) + side + lead + rest


def decode(data: bytes, shape: tuple[int, int, int]) -> np.ndarray:
    """Inverse of :func:`encode` for a latent of `shape`.

    Raises
    ------
    CodecError
        Truncated or inconsistent stream.
    """
    m, h, w = shape
    leads = _leads(m)
    try:
        nside, nlead, nrest = _LENGTHS.unpack_from(data)
    except struct.error:
        raise CodecError("latent stream truncated") from None
    if len(data) != _LENGTHS.size + nside + nlead + nrest:
        raise CodecError("latent stream length mismatch")
    bh, bw = -(-h // BLOCK), -(-w // BLOCK)
    nblocks = len(leads) * bh * bw
    pos = _LENGTHS.size
    side = np.cumsum(entropy.decode(data[pos:pos + nside], np.full(nblocks + m * CONTEXTS, _SIDE_TABLE)))
    pos += nside
    if side.size and (side.min() < 0 or side.max() >= entropy.SCALES):
        raise CodecError("latent side information out of range")
    blocks = side[:nblocks].reshape(len(leads), bh, bw)
    ctx_tables = side[nblocks:].reshape(m, CONTEXTS)
    coeffs = entropy.decode(data[pos:pos + nlead], _expand(blocks, h, w)).reshape(len(leads), h, w)
    pos += nlead
    q = np.empty((m, h, w), dtype=np.int64)
    for i, c in enumerate(leads):  # the leads first: they are the context of the rest
        q[c] = inverse_haar(coeffs[i])
    others = [c for c in range(m) if c not in leads]
    if others:
        lead_ctx = {c: contexts(q[c]) for c in leads}
        tables = np.stack([ctx_tables[c][lead_ctx[c - c % LEAD_EVERY]] for c in others])
        q[others] = entropy.decode(data[pos:pos + nrest], tables).reshape(len(others), h, w)
    return q
