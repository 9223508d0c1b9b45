"""Lossless codecs: JPEG-LS, HTJ2K and JPEG-XL for native integer images, zstd and raw for bytes.

``jpegls``  CharLS (pyjpegls). Each frame and sample plane is one JPEG-LS
            image. Values are shifted by the object's minimum so signed data
            and data with few distinct high values code well; the bit depth
            is the smallest that holds max - min (2..16 bits).
``jpegxl``  libjxl (imagecodecs), lossless at effort 7. Each frame is one
            JPEG-XL image (grey, or RGB with JPEG-XL's own reversible colour
            transforms), shifted by the object's minimum like JPEG-LS. Far
            smaller than JPEG-LS on colour ultrasound and screenshots
            (palette, MA-tree contexts: 10.2:1 against 3.5:1 on ``US1_UNCR``),
            and about 20 times slower.
``htj2k``   High-Throughput JPEG 2000 (OpenJPH through imagecodecs),
            reversible. Each frame and sample plane is one codestream,
            shifted like JPEG-LS. About 8 % larger than JPEG-LS on CT, and
            four times faster to decode: for sites that read more than they
            store.
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

#: the stream header of both image codecs: magic, minimum, bit depth, count (JPEG-LS: planes,
#: JPEG-XL: frames); then per plane or frame a u32 length and the codestream
_HEADER = struct.Struct(">4sqBI")
_JLS_MAGIC = b"JLS1"
_JXL_MAGIC = b"JXL1"
_HTJ_MAGIC = b"HTJ1"
JXL_EFFORT = 7


def _offset(pixels: np.ndarray, name: str) -> tuple[int, int, np.dtype]:
    """(minimum, bits of max - min, the unsigned type that holds them) of native integer pixels."""
    if pixels.ndim != 4 or pixels.dtype.kind not in "ui" or pixels.dtype.itemsize > 2 or pixels.size == 0:
        raise CodecError(f"{name}: unsupported pixels {pixels.dtype} {pixels.shape}")
    lo = int(pixels.min())
    bits = max(2, (int(pixels.max()) - lo).bit_length())
    if bits > 16:
        raise CodecError(f"{name}: value range needs {bits} bits")
    return lo, bits, np.dtype("<u1") if bits <= 8 else np.dtype("<u2")


def _header(data: bytes, name: str, magic: bytes, count: int) -> tuple[int, int]:
    """(minimum, bits) of a `name` stream whose header must give `magic` and `count`."""
    try:
        got, lo, bits, n = _HEADER.unpack_from(data)
    except struct.error:
        raise CodecError(f"{name}: truncated stream") from None
    if got != magic or n != count or not 2 <= bits <= 16:
        raise CodecError(f"{name}: stream does not match its pixel description")
    return lo, bits


class _PlaneCodec:
    """Lossless coding of native 8/16-bit images one frame and sample plane at a time: the stream header,
    then per plane a u32 length and the codestream of its values less the object's minimum."""

    id = ""
    magic = b""

    def _encode_plane(self, plane: np.ndarray, bits: int) -> bytes:
        raise NotImplementedError

    def _decode_plane(self, stream: bytes, rows: int, columns: int, work: np.dtype) -> np.ndarray:
        raise NotImplementedError

    def encode(self, pixels: np.ndarray, meta: PixelMeta | None) -> bytes:
        lo, bits, work = _offset(pixels, self.id)
        frames, rows, cols, samples = pixels.shape
        if not (1 <= rows <= 65535 and 1 <= cols <= 65535):
            raise CodecError(f"{self.id}: image size {rows}x{cols} out of range")
        out = [_HEADER.pack(self.magic, lo, bits, frames * samples)]
        for f in range(frames):
            for s in range(samples):
                plane = np.ascontiguousarray((pixels[f, :, :, s].astype(np.int64) - lo).astype(work))
                try:
                    stream = self._encode_plane(plane, bits)
                except CodecError:
                    raise
                except Exception as exc:  # the libraries raise their own kinds (RuntimeError, ValueError, ...)
                    raise CodecError(f"{self.id}: {exc}") from None
                out += [struct.pack(">I", len(stream)), stream]
        return b"".join(out)

    def decode(self, data: bytes, meta: PixelMeta | None) -> np.ndarray:
        if meta is None:
            raise CodecError(f"{self.id}: pixel description missing")
        lo, bits = _header(data, self.id, self.magic, meta.frames * meta.samples)
        work = np.dtype("<u1") if bits <= 8 else np.dtype("<u2")
        out = np.empty(meta.shape, dtype=meta.dtype.newbyteorder("="))
        pos = _HEADER.size
        for f in range(meta.frames):
            for s in range(meta.samples):
                try:
                    (length,) = struct.unpack_from(">I", data, pos)
                    plane = self._decode_plane(data[pos + 4:pos + 4 + length], meta.rows, meta.columns, work)
                except CodecError:
                    raise
                except Exception as exc:  # struct.error, the libraries' own kinds
                    raise CodecError(f"{self.id}: corrupt plane ({exc})") from None
                pos += 4 + length
                if plane.shape != (meta.rows, meta.columns) or plane.dtype != work:
                    raise CodecError(f"{self.id}: plane does not match its pixel description")
                # in int32 (8/16-bit values and their minimum), cast once into the output
                np.add(plane, np.int32(lo), out=out[f, :, :, s], dtype=np.int32, casting="unsafe")
        return out


class JpegLsCodec(_PlaneCodec):
    """JPEG-LS lossless coding of native 8/16-bit, 1- or 3-sample images (CharLS)."""

    id = "jpegls"
    magic = _JLS_MAGIC

    def _encode_plane(self, plane: np.ndarray, bits: int) -> bytes:
        rows, cols = plane.shape
        return bytes(jpeg_ls.encode_buffer(plane.tobytes(), rows, cols, 1, bits))

    def _decode_plane(self, stream: bytes, rows: int, columns: int, work: np.dtype) -> np.ndarray:
        raw, _ = jpeg_ls.decode_buffer(stream)
        return np.frombuffer(raw, dtype=work).reshape(rows, columns)


class HtJ2kCodec(_PlaneCodec):
    """HTJ2K (High-Throughput JPEG 2000, ISO/IEC 15444-15) lossless, through imagecodecs (OpenJPH):
    reversible 5/3 wavelet, block coding built for speed. About 8 % larger than JPEG-LS on CT and
    four times faster to decode (``docs/BENCHMARKS.md``): for archives whose reads must be fast."""

    id = "htj2k"
    magic = _HTJ_MAGIC

    def _encode_plane(self, plane: np.ndarray, bits: int) -> bytes:
        import imagecodecs  # noqa: PLC0415 -- OpenJPH loads only where a route uses it

        return bytes(imagecodecs.htj2k_encode(plane, reversible=True))

    def _decode_plane(self, stream: bytes, rows: int, columns: int, work: np.dtype) -> np.ndarray:
        import imagecodecs  # noqa: PLC0415 -- OpenJPH loads only where an object needs it

        return np.asarray(imagecodecs.htj2k_decode(stream))


class JpegXlCodec:
    """JPEG-XL lossless coding of native 8/16-bit, 1- or 3-sample images (libjxl through imagecodecs)."""

    id = "jpegxl"

    def encode(self, pixels: np.ndarray, meta: PixelMeta | None) -> bytes:
        import imagecodecs  # noqa: PLC0415 -- libjxl loads only where a route uses it

        lo, bits, work = _offset(pixels, "jpegxl")
        frames, rows, cols, samples = pixels.shape
        if samples not in (1, 3):
            raise CodecError(f"jpegxl: {samples} samples per pixel")
        out = [_HEADER.pack(_JXL_MAGIC, lo, bits, frames)]
        for f in range(frames):
            frame = (pixels[f].astype(np.int64) - lo).astype(work)
            try:
                stream = bytes(imagecodecs.jpegxl_encode(frame[..., 0] if samples == 1 else frame, lossless=True,
                                                         effort=JXL_EFFORT, bitspersample=bits))
            except Exception as exc:  # imagecodecs raises its own JpegxlError (and ValueError)
                raise CodecError(f"jpegxl: {exc}") from None
            out += [struct.pack(">I", len(stream)), stream]
        return b"".join(out)

    def decode(self, data: bytes, meta: PixelMeta | None) -> np.ndarray:
        import imagecodecs  # noqa: PLC0415 -- libjxl loads only where an object needs it

        if meta is None:
            raise CodecError("jpegxl: pixel description missing")
        lo, _ = _header(data, "jpegxl", _JXL_MAGIC, meta.frames)
        out = np.empty(meta.shape, dtype=meta.dtype.newbyteorder("="))
        pos = _HEADER.size
        for f in range(meta.frames):
            try:
                (length,) = struct.unpack_from(">I", data, pos)
                frame = imagecodecs.jpegxl_decode(data[pos + 4:pos + 4 + length])
            except Exception as exc:  # struct.error, imagecodecs' JpegxlError
                raise CodecError(f"jpegxl: corrupt frame ({exc})") from None
            pos += 4 + length
            if frame.size != meta.rows * meta.columns * meta.samples or frame.dtype.kind != "u":
                raise CodecError("jpegxl: frame does not match its pixel description")
            out[f] = (frame.reshape(meta.rows, meta.columns, meta.samples).astype(np.int64) + lo).astype(out.dtype)
        if pos != len(data):
            raise CodecError("jpegxl: trailing bytes")
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
