from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from aepacs.models.registry import ModelError, Registry, parse_ref


@pytest.fixture()
def registry(tmp_path: Path, ct_model) -> Registry:  # type: ignore[no-untyped-def]
    """A writable registry holding a copy of the shipped CT model as ct@1 and ct@2."""
    for version in (1, 2):
        shutil.copytree(ct_model.path, tmp_path / "ct" / str(version))
        m = tmp_path / "ct" / str(version) / "manifest.json"
        manifest = json.loads(m.read_text())
        manifest["version"] = version
        m.write_text(json.dumps(manifest))
    return Registry(tmp_path)


def test_parse_ref() -> None:
    assert parse_ref("ct@2") == ("ct", 2) and parse_ref("mr") == ("mr", None)
    with pytest.raises(ModelError):
        parse_ref("CT @x")


def test_list_resolve_and_promote(registry: Registry) -> None:
    assert [(n, v) for n, v, _ in registry.entries()] == [("ct", 1), ("ct", 2)]
    assert registry.load("ct").version == 2        # highest until one is promoted
    registry.promote("ct@1")
    assert Registry(registry.roots[0]).load("ct").version == 1
    with pytest.raises(ModelError, match="not found"):
        registry.load("ct@9")


@pytest.mark.parametrize("filename", ["synthesis.safetensors", "analysis.safetensors"])
def test_a_flipped_byte_is_refused(registry: Registry, filename: str) -> None:
    path = registry.locate("ct@1") / filename
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(ModelError, match=f"{filename} does not match its SHA-256"):
        registry.load("ct@1")
    assert registry.load("ct@2").version == 2       # the other version is untouched


def test_missing_and_unlisted_files_are_refused(registry: Registry) -> None:
    (registry.locate("ct@1") / "analysis.safetensors").unlink()
    with pytest.raises(ModelError, match="missing"):
        registry.verify("ct@1")
    torch.save({"x": torch.zeros(1)}, registry.locate("ct@2") / "extra.pt")
    with pytest.raises(ModelError, match="unlisted weight files"):
        registry.verify("ct@2")


def test_add_numbers_versions_and_never_overwrites(registry: Registry, ct_model) -> None:  # type: ignore[no-untyped-def]
    weights = {f: ct_model.tensors(f) for f in ("analysis.safetensors", "synthesis.safetensors")}
    manifest = {k: v for k, v in ct_model.manifest.items() if k not in ("name", "version", "files")}
    model = registry.add("ct", manifest, weights)
    assert model.version == 3 and model.digest == ct_model.digest
    with pytest.raises(ModelError, match="never overwritten"):
        registry.add("ct", manifest, weights, version=3)
