from __future__ import annotations

import shutil
from pathlib import Path

from aepacs.config import load_config
from aepacs.models.registry import config_registry
from tests.conftest import run_cli


def test_models_list_show_verify(home: Path) -> None:
    listing = run_cli("models", "list", check=True).stdout
    for name in ("ct@1",):
        assert name in listing
    assert '"arch": "factorized"' in run_cli("models", "show", "ct@1", check=True).stdout
    assert "match their SHA-256" in run_cli("models", "verify", "ct", check=True).stdout


def test_verify_names_the_damaged_file(home: Path, ct_model) -> None:  # type: ignore[no-untyped-def]
    site = home / "models" / "ct" / "7"
    shutil.copytree(ct_model.path, site)
    manifest = (site / "manifest.json").read_text().replace('"version": 1', '"version": 7')
    (site / "manifest.json").write_text(manifest)
    assert run_cli("models", "verify", "ct@7").returncode == 0
    weights = site / "synthesis.safetensors"
    data = bytearray(weights.read_bytes())
    data[-10] ^= 0x40
    weights.write_bytes(bytes(data))
    proc = run_cli("models", "verify", "ct@7")
    assert proc.returncode == 1 and "synthesis.safetensors does not match its SHA-256" in proc.stderr
    promoted = run_cli("models", "promote", "ct@1", check=True).stdout
    assert "ct@1 is now the current ct" in promoted


def test_verify_without_a_name_checks_every_model_and_runs_each_route(home: Path, ct_model) -> None:  # type: ignore[no-untyped-def]
    config = load_config()
    learned = {r.name for r in config.routes.values() if r.model}
    assert learned  # the shipped configuration routes modalities to models
    proc = run_cli("models", "verify", check=True)
    for name, version, _ in config_registry(config).entries():
        assert f"{name}@{version}: " in proc.stdout and proc.stdout.count(f"\n{name}@{version}: ") <= 1
    assert f"{len(learned)} learned route{'s' if len(learned) > 1 else ''} of {len(learned)} coded a test frame" \
        in proc.stdout

    site = home / "models" / "ct" / "7"  # a damaged model anywhere in the registry fails the whole check
    shutil.copytree(ct_model.path, site)
    (site / "manifest.json").write_text((site / "manifest.json").read_text().replace('"version": 1', '"version": 7'))
    weights = site / "synthesis.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1] + bytes([weights.read_bytes()[-1] ^ 1]))
    proc = run_cli("models", "verify")
    assert proc.returncode == 1 and "synthesis.safetensors does not match its SHA-256" in proc.stderr
