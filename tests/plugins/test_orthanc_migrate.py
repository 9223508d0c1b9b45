"""An Orthanc that kept its own plaintext storage moved onto aepacs's storage area: one restart, then
``aepacs orthanc-migrate`` while it serves, resumable; nothing changes for Orthanc's users."""

from __future__ import annotations

import json
import subprocess
import threading
from pathlib import Path

import pytest

from aepacs.audit import read
from aepacs.config import load_config
from aepacs.pipeline.archive import Archive, load_keyring
from aepacs.pipeline.storage_area import StorageArea
from tests.conftest import ct_files, run_cli
from tests.plugins.conftest import ENV, Orthanc


def _send(orthanc: Orthanc, files: list[Path]) -> None:
    out = subprocess.run(["/usr/bin/storescu", "-aec", "ORTHANC", "127.0.0.1", str(orthanc.port), *map(str, files)],
                         env=ENV, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def _plaintext(storage: Path) -> list[Path]:
    """Orthanc's own files in its storage directory (not its index database)."""
    return [p for p in storage.rglob("*") if p.is_file() and not p.name.startswith("index")]


def test_a_plain_orthanc_moves_onto_sealed_storage_while_it_serves(
        tmp_path: Path, orthanc_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AEPACS_HOME", str(orthanc_home))
    root = tmp_path / "orthanc"
    plain = Orthanc(root, orthanc_home, mode=None)  # the site as it was: Orthanc's own plaintext storage
    try:
        _send(plain, ct_files()[:8])
        before = {i: plain.rest(f"/instances/{i}/file") for i in json.loads(plain.rest("/instances"))}
    finally:
        plain.stop()
    storage = plain.storage
    assert len(_plaintext(storage)) == 8

    # one restart: the same Orthanc (its index, its storage directory) now on aepacs, reading what is not
    # moved yet from where it was
    orthanc = Orthanc(root, orthanc_home, mode="storage-area", migrate_from=storage)
    env = {"AEPACS_HOME": str(orthanc_home)}
    url = f"http://127.0.0.1:{orthanc.http}"
    try:
        ids = sorted(before)
        assert orthanc.rest(f"/instances/{ids[0]}/file") == before[ids[0]]  # read where it was (moved on the way)
        orthanc.rest(f"/instances/{ids[1]}", method="DELETE")  # deleted before it moved: its plaintext goes
        del before[ids[1]]
        assert len(_plaintext(storage)) == 7
        _send(orthanc, ct_files()[8:10])  # new instances go to sealed storage only
        assert len(_plaintext(storage)) == 7

        out = run_cli("orthanc-migrate", "--orthanc", url, "--storage", str(storage), "--limit", "3", "-q",
                      env=env, check=True).stdout
        assert "orthanc-migrate: " in out and "moved" in out  # interrupted after 3 files: resumable

        reads, errors, stop = [], [], threading.Event()

        def read_meanwhile() -> None:  # a viewer reading the old study the whole time
            while not stop.is_set():
                for orthanc_id, data in before.items():
                    try:
                        reads.append(orthanc.rest(f"/instances/{orthanc_id}/file") == data)
                    except OSError as exc:
                        errors.append(f"{orthanc_id}: {exc}")

        reader = threading.Thread(target=read_meanwhile)
        reader.start()
        try:
            out = run_cli("orthanc-migrate", "--orthanc", url, "--storage", str(storage), "--delete", "-q",
                          env=env, check=True).stdout
        finally:
            stop.set()
            reader.join(60)
        assert errors == [] and reads and all(reads)
        assert _plaintext(storage) == []  # every plaintext file gone, each once its sealed copy read back
        again = run_cli("orthanc-migrate", "--orthanc", url, "--storage", str(storage), "-q", env=env,
                        check=True).stdout
        assert "moved" not in again and "failed" not in again and "present" in again
        for orthanc_id, data in before.items():
            assert orthanc.rest(f"/instances/{orthanc_id}/file") == data
    finally:
        orthanc.stop()
    config = load_config()
    with Archive(config, load_keyring(config)) as archive:
        area = StorageArea(archive)
        assert area.rows.count() >= 7 + 2  # the moved ones, and the two sent after the restart
        assert archive.sweep_orphans(min_age_s=0) == 0
    assert sum(r["event"] == "import" and "orthanc-migrate" in r.get("detail", "")
               for r in read(config.audit_path)) == 3
