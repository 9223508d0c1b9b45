"""A blind archive's pipeline (``sealing: recipients-only``): ingest seals to the active recipients alone, the
KEK rekey leaves those objects be, and the tamper and swap checks of the foundation hold for them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from aepacs.config import load_config
from aepacs.crypto.recipients import RecipientKey
from aepacs.crypto.seal import read_header
from aepacs.errors import InputError, OpenError, RecipientRefused, SealError
from aepacs.pipeline.archive import Archive
from aepacs.pipeline.blind_rekey import export_slots, import_slots, rewrap_slots
from aepacs.pipeline.ingest import ingest
from aepacs.pipeline.rekey import rekey
from aepacs.pipeline.retrieve import fetch, open_bytes, sealed_for
from aepacs.store.recipients import RecipientRows
from tests.conftest import ct_files, tamper

CT = ct_files()[:4]
BLIND = {"sealing": "recipients-only", "transport": {"unregistered": "refuse"}}


def test_a_blind_archive_seals_each_object_to_its_recipients_alone(home: Path) -> None:
    config = load_config(overrides=BLIND)
    a, b, c = (RecipientKey.generate(n) for n in ("site-a", "site-b", "site-c"))
    with Archive(config) as archive:
        with pytest.raises(SealError, match="no active recipient"):
            ingest(archive, CT[0].read_bytes())
        rows = RecipientRows(archive.index)
        for key in (a, b):
            rows.add(key.name, key.id, key.public.public_key)
        first = ingest(archive, CT[0].read_bytes())
        rows.revoke("site-b")  # at once: the next object is sealed to A alone
        rest = [ingest(archive, p.read_bytes()) for p in CT[1:]]
        stored = {r.sop_uid: r for r in archive.index.find()}
        assert {r.kek_version for r in stored.values()} == {0}
        recipients = {uid: read_header(archive.store.get(r.blob_key)).recipient_ids for uid, r in stored.items()}
        assert recipients[first.sop_uid] == (a.id, b.id)
        assert all(recipients[r.sop_uid] == (a.id,) for r in rest)
        for path in CT:  # what A is sent opens with its key, to the original bit for bit
            row = next(r for r in stored.values() if r.source_sha256 == _sha(path))
            _, blob = sealed_for(archive, row, a.public)
            assert open_bytes(blob, a, expect_uid=row.sop_uid)[1] == path.read_bytes()
            with pytest.raises(OpenError, match="sealed only to recipients"):
                fetch(archive, row.sop_uid)  # the archive itself opens nothing it stored
        with pytest.raises(RecipientRefused, match=f"not sealed to recipient {c.id}"):
            sealed_for(archive, stored[first.sop_uid], c.public)
    summary = rekey(config, workers=1, progress=False)  # nothing for the KEK rekey: no KEK wraps them
    assert (summary.done, summary.failed) == (0, 0)


def test_tampered_and_swapped_blind_objects_fail_naming_the_object(home: Path, backend: str) -> None:
    config = load_config(overrides=BLIND)
    a = RecipientKey.generate("site-a")
    with Archive(config) as archive:
        RecipientRows(archive.index).add("site-a", a.id, a.public.public_key)
        for path in CT[:3]:
            ingest(archive, path.read_bytes())
        one, two, three = archive.index.find()[:3]
        tamper(archive.store, three.blob_key, archive.store.get(three.blob_key).__len__() // 2)
        with pytest.raises(OpenError, match=f"{three.sop_uid}.*altered"):
            sealed_for(archive, three, a.public)
        with archive.index.engine.begin() as conn:  # one's row pointed at two's genuine blob
            conn.exec_driver_sql(f"update instances set blob_key='{two.blob_key}' where sop_uid='{one.sop_uid}'")
        with pytest.raises(OpenError, match=f"belongs to object {two.sop_uid}"):
            sealed_for(archive, archive.index.get(one.sop_uid), a.public)
        # two's recipient list installed over one's (a rekey import gone wrong): the list does not open there
        with archive.index.engine.begin() as conn:
            conn.exec_driver_sql(f"update instances set blob_key='{one.blob_key}' where sop_uid='{one.sop_uid}'")
        two_blob = archive.store.get(two.blob_key)
        header = read_header(two_blob)
        slot = two_blob[len(header.aad):len(header.aad) + header.slot_size]
        archive.index.swap_slots([(one.sop_uid, one.blob_key, 0, slot, 0)])
        _, blob = sealed_for(archive, archive.index.get(one.sop_uid), a.public)
        with pytest.raises(OpenError, match=f"{one.sop_uid}.*does not unwrap for recipient site-a"):
            open_bytes(blob, a, name=one.sop_uid)


def _sha(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_slot_files_stream_and_a_bad_line_fails_alone(home: Path, tmp_path: Path) -> None:
    """export → a recipient's re-wrap → import, on a slot file damaged on the way: each bad line is one
    failure, named; the rest is re-wrapped and installed, and the new recipient opens it."""
    config = load_config(overrides=BLIND)
    a, c = RecipientKey.generate("site-a"), RecipientKey.generate("site-c")
    with Archive(config) as archive:
        rows = RecipientRows(archive.index)
        rows.add(a.name, a.id, a.public.public_key)
        for path in CT[:3]:
            ingest(archive, path.read_bytes())
        rows.add(c.name, c.id, c.public.public_key)  # C joins after the ingest: no slot of these for it yet
        exported, rewrapped = tmp_path / "slots.jsonl", tmp_path / "rewrapped.jsonl"
        assert export_slots(archive, exported, progress=False) == 3
        assert exported.stat().st_mode & 0o777 == 0o600
        head, *objects = exported.read_text().splitlines()
        damaged = json.loads(objects[2])
        damaged["slot"] = damaged["slot"][:-8] + ("A" * 8 if damaged["slot"][-8:] != "A" * 8 else "B" * 8)
        exported.write_text("\n".join([head, objects[0], "{not json", objects[1], json.dumps(damaged)]) + "\n")

        done, failed = rewrap_slots(exported, a, rewrapped, progress=False)
        assert done == 2 and len(failed) == 2
        assert failed[0] == "line 3 is not JSON" and failed[1].startswith(f"{damaged['uid']}: ")
        with rewrapped.open("a") as f:  # and one more line that is JSON but no object
            f.write("[1, 2]\n")
        summary = import_slots(archive, rewrapped, progress=False)
        assert (summary.done, summary.skipped, summary.failed) == (2, 0, 1)
        assert summary.failures == [("line 4", "line 4 is not an object")]
        for line in objects[:2]:
            row = archive.index.get(json.loads(line)["uid"])
            _, blob = sealed_for(archive, row, c.public)
            assert open_bytes(blob, c, expect_uid=row.sop_uid)[1] in {p.read_bytes() for p in CT[:3]}
        with pytest.raises(RecipientRefused, match=f"not sealed to recipient {c.id}"):
            sealed_for(archive, archive.index.get(damaged["uid"]), c.public)  # its slot was left as it was

    exported.write_text("garbage\n")  # a file that is no slot file: refused whole, nothing written
    rewrapped.unlink()
    with pytest.raises(InputError, match=f"{exported}: .*not an aepacs slot file"):
        rewrap_slots(exported, a, rewrapped, progress=False)
    assert not rewrapped.exists()
