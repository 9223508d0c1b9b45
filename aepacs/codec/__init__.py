"""Pixel codecs and the plaintext payload of a sealed object."""

from aepacs.codec.base import Codec, PixelMeta
from aepacs.codec.payload import EncodedObject, decode_object, encode_object, get_codec

__all__ = ["Codec", "PixelMeta", "EncodedObject", "encode_object", "decode_object", "get_codec"]
