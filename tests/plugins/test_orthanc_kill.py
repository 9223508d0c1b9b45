"""Orthanc on aepacs's storage area, killed with SIGKILL (with its compressor) during ingest and during the
background coding, with either durability: everything Orthanc acknowledged reads back byte for byte, and no
blob is left orphaned."""

from __future__ import annotations

import hashlib
import json
import random
import subprocess
import time
from io import BytesIO
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid

from aepacs.config import load_config
from aepacs.net.orthanc import LEVELS, OrthancApi
from aepacs.pipeline.archive import Archive, load_keyring
from aepacs.pipeline.rekey_batch import recover
from aepacs.pipeline.storage_area import DICOM, FILE, StorageArea, attachment_uid
from tests.conftest import ct_files, run_cli
from tests.plugins.conftest import ENV, Orthanc, wait_journal_moved

TRIALS = 10  # even: killed while storescu sends; odd: killed while the compressor codes
PER_TRIAL = 12


def _series(directory: Path, trial: int) -> list[Path]:
    """PER_TRIAL real CT slices as a new study of their own (new UIDs), written to `directory`."""
    out = directory / f"trial-{trial}"
    out.mkdir(parents=True)
    study, series = generate_uid(), generate_uid()
    for i, source in enumerate(ct_files()[:PER_TRIAL]):
        ds = pydicom.dcmread(source)
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.save_as(out / f"{i:02d}.dcm", enforce_file_format=True)
    return sorted(out.glob("*.dcm"))


def _acknowledged(output: str) -> list[Path]:
    """The files storescu -v reports a successful store response for."""
    done, sending = [], None
    for line in output.splitlines():
        if "Sending file: " in line:
            sending = Path(line.split("Sending file: ", 1)[1].strip())
        elif "Received Store Response (Success)" in line and sending is not None:
            done.append(sending)
            sending = None
    return done


def _storescu(orthanc: Orthanc, files: list[Path]) -> subprocess.Popen[str]:
    return subprocess.Popen(["/usr/bin/storescu", "-v", "-aec", "ORTHANC", "127.0.0.1", str(orthanc.port),
                             *map(str, files)], env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _check(orthanc: Orthanc, area: StorageArea, files: list[Path]) -> None:
    """Each file is in Orthanc, and Orthanc gives back byte for byte what it stored (its SHA-256 as the
    compressor recorded it, or of the file as it came) holding element for element what was sent."""
    shas = _coded_shas(area) | {hashlib.sha256(area.read(r.object_uid.split(".", 2)[2], DICOM)).hexdigest()
                                for r in area.rows.coded_by(FILE, DICOM, limit=10**6)}
    for f in files:
        sent = pydicom.dcmread(f)
        found = json.loads(orthanc.rest("/tools/lookup", "POST", str(sent.SOPInstanceUID).encode()))
        assert [x["Type"] for x in found] == ["Instance"], f
        data = orthanc.rest(f"/instances/{found[0]['ID']}/file")
        assert hashlib.sha256(data).hexdigest() in shas, f
        got = pydicom.dcmread(BytesIO(data))
        assert got.PixelData == sent.PixelData and got.SOPInstanceUID == sent.SOPInstanceUID
        assert [e.tag for e in got] == [e.tag for e in sent if e.tag != 0xFFFCFFFC]


def _coded_shas(area: StorageArea) -> set[str]:
    from aepacs.store.schema import attachments

    with area.archive.index.engine.connect() as conn:
        return set(conn.execute(attachments.select().with_only_columns(attachments.c.source_sha256)).scalars())


def test_sigkill_during_ingest_and_coding_loses_nothing_acknowledged(
        tmp_path: Path, orthanc_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AEPACS_HOME", str(orthanc_home))
    rng = random.Random(19)
    orthanc = Orthanc(tmp_path / "orthanc", orthanc_home, mode="storage-area")
    config = load_config()
    archive = Archive(config, load_keyring(config))
    area = StorageArea(archive)
    kept: list[Path] = []
    cut = 0  # instances the kills mid-stream left unacknowledged
    try:
        for trial in range(TRIALS):
            if trial % 2 == 0 and trial:  # pairs of trials (mid-stream, mid-coding) in both durabilities
                orthanc.stop()
                orthanc.configure(SyncStorageArea=trial // 2 % 2 == 0)
                orthanc.start()
            files = _series(tmp_path / "sent", trial)
            sender = _storescu(orthanc, files)
            if trial % 2 == 0:  # mid-stream, after the k-th store response: files still in the journal
                k, lines = rng.randint(1, PER_TRIAL // 3), []  # at least 8 still to send
                assert sender.stdout is not None
                for line in sender.stdout:
                    lines.append(line)
                    if sum("Received Store Response" in x for x in lines) >= k:
                        break
                orthanc.kill()
                output = "".join(lines) + sender.communicate(timeout=60)[0]
                cut += PER_TRIAL - len(_acknowledged(output))
            else:  # mid-coding: every file acknowledged, the compressor at work on them
                output = sender.communicate(timeout=120)[0]
                assert sender.returncode == 0, output
                wait_journal_moved(orthanc_home)  # then the compressor takes them
                deadline = time.time() + 60
                while len(area.rows.coded_by(FILE, DICOM, limit=PER_TRIAL)) == PER_TRIAL and time.time() < deadline:
                    time.sleep(0.02)
                time.sleep(rng.uniform(0.0, 0.3))
                orthanc.kill()
            acknowledged = _acknowledged(output)
            if trial % 2:
                assert len(acknowledged) == PER_TRIAL
            kept += acknowledged
            orthanc.start()
            _check(orthanc, area, acknowledged)
        assert cut > 0 and len(kept) >= TRIALS * PER_TRIAL // 2  # kills cut streams; most was acknowledged
        deadline = time.time() + 300  # the restarted compressor codes what the killed ones left
        while area.rows.coded_by(FILE, DICOM, limit=1):
            assert time.time() < deadline, "the compressor did not finish"
            time.sleep(0.5)
        orthanc.stop()
        recover(archive)  # what the next compressor pass does first
        assert archive.index.pending() == []  # every blob the killed compressors left pending was cleared
        archive.sweep_orphans(min_age_s=0)
        assert set(archive.store.keys()) == set(archive.index.blob_keys())  # no blob without its row
        orthanc.start()
        _check(orthanc, area, kept)  # every acknowledged instance, now coded, byte for byte
        # files Orthanc handed over but never committed (killed in between) go; nothing Orthanc knows does
        url = f"http://127.0.0.1:{orthanc.http}"
        run_cli("orthanc-sweep", "--orthanc", url, "--min-age", "0", env={"AEPACS_HOME": str(orthanc_home)},
                check=True)
        known = {attachment_uid(u, t) for u, t, _ in OrthancApi(url).files(LEVELS)}
        assert {r.object_uid for r in area.rows.stored_before(time.time() + 1)} == known
        assert set(archive.store.keys()) == set(archive.index.blob_keys())
        _check(orthanc, area, kept)
    finally:
        orthanc.stop()
        archive.close()
