"""A blind archive's objects: the data key wrapped to a list of recipients and to no KEK (``sealing:
recipients-only``): who opens them, what the archive can and cannot do with them, and every tamper."""

from __future__ import annotations

import pytest

from aepacs.crypto.keyring import Keyring
from aepacs.crypto.recipients import RecipientKey
from aepacs.crypto.seal import (
    MAX_RECIPIENTS,
    RecipientList,
    for_recipient,
    head_parts,
    open_sealed,
    parse_slot,
    read_header,
    rewrap_to,
    seal,
    seal_to,
    with_slot,
)
from aepacs.errors import OpenError, RecipientRefused, SealError
from tests.conftest import every_byte_flipped

UID_A = "1.2.826.0.1.3680043.8.498.11"
UID_B = "1.2.826.0.1.3680043.8.498.12"
STUDY = "1.2.826.0.1.3680043.8.498.110"
PAYLOAD = bytes(range(256)) * 6


@pytest.fixture
def sites() -> tuple[RecipientKey, RecipientKey, RecipientKey]:
    return RecipientKey.generate("site-a"), RecipientKey.generate("site-b"), RecipientKey.generate("site-c")


def _blind(*keys: RecipientKey, uid: str = UID_A) -> bytes:
    return bytes(seal(PAYLOAD, object_uid=uid, study_uid=STUDY, codec="jpegls",
                      recipients=[k.public for k in keys]))


def test_each_listed_recipient_opens_it_and_no_keyring_or_other_key_does(
        sites: tuple[RecipientKey, ...], keyring: Keyring) -> None:
    a, b, c = sites
    blob = _blind(a, b)
    header = read_header(blob)
    assert isinstance(header.slot, RecipientList) and header.kek_version == header.sealed_kek_version == 0
    assert header.recipient_ids == (a.id, b.id)
    for key in (a, b):
        assert open_sealed(blob, key, name=UID_A)[1] == PAYLOAD
    with pytest.raises(OpenError, match=f"{UID_A}.*sealed to recipients {a.id}, {b.id}, not to site-c"):
        open_sealed(blob, c, name=UID_A)
    with pytest.raises(OpenError, match="sealed only to recipients .* not a keyring"):
        open_sealed(blob, keyring, name=UID_A)
    with pytest.raises(OpenError, match="sealed only to recipients"):
        seal_to(blob, keyring, c.public)  # the archive cannot re-seal it to anyone


def test_the_archive_sends_a_recipient_its_own_slot_alone_without_any_key(sites: tuple[RecipientKey, ...]) -> None:
    a, b, c = sites
    blob = _blind(a, b)
    to_b = for_recipient(blob, b.id, name=UID_A, expect_uid=UID_A)
    header = read_header(to_b)
    assert header.recipient_id == b.id and header.recipient_ids == (b.id,)
    assert to_b[-len(PAYLOAD) - 16:] == blob[-len(PAYLOAD) - 16:]  # ciphertext and tag byte for byte
    assert open_sealed(to_b, b)[1] == PAYLOAD
    with pytest.raises(OpenError, match="sealed to recipient .* not to site-a"):
        open_sealed(to_b, a)  # A's slot did not travel with B's copy
    with pytest.raises(RecipientRefused, match=f"{UID_A} is not sealed to recipient {c.id}"):
        for_recipient(blob, c.id, name=UID_A)
    with pytest.raises(OpenError, match=f"belongs to object {UID_A}"):
        for_recipient(blob, a.id, name=UID_B, expect_uid=UID_B)


def test_every_single_byte_flip_of_a_blind_object_fails_for_every_recipient(
        sites: tuple[RecipientKey, ...]) -> None:
    a, b, _ = sites
    blob = _blind(a, b)
    for bad in every_byte_flipped(blob):
        for key in (a, b):
            try:
                open_sealed(bad, key, name="obj-9")
            except OpenError as err:
                assert err.name == "obj-9"
            else:
                # the one flip a reader may survive is in the other recipient's own slot, which it never reads
                other = b if key is a else a
                start = len(read_header(blob).aad)
                theirs = blob.index(other.id.encode(), start) - 7
                assert bad != blob and any(bad[i] != blob[i] for i in range(theirs, theirs + 7 + 32 + 80))
    for bad in (blob[:-1], blob + b"\0", blob[:len(read_header(blob).aad) + 10]):
        with pytest.raises(OpenError):
            open_sealed(bad, a)


def test_a_recipient_list_moved_onto_another_object_does_not_open(sites: tuple[RecipientKey, ...]) -> None:
    a, b, _ = sites
    one, two = _blind(a, b, uid=UID_A), _blind(a, b, uid=UID_B)
    _, slot_one = head_parts(one)
    with pytest.raises(OpenError, match=f"{UID_B}.*does not unwrap for recipient site-a"):
        open_sealed(with_slot(two, slot_one, UID_B), a, name=UID_B)


def test_a_recipient_re_wraps_to_a_new_list_and_only_the_new_list_opens(sites: tuple[RecipientKey, ...]) -> None:
    a, b, c = sites
    blob = _blind(a, b)
    header, slot = head_parts(blob)
    new = rewrap_to(header, slot, a, [a.public, c.public], name=UID_A)
    assert isinstance(parse_slot(new), RecipientList)
    again = with_slot(blob, new, UID_A)
    assert read_header(again).recipient_ids == (a.id, c.id)
    for key in (a, c):
        assert open_sealed(again, key)[1] == PAYLOAD
    with pytest.raises(OpenError, match="not to site-b"):
        open_sealed(again, b)  # revoked B is out of the new list
    with pytest.raises(OpenError, match="not to site-c"):
        rewrap_to(header, slot, c, [c.public], name=UID_A)  # C was not on the old list: it cannot add itself
    with pytest.raises(OpenError, match="does not unwrap"):
        rewrap_to(head_parts(_blind(a, uid=UID_B))[0], slot, a, [a.public], name=UID_A)  # another object's header


def test_sealing_to_no_one_or_too_many_is_refused(sites: tuple[RecipientKey, ...]) -> None:
    with pytest.raises(SealError, match="no keyring and no recipient"):
        seal(PAYLOAD, object_uid=UID_A, study_uid=STUDY, codec="raw")
    many = [RecipientKey.generate(f"r{i}").public for i in range(MAX_RECIPIENTS + 1)]
    with pytest.raises(SealError, match=f"at most {MAX_RECIPIENTS}"):
        seal(PAYLOAD, object_uid=UID_A, study_uid=STUDY, codec="raw", recipients=many)
    a = sites[0]
    once = read_header(bytes(seal(PAYLOAD, object_uid=UID_A, study_uid=STUDY, codec="raw",
                                  recipients=[a.public, a.public])))
    assert once.recipient_ids == (a.id,)  # listed twice, wrapped once
