"""Mutations of real Part 10 files, as a hostile or broken sender would produce them.

Each function takes the bytes of a real file and a :class:`random.Random`
and returns new bytes. They work on the byte stream (element headers found
by a small walker of their own, not by aepacs's scan), so the archive's
parsers meet what they did not write.
"""

from __future__ import annotations

import random
import struct
from collections.abc import Callable

from pydicom.uid import ExplicitVRBigEndian, ImplicitVRLittleEndian

LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"UC", b"UN", b"UR", b"UT"}
ITEM, ITEM_DELIM, SEQ_DELIM = b"\xfe\xff\x00\xe0", b"\xfe\xff\x0d\xe0", b"\xfe\xff\xdd\xe0"


def dataset_bytes(data: bytes) -> bytes:
    """What a C-STORE of the file sends: the bytes after its file meta."""
    return data[_meta_end(data)[0]:]


def with_fresh_uid(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    """`data` with its SOP Instance UID replaced everywhere by a new one of the same length (framing kept)."""
    pos, _ = _meta_end(data)
    meta_uid = None
    p = 132
    while p < pos:
        elem = struct.unpack_from("<H", data, p + 2)[0]
        vr = data[p + 4:p + 6]
        length, start = ((struct.unpack_from("<I", data, p + 8)[0], p + 12) if vr in LONG_VRS
                         else (struct.unpack_from("<H", data, p + 6)[0], p + 8))
        if elem == 0x0003:
            meta_uid = data[start:start + length].rstrip(b"\0 ")
        p = start + length
    if not meta_uid or b"." not in meta_uid:
        return data, ""
    head, last = meta_uid.rsplit(b".", 1)
    digits = str(rng.randrange(1, 10)) + "".join(str(rng.randrange(10)) for _ in range(max(0, len(last) - 1)))
    new = head + b"." + digits.encode()
    return data.replace(meta_uid, new), new.decode()


def _meta_end(data: bytes) -> tuple[int, str]:
    """Where the dataset starts after the file meta, and the transfer syntax."""
    pos, ts = 132, ""
    while pos + 8 <= len(data) and data[pos:pos + 2] == b"\x02\x00":
        elem = struct.unpack_from("<H", data, pos + 2)[0]
        vr = data[pos + 4:pos + 6]
        if vr in LONG_VRS:
            length, start = struct.unpack_from("<I", data, pos + 8)[0], pos + 12
        else:
            length, start = struct.unpack_from("<H", data, pos + 6)[0], pos + 8
        if elem == 0x0010:
            ts = data[start:start + length].decode("ascii", "replace").strip("\0 ")
        pos = start + length
    return pos, ts


def top_elements(data: bytes) -> list[tuple[int, int, bytes | None, int, int]]:
    """(offset, tag, VR, length offset, value start) of the top-level elements with defined length."""
    pos, ts = _meta_end(data)
    implicit, fmt = ts == ImplicitVRLittleEndian, ">" if ts == ExplicitVRBigEndian else "<"
    found = []
    while pos + 8 <= len(data):
        group, elem = struct.unpack_from(f"{fmt}HH", data, pos)
        vr = None if implicit else data[pos + 4:pos + 6]
        if vr is None or not (vr.isalpha() and vr.isupper()):
            vr, len_at, start = None, pos + 4, pos + 8
            length = struct.unpack_from(f"{fmt}I", data, len_at)[0]
        elif vr in LONG_VRS:
            len_at, start = pos + 8, pos + 12
            length = struct.unpack_from(f"{fmt}I", data, len_at)[0] if pos + 12 <= len(data) else 0
        else:
            len_at, start = pos + 6, pos + 8
            length = struct.unpack_from(f"{fmt}H", data, len_at)[0]
        if length == 0xFFFFFFFF:
            break  # a sequence or encapsulated pixels of undefined length: stop here
        found.append((pos, group << 16 | elem, vr, len_at, start))
        pos = start + length
    return found


def byte_flips(data: bytes, rng: random.Random) -> bytes:
    """A few bits flipped in the dataset (the file meta, which says how to send it, kept)."""
    out = bytearray(data)
    start = _meta_end(data)[0]
    for _ in range(rng.randint(1, 8)):
        i = rng.randrange(start, len(out))
        out[i] ^= 1 << rng.randrange(8)
    return bytes(out)


def truncation(data: bytes, rng: random.Random) -> bytes:
    return data[:rng.randrange(_meta_end(data)[0], len(data))]


def length_field(data: bytes, rng: random.Random) -> bytes:
    elements = top_elements(data)
    if not elements:
        return byte_flips(data, rng)
    _, _, vr, len_at, _ = rng.choice(elements)
    out = bytearray(data)
    width = 2 if vr is not None and vr not in LONG_VRS else 4
    value = rng.choice([0, 1, 3, 0xFFFF if width == 2 else 0xFFFFFFFF, rng.randrange(1 << (8 * width))])
    out[len_at:len_at + width] = value.to_bytes(width, "little")
    return bytes(out)


def huge_length(data: bytes, rng: random.Random) -> bytes:
    """A declared length far past the end of the stream (0xFFFFFFF0, 2**31, ...)."""
    elements = [e for e in top_elements(data) if e[2] is None or e[2] in LONG_VRS]
    if not elements:
        return length_field(data, rng)
    _, _, _, len_at, _ = rng.choice(elements)
    out = bytearray(data)
    out[len_at:len_at + 4] = rng.choice([0xFFFFFFF0, 1 << 31, 0x7FFFFFFF, len(data) * 4]).to_bytes(4, "little")
    return bytes(out)


def vr_change(data: bytes, rng: random.Random) -> bytes:
    elements = [e for e in top_elements(data) if e[2] is not None]
    if not elements:
        return byte_flips(data, rng)
    pos = rng.choice(elements)[0]
    out = bytearray(data)
    out[pos + 4:pos + 6] = rng.choice([b"SQ", b"UN", b"OB", b"US", b"UI", b"xx", b"\x00\x00", b"LO"])
    return bytes(out)


def nested_sequence(depth: int, *, undefined: bool = True, tag: int = 0x00081115) -> bytes:
    """An explicit VR little endian sequence element nested `depth` levels (each level one item)."""
    group, elem = tag >> 16, tag & 0xFFFF
    if undefined:
        head = struct.pack("<HH2sHI", group, elem, b"SQ", 0, 0xFFFFFFFF) + ITEM + b"\xff\xff\xff\xff"
        tail = ITEM_DELIM + b"\0\0\0\0" + SEQ_DELIM + b"\0\0\0\0"
        return head * depth + tail * depth
    body = b""
    for _ in range(depth):
        item = ITEM + struct.pack("<I", len(body)) + body
        body = struct.pack("<HH2sHI", group, elem, b"SQ", 0, len(item)) + item
    return body


def with_element(data: bytes, element: bytes, tag: int = 0x00081115) -> bytes:
    """`data` (explicit VR little endian) with `element` inserted at its place in tag order."""
    for pos, t, _, _, _ in top_elements(data):
        if t >= tag:
            return data[:pos] + element + data[pos:]
    return data + element


def nesting(data: bytes, rng: random.Random) -> bytes:
    pos, ts = _meta_end(data)
    if ts in (ImplicitVRLittleEndian, ExplicitVRBigEndian) or not top_elements(data):
        return byte_flips(data, rng)
    depth = rng.choice([2, 8, 31, 32, 33, 64, 200, 2000, 20000])
    return with_element(data, nested_sequence(depth, undefined=rng.random() < 0.7))


UID_SHAPES = ["../../../../tmp/aepacs-fuzz/x", "/tmp/aepacs-fuzz/abs", "1.2.3..4", "1.2.03", ".1.2", "1.2.",
              "1" * 65, "1.2.840.\u00e9", "1.2.3\\1.2.4", "1.2 .3", "", "1.2.3\x00\x00x", "C:\\x\\y"]


def uid_shape(data: bytes, rng: random.Random) -> bytes:
    """A SOP, Series or Study Instance UID replaced by a hostile one (the length field kept consistent)."""
    targets = [e for e in top_elements(data) if e[1] in (0x00080018, 0x0020000E, 0x0020000D)]
    if not targets:
        return byte_flips(data, rng)
    pos, _, vr, len_at, start = rng.choice(targets)
    width = 4 if vr is None else 2
    old_len = int.from_bytes(data[len_at:len_at + width], "little")
    value = rng.choice(UID_SHAPES).encode("utf-8")
    if len(value) % 2:
        value += b"\0"
    return data[:len_at] + len(value).to_bytes(width, "little") + data[len_at + width:start] + value + \
        data[start + old_len:]


def pixel_lie(data: bytes, rng: random.Random) -> bytes:
    """Rows, Columns or Bits Allocated changed so that they no longer describe the pixel data."""
    targets = [e for e in top_elements(data) if e[1] in (0x00280010, 0x00280011, 0x00280100, 0x00280008)]
    if not targets:
        return truncation(data, rng)
    _, tag, _, _, start = rng.choice(targets)
    out = bytearray(data)
    if tag == 0x00280008:  # Number of Frames, IS
        out[start:start + 2] = rng.choice([b"99", b"0 ", b"-1", b"x "])
    else:
        out[start:start + 2] = rng.choice([0, 1, 7, 4096, 65535]).to_bytes(2, "little")
    return bytes(out)


MUTATIONS: dict[str, Callable[[bytes, random.Random], bytes]] = {
    "byte-flips": byte_flips, "truncation": truncation, "length-field": length_field,
    "huge-length": huge_length, "vr-change": vr_change, "nesting": nesting, "uid-shape": uid_shape,
    "pixel-lie": pixel_lie,
}
