from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from aepacs.crypto.keyring import Keyring
from aepacs.crypto.seal import HEAD_BYTES, SLOT_BYTES, open_sealed, read_header, rewrap, seal
from aepacs.errors import OpenError
from tests.conftest import every_byte_flipped

UID_A = "1.2.826.0.1.3680043.8.498.1"
UID_B = "1.2.826.0.1.3680043.8.498.2"
STUDY = "1.2.826.0.1.3680043.8.498.100"


def make(keyring: Keyring, payload: bytes = b"plaintext payload " * 20, uid: str = UID_A) -> bytes:
    return seal(payload, object_uid=uid, study_uid=STUDY, codec="jpegls", keyring=keyring)


def test_round_trip_and_clear_header(keyring: Keyring) -> None:
    payload = bytes(range(256)) * 40
    blob = make(keyring, payload)
    header, back = open_sealed(blob, keyring, expect_uid=UID_A)
    assert back == payload
    assert (header.object_uid, header.study_uid, header.codec) == (UID_A, STUDY, "jpegls")
    assert header.kek_version == header.sealed_kek_version == 1
    assert payload not in blob and payload[:64] not in blob
    # each object gets its own data key and nonce: same input, unrelated blobs
    other = make(keyring, payload)
    assert other != blob and read_header(other).nonce != header.nonce


def test_every_single_byte_flip_fails_and_names_the_object(keyring: Keyring) -> None:
    for bad in every_byte_flipped(make(keyring)):
        with pytest.raises(OpenError) as err:
            open_sealed(bad, keyring, name="study/obj-7.aepx")
        assert err.value.name == "study/obj-7.aepx"
        assert "study/obj-7.aepx" in str(err.value)


def test_truncated_and_extended_blobs_fail(keyring: Keyring) -> None:
    blob = make(keyring)
    for bad in (blob[:-1], blob[:20], blob + b"\0", b"", b"AEPX"):
        with pytest.raises(OpenError):
            open_sealed(bad, keyring, name="x")


def test_a_header_read_from_the_first_bytes_checks_the_whole_length(keyring: Keyring) -> None:
    blob = make(keyring, bytes(3 * HEAD_BYTES))
    head = blob[:HEAD_BYTES]
    assert read_header(head, total=len(blob)) == read_header(blob)
    for wrong in (None, len(blob) - 1, len(blob) + 1):  # the prefix alone, or a torn or padded object
        with pytest.raises(OpenError, match="does not match its header"):
            read_header(head, "x", total=wrong)
    with pytest.raises(OpenError):
        read_header(blob[:40], "x", total=len(blob))  # ends inside the header


def test_blob_of_another_object_is_refused(keyring: Keyring) -> None:
    a, b = make(keyring, uid=UID_A), make(keyring, uid=UID_B)
    with pytest.raises(OpenError, match=f"belongs to object {UID_B}"):
        open_sealed(b, keyring, name=UID_A, expect_uid=UID_A)
    # a key slot moved from another object (same KEK) does not unwrap
    ha, hb = read_header(a), read_header(b)
    start_a, start_b = len(ha.aad), len(hb.aad)
    grafted = a[:start_a] + b[start_b:start_b + SLOT_BYTES] + a[start_a + SLOT_BYTES:]
    with pytest.raises(OpenError, match="does not unwrap"):
        open_sealed(grafted, keyring, name=UID_A)


def test_keyring_lacking_the_version_names_object_and_version(tmp_path: Path) -> None:
    path = tmp_path / "keyring.json"
    old = Keyring.create(path)
    shutil.copy(path, tmp_path / "old.json")
    old.rotate()
    blob = make(old)  # sealed under v2
    stale = Keyring.load(tmp_path / "old.json")
    with pytest.raises(OpenError, match="lacks key version 2") as err:
        open_sealed(blob, stale, name="obj.aepx")
    assert err.value.name == "obj.aepx"
    stranger = Keyring.create(tmp_path / "other.json")
    stranger.rotate()
    with pytest.raises(OpenError, match="does not unwrap"):
        open_sealed(blob, stranger, name="obj.aepx")


def test_rotation_new_objects_use_new_version_old_still_open(tmp_path: Path) -> None:
    ring = Keyring.create(tmp_path / "keyring.json")
    old_blob = make(ring)
    ring.rotate()
    new_blob = make(ring)
    assert read_header(old_blob).kek_version == 1
    assert read_header(new_blob).kek_version == 2
    assert open_sealed(old_blob, ring)[1] == open_sealed(new_blob, ring)[1]


def test_rewrap_changes_only_the_key_slot(tmp_path: Path) -> None:
    ring = Keyring.create(tmp_path / "keyring.json")
    payload = b"x" * 1000
    blob = make(ring, payload)
    ring.rotate()
    new = rewrap(blob, ring)
    h_old, h_new = read_header(blob), read_header(new)
    assert h_new.kek_version == 2 and h_new.sealed_kek_version == 1
    assert new[:len(h_old.aad)] == blob[:len(h_old.aad)]
    body = len(h_old.aad) + SLOT_BYTES
    assert new[body:] == blob[body:]                       # ciphertext and tag untouched
    assert open_sealed(new, ring)[1] == payload
    v2_only = Keyring.create(tmp_path / "v2.json")
    with pytest.raises(OpenError):
        open_sealed(new, v2_only)
    assert len(new) == len(blob)
