"""Acceptance: every readable pydicom / pydicom-data file survives seal → open."""

from __future__ import annotations

import re
import warnings
from io import BytesIO
from pathlib import Path

import pydicom
import pytest

from aepacs.config import Config
from aepacs.crypto.keyring import Keyring
from aepacs.crypto.seal import read_header
from aepacs.errors import DatasetMismatch
from aepacs.pipeline.ingest import seal_bytes
from aepacs.pipeline.retrieve import open_bytes
from tests.conftest import corpus_files

FILES = corpus_files()
UID = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*")  # PS3.5 9.1, independently of aepacs's check


def _read(data: bytes) -> pydicom.Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(BytesIO(data))


@pytest.fixture(scope="module")
def sealing(tmp_path_factory: pytest.TempPathFactory) -> tuple[Keyring, Config]:
    import dataclasses

    from aepacs.config import DEFAULT_CONFIG_PATH, load_config

    home = tmp_path_factory.mktemp("home")
    cfg = dataclasses.replace(load_config(DEFAULT_CONFIG_PATH), data_dir=home)
    return Keyring.create(cfg.keyring_path), cfg


@pytest.mark.parametrize("path", FILES, ids=[f"{p.parent.name}/{p.name}" for p in FILES])
def test_seal_open_is_bit_exact(path: Path, sealing: tuple[Keyring, Config]) -> None:
    keyring, cfg = sealing
    data = path.read_bytes()
    original = _read(data)
    bound = [str(original.get(k, "") or "").strip("\0 ") for k in ("SOPInstanceUID", "StudyInstanceUID")]
    if any(v and not UID.fullmatch(v) or len(v) > 64 for v in bound):  # a sealed object binds them: refused
        with pytest.raises(DatasetMismatch, match="is not a valid UID"):
            seal_bytes(data, keyring, cfg)
        return
    encoded, blob = seal_bytes(data, keyring, cfg)
    header, back = open_bytes(blob, keyring, name=path.name, expect_uid=read_header(blob).object_uid)
    assert back == data
    original, restored = _read(data), _read(back)
    assert restored == original
    assert restored.file_meta == original.file_meta
    for tag in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"):
        if tag in original:
            assert restored[tag].value == original[tag].value
    sop = original.get("SOPInstanceUID")
    if sop:
        assert header.object_uid == str(sop)
    assert header.codec == encoded.codec


def test_corpus_covers_what_the_issue_names() -> None:
    """Transfer syntaxes, multi-frame, RGB, big endian, 1-bit SEG, SR and RT without pixels."""
    syntaxes, kinds = set(), set()
    for path in FILES:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        ts = ds.file_meta.get("TransferSyntaxUID")
        syntaxes.add(str(ts) if ts else None)
        if str(ds.get("NumberOfFrames", 1) or 1).isdigit() and int(ds.get("NumberOfFrames", 1) or 1) > 1:
            kinds.add("multi-frame")
        if ds.get("SamplesPerPixel") == 3:
            kinds.add("rgb")
        if ds.get("BitsAllocated") == 1 and ds.get("Modality") == "SEG":
            kinds.add("1-bit SEG")
        if ds.get("Modality") in ("SR", "RTPLAN") and "PixelData" not in ds:
            kinds.add(f"{ds.Modality} without pixels")
    assert len(syntaxes) >= 10
    assert "1.2.840.10008.1.2.2" in syntaxes  # explicit big endian
    assert "1.2.840.10008.1.2.1.99" in syntaxes  # deflated
    assert kinds >= {"multi-frame", "rgb", "1-bit SEG", "SR without pixels", "RTPLAN without pixels"}
