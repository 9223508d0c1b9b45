"""The plaintext inside a sealed object: a manifest and coded sections.

Layout::

    u32  manifest length (big-endian)
    ...  manifest, UTF-8 JSON
    ...  header section: zstd of (prefix + suffix) of the Part 10 stream
    ...  pixel section: the pixel codec's stream (absent for whole objects)

The manifest records the original size and SHA-256, where the pixel value
sat in the stream, the pixel codec, its :class:`PixelMeta` and any padding
byte. :func:`decode_object` rebuilds the original stream and checks it
against the recorded hash; :func:`encode_object` runs that check before it
returns, so nothing is sealed that would not come back bit for bit.
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np
import zstandard

from aepacs.codec.base import Codec, PixelMeta, pixels_from_bytes, pixels_to_bytes
from aepacs.codec.lossless import JpegLsCodec, RawCodec, ZstdCodec
from aepacs.codec.part10 import Part10, parse
from aepacs.errors import CodecError

MANIFEST_VERSION = 1
HEADER_ZSTD_LEVEL = 19  # headers are small; spend the time


def get_codec(codec_id: str, zstd_level: int = 12) -> Codec:
    """Return the codec named `codec_id`.

    Raises
    ------
    CodecError
        For an unknown id (an object sealed by a newer aepacs, say).
    """
    if codec_id == "jpegls":
        return JpegLsCodec()
    if codec_id == "zstd":
        return ZstdCodec(zstd_level)
    if codec_id == "raw":
        return RawCodec()
    raise CodecError(f"unknown codec {codec_id!r}")


@dataclass(frozen=True)
class EncodedObject:
    """A DICOM object coded for sealing."""

    payload: bytes
    codec: str
    parts: Part10
    source_sha256: str
    source_size: int


def _as_bytes_array(data: bytes) -> np.ndarray:
    return np.frombuffer(data, dtype=np.uint8)


def _encode_pixels(parts: Part10, lossless: str, zstd_level: int) -> tuple[str, bytes, dict[str, Any]]:
    """Code the pixel value; fall back to zstd unless the image codec round-trips exactly."""
    if parts.encapsulated:
        return "raw", parts.pixels, {}
    meta = parts.meta
    if meta is not None and lossless != "zstd":
        codec = get_codec(lossless, zstd_level)
        trailer = parts.pixels[meta.nbytes:]
        try:
            stream = codec.encode(pixels_from_bytes(parts.pixels, meta), meta)
            back = pixels_to_bytes(codec.decode(stream, meta), meta) + trailer
        except CodecError:
            back = None
        if back == parts.pixels:
            return codec.id, stream, {"meta": meta.to_dict(), "trailer": trailer.hex()}
    return "zstd", ZstdCodec(zstd_level).encode(_as_bytes_array(parts.pixels), None), {}


def encode_object(data: bytes, *, parts: Part10 | None = None, lossless: str = "jpegls",
                  zstd_level: int = 12) -> EncodedObject:
    """Code a Part 10 stream into a payload that decodes to the same bytes.

    Parameters
    ----------
    data : bytes
        The DICOM Part 10 stream as received.
    parts : Part10, optional
        `data` already parsed by :func:`aepacs.codec.part10.parse`.
    lossless : {"jpegls", "zstd"}
        Codec for native integer pixel data.
    zstd_level : int
        Zstandard level for byte sections.

    Returns
    -------
    EncodedObject

    Raises
    ------
    InputError
        `data` is not DICOM.
    CodecError
        The round-trip check failed (a bug; nothing must be sealed then).
    """
    parts = parts or parse(data)
    sha = hashlib.sha256(data).hexdigest()
    manifest: dict[str, Any] = {"v": MANIFEST_VERSION, "size": len(data), "sha256": sha,
                                "prefix": len(parts.prefix)}
    sections = [zstandard.ZstdCompressor(level=HEADER_ZSTD_LEVEL).compress(parts.prefix + parts.suffix)]
    manifest["header"] = {"codec": "zstd", "length": len(sections[0])}
    codec = "zstd"
    if not parts.whole:
        codec, stream, extra = _encode_pixels(parts, lossless, zstd_level)
        sections.append(stream)
        manifest["pixels"] = {"codec": codec, "length": len(stream), **extra}
    blob = json.dumps(manifest, separators=(",", ":")).encode("utf-8")
    payload = b"".join([struct.pack(">I", len(blob)), blob, *sections])
    if decode_object(payload) != data:
        raise CodecError("payload does not decode to the original bytes")
    return EncodedObject(payload, codec, parts, sha, len(data))


def read_manifest(payload: bytes) -> tuple[dict[str, Any], int]:
    """Return the manifest of a payload and the offset of its first section."""
    try:
        (n,) = struct.unpack_from(">I", payload)
        manifest = json.loads(payload[4:4 + n].decode("utf-8"))
    except (struct.error, ValueError) as exc:
        raise CodecError(f"payload manifest unreadable ({exc})") from None
    if manifest.get("v") != MANIFEST_VERSION:
        raise CodecError(f"payload version {manifest.get('v')} not supported")
    return manifest, 4 + n


def decode_object(payload: bytes) -> bytes:
    """Rebuild the original Part 10 stream from a payload.

    Raises
    ------
    CodecError
        A section does not decode, or the result does not match the
        recorded SHA-256.
    """
    manifest, pos = read_manifest(payload)
    try:
        hlen = manifest["header"]["length"]
        header = zstandard.ZstdDecompressor().decompress(payload[pos:pos + hlen])
        pos += hlen
        cut = manifest["prefix"]
        pixels = b""
        if "pixels" in manifest:
            info = manifest["pixels"]
            stream = payload[pos:pos + info["length"]]
            codec = get_codec(info["codec"])
            if "meta" in info:
                meta = PixelMeta.from_dict(info["meta"])
                pixels = pixels_to_bytes(codec.decode(stream, meta), meta) + bytes.fromhex(info["trailer"])
            else:
                pixels = codec.decode(stream, None).tobytes()
    except (KeyError, TypeError, ValueError, zstandard.ZstdError) as exc:
        raise CodecError(f"payload damaged ({type(exc).__name__}: {exc})") from None
    data = header[:cut] + pixels + header[cut:]
    if len(data) != manifest["size"] or hashlib.sha256(data).hexdigest() != manifest["sha256"]:
        raise CodecError("decoded object does not match its recorded SHA-256")
    return data
