from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pytest

from aepacs.config import Config
from aepacs.crypto.keyring import Keyring
from aepacs.crypto.seal import read_header
from aepacs.errors import InputError, OpenError
from aepacs.pipeline.archive import Archive
from aepacs.pipeline.ingest import import_paths, ingest
from aepacs.pipeline.retrieve import export, fetch
from tests.conftest import ct_files

CT = ct_files()[:12]


@pytest.fixture
def ct_dir(tmp_path: Path) -> Path:
    d = tmp_path / "incoming"
    d.mkdir()
    for p in CT:
        shutil.copy(p, d / p.name)
    (d / "README.txt").write_text("not DICOM")
    (d / "empty.dcm").write_bytes(b"\0" * 128 + b"DICM")
    return d


def test_import_export_round_trip_and_idempotence(archive: Archive, ct_dir: Path, tmp_path: Path) -> None:
    s = import_paths(archive, [ct_dir], progress=False)
    assert s.added == len(CT) and not s.failed
    assert sorted(Path(p).name for p, _ in s.skipped) == ["README.txt", "empty.dcm"]
    assert s.stored_bytes < s.source_bytes
    again = import_paths(archive, [ct_dir], progress=False)
    assert again.added == 0 and again.same == len(CT)
    assert archive.index.count() == len(CT)

    (study,) = archive.index.studies()
    out = export(archive, tmp_path / "out", study_uid=study.study_uid, progress=False)
    assert len(out.written) == len(CT) and not out.failed
    sources = {p.read_bytes() for p in CT}
    assert {p.read_bytes() for p in out.written} == sources


def test_swapped_and_altered_blobs_fail_naming_the_object(archive: Archive, ct_dir: Path, tmp_path: Path) -> None:
    import_paths(archive, [ct_dir], progress=False)
    a, b, c = archive.index.find()[:3]
    pa, pb = archive.store.path_for(a.blob_key), archive.store.path_for(b.blob_key)
    blob_a, blob_b = pa.read_bytes(), pb.read_bytes()
    pa.write_bytes(blob_b)
    pb.write_bytes(blob_a)
    with pytest.raises(OpenError) as err:
        fetch(archive, a.sop_uid)
    assert a.sop_uid in str(err.value)
    # even past the content check (files back, a's row pointed at b's genuine blob), the AAD refuses it
    pa.write_bytes(blob_a)
    pb.write_bytes(blob_b)
    with archive.index.engine.begin() as conn:
        conn.exec_driver_sql("update instances set blob_key=? where sop_uid=?", (b.blob_key, a.sop_uid))
    with pytest.raises(OpenError, match=f"belongs to object {b.sop_uid}"):
        fetch(archive, a.sop_uid)

    pc = archive.store.path_for(c.blob_key)
    data = bytearray(pc.read_bytes())
    data[len(data) // 2] ^= 0x40
    pc.write_bytes(bytes(data))
    with pytest.raises(OpenError, match=c.sop_uid):
        fetch(archive, c.sop_uid)

    out = export(archive, tmp_path / "out", study_uid=a.study_uid, progress=False)
    failed = {uid for uid, _ in out.failed}
    assert failed == {a.sop_uid, c.sop_uid}    # b is intact again
    written = {p.stem for p in out.written}
    assert not written & failed and len(written) == len(CT) - 2 and b.sop_uid in written
    for uid in failed:  # nothing written for a failed open
        assert not list((tmp_path / "out").rglob(f"{uid}.dcm"))


def test_rotation_new_objects_use_new_key_old_still_open(archive: Archive, ct_dir: Path) -> None:
    first, second = CT[0], CT[1]
    ingest(archive, first.read_bytes())
    archive.keyring.rotate()
    ingest(archive, second.read_bytes())
    rows = {r.sop_uid: r for r in archive.index.find()}
    versions = sorted(r.kek_version for r in rows.values())
    assert versions == [1, 2]
    for r in rows.values():
        assert read_header(archive.store.get(r.blob_key)).kek_version == r.kek_version
        assert fetch(archive, r.sop_uid) in (first.read_bytes(), second.read_bytes())


def test_keyring_lacking_a_version_fails_naming_object(config: Config, keyring: Keyring, ct_dir: Path,
                                                        tmp_path: Path) -> None:
    shutil.copy(config.keyring_path, tmp_path / "v1-only.json")
    keyring.rotate()
    with Archive(config, keyring) as archive:
        result = ingest(archive, CT[0].read_bytes())
    with Archive(config, Keyring.load(tmp_path / "v1-only.json")) as stale, \
            pytest.raises(OpenError, match="lacks key version 2") as err:
        fetch(stale, result.sop_uid)
    assert result.sop_uid in str(err.value)


def test_conflicting_instance_policy(archive: Archive, config: Config) -> None:
    from io import BytesIO

    import pydicom

    ds = pydicom.dcmread(CT[0])
    ds.PatientName = "Someone^Else"
    buf = BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    assert ingest(archive, CT[0].read_bytes()).status == "added"
    assert ingest(archive, buf.getvalue()).status == "conflict"
    assert fetch(archive, str(ds.SOPInstanceUID)) == CT[0].read_bytes()  # the first is kept
    archive.config = dataclasses.replace(config, ingest=dataclasses.replace(config.ingest, on_conflict="reject"))
    with pytest.raises(InputError, match="already archived"):
        ingest(archive, buf.getvalue())


def test_sweep_removes_only_old_unreferenced_blobs(archive: Archive, ct_dir: Path) -> None:
    import os
    import time

    import_paths(archive, [ct_dir], progress=False)
    referenced = set(archive.index.blob_keys())
    young = archive.store.put(b"a blob whose index row is still on its way")
    old = archive.store.put(b"a blob left by a crash")
    an_hour_ago = time.time() - 7200
    os.utime(archive.store.path_for(old), (an_hour_ago, an_hour_ago))
    assert archive.sweep_orphans() == 1
    assert archive.store.exists(young) and not archive.store.exists(old)
    assert referenced <= set(archive.store.keys())
    for row in archive.index.find():
        fetch(archive, row.sop_uid)
