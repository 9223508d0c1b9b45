"""The C-STORE SCU (``aepacs.net.send``): files go as they are stored, in as few associations as allowed."""

from __future__ import annotations

from pathlib import Path

import pydicom
from pydicom.data import get_testdata_file

from aepacs.net.send import MAX_CONTEXTS, Storable, batches, send_files, storable
from aepacs.pipeline.retrieve import fetch
from tests.conftest import run_cli
from tests.net.conftest import Running


def _dataset_bytes(data: bytes) -> bytes:
    """What follows the File Meta Information of a Part 10 stream (what travels over DICOM)."""
    assert data[128:132] == b"DICM"
    group_length = int.from_bytes(data[140:144], "little")  # (0002,0000) UL, explicit VR LE
    return data[144 + group_length:]


def test_batches_keep_each_association_within_128_contexts() -> None:
    files = [Storable(Path(f"{i}.dcm"), f"1.2.840.10008.5.1.4.1.1.{i % 130}", "1.2.840.10008.1.2.1", str(i))
             for i in range(400)]
    runs = batches(files)
    assert [f for run in runs for f in run] == files  # all, in order
    assert len(runs) == 4
    assert all(len({(f.sop_class, f.transfer_syntax) for f in run}) <= MAX_CONTEXTS for run in runs)
    assert batches(files[:10]) == [files[:10]]


def test_storable_needs_a_storage_class_uids_and_file_meta(tmp_path: Path) -> None:
    ct = storable(Path(get_testdata_file("CT_small.dcm")))
    assert ct is not None and ct.modality == "CT" and ct.transfer_syntax == "1.2.840.10008.1.2.1"
    (tmp_path / "text.dcm").write_text("not DICOM")
    assert storable(tmp_path / "text.dcm") is None
    assert storable(Path(get_testdata_file("no_meta.dcm"))) is None  # no transfer syntax to send it in


def test_send_files_delivers_the_stored_bytes(server: Running) -> None:
    # the last three change, or fail, when decoded and re-encoded (pynetdicom's default way to send a file)
    names = ["CT_small.dcm", "JPEG2000.dcm", "MR_small_RLE.dcm", "ExplVR_BigEnd.dcm", "explicit_VR-UN.dcm",
             "SC_rgb_jpeg.dcm"]
    files = [storable(Path(get_testdata_file(n))) for n in names]
    assert all(files)
    summary = send_files("127.0.0.1", server.port, server.aet, "SENDTEST", files)  # type: ignore[arg-type]
    assert sorted(summary.stored) == sorted(f.path for f in files)  # type: ignore[union-attr]
    server.wait_archived()
    for f in files:
        assert f is not None
        got = fetch(server.archive, f.sop_uid)
        assert _dataset_bytes(got) == _dataset_bytes(f.path.read_bytes()), f.path.name  # compressed ones too
        assert pydicom.dcmread(f.path).file_meta.TransferSyntaxUID == f.transfer_syntax


def test_aepacs_send_command(server: Running, tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    for name in ("CT_small.dcm", "MR_small_RLE.dcm"):
        (data / name).write_bytes(Path(get_testdata_file(name)).read_bytes())
    (data / "README.txt").write_text("not DICOM")
    (data / "nostudy.dcm").write_bytes(Path(get_testdata_file("JPEGLSNearLossless_08.dcm")).read_bytes())
    proc = run_cli("send", str(data), "--host", "127.0.0.1", "--port", str(server.port), "--aet", "SENDCLI")
    assert proc.returncode == 1, proc.stdout + proc.stderr  # one file refused
    assert "3 files to AEPACS" in proc.stdout and "2 stored, 1 refused; 1 files skipped" in proc.stdout
    assert "REFUSED" in proc.stderr and "nostudy.dcm: 0xA900" in proc.stderr
    server.wait_archived()
    for name in ("CT_small.dcm", "MR_small_RLE.dcm"):
        uid = str(pydicom.dcmread(data / name).SOPInstanceUID)
        assert _dataset_bytes(fetch(server.archive, uid)) == _dataset_bytes((data / name).read_bytes())
