"""Objects sealed by an earlier release still open, and the same input still gives the same payload.

The fixtures (``tests/fixtures/sealed``) were written once by
``tests/fixtures/make_sealed.py`` and are never rewritten: every codec
generation (``@1`` factorized, ``@2``/``@3`` wavelet, JPEG-LS, zstd, kept as
received, whole objects) must keep opening to the recorded bytes.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
from pydicom.data import get_testdata_file

from aepacs.codec.payload import QualityFloor, encode_object
from aepacs.config import Route
from aepacs.crypto.keyring import Keyring
from aepacs.crypto.seal import open_sealed, read_header
from aepacs.models.registry import Registry
from aepacs.pipeline.codecs import learned_codec
from aepacs.pipeline.retrieve import open_bytes

FIXTURES = Path(__file__).resolve().parent / "fixtures"
RECORD = json.loads((FIXTURES / "sealed.json").read_text())


@pytest.fixture(scope="module")
def fixture_keyring(tmp_path_factory: pytest.TempPathFactory) -> Keyring:
    path = tmp_path_factory.mktemp("fixture-keys") / "keyring.json"
    shutil.copyfile(FIXTURES / "sealed" / "keyring.json", path)
    path.chmod(0o600)  # git keeps no owner-only mode
    return Keyring.load(path)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_every_generation_is_covered() -> None:
    codecs = {r["codec"] for r in RECORD.values()}
    assert {"ae:ct@1", "ae:ct@2", "ae:ct@3", "ae:us@1", "ae:us@3", "jpegls", "zstd", "raw"} <= codecs


@pytest.mark.parametrize("name", sorted(RECORD))
def test_fixture_opens_to_the_recorded_bytes(name: str, fixture_keyring: Keyring) -> None:
    blob = (FIXTURES / "sealed" / f"{name}.aep").read_bytes()
    expected = RECORD[name]
    assert read_header(blob).codec == expected["codec"]
    _, payload = open_sealed(blob, fixture_keyring, name=name)
    assert _sha(payload) == expected["payload_sha256"]
    _, opened = open_bytes(blob, fixture_keyring, name=name)
    assert _sha(opened) == expected["opened_sha256"]
    if not expected["lossy"]:  # lossless objects open to the source file itself
        assert opened == Path(get_testdata_file(expected["source"])).read_bytes()


def _route(text: str) -> tuple[Route | None, str]:
    if text in ("lossless", "zstd"):
        return None, "zstd" if text == "zstd" else "jpegls"
    model, mode, *target = text.split(":")
    return Route(model=model, mode=mode, target_psnr=float(target[0]) if target else None), "jpegls"


@pytest.mark.parametrize("name", sorted(n for n, r in RECORD.items() if "@1" not in r["route"]))
def test_same_input_gives_the_same_payload(name: str) -> None:
    """Integer codecs and the lossless ones are deterministic: a refactor must not change a stored byte.

    (``@1`` objects are left out: their float analysis may round differently on another CPU;
    what they must do, open, is held above.)
    """
    expected = RECORD[name]
    route, lossless = _route(expected["route"])
    learned = learned_codec(route, Registry.default()) if route else None
    data = Path(get_testdata_file(expected["source"])).read_bytes()
    encoded = encode_object(data, lossless=lossless, learned=learned, floor=QualityFloor())
    assert encoded.codec == expected["codec"]
    assert _sha(encoded.payload) == expected["payload_sha256"]
