"""Lossless codecs: JPEG-LS for native integer images, zstd and raw for bytes.

``jpegls``  CharLS (pyjpegls). Each frame and sample plane is one JPEG-LS
            image. Values are shifted by the object's minimum so signed data
            and data with few distinct high values code well; the bit depth
            is the smallest that holds max - min (2..16 bits).
``zstd``    Zstandard over the stored bytes: float pixels, 1- and 32-bit
            data, odd layouts, and whole non-image objects.
``raw``     The bytes as they came: already-compressed (encapsulated) pixel
            data, which a second compressor would not shrink.
"""

from __future__ import annotations

import struct

import jpeg_ls
import numpy as np
import zstandard

from aepacs.dicom.pixels import PixelMeta
from aepacs.errors import CodecError

_JLS_HEADER = struct.Struct(">4sqBI")  # magic, minimum, bits, plane count
_JLS_MAGIC = b"JLS1"


class JpegLsCodec:
    """JPEG-LS lossless coding of native 8/16-bit, 1- or 3-sample images."""

    id = "jpegls"

    def encode(self, pixels: np.ndarray, meta: PixelMeta | None) -> bytes:
        if pixels.ndim != 4 or pixels.dtype.kind not in "ui" or pixels.dtype.itemsize > 2:
            raise CodecError(f"jpegls: unsupported pixels {pixels.dtype} {pixels.shape}")
        frames, rows, cols, samples = pixels.shape
        if not (1 <= rows <= 65535 and 1 <= cols <= 65535):
            raise CodecError(f"jpegls: image size {rows}x{cols} out of range")
        lo = int(pixels.min()) if pixels.size else 0
        span = (int(pixels.max()) - lo) if pixels.size else 0
        bits = max(2, span.bit_length())
        if bits > 16:
            raise CodecError(f"jpegls: value range {span} needs {bits} bits")
        work = np.dtype("<u1") if bits <= 8 else np.dtype("<u2")
        out = [b""]
        for f in range(frames):
            for s in range(samples):
                plane = (pixels[f, :, :, s].astype(np.int64) - lo).astype(work)
                try:
                    stream = bytes(jpeg_ls.encode_buffer(plane.tobytes(), rows, cols, 1, bits))
                except Exception as exc:  # CharLS raises plain RuntimeError/ValueError
                    raise CodecError(f"jpegls: {exc}") from None
                out.append(struct.pack(">I", len(stream)))
                out.append(stream)
        out[0] = _JLS_HEADER.pack(_JLS_MAGIC, lo, bits, frames * samples)
        return b"".join(out)

    def decode(self, data: bytes, meta: PixelMeta | None) -> np.ndarray:
        if meta is None:
            raise CodecError("jpegls: pixel description missing")
        try:
            magic, lo, bits, planes = _JLS_HEADER.unpack_from(data)
        except struct.error:
            raise CodecError("jpegls: truncated stream") from None
        if magic != _JLS_MAGIC or planes != meta.frames * meta.samples:
            raise CodecError("jpegls: stream does not match its pixel description")
        work = np.dtype("<u1") if bits <= 8 else np.dtype("<u2")
        out = np.empty(meta.shape, dtype=meta.dtype.newbyteorder("="))
        pos = _JLS_HEADER.size
        for f in range(meta.frames):
            for s in range(meta.samples):
                (length,) = struct.unpack_from(">I", data, pos)
                pos += 4
                try:
                    raw, _ = jpeg_ls.decode_buffer(data[pos:pos + length])
                except Exception as exc:  # CharLS raises plain RuntimeError/ValueError
                    raise CodecError(f"jpegls: corrupt plane ({exc})") from None
                pos += length
                plane = np.frombuffer(raw, dtype=work).reshape(meta.rows, meta.columns)
                out[f, :, :, s] = (plane.astype(np.int64) + lo).astype(out.dtype)
        return out


class ZstdCodec:
    """Zstandard over bytes."""

    id = "zstd"

    def __init__(self, level: int = 12) -> None:
        self.level = level

    def encode(self, pixels: np.ndarray, meta: PixelMeta | None) -> bytes:
        return zstandard.ZstdCompressor(level=self.level).compress(np.ascontiguousarray(pixels).tobytes())

    def decode(self, data: bytes, meta: PixelMeta | None) -> np.ndarray:
        try:
            raw = zstandard.ZstdDecompressor().decompress(data)
        except zstandard.ZstdError as exc:
            raise CodecError(f"zstd: corrupt stream ({exc})") from None
        return np.frombuffer(raw, dtype=np.uint8)


class RawCodec:
    """The bytes as they came."""

    id = "raw"

    def encode(self, pixels: np.ndarray, meta: PixelMeta | None) -> bytes:
        return np.ascontiguousarray(pixels).tobytes()

    def decode(self, data: bytes, meta: PixelMeta | None) -> np.ndarray:
        return np.frombuffer(data, dtype=np.uint8)
