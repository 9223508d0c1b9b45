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

A learned ``lossy`` pixel section is the exception, and says so: its
manifest carries a ``lossy`` record (the reconstruction's SHA-256, PSNR,
SSIM, ratio, model). Decoding rebuilds the original header around the
reconstructed pixels and checks *that* hash, so a decoder that does not
reproduce the encoder's pixels exactly fails loudly too.
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import zstandard

from aepacs.codec.base import Codec
from aepacs.codec.learned.base import LearnedCodec
from aepacs.codec.lossless import HtJ2kCodec, JpegLsCodec, JpegXlCodec, RawCodec, ZstdCodec
from aepacs.codec.quality import psnr, ssim
from aepacs.dicom.part10 import Part10, parse
from aepacs.dicom.pixels import PixelMeta, pixels_from_bytes, pixels_to_bytes
from aepacs.errors import CodecError

MANIFEST_VERSION = 1
HEADER_ZSTD_LEVEL = 19  # headers are small; spend the time


@dataclass(frozen=True)
class QualityFloor:
    """The quality gate of a lossy route: below either floor, the object goes lossless."""

    min_psnr: float = 0.0
    min_ssim: float = 0.0


#: The codec of a learned object, by model reference (``"ct@3"``); supplied by the caller,
#: who knows where the models are (:func:`aepacs.pipeline.codecs.resolver`).
Resolver = Callable[[str], Codec]


def get_codec(codec_id: str, zstd_level: int = 12, resolve: Resolver | None = None) -> Codec:
    """Return the codec named `codec_id` (``ae:NAME@VERSION``: a model, found by `resolve`).

    Raises
    ------
    CodecError
        For an unknown id (an object sealed by a newer aepacs, say), a
        learned id without a resolver, or a model `resolve` cannot give.
    """
    if codec_id.startswith("ae:"):
        if resolve is None:
            raise CodecError(f"{codec_id}: a learned object, and no model registry to decode it with")
        return resolve(codec_id[3:])
    if codec_id == "jpegls":
        return JpegLsCodec()
    if codec_id == "jpegxl":
        return JpegXlCodec()
    if codec_id == "htj2k":
        return HtJ2kCodec()
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
    lossy: dict[str, Any] | None = None
    gate: str | None = None  # why a lossy route fell back to lossless


def _candidates(parts: Part10, lossless: str) -> list[str | None]:
    """Pixel codecs to try, best first; the last always works. None: no pixel section."""
    if parts.whole:
        return [None]
    if parts.encapsulated:
        return ["raw"]  # already compressed: kept as it came
    if parts.meta is not None and lossless != "zstd":
        return [lossless, "zstd"]
    return ["zstd"]


def _pixel_section(parts: Part10, codec_id: str, zstd_level: int) -> tuple[bytes, dict[str, Any]]:
    codec = get_codec(codec_id, zstd_level)
    if codec_id in ("raw", "zstd"):
        return codec.encode(np.frombuffer(parts.pixels, dtype=np.uint8), None), {}
    meta = parts.meta
    assert meta is not None
    stream = codec.encode(pixels_from_bytes(parts.pixels, meta), meta)
    return stream, {"meta": meta.to_dict(), "trailer": parts.pixels[meta.nbytes:].hex()}


def encode_object(data: bytes, *, parts: Part10 | None = None, lossless: str = "jpegls",
                  zstd_level: int = 12, header_level: int = HEADER_ZSTD_LEVEL,
                  sha256: str | None = None, learned: LearnedCodec | None = None,
                  floor: QualityFloor | None = None) -> EncodedObject:
    """Code a Part 10 stream into a payload that decodes to the same bytes.

    Each candidate pixel codec is tried in turn (JPEG-LS, then zstd); the
    first payload that :func:`decode_object` turns back into exactly `data`
    is returned.

    Parameters
    ----------
    data : bytes
        The DICOM Part 10 stream as received.
    parts : Part10, optional
        `data` already parsed by :func:`aepacs.dicom.part10.parse`.
    lossless : {"jpegls", "htj2k", "jpegxl", "zstd"}
        Codec for native integer pixel data.
    zstd_level : int
        Zstandard level for byte sections.
    header_level : int
        Zstandard level for the header section.
    sha256 : str, optional
        SHA-256 of `data` (hex), when the caller has it already.
    learned : LearnedCodec, optional
        Tried first for native integer pixels it can code; a ``lossy`` one
        must pass `floor` (PSNR and SSIM of its own decoded output), else
        the lossless candidates follow and ``gate`` says why.
    floor : QualityFloor, optional

    Returns
    -------
    EncodedObject

    Raises
    ------
    InputError
        `data` is not DICOM.
    CodecError
        No candidate round-trips (a bug; nothing must be sealed then).
    """
    parts = parts or parse(data)
    sha = sha256 or hashlib.sha256(data).hexdigest()
    header = zstandard.ZstdCompressor(level=header_level).compress(parts.prefix + parts.suffix)
    manifest: dict[str, Any] = {"v": MANIFEST_VERSION, "size": len(data), "sha256": sha,
                                "prefix": len(parts.prefix), "header": {"codec": "zstd", "length": len(header)}}
    gate = None
    if learned is not None and parts.meta is not None and not parts.encapsulated and not parts.whole:
        try:
            return _encode_learned(data, parts, learned, dict(manifest), header, floor or QualityFloor())
        except CodecError as exc:
            gate = str(exc)
    for codec_id in _candidates(parts, lossless):
        sections = [header]
        if codec_id is not None:
            try:
                stream, extra = _pixel_section(parts, codec_id, zstd_level)
            except CodecError:
                continue
            sections.append(stream)
            manifest["pixels"] = {"codec": codec_id, "length": len(stream), **extra}
        payload = _assemble(manifest, sections)
        try:
            if _round_trips(payload):
                return EncodedObject(payload, codec_id or "zstd", parts, sha, len(data), gate=gate)
        except CodecError:
            pass
    raise CodecError("no codec reproduces the original bytes")


def _assemble(manifest: dict[str, Any], sections: list[bytes]) -> bytes:
    blob = json.dumps(manifest, separators=(",", ":")).encode("utf-8")
    return b"".join([struct.pack(">I", len(blob)), blob, *sections])


def _round_trips(payload: bytes, codec: Codec | None = None) -> bool:
    """Whether `payload` decodes to the exact original (checked on the rebuilt bytes' hash)."""
    decoded, *rebuilt = _decode_parts(payload, codec=codec)
    return _matches(decoded, tuple(rebuilt))  # type: ignore[arg-type]


def _encode_learned(data: bytes, parts: Part10, codec: LearnedCodec, manifest: dict[str, Any], header: bytes,
                    floor: QualityFloor) -> EncodedObject:
    """The learned pixel section; lossy output measured against `floor` first."""
    meta = parts.meta
    assert meta is not None
    original = pixels_from_bytes(parts.pixels, meta)
    if codec.mode == "lossless":  # checked end to end below, on the whole payload
        stream, recon = codec.encode(original, meta), None
    else:
        stream, recon = codec.encode_reconstruct(original)
    manifest["pixels"] = {"codec": codec.id, "length": len(stream), "meta": meta.to_dict(),
                          "trailer": parts.pixels[meta.nbytes:].hex()}
    if recon is None or np.array_equal(recon, original):  # lossless, or nothing lost: an ordinary object
        payload = _assemble(manifest, [header, stream])
        if not _round_trips(payload, codec):
            raise CodecError(f"{codec.id} lossless round trip differs")
        return EncodedObject(payload, codec.id, parts, manifest["sha256"], len(data))
    assert recon is not None
    recon = recon.astype(meta.dtype.newbyteorder("="))
    quality = {"psnr": round(psnr(original, recon), 3), "ssim": round(ssim(original, recon), 5)}
    if quality["psnr"] < floor.min_psnr or quality["ssim"] < floor.min_ssim:
        raise CodecError(f"{codec.id} quality gate: PSNR {quality['psnr']:.2f} dB, SSIM {quality['ssim']:.4f} "
                         f"below the floor ({floor.min_psnr} dB, {floor.min_ssim})")
    recon_bytes = pixels_to_bytes(recon, meta)
    manifest["lossy"] = {"recon_sha256": hashlib.sha256(recon_bytes).hexdigest(), "model": codec.id[3:],
                         "ratio": round(len(parts.pixels) / max(len(stream), 1), 3), **quality}
    payload = _assemble(manifest, [header, stream])
    return EncodedObject(payload, codec.id, parts, manifest["sha256"], len(data), lossy=manifest["lossy"])


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


def _decode_parts(payload: bytes, codec: Codec | None = None,
                  resolve: Resolver | None = None) -> tuple[dict[str, Any], bytes, bytes, bytes]:
    """Decode a payload into (manifest, prefix, pixels, suffix) without joining them."""
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
            codec = codec or get_codec(info["codec"], resolve=resolve)
            if "meta" in info:
                meta = PixelMeta.from_dict(info["meta"])
                pixels = pixels_to_bytes(codec.decode(stream, meta), meta) + bytes.fromhex(info["trailer"])
            elif info["codec"] == "raw":
                pixels = stream
            else:
                pixels = codec.decode(stream, None).tobytes()
    except (KeyError, TypeError, ValueError, zstandard.ZstdError) as exc:
        raise CodecError(f"payload damaged ({type(exc).__name__}: {exc})") from None
    return manifest, header[:cut], pixels, header[cut:]


def _matches(manifest: dict[str, Any], parts: tuple[bytes, bytes, bytes]) -> bool:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part)
    return sum(map(len, parts)) == manifest["size"] and digest.hexdigest() == manifest["sha256"]


def decode_payload(payload: bytes, resolve: Resolver | None = None) -> tuple[bytes, dict[str, Any] | None]:
    """Rebuild the Part 10 stream of a payload and say whether it is a lossy reconstruction.

    Parameters
    ----------
    payload : bytes
    resolve : Resolver, optional
        The codec of a model reference; needed for learned objects.

    Returns
    -------
    (bytes, dict or None)
        The original stream, or for a learned lossy object the original
        header around the reconstructed pixels; and that object's ``lossy``
        record (model, PSNR, SSIM, ratio) or None.

    Raises
    ------
    CodecError
        A section does not decode, or the result does not match the
        recorded SHA-256 (of the original, or of the reconstruction).
    """
    manifest, prefix, pixels, suffix = _decode_parts(payload, resolve=resolve)
    lossy = manifest.get("lossy")
    if lossy is not None:
        meta = PixelMeta.from_dict(manifest["pixels"]["meta"])
        if hashlib.sha256(pixels[:meta.nbytes]).hexdigest() != lossy["recon_sha256"]:
            raise CodecError("decoded pixels differ from the reconstruction recorded at sealing "
                             "(a decoder that does not reproduce the encoder)")
        return prefix + pixels + suffix, lossy
    if not _matches(manifest, (prefix, pixels, suffix)):
        raise CodecError("decoded object does not match its recorded SHA-256")
    return prefix + pixels + suffix, None


def decode_object(payload: bytes, resolve: Resolver | None = None) -> bytes:
    """Rebuild the original Part 10 stream from a lossless payload.

    Raises
    ------
    CodecError
        A section does not decode, the result does not match the recorded
        SHA-256, or the payload is a lossy reconstruction.
    """
    data, lossy = decode_payload(payload, resolve)
    if lossy is not None:
        raise CodecError("payload holds a lossy reconstruction, not the original")
    return data
