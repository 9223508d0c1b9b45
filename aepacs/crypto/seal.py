"""The sealed-object container (see ``docs/FORMAT.md``).

Layout (all integers big-endian)::

    0      4   magic b"AEPX"
    4      2   format version (1)
    6      4   H, length of the header fields
    10     H   header fields, each: u8 tag, u16 length, value
    10+H   64  key slot: u32 KEK version, 12-byte wrap nonce,
               32-byte wrapped data key, 16-byte wrap tag
    74+H   L   ciphertext of the payload (L is header field 6)
    74+H+L 16  GCM tag of the payload

The key slot may instead be a recipient's (:class:`RecipientSlot`: the data key sealed by HPKE to one
reader's public key) or a blind archive's list of them (:class:`RecipientList`); both are longer than 64
bytes and start with a mark no KEK version takes.

Bytes ``[0, 10+H)`` are the associated data of the payload: a blob moved
onto another object, or any header edit, fails to open. The data key (DEK)
is fresh per object and wrapped with AES-256-GCM under a key-encryption key
(KEK); the wrap's associated data is the KEK version and the SHA-256 of the
header, so a key slot moved from another object fails too. The key slot
sits outside the payload's associated data so that key rotation can rewrap
the data key without touching the ciphertext (:func:`rewrap`).
"""

from __future__ import annotations

import hashlib
import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hpke
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from aepacs.crypto.keyring import Keyring
from aepacs.crypto.recipients import Recipient, RecipientKey
from aepacs.errors import KeyringError, MissingKeyError, OpenError, RecipientRefused, SealError

MAGIC = b"AEPX"
FORMAT_VERSION = 1
NONCE_BYTES = 12
TAG_BYTES = 16
DEK_BYTES = 32
_PREAMBLE = struct.Struct(">4sHI")
_SLOT = struct.Struct(f">I{NONCE_BYTES}s{DEK_BYTES}s{TAG_BYTES}s")
SLOT_BYTES = _SLOT.size
#: HPKE (RFC 9180) base mode as recipient key slots use it: DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, AES-256-GCM.
SUITE = hpke.Suite(hpke.KEM.X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM)
#: What a sealed object may be read from: its bytes, or a view of a buffer it was read into.
Readable = bytes | bytearray | memoryview

# header field tags
F_OBJECT_UID, F_STUDY_UID, F_CODEC, F_SEALED_KEK, F_NONCE, F_PAYLOAD_LEN = 1, 2, 3, 4, 5, 6
_TEXT_FIELDS = {F_OBJECT_UID: "object_uid", F_STUDY_UID: "study_uid", F_CODEC: "codec"}


@dataclass(frozen=True)
class KeySlot:
    """The wrapped data key and the KEK version that wraps it."""

    kek_version: int
    nonce: bytes = field(repr=False)
    wrapped_key: bytes = field(repr=False)
    tag: bytes = field(repr=False)

    @property
    def size(self) -> int:
        return SLOT_BYTES

    def pack(self) -> bytes:
        return _SLOT.pack(self.kek_version, self.nonce, self.wrapped_key, self.tag)


#: The first four bytes of a recipient key slot, where a KEK slot has its KEK version (never this one).
RECIPIENT_MARK = 0xFFFFFFFF
_RSLOT = struct.Struct(">IHB")  # mark, length of what follows, length of the recipient id
#: What HPKE adds to the 32-byte data key: the encapsulated X25519 key and the AES-GCM tag.
_HPKE_BYTES = 32 + DEK_BYTES + TAG_BYTES


@dataclass(frozen=True)
class RecipientSlot:
    """The data key wrapped to one recipient's public key by HPKE (see :mod:`aepacs.crypto.recipients`)."""

    recipient_id: str
    sealed_key: bytes = field(repr=False)  # HPKE's encapsulated key, then the wrapped data key and its tag

    kek_version = 0  # (no KEK opens it)

    @property
    def size(self) -> int:
        return _RSLOT.size + len(self.recipient_id) + len(self.sealed_key)

    def pack(self) -> bytes:
        rid = self.recipient_id.encode("ascii")
        return _RSLOT.pack(RECIPIENT_MARK, 1 + len(rid) + len(self.sealed_key), len(rid)) + rid + self.sealed_key


#: The first four bytes of a recipient list (a blind archive's key slot: the data key wrapped to each of
#: several recipients), where a KEK slot has its version and a single recipient's slot its own mark.
RECIPIENTS_MARK = 0xFFFFFFFE
_LSLOT = struct.Struct(">IH")  # mark, number of recipient slots that follow
#: The most recipients one object may be sealed to.
MAX_RECIPIENTS = 64
#: Bytes that hold any sealed object's clear header and key slot (a header is under 1 kB; a list of the most
#: recipients under 8 kB).
HEAD_BYTES = 16384


@dataclass(frozen=True)
class RecipientList:
    """The data key wrapped to each of several recipients (``sealing: recipients-only``): one
    :class:`RecipientSlot` each, sealed with the same HPKE ``info`` as a lone slot, so that the archive
    sends a reader its own slot alone (:func:`for_recipient`) without being able to open any."""

    slots: tuple[RecipientSlot, ...]

    kek_version = 0  # (no KEK opens it)

    @property
    def size(self) -> int:
        return _LSLOT.size + sum(s.size for s in self.slots)

    @property
    def recipient_ids(self) -> tuple[str, ...]:
        return tuple(s.recipient_id for s in self.slots)

    def pack(self) -> bytes:
        return _LSLOT.pack(RECIPIENTS_MARK, len(self.slots)) + b"".join(s.pack() for s in self.slots)


Slot = KeySlot | RecipientSlot | RecipientList


def _hpke_info(recipient_id: str, aad: bytes) -> bytes:
    """HPKE's ``info`` for a recipient slot: the recipient's id and the object's whole clear header."""
    return b"aepacs-dek-hpke-v1\x00" + recipient_id.encode("ascii") + b"\x00" + hashlib.sha256(aad).digest()


@dataclass(frozen=True)
class SealedHeader:
    """What a sealed object shows in clear: identifiers, codec, key version."""

    object_uid: str
    study_uid: str
    codec: str
    sealed_kek_version: int
    nonce: bytes = field(repr=False)
    payload_length: int
    slot: Slot
    #: Bytes [0, 10+H): the payload's associated data.
    aad: bytes = field(repr=False)

    @property
    def kek_version(self) -> int:
        """The KEK version needed to open the object now (0: sealed to a recipient, no KEK opens it)."""
        return self.slot.kek_version

    @property
    def recipient_id(self) -> str | None:
        """The recipient whose private key opens the object, when it is sealed to one."""
        return self.slot.recipient_id if isinstance(self.slot, RecipientSlot) else None

    @property
    def recipient_ids(self) -> tuple[str, ...]:
        """Every recipient whose private key opens the object (none: the archive's KEK opens it)."""
        slot = self.slot
        return (slot.recipient_id,) if isinstance(slot, RecipientSlot) else \
            slot.recipient_ids if isinstance(slot, RecipientList) else ()

    @property
    def slot_size(self) -> int:
        """Bytes of the key slot (64 for a KEK's; a recipient's is longer)."""
        return self.slot.size

    @property
    def total_length(self) -> int:
        return len(self.aad) + self.slot_size + self.payload_length + TAG_BYTES


def _field(tag: int, value: bytes) -> bytes:
    return struct.pack(">BH", tag, len(value)) + value


def _pack_header(object_uid: str, study_uid: str, codec: str, kek_version: int,
                 nonce: bytes, payload_length: int) -> bytes:
    fields = b"".join([
        _field(F_OBJECT_UID, object_uid.encode("ascii")),
        _field(F_STUDY_UID, study_uid.encode("ascii")),
        _field(F_CODEC, codec.encode("ascii")),
        _field(F_SEALED_KEK, struct.pack(">I", kek_version)),
        _field(F_NONCE, nonce),
        _field(F_PAYLOAD_LEN, struct.pack(">Q", payload_length)),
    ])
    return _PREAMBLE.pack(MAGIC, FORMAT_VERSION, len(fields)) + fields


def _wrap_aad(kek_version: int, aad: bytes) -> bytes:
    return b"aepacs-dek" + struct.pack(">I", kek_version) + hashlib.sha256(aad).digest()


def _wrap(dek: bytes, kek: bytes, kek_version: int, aad: bytes) -> KeySlot:
    nonce = os.urandom(NONCE_BYTES)
    sealed = AESGCM(kek).encrypt(nonce, dek, _wrap_aad(kek_version, aad))
    return KeySlot(kek_version, nonce, sealed[:DEK_BYTES], sealed[DEK_BYTES:])


def _unwrap(slot: KeySlot, aad: bytes, keyring: Keyring, name: str) -> bytes:
    """The data key in `slot` of the object whose authenticated header is `aad`."""
    try:
        if slot.kek_version not in keyring.versions:
            keyring.refresh()  # rotated by another process since this one loaded it
        kek = keyring.kek(slot.kek_version)
    except MissingKeyError:
        raise OpenError(name, f"keyring lacks key version {slot.kek_version} needed to open it") from None
    try:
        return AESGCM(kek).decrypt(slot.nonce, slot.wrapped_key + slot.tag, _wrap_aad(slot.kek_version, aad))
    except (InvalidTag, ValueError):
        raise OpenError(name, f"data key does not unwrap under key version {slot.kek_version} "
                              "(tampered header or key slot, or wrong keyring)") from None


def seal(payload: bytes, *, object_uid: str, study_uid: str, codec: str, keyring: Keyring | None = None,
         recipients: Sequence[Recipient] = ()) -> bytearray:
    """Seal `payload` for one object under the keyring's active KEK, or to `recipients` alone.

    Parameters
    ----------
    payload : bytes
        The plaintext (see :mod:`aepacs.codec.payload`).
    object_uid, study_uid : str
        SOP Instance UID and Study Instance UID the blob is bound to.
    codec : str
        Identifier of the pixel codec (or model) inside the payload.
    keyring : Keyring, optional
        Supplies the active KEK (when there are no `recipients`).
    recipients : sequence of Recipient
        A blind archive's (``sealing: recipients-only``): the data key is wrapped to each of them by HPKE
        (a :class:`RecipientList`) and to no KEK, so that only their private keys open the object.

    Returns
    -------
    bytearray
        The sealed object (encrypted in place into one buffer: no copy of the ciphertext is made).
    """
    try:
        if recipients:
            if len(recipients) > MAX_RECIPIENTS:
                raise KeyringError(f"sealed to at most {MAX_RECIPIENTS} recipients, not {len(recipients)}")
            kek_version, kek = 0, b""
        elif keyring is None:
            raise KeyringError("no keyring and no recipient to seal to")
        else:
            keyring.refresh()  # a rotation by another process takes effect here
            kek_version = keyring.active_version
            kek = keyring.kek(kek_version)
        object_uid.encode("ascii")
        study_uid.encode("ascii")
    except (KeyringError, UnicodeEncodeError) as exc:
        raise SealError(f"{object_uid}: cannot seal ({exc})") from None
    dek = os.urandom(DEK_BYTES)
    nonce = os.urandom(NONCE_BYTES)
    aad = _pack_header(object_uid, study_uid, codec, kek_version, nonce, len(payload))
    slot = _wrap_to(dek, recipients, aad) if recipients else _wrap(dek, kek, kek_version, aad).pack()
    start = len(aad) + len(slot)
    out = bytearray(start + len(payload) + TAG_BYTES)  # one buffer, encrypted into: no copy of the payload
    out[:len(aad)] = aad
    out[len(aad):start] = slot
    AESGCM(dek).encrypt_into(nonce, payload, aad, memoryview(out)[start:])  # ciphertext, then its tag
    return out


def _hpke_slot(dek: bytes, recipient: Recipient, aad: bytes) -> RecipientSlot:
    return RecipientSlot(recipient.id, SUITE.encrypt(dek, recipient.key(), info=_hpke_info(recipient.id, aad)))


def _wrap_to(dek: bytes, recipients: Sequence[Recipient], aad: bytes) -> bytes:
    """The packed :class:`RecipientList` of `dek` wrapped to each of `recipients` (each once)."""
    unique = {r.id: r for r in recipients}
    return RecipientList(tuple(_hpke_slot(dek, r, aad) for r in unique.values())).pack()


def read_header(blob: Readable, name: str = "object", expect_uid: str | None = None, *,
                total: int | None = None) -> SealedHeader:
    """Parse and check the clear header of a sealed object (no key needed); with `expect_uid`, check it is
    that object's (a swapped blob is refused). `blob` may be the object's first bytes through its key slot
    (:data:`HEAD_BYTES` hold any object's) when `total` gives the whole object's length, checked instead.

    Raises
    ------
    OpenError
        When `blob` is not a well-formed sealed object of a known version, or of another object.
    """
    end = header_span(blob, name)
    if len(blob) < end + SLOT_BYTES + TAG_BYTES:
        raise OpenError(name, "truncated sealed object")
    values: dict[int, Readable] = {}
    pos = _PREAMBLE.size
    while pos < end:
        if pos + 3 > end:
            raise OpenError(name, "malformed header field")
        tag, length = struct.unpack_from(">BH", blob, pos)
        pos += 3
        if pos + length > end or tag in values:
            raise OpenError(name, "malformed header field")
        values[tag] = blob[pos:pos + length]
        pos += length
    expected = set(_TEXT_FIELDS) | {F_SEALED_KEK, F_NONCE, F_PAYLOAD_LEN}
    if set(values) != expected or len(values[F_NONCE]) != NONCE_BYTES \
            or len(values[F_SEALED_KEK]) != 4 or len(values[F_PAYLOAD_LEN]) != 8:
        raise OpenError(name, "malformed header fields")
    try:
        text = {attr: bytes(values[t]).decode("ascii") for t, attr in _TEXT_FIELDS.items()}
    except UnicodeDecodeError:
        raise OpenError(name, "malformed header text") from None
    slot = _read_slot(blob, end, name)
    header = SealedHeader(
        sealed_kek_version=struct.unpack(">I", values[F_SEALED_KEK])[0],
        nonce=bytes(values[F_NONCE]),
        payload_length=struct.unpack(">Q", values[F_PAYLOAD_LEN])[0],
        slot=slot, aad=bytes(blob[:end]), **text)
    size = len(blob) if total is None else total
    if size != header.total_length:
        raise OpenError(name, f"length {size} does not match its header ({header.total_length})")
    if expect_uid is not None and header.object_uid != expect_uid:
        raise OpenError(name, f"blob belongs to object {header.object_uid}, not {expect_uid}")
    return header


def _read_slot(blob: Readable, start: int, name: str) -> Slot:
    """The key slot at `start`."""
    (mark,) = struct.unpack_from(">I", blob, start)
    if mark == RECIPIENTS_MARK:
        return _read_list(blob, start, name)
    if mark != RECIPIENT_MARK:
        return KeySlot(*_SLOT.unpack_from(blob, start))
    return _read_recipient(blob, start, name)


def _read_list(blob: Readable, start: int, name: str) -> RecipientList:
    """The recipient list at `start`: its count, then that many recipient slots."""
    if len(blob) < start + _LSLOT.size:
        raise OpenError(name, "truncated recipient list")
    _, count = _LSLOT.unpack_from(blob, start)
    if not 1 <= count <= MAX_RECIPIENTS:
        raise OpenError(name, "malformed recipient list")
    slots, pos = [], start + _LSLOT.size
    for _ in range(count):
        if len(blob) < pos + 4 or struct.unpack_from(">I", blob, pos)[0] != RECIPIENT_MARK:
            raise OpenError(name, "malformed recipient list")
        slots.append(_read_recipient(blob, pos, name))
        pos += slots[-1].size
    if len({s.recipient_id for s in slots}) != count:
        raise OpenError(name, "malformed recipient list (a recipient named twice)")
    return RecipientList(tuple(slots))


def _read_recipient(blob: Readable, start: int, name: str) -> RecipientSlot:
    """The recipient slot at `start`."""
    if len(blob) < start + _RSLOT.size:
        raise OpenError(name, "truncated recipient key slot")
    _, length, id_length = _RSLOT.unpack_from(blob, start)
    body = start + _RSLOT.size
    if length != 1 + id_length + _HPKE_BYTES or len(blob) < start + 6 + length + TAG_BYTES:
        raise OpenError(name, "malformed recipient key slot")
    try:
        rid = bytes(blob[body:body + id_length]).decode("ascii")
    except UnicodeDecodeError:
        raise OpenError(name, "malformed recipient key slot") from None
    return RecipientSlot(rid, bytes(blob[body + id_length:body + id_length + _HPKE_BYTES]))


def _unwrap_recipient(slot: RecipientSlot, aad: bytes, key: RecipientKey, name: str) -> bytes:
    if slot.recipient_id != key.id:
        raise OpenError(name, f"sealed to recipient {slot.recipient_id}, not to {key.name} ({key.id})")
    try:
        return SUITE.decrypt(slot.sealed_key, key.private_key, info=_hpke_info(slot.recipient_id, aad))
    except (InvalidTag, ValueError):
        raise OpenError(name, f"data key does not unwrap for recipient {key.name} "
                              "(tampered header or key slot)") from None


def _unwrap_listed(slot: RecipientList, aad: bytes, key: RecipientKey, name: str) -> bytes:
    """The data key in `key`'s own slot of a recipient list."""
    mine = next((s for s in slot.slots if s.recipient_id == key.id), None)
    if mine is None:
        raise OpenError(name, f"sealed to recipients {', '.join(slot.recipient_ids)}, not to {key.name} ({key.id})")
    return _unwrap_recipient(mine, aad, key, name)


def unwrap_key(blob: Readable, keys: Keyring | RecipientKey, *, name: str = "object",
               expect_uid: str | None = None) -> tuple[SealedHeader, bytes]:
    """The clear header and data key of a sealed object: its header and key slot authenticated under the
    KEK (with the archive's `keys`) or by HPKE (with a recipient's private key, for an object sealed to it),
    the payload not yet read (what :func:`open_sealed` does first; a quick check that it will open).

    Raises
    ------
    OpenError
        A malformed or swapped header, a key slot that does not authenticate, no key for it (an object
        sealed to a recipient given the keyring, or the other way round).
    """
    header = read_header(blob, name, expect_uid)
    slot = header.slot
    if isinstance(slot, RecipientList):
        if not isinstance(keys, RecipientKey):
            raise OpenError(name, f"sealed only to recipients {', '.join(slot.recipient_ids)} (a blind archive's "
                                  "object): open it with one of their private keys (--recipient-key), not a keyring")
        return header, _unwrap_listed(slot, header.aad, keys, name)
    if isinstance(slot, RecipientSlot):
        if not isinstance(keys, RecipientKey):
            raise OpenError(name, f"sealed to recipient {slot.recipient_id}: open it with that recipient's "
                                  "private key (--recipient-key), not a keyring")
        return header, _unwrap_recipient(slot, header.aad, keys, name)
    if isinstance(keys, RecipientKey):
        raise OpenError(name, f"sealed under the archive's key version {slot.kek_version}, not to recipient "
                              f"{keys.name}: the archive must seal it to that recipient")
    return header, _unwrap(slot, header.aad, keys, name)


def open_sealed(blob: Readable, keyring: Keyring | RecipientKey, *, name: str = "object",
                expect_uid: str | None = None) -> tuple[SealedHeader, bytes]:
    """Authenticate and decrypt a sealed object.

    Parameters
    ----------
    blob : bytes
        The sealed object.
    keyring : Keyring or RecipientKey
        The archive's keyring, holding the KEK version named in the key slot; or, for an object sealed
        to a recipient, that recipient's private key.
    name : str
        How errors name the object (a path or a UID).
    expect_uid : str, optional
        The SOP Instance UID the caller expects; a blob of another object
        (swapped blobs) is refused.

    Returns
    -------
    (SealedHeader, bytes)
        The clear header and the plaintext payload.

    Raises
    ------
    OpenError
        Tampered, truncated, swapped, or no key for it. Naming `name`.
    """
    header, dek = unwrap_key(blob, keyring, name=name, expect_uid=expect_uid)
    return header, decrypt_payload(blob, header, dek, name=name)


def decrypt_payload(blob: Readable, header: SealedHeader, dek: bytes, *, name: str = "object") -> bytes:
    """The payload of `blob`, opened with its authenticated `header` and data key (as :func:`unwrap_key`
    gave them for this blob, perhaps earlier: the blob's own header and key slot are not read again).

    Raises
    ------
    OpenError
        The blob is not the one `header` and `dek` came from, or was altered.
    """
    sealed = memoryview(blob)[len(header.aad) + header.slot_size:]  # ciphertext and tag, no copy
    try:
        return AESGCM(dek).decrypt(header.nonce, sealed, header.aad)
    except (InvalidTag, ValueError):
        raise OpenError(name, "authentication failed: sealed object was altered") from None


def header_span(prefix: Readable, name: str = "object") -> int:
    """Length ``10 + H`` of the authenticated header, from at least the first 10 bytes of a blob.

    The key slot follows at that offset (:data:`SLOT_BYTES` long).

    Raises
    ------
    OpenError
        Not an aepacs sealed object of a known version.
    """
    if len(prefix) < _PREAMBLE.size or prefix[:4] != MAGIC:
        raise OpenError(name, "not an aepacs sealed object (bad magic)")
    _, version, hlen = _PREAMBLE.unpack_from(prefix)
    if version != FORMAT_VERSION:
        raise OpenError(name, f"sealed-object format version {version} not supported")
    return _PREAMBLE.size + hlen


def seal_to(blob: Readable, keyring: Keyring, recipient: Recipient, *, name: str = "object",
            expect_uid: str | None = None) -> bytes:
    """`blob` sealed to `recipient` instead: its data key unwrapped under the archive's KEK and wrapped to the
    recipient's public key by HPKE, bound to the recipient's id and the object's whole clear header. The
    header, the ciphertext and its tag stay byte for byte; only the key slot differs (one HPKE
    operation an object).

    Raises
    ------
    OpenError
        `blob` does not open under `keyring` (as :func:`unwrap_key`).
    """
    header, dek = unwrap_key(blob, keyring, name=name, expect_uid=expect_uid)
    slot = _hpke_slot(dek, recipient, header.aad)
    return b"".join((header.aad, slot.pack(), blob[len(header.aad) + header.slot_size:]))


def with_slot(blob: Readable, slot: bytes, name: str = "object") -> bytes:
    """`blob` with its key slot replaced by `slot` (the packed slot the index holds after a rewrap: a KEK's,
    or a blind archive's recipient list)."""
    start = header_span(blob, name)
    if len(blob) < start + SLOT_BYTES + TAG_BYTES:
        raise OpenError(name, "truncated sealed object")
    new, old = parse_slot(slot, name), _read_slot(blob, start, name)
    if isinstance(new, KeySlot) != isinstance(old, KeySlot):
        raise OpenError(name, "key slot of another kind than the object's")
    return b"".join((blob[:start], slot, blob[start + old.size:]))


def parse_slot(slot: bytes, name: str = "object") -> Slot:
    """A packed key slot, parsed and checked to be exactly one slot.

    Raises
    ------
    OpenError
        Malformed, or bytes after the slot.
    """
    slot = bytes(slot)
    if len(slot) < SLOT_BYTES:
        raise OpenError(name, "key slot of the wrong size")
    parsed = _read_slot(slot + bytes(TAG_BYTES), 0, name)  # (a slot is read where a tag would follow it)
    if parsed.size != len(slot):
        raise OpenError(name, "key slot of the wrong size")
    return parsed


def head_parts(prefix: Readable, name: str = "object") -> tuple[bytes, bytes]:
    """(clear header, packed key slot) of a sealed object from its first bytes (at least through its slot:
    :data:`HEAD_BYTES` hold any object's).

    Raises
    ------
    OpenError
        Not a sealed object, or `prefix` ends inside its key slot.
    """
    start = header_span(prefix, name)
    if len(prefix) < start + 4:
        raise OpenError(name, "truncated sealed object")
    slot = _read_slot(prefix, start, name)
    if len(prefix) < start + slot.size:
        raise OpenError(name, "truncated sealed object")
    return bytes(prefix[:start]), bytes(prefix[start:start + slot.size])


def for_recipient(blob: Readable, recipient_id: str, *, name: str = "object",
                  expect_uid: str | None = None) -> bytes:
    """A blind archive's object as it is sent to one of its recipients: that recipient's slot alone, as a
    lone recipient slot (sealed with the same HPKE ``info``, so the recipient's private key opens it as any
    object sealed to it). Needs no key, opens nothing; the ciphertext stays byte for byte.

    Raises
    ------
    OpenError
        Not a well-formed blind object, of another object than `expect_uid`.
    RecipientRefused
        Not sealed to `recipient_id`.
    """
    header = read_header(blob, name, expect_uid)
    slot = header.slot
    if not isinstance(slot, RecipientList):
        raise OpenError(name, "not sealed to a list of recipients")
    mine = next((s for s in slot.slots if s.recipient_id == recipient_id), None)
    if mine is None:
        raise RecipientRefused(f"{name} is not sealed to recipient {recipient_id} (it was stored before that "
                               "recipient was added: one of its recipients re-wraps it, 'aepacs rekey "
                               "--recipient-key')")
    return b"".join((header.aad, mine.pack(), blob[len(header.aad) + slot.size:]))


def rewrap_to(aad: bytes, slot: bytes, key: RecipientKey, recipients: Sequence[Recipient], *,
              name: str = "object") -> bytes:
    """On a recipient's machine: the data key in a blind object's packed key slot, unwrapped with the
    recipient's private `key` and wrapped again to each of `recipients` (HPKE, bound as at ingest to each
    recipient's id and the object's clear header `aad`). What ``aepacs rekey --recipient-key`` does.

    Returns
    -------
    bytes
        The new packed recipient list.

    Raises
    ------
    OpenError
        The slot is not a recipient list holding `key`'s recipient, or does not unwrap (tampered slot or
        header; `aad` not this slot's object).
    KeyringError
        No recipient, or more than :data:`MAX_RECIPIENTS`.
    """
    parsed = parse_slot(slot, name)
    if not isinstance(parsed, RecipientList):
        raise OpenError(name, "not a recipient list (a blind archive's key slot)")
    header_end = header_span(aad, name)
    if header_end != len(aad):
        raise OpenError(name, "clear header of the wrong length")
    dek = _unwrap_listed(parsed, bytes(aad), key, name)
    if not recipients or len({r.id for r in recipients}) > MAX_RECIPIENTS:
        raise KeyringError(f"re-wrap to 1 to {MAX_RECIPIENTS} recipients")
    return _wrap_to(dek, recipients, bytes(aad))


def rewrap_slot(aad: bytes, slot: bytes, keyring: Keyring, *, name: str = "object") -> bytes:
    """Unwrap the data key in `slot` and wrap it again under the keyring's active KEK.

    Parameters
    ----------
    aad : bytes
        The object's authenticated header, bytes ``[0, 10+H)``.
    slot : bytes
        Its current packed key slot.

    Returns
    -------
    bytes
        The new packed key slot: same data key, active KEK version.

    Raises
    ------
    OpenError
        The slot does not unwrap (wrong header, tampered slot, key version missing).
    """
    if len(slot) != SLOT_BYTES:
        raise OpenError(name, "key slot of the wrong size")
    dek = _unwrap(KeySlot(*_SLOT.unpack(slot)), bytes(aad), keyring, name)
    version = keyring.active_version
    return _wrap(dek, keyring.kek(version), version, bytes(aad)).pack()


def rewrap(blob: bytes, keyring: Keyring, *, name: str = "object") -> bytes:
    """Re-wrap the data key under the keyring's active KEK.

    Only the key slot changes; the header, ciphertext and tag stay byte for
    byte. The object is fully authenticated before the new slot is written.

    Returns
    -------
    bytes
        The re-wrapped sealed object.
    """
    header, _ = open_sealed(blob, keyring, name=name)
    return with_slot(blob, rewrap_slot(header.aad, header.slot.pack(), keyring, name=name), name)


__all__ = ["SealedHeader", "KeySlot", "RecipientSlot", "RecipientList", "Slot", "Readable", "seal", "seal_to",
           "for_recipient", "rewrap_to", "open_sealed", "unwrap_key", "decrypt_payload", "read_header", "rewrap",
           "rewrap_slot", "with_slot", "parse_slot", "head_parts", "HEAD_BYTES", "header_span", "SLOT_BYTES",
           "MAX_RECIPIENTS"]
