"""The wavelet codec (architecture ``wavelet``): a registry model's integer lifting and learned entropy model.

The codec of the ``@2``, ``@3``, ``@5`` and ``@6`` models (``@5``: lossy fraction bits; ``@6``: and
rate-distortion optimised quantization), and of new objects.

Encode, per frame (:class:`WaveletCodec`):

1. colour frames go through JPEG 2000's reversible colour transform (RCT);
2. each plane is edge-padded to a multiple of ``2**levels``, in ``lossy`` mode
   scaled by ``2**precision`` (the model's ``hyper.precision``, fraction bits:
   the rounding of every lifting step then falls far below the quantizer's
   step), and transformed by the model's integer lifting steps
   (:mod:`aepacs.codec.learned.wavelet.lifting`);
3. ``lossy``: the subbands are quantized with a dead zone, the step of each band
   being the frame's base step divided by its synthesis norm (and weighted per
   colour plane), so the error spreads evenly over the image; where the model
   names a multiplier (``hyper.rdo``), each detail index is then chosen on
   squared error + lambda * its code length under the coder's own adaptive
   probabilities (:mod:`aepacs.codec.learned.wavelet.rdo`; encoder side only,
   any decoder reads the result);
   ``lossless``: the coefficients are coded as they are;
4. the integers are range-coded under the model's learned context model
   (:mod:`aepacs.codec.learned.wavelet.subband`);
5. for a quality gate (:meth:`WaveletCodec.encode_reconstruct`), the
   reconstruction every decoder will compute, computed the same way
   (dequantize, inverse lifting, drop the fraction bits with rounding, crop,
   inverse RCT, clip to the frame's range),
   with the range-coded subbands decoded again and compared.

Because every lifting step is integer and exactly invertible, ``lossless`` is
the same transform with a step of one: the decoded pixels are the original
bit for bit, with no residual to code.

``lossy`` operating points are gains ``0..GAINS-1``: the base step is the
frame's value span times ``2**(-gain/4) / 2`` (a quarter octave, about 1.5 dB,
per gain), or the smallest gain whose PSNR meets a target.

Stream (big-endian)::

    "AEW1" u8 mode, u8 samples, u32 frames, u32 rows, u32 columns, u8 levels
      or
    "AEW2" u8 mode, u8 samples, u32 frames, u32 rows, u32 columns, u8 levels, u8 precision
    per frame: u8 gain, u32 base step (1/256; 0 = lossless), i32 min, i32 max,
               u32 bytes, range-coded subbands
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable

import numpy as np

from aepacs.codec.learned.base import MODES, LearnedCodec, ModelFiles
from aepacs.codec.learned.colour import inverse_rct, rct
from aepacs.codec.learned.wavelet import lifting, rdo, subband
from aepacs.codec.quality import psnr
from aepacs.dicom.pixels import PixelMeta
from aepacs.errors import CodecError

MAGIC = b"AEW1"
#: the stream of a model with fraction bits (``hyper.precision`` > 0): AEW1 plus a precision byte
MAGIC2 = b"AEW2"
GAINS = 40
MAX_LEVELS = 6
#: the most fraction bits a model may add (16-bit samples, 8 bits and the lifting's growth fit int64)
MAX_PRECISION = 8
#: the largest rate-distortion multiplier a model may name (1/256 step**2 per bit; about 30 is right)
MAX_RDO = 4096
_HEAD = struct.Struct(">4sBBIIIB")
_PRECISION = struct.Struct(">B")
_FRAME = struct.Struct(">BIiiI")
#: per-plane step weights (1/256) after the RCT: Y carries R, G and B (energy 3),
#: Cb and Cr 11/16 each, so equal error slope means steps in ratio 1/sqrt(3) : 4/sqrt(11).
_PLANE_WEIGHTS = {1: (256,), 3: (148, 309, 309)}

__all__ = ["GAINS", "WaveletCodec", "band_weights", "frame_gains", "levels_for",
           "smallest_passing"]


def _head_size(magic: bytes) -> int:
    return _HEAD.size + (_PRECISION.size if magic == MAGIC2 else 0)


def frame_gains(data: bytes) -> list[int]:
    """The gain each frame of a wavelet stream was coded at (0 for lossless frames)."""
    magic, _, _, frames, _, _, _ = _HEAD.unpack_from(data)
    pos, gains = _head_size(magic), []
    for _ in range(frames):
        gain, _, _, _, n = _FRAME.unpack_from(data, pos)
        gains.append(gain)
        pos += _FRAME.size + n
    return gains


def levels_for(rows: int, cols: int, most: int = MAX_LEVELS) -> int:
    """Decomposition levels for a frame: at most `most`, leaving a low band of >= 8 pixels a side."""
    side = min(rows, cols)
    return max(0, min(most, int(math.floor(math.log2(side / 8))) if side >= 16 else 0))


def band_weights(taps: np.ndarray, most: int = MAX_LEVELS) -> np.ndarray:
    """Per level count ``L`` (1..`most`) the inverse synthesis norm of each band, in 1/65536.

    Shape ``(most + 1, most + 1, 3)``; entry ``[L]`` is the table a frame
    decomposed into ``L`` levels uses (row 0: the low band).
    """
    out = np.zeros((most + 1, most + 1, 3), np.int64)
    out[0, 0, 0] = 1 << 16
    for L in range(1, most + 1):
        norms = lifting.band_norms(taps, L, size=max(256, 32 << L))
        with np.errstate(divide="ignore"):
            out[L, :L + 1] = np.where(norms > 0, np.round(65536 / np.where(norms > 0, norms, 1)), 0)
    return out


def base_step(span: int, gain: int) -> int:
    """The base quantization step (1/256) of a frame with value span `span` at `gain`."""
    return max(256, int(round(max(span, 1) * 256 * 2.0 ** (-gain / 4) / 2)))


def smallest_passing(passes: Callable[[int], bool], start: int, top: int) -> int | None:
    """The smallest ``g`` in ``0..top`` with ``passes(g)`` (monotone in ``g``), or ``None``.

    Probes outward from `start` in doubling steps until the answer is
    bracketed, then bisects: about ``2 log2(|answer - start| + 1) + 2`` probes,
    two or three when `start` is a good guess (the previous frame's gain).
    """
    start = min(max(start, 0), top)
    if passes(start):
        good, step = start, 1
        while good > 0:  # down until one fails
            probe = max(good - step, 0)
            if not passes(probe):
                bad = probe
                break
            good, step = probe, step * 2 if probe < start - 1 else 1  # steps 1, 1, 2, 4, ...
        else:
            return 0
    else:
        bad, step = start, 1
        while True:  # up until one passes (or the top fails)
            if bad == top:
                return None
            probe = min(bad + step, top)
            if passes(probe):
                good = probe
                break
            bad, step = probe, step * 2
    while good - bad > 1:
        mid = (good + bad) // 2
        if passes(mid):
            good = mid
        else:
            bad = mid
    return good


class WaveletCodec(LearnedCodec):
    """A ``wavelet`` registry model as an image codec (see the module docstring)."""

    arch = "wavelet"
    kind = "wavelet codec"
    magic = MAGIC

    def _load(self, model: ModelFiles) -> int:
        params = model.tensors("wavelet.safetensors")
        self.taps = np.ascontiguousarray(params["taps"].astype(np.int64))
        self.init = np.ascontiguousarray(params["init"].astype(np.uint16))
        self.weights = params["band_weights"].astype(np.int64)
        self.most = self.weights.shape[0] - 1
        self.precision = int(model.manifest["hyper"].get("precision", 0))
        if not 0 <= self.precision <= MAX_PRECISION:
            raise CodecError(f"{model.ref}: precision {self.precision} outside 0..{MAX_PRECISION}")
        #: the lossy encoder's rate-distortion multiplier (:mod:`.rdo`; 0: the dead-zone indices as they are)
        self.rdo = int(model.manifest["hyper"].get("rdo", 0))
        if not 0 <= self.rdo <= MAX_RDO:
            raise CodecError(f"{model.ref}: rdo {self.rdo} outside 0..{MAX_RDO}")
        return GAINS

    frame_gains = staticmethod(frame_gains)
    #: where a target-PSNR search starts: the gain the last frame coded needed (None: the fixed gain)
    _start: int | None = None

    # -- shared by both sides ---------------------------------------------------------------

    def _steps(self, step: int, levels: int, planes: int) -> np.ndarray:
        """Per plane, per band steps (1/256) for base `step`; all ones (exact) when `step` is 0."""
        if step == 0:
            return np.full((planes, levels + 1, 3), 256, np.int64)
        w = self.weights[levels, :levels + 1]
        out = [np.maximum(256, (step * pw * w + (1 << 23)) >> 24) for pw in _PLANE_WEIGHTS[planes]]
        return np.stack(out)

    def _rebuild(self, q: np.ndarray, step: int, levels: int, rows: int, cols: int, lo: int,
                 hi: int, precision: int) -> np.ndarray:
        """Pixels ``(rows, cols, samples)`` from quantized planes: what every decoder computes.

        `precision`: the fraction bits the lossy planes carry (0 when `step` is 0, lossless).
        """
        steps = self._steps(step, levels, len(q))
        planes = np.empty_like(q)
        for i in range(len(q)):
            planes[i] = q[i] if step == 0 else subband.dequantize(q[i], levels, steps[i])
            lifting.inverse(planes[i], levels, self.taps)
        planes = planes[:, :rows, :cols]
        if precision:
            planes = (planes + (1 << (precision - 1))) >> precision
        pixels = inverse_rct(planes) if len(q) == 3 else planes.transpose(1, 2, 0)
        return pixels if step == 0 else np.clip(pixels, lo, hi)

    # -- encoder ----------------------------------------------------------------------------

    def _transform(self, frame: np.ndarray, levels: int, precision: int) -> np.ndarray:
        """Planes of one frame ``(rows, cols, samples)``, padded, scaled by ``2**precision`` and
        lifted: ``(planes, H, W)`` int64."""
        rows, cols, _ = frame.shape
        planes = rct(frame) if frame.shape[2] == 3 else frame.transpose(2, 0, 1).astype(np.int64)
        size = 1 << levels
        planes = np.pad(planes, ((0, 0), (0, -rows % size), (0, -cols % size)), mode="edge")
        coeffs = np.ascontiguousarray(planes, dtype=np.int64) << precision
        for c in coeffs:
            lifting.forward(c, levels, self.taps)
        return coeffs

    def _quantized(self, coeffs: np.ndarray, levels: int, span: int, gain: int | None) -> tuple[int, np.ndarray]:
        """(base step, quantized planes) at `gain`; ``None``: lossless (step 0, the coefficients).

        The step is in the coefficients' units: `span` scaled by the lossy fraction bits.
        """
        if gain is None:
            return 0, coeffs
        step = base_step(span << self.precision, gain)
        steps = self._steps(step, levels, len(coeffs))
        q = np.stack([subband.quantize(c, levels, s) for c, s in zip(coeffs, steps, strict=False)])
        if self.rdo:
            q = rdo.optimise(coeffs, q, levels, steps, subband.BIAS, self.rdo, self.init)
        return step, q

    @property
    def _shift(self) -> int:
        """The fraction bits of this codec's transform: the model's precision when lossy, else 0."""
        return 0 if self.mode == "lossless" else self.precision

    def subbands(self, frame: np.ndarray) -> tuple[np.ndarray, int]:
        """The integers this codec entropy-codes for one frame at its fixed gain, and the levels."""
        levels = levels_for(frame.shape[0], frame.shape[1], self.most)
        gain = None if self.mode == "lossless" else self.gain
        span = int(frame.max()) - int(frame.min())
        return self._quantized(self._transform(frame, levels, self._shift), levels, span, gain)[1], levels

    def _frame(self, frame: np.ndarray, levels: int, hint: int, rebuild: bool) -> tuple[bytes, np.ndarray | None]:
        rows, cols, _ = frame.shape
        lo, hi = int(frame.min()), int(frame.max())
        shift = self._shift
        coeffs = self._transform(frame, levels, shift)

        def at(gain: int | None) -> tuple[int, int, np.ndarray]:
            step, q = self._quantized(coeffs, levels, hi - lo, gain)
            return step, gain or 0, q

        recon = None  # the pixels a decoder rebuilds, once known
        if self.mode == "lossless":
            step, gain, q = at(None)
        elif self.target_psnr is None:
            step, gain, q = at(self.gain)
        else:  # the smallest gain reaching the target, searched outward from `hint`
            trials: dict[int, tuple[int, int, np.ndarray, np.ndarray]] = {}

            target = self.target_psnr

            def reaches(gain: int) -> bool:
                step, gain, q = at(gain)
                trials[gain] = (step, gain, q, self._rebuild(q, step, levels, rows, cols, lo, hi, shift))
                return psnr(frame, trials[gain][3]) >= target

            found = smallest_passing(reaches, hint, GAINS - 1)
            step, gain, q, recon = trials[GAINS - 1 if found is None else found]
        coded = subband.encode(q, levels, self.init)
        if rebuild and not np.array_equal(subband.decode(coded, q.shape, levels, self.init), q):
            # the pixels returned are rebuilt from `q`: they must be what the stream decodes to
            raise CodecError(f"{self.model.ref}: subbands do not survive their own entropy round trip")
        head = _FRAME.pack(gain, step, lo, hi, len(coded))
        if rebuild and recon is None:
            recon = self._rebuild(q, step, levels, rows, cols, lo, hi, shift)
        return head + coded, recon if rebuild else None

    def encode(self, pixels: np.ndarray, meta: PixelMeta | None = None) -> bytes:
        """Code frames ``(frames, rows, columns, samples)``; see the module docstring.

        The stream is not decoded again here: whoever stores it checks it (the
        payload layer decodes every lossless payload end to end before sealing).
        :meth:`encode_reconstruct` returns the pixels a decoder rebuilds, with
        the entropy round trip checked, for a quality gate.
        """
        return self._encode(pixels, rebuild=False)[0]

    def encode_reconstruct(self, pixels: np.ndarray) -> tuple[bytes, np.ndarray]:
        """The stream and the pixels every decoder will rebuild from it (int64)."""
        stream, recon = self._encode(pixels, rebuild=True)
        assert recon is not None
        return stream, recon

    def _encode(self, pixels: np.ndarray, rebuild: bool) -> tuple[bytes, np.ndarray | None]:
        self._check(pixels)
        frames, rows, cols, samples = pixels.shape
        levels = levels_for(rows, cols, self.most)
        shift = self._shift
        out = [_HEAD.pack(MAGIC2 if shift else MAGIC, MODES.index(self.mode), samples, frames, rows, cols, levels)
               + (_PRECISION.pack(shift) if shift else b"")]
        recon = np.empty(pixels.shape, np.int64) if rebuild else None
        for i in range(frames):
            coded, frame = self._frame(pixels[i], levels, self.gain if self._start is None else self._start,
                                       rebuild)
            if recon is not None:
                assert frame is not None
                recon[i] = frame
            if self.target_psnr is not None:  # the next frame (or slice) likely needs about the same
                self._start = _FRAME.unpack_from(coded)[0]
            out.append(coded)
        if self.mode == "lossless" and recon is not None and not np.array_equal(recon, pixels):
            raise CodecError(f"{self.model.ref}: lossless reconstruction differs from the original")
        return b"".join(out), recon

    # -- decoder ----------------------------------------------------------------------------

    def decode(self, data: bytes, meta: PixelMeta | None = None) -> np.ndarray:
        """Rebuild the frames; integer only, so every machine gets the same pixels."""
        try:
            magic, mode, samples, frames, rows, cols, levels = _HEAD.unpack_from(data)
        except struct.error:
            raise CodecError("wavelet stream truncated") from None
        if magic not in (MAGIC, MAGIC2) or mode >= len(MODES) or samples != self.channels or levels > self.most:
            raise CodecError("not a wavelet-codec stream for this model")
        precision = _PRECISION.unpack_from(data, _HEAD.size)[0] if magic == MAGIC2 and len(data) > _HEAD.size else 0
        if precision > MAX_PRECISION or (magic == MAGIC2 and precision == 0):
            raise CodecError("wavelet stream: bad precision")
        if meta is not None and (meta.frames, meta.rows, meta.columns, meta.samples) != (frames, rows, cols, samples):
            raise CodecError("wavelet stream does not match its pixel description")
        size = 1 << levels
        shape = (3 if samples == 3 else 1, rows + (-rows % size), cols + (-cols % size))
        out = np.empty((frames, rows, cols, samples), np.int64)
        pos = _head_size(magic)
        for i in range(frames):
            try:
                _, step, lo, hi, n = _FRAME.unpack_from(data, pos)
            except struct.error:
                raise CodecError("wavelet stream truncated") from None
            pos += _FRAME.size
            if pos + n > len(data):
                raise CodecError("wavelet stream truncated")
            try:
                q = subband.decode(data[pos:pos + n], shape, levels, self.init)
            except ValueError as exc:
                raise CodecError(f"wavelet stream: {exc}") from None
            pos += n
            out[i] = self._rebuild(q, step, levels, rows, cols, lo, hi, precision if step else 0)
        if pos != len(data):
            raise CodecError("wavelet stream has trailing bytes")
        return out.astype(meta.dtype.newbyteorder("=")) if meta is not None else out
