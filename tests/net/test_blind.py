"""A blind archive (``sealing: recipients-only``), run as ``aepacs serve``: it stores each object sealed to its
recipients alone, and after its keyring is deleted and it restarts it still answers C-FIND and sends each
recipient its own sealed copies; a recipient re-wraps its objects to a new recipient; it decodes for no one;
and nothing on the host holds a run of the images' pixel bytes."""

from __future__ import annotations

import os
import shutil
import signal
import stat
import subprocess
import tempfile
import time
from contextlib import closing
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind

from aepacs.config import load_config
from aepacs.crypto.recipients import RecipientKey
from aepacs.crypto.seal import open_sealed, read_header
from aepacs.dicom.status import Status
from aepacs.errors import ConfigError, OpenError
from aepacs.net.client import retrieve
from aepacs.net.server import ArchiveServer
from aepacs.pipeline.archive import Archive
from aepacs.pipeline.retrieve import fetch_blob
from aepacs.pipeline.storage_area import StorageArea
from aepacs.store.index import Index
from aepacs.store.recipients import RecipientRows
from tests.conftest import run_cli
from tests.net.conftest import free_port, local_only, start_serve
from tests.net.test_server import scu, tiny_ct

ANCHOR = 32  # every run of 64 bytes holds one of the pixel data's 32-byte pieces at offsets 0, 32, 64, ...


def _find(port: int, study: str) -> int:
    """How many instances of `study` C-FIND finds."""
    ae = AE(ae_title="FINDSCU")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    ident = Dataset()
    ident.QueryRetrieveLevel, ident.StudyInstanceUID, ident.SOPInstanceUID = "IMAGE", study, ""
    assoc = ae.associate("127.0.0.1", port, ae_title="AEPACS")
    assert assoc.is_established
    found = sum(1 for status, ds in assoc.send_c_find(ident, StudyRootQueryRetrieveInformationModelFind)
                if status and int(status.Status) in (0xFF00, 0xFF01) and ds is not None)
    assoc.release()
    return found


def _stop(proc: subprocess.Popen[bytes]) -> None:
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=300)  # a bound beyond the server's own stop (30 s for associations, 60 s of draining)


def _anchors(datasets: list[Dataset]) -> dict[bytes, set[bytes]]:
    """The pixel data's 32-byte pieces at every 32nd offset, by their first 8 bytes; pieces of few distinct
    values (a flat background, which any file's padding may equal) left out."""
    out: dict[bytes, set[bytes]] = {}
    for ds in datasets:
        pixels = bytes(ds.PixelData)
        for q in range(0, len(pixels) - ANCHOR + 1, ANCHOR):
            piece = pixels[q:q + ANCHOR]
            if len(set(piece)) >= 12:
                out.setdefault(piece[:8], set()).add(piece)
    return out


def _runs_in(path: Path, anchors: dict[bytes, set[bytes]], chunk: int = 1 << 23) -> int:
    """How many of `anchors` occur anywhere in the file at `path` (at any byte offset; read in chunks).

    A file of another process that is gone by the time it is opened holds none.
    """
    prefixes = np.frombuffer(b"".join(anchors), dtype="<u8")
    found = 0
    try:
        f = path.open("rb")
    except FileNotFoundError:
        return 0
    with f:
        tail = b""
        while block := f.read(chunk):
            data = tail + block
            for r in range(8):  # the 8-byte words at offsets r, r + 8, ...: every offset once
                keys = np.frombuffer(data, dtype="<u8", count=(len(data) - r) // 8, offset=r)
                for i in np.nonzero(np.isin(keys, prefixes))[0] * 8 + r:
                    found += data[i:i + ANCHOR] in anchors.get(data[i:i + 8], set())
            tail = data[-(ANCHOR - 1):]
    return found


def test_a_blind_archive_serves_what_it_cannot_read(home: Path, env: dict[str, str], backend: str,
                                                    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    local_only(backend, "the scan of the host reads its files (a blind archive on PostgreSQL + S3 seals alike)")
    started, system_tmp = time.time(), Path(tempfile.gettempdir())
    private_tmp = tmp_path / "tmp"  # the temporary directory of the server and the commands: scanned whole
    private_tmp.mkdir()
    monkeypatch.setenv("TMPDIR", str(private_tmp))
    site = Path(os.environ["AEPACS_CONFIG"])
    site.write_text(site.read_text().replace("unregistered: keyring", "unregistered: refuse")
                    + "sealing: recipients-only\nkeyring:\n  path: keys/keyring.json\n")
    reader = tmp_path / "site-a"  # A's machine: its private key, no keyring, no configuration
    a, b, c = (RecipientKey.generate(n) for n in ("site-a", "site-b", "site-c"))
    a.save(reader / "site-a.key.json")
    for key in (a, b, c):
        (tmp_path / f"{key.name}.pub.json").write_text(key.public.to_json())
    port = free_port()

    with pytest.raises(ConfigError, match="no active recipient to seal to"):  # it would store what none opens
        ArchiveServer(load_config())
    assert run_cli("recipients", "add", "site-a", "--public-key", str(tmp_path / "site-a.pub.json"),
                   "--aet", "SITEA", env=env).returncode == 0
    with closing(Index(load_config().index_url)) as index:
        RecipientRows(index).add("site-b", b.id, b.public.public_key, aet="SITEB")

    proc = start_serve(home, port, tmp_path / "serve.log")
    try:
        study, series, rng = generate_uid(), generate_uid(), np.random.default_rng(31)
        sent = [tiny_ct(i, study, series, rng) for i in range(6)]
        real = pydicom.dcmread(get_testdata_file("CT_small.dcm"))  # and a real CT slice's pixels
        real.StudyInstanceUID, real.SeriesInstanceUID = study, series
        real.SOPInstanceUID = real.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        sent.append(real)
        assoc = scu().associate("127.0.0.1", port, ae_title="AEPACS")
        assert assoc.is_established and all(int(assoc.send_c_store(ds).Status) == 0 for ds in sent)
        assoc.release()
        deadline = time.time() + 120
        while _find(port, study) < len(sent) and time.time() < deadline:
            time.sleep(0.2)
        assert _find(port, study) == len(sent)
    finally:
        _stop(proc)
    assert not list((home / "spool").glob("*.aepx"))

    shutil.rmtree(home / "keys")  # every file of the archive's keyring directory
    proc = start_serve(home, port, tmp_path / "serve.log")
    try:
        assert _find(port, study) == len(sent)
        originals = {str(ds.SOPInstanceUID): ds for ds in sent}
        for aet, key in (("SITEA", RecipientKey.load(reader / "site-a.key.json")), ("SITEB", b)):
            got = retrieve("127.0.0.1", port, "AEPACS", aet, "study", study, key, tmp_path / aet)
            assert got.status == 0 and not got.failed and len(got.written) == len(sent)
            assert all(originals[str(pydicom.dcmread(p).SOPInstanceUID)] == pydicom.dcmread(p) for p in got.written)

        # C, registered after the ingest, holds no slot of these objects until a recipient re-wraps them
        with closing(Index(load_config().index_url)) as index:
            RecipientRows(index).add("site-c", c.id, c.public.public_key, aet="SITEC")
            early = retrieve("127.0.0.1", port, "AEPACS", "SITEC", "study", study, c, tmp_path / "early")
            assert len(early.failed) == len(sent) and not early.written
            assert (tmp_path / "serve.log").read_text().count(f"is not sealed to recipient {c.id}") == len(sent)
            assert RecipientRows(index).revoke("site-b")
        gone = retrieve("127.0.0.1", port, "AEPACS", "SITEB", "study", study, b, tmp_path / "gone")
        assert gone.status == Status.NOT_AUTHORIZED and not gone.written

        slots, rewrapped = tmp_path / "slots.jsonl", reader / "rewrapped.jsonl"
        exported = run_cli("rekey", "--export-slots", str(slots), "-q", env=env)
        assert exported.returncode == 0 and f"{len(sent)} key slots written" in exported.stdout
        on_a = run_cli("rekey", "--recipient-key", str(reader / "site-a.key.json"), "--slots", str(slots),
                       "-o", str(rewrapped), "-q", env={"AEPACS_HOME": str(reader / "home"), "AEPACS_CONFIG": ""})
        assert on_a.returncode == 0, on_a.stderr
        assert f"site-a ({a.id})" in on_a.stdout and f"site-c ({c.id})" in on_a.stdout
        assert "site-b" not in on_a.stdout.split("to:")[1] and not (reader / "home" / "keyring.json").exists()
        installed = run_cli("rekey", "--import-slots", str(rewrapped), "-q", env=env)
        assert installed.returncode == 0 and f"{len(sent)} done" in installed.stdout, installed.stdout

        late = retrieve("127.0.0.1", port, "AEPACS", "SITEC", "study", study, c, tmp_path / "late")
        assert late.status == 0 and not late.failed and len(late.written) == len(sent)
        with Archive(load_config()) as archive:  # the copies now stored: A and C open them, B no longer does
            for row in archive.index.find(study_uid=study):
                _, blob = fetch_blob(archive, row.sop_uid, row)
                assert set(read_header(blob).recipient_ids) == {a.id, c.id}
                assert open_sealed(blob, c)[1] and open_sealed(blob, a)[1]
                with pytest.raises(OpenError, match="not to site-b"):
                    open_sealed(blob, b)

        # the archive decodes for no one (its configuration refuses it too: the test below)
        export = run_cli("export", "--study", study, "-o", str(tmp_path / "export"), "-q", env=env)
        assert export.returncode != 0 and "sealed only to recipients" in export.stdout + export.stderr
        assert not list((tmp_path / "export").rglob("*.dcm"))
    finally:
        _stop(proc)

    # no run of 64 original pixel bytes on the host: the data directory (blobs, spool, index, keyring, audit),
    # the server's log and what it left in the temporary directory
    anchors = _anchors(sent)
    assert len(anchors) > 100
    scanned = [p for p in home.rglob("*") if p.is_file()] + [tmp_path / "serve.log"]
    scanned += [p for p in private_tmp.rglob("*") if p.is_file()]
    # and the system's, for what ignores TMPDIR; not pytest's directories (other tests' files, the readers')
    base = tmp_path_factory.getbasetemp()
    tests_root = next((d for d in (base, *base.parents) if d.name.startswith("pytest-of-")), base)
    scanned += [p for p in _walk(system_tmp, skip=tests_root) if _newer(p, started)]
    assert len(scanned) > 5
    assert {str(p): n for p in scanned if (n := _runs_in(p, anchors))} == {}
    # (the check finds them where they are: in what reader A decoded)
    assert _runs_in(next((tmp_path / "SITEA").rglob("*.dcm")), anchors) > 0


def _walk(top: Path, skip: Path) -> list[Path]:
    """The files under `top`, not under `skip` (directories that vanish meanwhile are left out)."""
    found = []
    for root, dirs, files in os.walk(top):
        dirs[:] = [d for d in dirs if Path(root, d) != skip]
        found += [Path(root, f) for f in files]
    return found


def _newer(path: Path, since: float) -> bool:
    """Whether `path` is a regular file written since `since` (not a socket, pipe or link: another program's,
    such as a browser's SingletonSocket, which cannot be read as a file)."""
    try:
        st = path.lstat()
    except OSError:
        return False
    return stat.S_ISREG(st.st_mode) and st.st_mtime >= since and st.st_size < 64 << 20


def test_a_blind_archive_refuses_what_it_cannot_do(home: Path, tmp_path: Path) -> None:
    site = Path(os.environ["AEPACS_CONFIG"])
    blind = site.read_text().replace("unregistered: keyring", "unregistered: refuse") + "sealing: recipients-only\n"
    for extra, why in (("server:\n  retrieve_as: decoded\n", "server.retrieve_as: decoded cannot be served"),
                       ("", "transport.unregistered: keyring cannot be served")):
        bad = tmp_path / "bad.yaml"
        bad.write_text((blind + extra) if extra else blind.replace("unregistered: refuse", "unregistered: keyring"))
        with pytest.raises(ConfigError, match=why):
            load_config(bad)
    site.write_text(blind)
    with Archive(load_config()) as archive, pytest.raises(ConfigError, match="storage area reads its files back"):
        StorageArea(archive)
