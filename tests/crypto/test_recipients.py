"""Recipients' key pairs and objects sealed to them (HPKE key slots): who opens what, and every tamper."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from aepacs.crypto.keyring import Keyring
from aepacs.crypto.recipients import Recipient, RecipientKey
from aepacs.crypto.seal import SLOT_BYTES, open_sealed, read_header, rewrap, seal, seal_to
from aepacs.errors import KeyringError, OpenError
from tests.conftest import every_byte_flipped

UID_A = "1.2.826.0.1.3680043.8.498.1"
UID_B = "1.2.826.0.1.3680043.8.498.2"
STUDY = "1.2.826.0.1.3680043.8.498.100"
PAYLOAD = bytes(range(256)) * 8


def _sealed(keyring: Keyring, uid: str = UID_A) -> bytes:
    return bytes(seal(PAYLOAD, object_uid=uid, study_uid=STUDY, codec="jpegls", keyring=keyring))


@pytest.fixture
def site_a() -> RecipientKey:
    return RecipientKey.generate("site-a")


@pytest.fixture
def site_b() -> RecipientKey:
    return RecipientKey.generate("site-b")


def test_a_key_pair_saves_owner_only_and_loads_back_with_and_without_a_passphrase(tmp_path: Path) -> None:
    key = RecipientKey.generate("radiology.site-a")
    key.save(tmp_path / "keys" / "plain.json")
    key.save(tmp_path / "keys" / "locked.json", passphrase=b"correct horse")
    assert oct((tmp_path / "keys" / "plain.json").stat().st_mode & 0o777) == "0o600"
    assert oct((tmp_path / "keys").stat().st_mode & 0o777) == "0o700"
    for name, passphrase in (("plain.json", None), ("locked.json", b"correct horse")):
        back = RecipientKey.load(tmp_path / "keys" / name, passphrase)
        assert (back.name, back.id, back.public) == (key.name, key.id, key.public)
    locked = (tmp_path / "keys" / "locked.json").read_text()
    assert "private_key" not in locked and key.id in locked
    with pytest.raises(KeyringError, match="wrong passphrase or recipient key damaged"):
        RecipientKey.load(tmp_path / "keys" / "locked.json", b"wrong")
    with pytest.raises(KeyringError, match="passphrase-protected"):
        RecipientKey.load(tmp_path / "keys" / "locked.json")
    with pytest.raises(KeyringError, match="not overwriting"):
        key.save(tmp_path / "keys" / "plain.json")
    os.chmod(tmp_path / "keys" / "plain.json", 0o640)
    with pytest.raises(KeyringError, match="group or others"):
        RecipientKey.load(tmp_path / "keys" / "plain.json")
    assert repr(key) == "RecipientKey(name='radiology.site-a')"


def test_a_public_key_file_names_its_key_and_is_checked(site_a: RecipientKey) -> None:
    text = site_a.public.to_json()
    assert Recipient.from_json(text) == site_a.public and json.loads(text)["id"] == site_a.id
    doc = json.loads(text)
    for bad, why in (({**doc, "id": "0" * 32}, "is not its key's"), ({**doc, "public_key": "AAAA"}, "32 bytes"),
                     ({**doc, "format": "x"}, "not an aepacs recipient"), ({**doc, "name": "../x"}, "recipient name")):
        with pytest.raises(KeyringError, match=why):
            Recipient.from_json(json.dumps(bad), "site-a.pub")
    with pytest.raises(KeyringError, match="recipient name"):
        RecipientKey.generate("a b")


def test_only_the_recipient_sealed_to_opens_and_the_ciphertext_is_unchanged(
        keyring: Keyring, site_a: RecipientKey, site_b: RecipientKey) -> None:
    blob = _sealed(keyring)
    to_a = seal_to(blob, keyring, site_a.public, name=UID_A, expect_uid=UID_A)
    header = read_header(to_a)
    assert header.recipient_id == site_a.id and header.kek_version == 0
    start = len(header.aad)
    assert to_a[:start] == blob[:start] and to_a[start + header.slot_size:] == blob[start + SLOT_BYTES:]
    assert open_sealed(to_a, site_a, name=UID_A, expect_uid=UID_A)[1] == PAYLOAD  # its private key alone
    with pytest.raises(OpenError, match=f"{UID_A}.*sealed to recipient {site_a.id}, not to site-b"):
        open_sealed(to_a, site_b, name=UID_A)
    with pytest.raises(OpenError, match=f"{UID_A}.*sealed to recipient .*recipient's private key"):
        open_sealed(to_a, keyring, name=UID_A)  # the archive's own keyring does not open it either
    with pytest.raises(OpenError, match=f"{UID_A}.*not to recipient site-a"):
        open_sealed(blob, site_a, name=UID_A)  # nor a recipient the archive's own blob
    # a key pair claiming site A's id with another key gets nowhere
    impostor = RecipientKey(site_a.name, site_b.private_key)
    with pytest.raises(OpenError, match="not to site-a"):
        open_sealed(to_a, impostor, name=UID_A)


def test_copies_delivered_to_a_recipient_outlive_the_archives_keys(keyring: Keyring, site_a: RecipientKey) -> None:
    blob = _sealed(keyring)
    delivered = seal_to(blob, keyring, site_a.public)
    keyring.rotate()
    rewrapped = rewrap(blob, keyring)  # the archive's copy rekeyed, the old key retired
    keyring.retire(1)
    assert open_sealed(rewrapped, keyring)[1] == PAYLOAD
    assert open_sealed(delivered, site_a)[1] == PAYLOAD
    assert open_sealed(seal_to(rewrapped, keyring, site_a.public), site_a)[1] == PAYLOAD


def test_every_single_byte_flip_of_a_recipient_sealed_object_fails_naming_it(
        keyring: Keyring, site_a: RecipientKey) -> None:
    to_a = seal_to(_sealed(keyring), keyring, site_a.public)
    for bad in every_byte_flipped(to_a):
        with pytest.raises(OpenError) as err:
            open_sealed(bad, site_a, name="site-a/obj-7.aepx")
        assert err.value.name == "site-a/obj-7.aepx"
    for bad in (to_a[:-1], to_a + b"\0", to_a[:len(read_header(to_a).aad) + 10]):
        with pytest.raises(OpenError):
            open_sealed(bad, site_a, name="x")


def test_a_recipient_slot_moved_onto_another_object_does_not_open(keyring: Keyring, site_a: RecipientKey) -> None:
    a = seal_to(_sealed(keyring, UID_A), keyring, site_a.public)
    b = seal_to(_sealed(keyring, UID_B), keyring, site_a.public)
    ha, hb = read_header(a), read_header(b)
    slot_a = a[len(ha.aad):len(ha.aad) + ha.slot_size]
    swapped = hb.aad + slot_a + b[len(hb.aad) + hb.slot_size:]
    with pytest.raises(OpenError, match=f"{UID_B}.*does not unwrap for recipient site-a"):
        open_sealed(swapped, site_a, name=UID_B)
    with pytest.raises(OpenError, match=f"belongs to object {UID_B}"):
        open_sealed(b, site_a, name=UID_A, expect_uid=UID_A)
