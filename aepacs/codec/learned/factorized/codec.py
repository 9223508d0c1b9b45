"""The factorized codec (architecture ``factorized``): a registry model's latent, entropy-coded, per frame.

The codec of the ``@1`` models (``ct@1``, ``mr@1``, ``cr@1``, ``us@1``). The
wavelet generation (:mod:`aepacs.codec.learned.wavelet`) replaced it for new
objects; it stays to open every object sealed with an ``@1`` model (a sealed
header whose codec is ``ae:NAME@1``) and to code for a route that still names
one.

Encode, per frame: normalise by the frame's own minimum and maximum,
edge-pad to the model's stride, run the float analysis, round to the
integer latent at gain ``k``, entropy-code it (:mod:`.latent`). The reconstruction is computed by the *integer*
synthesis, exactly as every decoder will compute it, then mapped back to
stored values with integer arithmetic and clipped to ``[min, max]``.

``lossy``     the latent alone. The gain is fixed, or the smallest meeting a
              target PSNR.
``lossless``  the latent plus the residual ``original - reconstruction``,
              coded under 16 contexts from the reconstruction's local
              activity (integers only); decoding is bit-identical.

Stream (big-endian)::

    "AEL1" u8 mode, u8 samples, u32 frames, u32 rows, u32 columns
    per frame: u8 gain, i32 min, i32 max, u32 latent bytes, u32 residual bytes,
               [16 x u8 residual tables (lossless)], latent, residual

Only integers cross from encoder to decoder; :meth:`FactorizedCodec.encode`
entropy-decodes what it wrote before returning it.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from aepacs.codec.learned.base import MODES, LearnedCodec, ModelFiles
from aepacs.codec.learned.factorized import entropy, latent
from aepacs.codec.learned.factorized.fixed import FA, FixedSynthesis
from aepacs.codec.learned.factorized.net import STRIDE, FactorizedCodecNet
from aepacs.codec.quality import psnr
from aepacs.dicom.pixels import PixelMeta
from aepacs.errors import CodecError

MAGIC = b"AEL1"
_HEAD = struct.Struct(">4sBBIII")
_FRAME = struct.Struct(">BiiII")
CONTEXTS = 16
BATCH_PIXELS = 4 * 512 * 512  # frames per network call: about four CT slices' worth

__all__ = ["FactorizedCodec", "frame_gains", "network", "synthesis"]


@dataclass
class _Frame:
    k: int
    lo: int
    hi: int
    q: np.ndarray  # (M, h, w) int64
    rec: np.ndarray  # (rows, cols, samples) int64


def _to_stored(x_int: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """Integer network output (``FA`` fraction bits, [0, 1]) -> stored values in [lo, hi]."""
    span = hi - lo
    v = (x_int * span + (1 << (FA - 1))) >> FA
    return np.clip(v + lo, lo, hi)


def _contexts(rec: np.ndarray) -> np.ndarray:
    """Residual context per value: bit length of the local activity of the reconstruction."""
    left = np.concatenate([rec[:, :1], rec[:, :-1]], axis=1)
    up = np.concatenate([rec[:1], rec[:-1]], axis=0)
    activity = np.abs(rec - left) + np.abs(rec - up)
    return np.minimum(latent.bit_lengths(activity), CONTEXTS - 1)


def frame_gains(data: bytes) -> list[int]:
    """The gain index each frame of a learned stream was coded at."""
    _, mode, _, frames, _, _ = _HEAD.unpack_from(data)
    pos, gains = _HEAD.size, []
    for _ in range(frames):
        k, _, _, nlat, nres = _FRAME.unpack_from(data, pos)
        gains.append(k)
        pos += _FRAME.size + (CONTEXTS if mode == 1 else 0) + nlat + nres
    return gains


def synthesis(model: ModelFiles) -> FixedSynthesis:
    """The integer synthesis of a factorized model (decoder side), built once per model and process."""
    return model.cached("synthesis", lambda: FixedSynthesis(
        {k: torch.from_numpy(v) for k, v in model.tensors("synthesis.safetensors").items()}))


def network(model: ModelFiles) -> FactorizedCodecNet:
    """The float network of a factorized model, its analysis weights loaded (encoder side).

    Raises
    ------
    CodecError
        The weights do not fit the architecture the manifest describes.
    """
    def make() -> FactorizedCodecNet:
        net = FactorizedCodecNet(**model.manifest["hyper"])
        state = {k: torch.from_numpy(v) for k, v in model.tensors("analysis.safetensors").items()}
        missing, unexpected = net.load_state_dict(state, strict=False)
        needed = [k for k in missing if not k.startswith("synthesis.")]
        if needed or unexpected:
            raise CodecError(f"{model.ref}: weights do not fit {model.arch} ({needed or unexpected})")
        return net.eval()

    return model.cached("network", make)


class FactorizedCodec(LearnedCodec):
    """A ``factorized`` registry model as an image codec (see the module docstring)."""

    arch = "factorized"
    kind = "learned codec"
    magic = MAGIC

    def _load(self, model: ModelFiles) -> int:
        self.synthesis = synthesis(model)
        return self.synthesis.gains

    frame_gains = staticmethod(frame_gains)

    # -- encoder ---------------------------------------------------------------------------

    def _analyse(self, pixels: np.ndarray) -> list[tuple[np.ndarray, np.ndarray, Any]]:
        """Per chunk of frames: (min, max, the analysis' gain-independent parts)."""
        net = network(self.model)
        stride = net.stride
        frames, rows, cols, _ = pixels.shape
        per_call = max(1, BATCH_PIXELS // max(rows * cols, 1))
        out = []
        for a in range(0, frames, per_call):
            chunk = pixels[a:a + per_call].astype(np.int64)
            lo = chunk.reshape(len(chunk), -1).min(axis=1)
            hi = chunk.reshape(len(chunk), -1).max(axis=1)
            span = np.maximum(hi - lo, 1).astype(np.float32)
            x = (chunk - lo[:, None, None, None]).astype(np.float32) / span[:, None, None, None]
            x = np.pad(x.transpose(0, 3, 1, 2), ((0, 0), (0, 0), (0, -rows % stride), (0, -cols % stride)),
                       mode="edge")
            with torch.inference_mode():
                out.append((lo, hi, net.analysis_parts(torch.from_numpy(np.ascontiguousarray(x)))))
        return out

    def _run(self, pixels: np.ndarray, k: int, parts: list[Any] | None = None) -> list[_Frame]:
        """Rounding at gain `k` and the integer synthesis (the analysis given or computed)."""
        net = network(self.model)
        _, rows, cols, _ = pixels.shape
        out: list[_Frame] = []
        for lo, hi, analysed in parts or self._analyse(pixels):
            with torch.inference_mode():
                q = net.quantize_parts(analysed, k).numpy().astype(np.int64)
            x_int = self.synthesis(q, k)[:, :, :rows, :cols].transpose(0, 2, 3, 1)
            for i in range(len(q)):
                out.append(_Frame(k, int(lo[i]), int(hi[i]), q[i], _to_stored(x_int[i], int(lo[i]), int(hi[i]))))
        return out

    def _lossy_frames(self, pixels: np.ndarray) -> list[_Frame]:
        """Frames at the fixed gain, or at the smallest gain meeting the target PSNR."""
        if self.target_psnr is None:
            return self._run(pixels, self.gain)
        parts = self._analyse(pixels)  # once: only rounding and synthesis depend on the gain
        best, lo_k, hi_k = None, 0, self.synthesis.gains - 1
        while lo_k <= hi_k:  # binary search: PSNR grows with the gain
            mid = (lo_k + hi_k) // 2
            run = self._run(pixels, mid, parts)
            if all(psnr(pixels[i], f.rec) >= self.target_psnr for i, f in enumerate(run)):
                best, hi_k = run, mid - 1
            else:
                lo_k = mid + 1
        return best or self._run(pixels, self.synthesis.gains - 1, parts)

    def encode(self, pixels: np.ndarray, meta: PixelMeta | None = None) -> bytes:
        """Code frames ``(frames, rows, columns, samples)``; see the module docstring."""
        return self.encode_reconstruct(pixels)[0]

    def encode_reconstruct(self, pixels: np.ndarray) -> tuple[bytes, np.ndarray]:
        """The stream and the pixels every decoder will rebuild from it (int64).

        The latent is entropy-decoded again before returning: the integers a
        decoder will read are the integers the encoder meant.
        """
        self._check(pixels)
        frames = self._lossy_frames(pixels) if self.mode == "lossy" else self._run(pixels, self.gain)
        out = [_HEAD.pack(MAGIC, MODES.index(self.mode), pixels.shape[3], *pixels.shape[:3])]
        for i, f in enumerate(frames):
            coded = latent.encode(f.q)
            if not np.array_equal(latent.decode(coded, f.q.shape), f.q):
                raise CodecError(f"{self.model.ref}: latent does not survive its own entropy round trip")
            residual, extra = b"", b""
            if self.mode == "lossless":
                r = pixels[i].astype(np.int64) - f.rec
                ctx = _contexts(f.rec)
                tables = latent.context_tables(r, ctx, CONTEXTS)
                residual, extra = entropy.encode(r, tables[ctx]), tables.astype(np.uint8).tobytes()
            out += [_FRAME.pack(f.k, f.lo, f.hi, len(coded), len(residual)), extra, coded, residual]
        recon = pixels.astype(np.int64) if self.mode == "lossless" else np.stack([f.rec for f in frames])
        return b"".join(out), recon

    # -- decoder ---------------------------------------------------------------------------

    def decode(self, data: bytes, meta: PixelMeta | None = None) -> np.ndarray:
        """Rebuild the frames; integer only, so every machine gets the same pixels."""
        try:
            magic, mode, samples, frames, rows, cols = _HEAD.unpack_from(data)
        except struct.error:
            raise CodecError("learned stream truncated") from None
        if magic != MAGIC or mode >= len(MODES) or samples != self.channels:
            raise CodecError("not a learned-codec stream for this model")
        if meta is not None and (meta.frames, meta.rows, meta.columns, meta.samples) != (frames, rows, cols, samples):
            raise CodecError("learned stream does not match its pixel description")
        h, w = -(-rows // STRIDE), -(-cols // STRIDE)
        m = self.synthesis.latent_channels
        pos = _HEAD.size
        out = np.empty((frames, rows, cols, samples), dtype=np.int64)
        for i in range(frames):
            try:
                k, lo, hi, nlat, nres = _FRAME.unpack_from(data, pos)
            except struct.error:
                raise CodecError("learned stream truncated") from None
            pos += _FRAME.size
            if not 0 <= k < self.synthesis.gains:
                raise CodecError(f"learned stream names gain {k}, model has {self.synthesis.gains}")
            tables = None
            if mode == 1:
                tables = np.frombuffer(data, dtype=np.uint8, count=CONTEXTS, offset=pos).astype(np.int64)
                pos += CONTEXTS
            q = latent.decode(data[pos:pos + nlat], (m, h, w))[None]
            pos += nlat
            rec = _to_stored(self.synthesis(q, k)[0, :, :rows, :cols].transpose(1, 2, 0), lo, hi)
            if mode == 1:
                assert tables is not None
                rec = rec + entropy.decode(data[pos:pos + nres], tables[_contexts(rec)]).reshape(rec.shape)
            pos += nres
            out[i] = rec
        if pos != len(data):
            raise CodecError("learned stream has trailing bytes")
        return out.astype(meta.dtype.newbyteorder("=")) if meta is not None else out

