"""The mixing codec (architecture ``mixing``, the ``@4`` models): lossless only.

Encode, per frame:

1. colour frames go through JPEG 2000's reversible colour transform (RCT);
2. each plane is offset by its minimum, so the coder sees ``0..span``; a plane
   that uses at most a quarter of the values in its span (a sparse histogram:
   rescaled or synthetic images) is coded as the ranks of its values, with
   the set of values sent as a zstd-compressed bitmap;
3. the plane is coded by :mod:`aepacs.codec.learned.mixing.kernel`, starting
   from the model's trained state for its kind of plane (grey or luma: kind 0;
   the two chroma differences: kind 1); a chroma plane has the plane coded
   before it (Y for Cb, Cb for Cr) as a context.

Decoding undoes the same steps and gives the original integers bit for bit.
There are no lossy operating points: a lossy route names a wavelet model.

Stream (big-endian)::

    "AEM1" u8 samples, u32 frames, u32 rows, u32 columns
    per frame, per plane: i32 min, u32 span, u32 bitmap bytes (0: no value map),
                          u32 bytes, the bitmap, the coded plane
"""

from __future__ import annotations

import struct

import numpy as np
import zstandard

from aepacs.codec.learned.base import LearnedCodec, ModelFiles
from aepacs.codec.learned.colour import inverse_rct, rct
from aepacs.codec.learned.mixing import kernel
from aepacs.dicom.pixels import PixelMeta
from aepacs.errors import CodecError

MAGIC = b"AEM1"
_HEAD = struct.Struct(">4sBIII")
_PLANE = struct.Struct(">iIII")
#: the state arrays of one plane kind, as named in the weight file ("<kind>.<name>")
STATE = ("slots", "counts", "mixer", "apm", "lms")
KINDS = {1: (0,), 3: (0, 1, 1)}

__all__ = ["KINDS", "MAGIC", "MixingCodec", "planes_of", "frame_of"]


def planes_of(frame: np.ndarray) -> np.ndarray:
    """The planes a frame ``(rows, cols, samples)`` is coded as: ``(planes, rows, cols)`` int64 (RCT for colour)."""
    return rct(frame) if frame.shape[2] == 3 else frame.transpose(2, 0, 1).astype(np.int64)


def frame_of(planes: np.ndarray) -> np.ndarray:
    """Undo :func:`planes_of`."""
    return inverse_rct(planes) if len(planes) == 3 else planes.transpose(1, 2, 0)


def _value_map(plane: np.ndarray, span: int) -> tuple[np.ndarray, bytes]:
    """(the plane as ranks of its values, the compressed bitmap of those values), or ``(plane, b"")``."""
    values = np.unique(plane)
    if len(values) > (span + 1) // 4:
        return plane, b""
    bitmap = np.zeros(span + 1, np.uint8)
    bitmap[values] = 1
    return np.searchsorted(values, plane), zstandard.ZstdCompressor(level=19).compress(np.packbits(bitmap).tobytes())


def _values(packed: bytes, span: int) -> np.ndarray:
    try:
        if not 0 <= zstandard.frame_content_size(packed) <= (span + 8) // 8:  # a bitmap of the span, no bomb
            raise CodecError("mixing stream: value map larger than its span")
        bitmap = zstandard.ZstdDecompressor().decompress(packed)
        bits = np.unpackbits(np.frombuffer(bitmap, np.uint8))
    except zstandard.ZstdError:
        raise CodecError("mixing stream: corrupt value map") from None
    values = np.flatnonzero(bits[:span + 1])
    if len(values) == 0:
        raise CodecError("mixing stream: empty value map")
    return values


class MixingCodec(LearnedCodec):
    """A ``mixing`` registry model as a lossless image codec (see the module docstring)."""

    arch = "mixing"
    kind = "mixing codec"
    magic = MAGIC
    lossy = False

    def _load(self, model: ModelFiles) -> int:
        params = model.tensors("mixing.safetensors")
        kinds = sorted({k for ks in KINDS.values() for k in ks if f"{k}.slots" in params})
        self.states = {k: {name: np.ascontiguousarray(params[f"{k}.{name}"], dtype=np.int64) for name in STATE}
                       for k in kinds}
        return 1

    @staticmethod
    def frame_gains(data: bytes) -> list[int]:
        """Every frame of a mixing stream is lossless (gain 0)."""
        return [0] * _HEAD.unpack_from(data)[2]

    def _states_for(self, samples: int) -> list[dict[str, np.ndarray]]:
        try:
            return [self.states[k] for k in KINDS[samples]]
        except KeyError:
            raise CodecError(f"{self.model.ref} has no state for {samples}-sample images") from None

    def encode(self, pixels: np.ndarray, meta: PixelMeta | None = None) -> bytes:
        """Code frames ``(frames, rows, columns, samples)`` losslessly."""
        if self.mode != "lossless":
            raise CodecError(f"{self.model.ref} is a lossless model (architecture mixing): a lossy route "
                             f"names a wavelet model, such as ct@3")
        self._check(pixels)
        frames, rows, cols, samples = pixels.shape
        states = self._states_for(samples)
        out = [_HEAD.pack(MAGIC, samples, frames, rows, cols)]
        for i in range(frames):
            planes = planes_of(pixels[i])
            for j, (plane, state) in enumerate(zip(planes, states, strict=True)):
                lo = int(plane.min())
                span = int(plane.max()) - lo
                ranks, packed = _value_map(plane - lo, span)
                coded = kernel.encode(ranks, int(ranks.max()), state, side=planes[j - 1] if j else None)
                out.append(_PLANE.pack(lo, span, len(packed), len(coded)) + packed + coded)
        return b"".join(out)

    def encode_reconstruct(self, pixels: np.ndarray) -> tuple[bytes, np.ndarray]:
        """The stream and the pixels it decodes to (checked equal to `pixels`)."""
        stream = self.encode(pixels)
        recon = self.decode(stream)
        if not np.array_equal(recon, pixels):
            raise CodecError(f"{self.model.ref}: lossless reconstruction differs from the original")
        return stream, recon

    def decode(self, data: bytes, meta: PixelMeta | None = None) -> np.ndarray:
        """Rebuild the frames; integer only, so every machine gets the same pixels."""
        try:
            magic, samples, frames, rows, cols = _HEAD.unpack_from(data)
        except struct.error:
            raise CodecError("mixing stream truncated") from None
        if magic != MAGIC or samples != self.channels:
            raise CodecError("not a mixing-codec stream for this model")
        if meta is not None and (meta.frames, meta.rows, meta.columns, meta.samples) != (frames, rows, cols, samples):
            raise CodecError("mixing stream does not match its pixel description")
        states = self._states_for(samples)
        out = np.empty((frames, rows, cols, samples), np.int64)
        pos = _HEAD.size
        for i in range(frames):
            planes = np.empty((len(states), rows, cols), np.int64)
            for j, state in enumerate(states):
                try:
                    lo, span, m, n = _PLANE.unpack_from(data, pos)
                except struct.error:
                    raise CodecError("mixing stream truncated") from None
                pos += _PLANE.size
                if pos + m + n > len(data):
                    raise CodecError("mixing stream truncated")
                values = _values(data[pos:pos + m], span) if m else None
                pos += m
                try:
                    ranks = kernel.decode(data[pos:pos + n], rows, cols, span if values is None else len(values) - 1,
                                          state, side=planes[j - 1] if j else None)
                except ValueError as exc:
                    raise CodecError(f"mixing stream: {exc}") from None
                planes[j] = (ranks if values is None else values[ranks]) + lo
                pos += n
            out[i] = frame_of(planes)
        if pos != len(data):
            raise CodecError("mixing stream has trailing bytes")
        return out.astype(meta.dtype.newbyteorder("=")) if meta is not None else out
