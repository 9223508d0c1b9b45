"""``aepacs recipient init`` on a reader's machine, ``aepacs recipients add | list | revoke`` at the archive."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pydicom

from aepacs.audit import read
from aepacs.config import Config
from aepacs.crypto.recipients import Recipient, RecipientKey
from aepacs.crypto.seal import read_header
from tests.conftest import ct_files, run_cli


def test_a_reader_makes_its_key_pair_and_the_archive_registers_and_revokes_it(
        env: dict[str, str], config: Config, tmp_path: Path) -> None:
    reader = {"AEPACS_HOME": str(tmp_path / "reader-home"), "AEPACS_RECIPIENT_PASSPHRASE": "site a phrase"}
    out = run_cli("recipient", "init", "--name", "site-a", "-o", str(tmp_path / "reader"), env=reader, check=True)
    assert "passphrase-protected: yes" in out.stdout
    private, public = tmp_path / "reader" / "site-a.key.json", tmp_path / "reader" / "site-a.pub.json"
    assert oct(private.stat().st_mode & 0o777) == "0o600"
    key = RecipientKey.load(private, b"site a phrase")
    assert Recipient.from_json(public.read_text()) == key.public and key.id in out.stdout
    again = run_cli("recipient", "init", "--name", "site-a", "-o", str(tmp_path / "reader"), env=reader)
    assert again.returncode != 0 and "not overwriting" in again.stderr and "Traceback" not in again.stderr

    token = hashlib.sha256(b"site-a bearer token").hexdigest()
    added = run_cli("recipients", "add", "site-a", "--public-key", str(public), "--aet", "SITEA",
                    "--dicomweb-token-sha256", token, env=env, check=True).stdout
    assert f"id {key.id}" in added and "SITEA" in added
    other = RecipientKey.generate("site-b")
    (tmp_path / "site-b.pub.json").write_text(other.public.to_json())
    clash = run_cli("recipients", "add", "site-b", "--public-key", str(tmp_path / "site-b.pub.json"),
                    "--aet", "SITEA", env=env)
    assert clash.returncode != 0 and "AE title SITEA already identifies active recipient site-a" in clash.stderr
    for bad, why in ((["--aet", "BAD\\AET"], "AE title"), (["--dicomweb-token-sha256", "xyz"], "64 hex")):
        proc = run_cli("recipients", "add", "site-b", "--public-key", str(tmp_path / "site-b.pub.json"), *bad,
                       env=env)
        assert proc.returncode != 0 and why in proc.stderr
    doc = json.loads(public.read_text())
    (tmp_path / "forged.pub.json").write_text(json.dumps({**doc, "public_key": doc["public_key"][:-4] + "AAA="}))
    forged = run_cli("recipients", "add", "site-c", "--public-key", str(tmp_path / "forged.pub.json"), env=env)
    assert forged.returncode != 0 and "is not its key's" in forged.stderr
    (tmp_path / "huge.pub.json").write_bytes(b" " * (1 << 20))
    huge = run_cli("recipients", "add", "site-c", "--public-key", str(tmp_path / "huge.pub.json"), env=env)
    assert huge.returncode != 0 and "not a recipient's public key file" in huge.stderr
    listing = run_cli("recipients", "list", env=env, check=True).stdout
    assert "site-a" in listing and key.id in listing and "active" in listing and "site-b" not in listing

    assert "revoked recipient site-a" in run_cli("recipients", "revoke", "site-a", env=env, check=True).stdout
    assert "revoked 20" in run_cli("recipients", "list", env=env, check=True).stdout
    twice = run_cli("recipients", "revoke", "site-a", env=env)
    assert twice.returncode != 0 and "no active recipient site-a" in twice.stderr
    reused = run_cli("recipients", "add", "site-a", "--public-key", str(public), env=env)
    assert reused.returncode != 0 and "not reused" in reused.stderr
    # the AE title of a revoked recipient may go to a new one
    run_cli("recipients", "add", "site-b", "--public-key", str(tmp_path / "site-b.pub.json"), "--aet", "SITEA",
            env=env, check=True)
    records = [r for r in read(config.audit_path) if r["event"] == "key-change"]
    details = [r["detail"] for r in records]
    assert any("recipient site-a added" in d for d in details) and any("recipient site-a revoked" in d
                                                                      for d in details)


def test_exported_copies_sealed_to_a_recipient_open_on_its_machine_after_the_archives_keys_are_retired(
        env: dict[str, str], tmp_path: Path) -> None:
    files = ct_files()[:3]
    run_cli("keys", "init", env=env, check=True)
    source = tmp_path / "in"
    source.mkdir()
    for f in files:
        (source / f.name).write_bytes(f.read_bytes())
    run_cli("import", str(source), env=env, check=True)
    reader = {"AEPACS_HOME": str(tmp_path / "reader-home")}  # the reading site: its key, no keyring
    run_cli("recipient", "init", "--name", "site-a", "-o", str(tmp_path / "reader"), env=reader, check=True)
    run_cli("recipients", "add", "site-a", "--public-key", str(tmp_path / "reader" / "site-a.pub.json"),
            env=env, check=True)
    study = str(pydicom.dcmread(files[0]).StudyInstanceUID)
    run_cli("export", "--study", study, "--sealed", "--recipient", "site-a", "-o", str(tmp_path / "sealed"),
            "-q", env=env, check=True)
    sealed = sorted((tmp_path / "sealed").rglob("*.aepx"))
    assert len(sealed) == 3 and all(read_header(p.read_bytes()).recipient_id for p in sealed)
    # the archive rotates, re-encrypts everything and destroys the old key
    run_cli("keys", "rotate", env=env, check=True)
    run_cli("rekey", "--mode", "full", env=env, check=True)
    run_cli("keys", "retire", "1", "--yes", env=env, check=True)
    out = run_cli("retrieve", "--from-files", str(tmp_path / "sealed"), "-o", str(tmp_path / "opened"),
                  "--recipient-key", str(tmp_path / "reader" / "site-a.key.json"), env=reader, check=True)
    assert not (tmp_path / "reader-home" / "keyring.json").exists(), out.stdout
    opened = {str(pydicom.dcmread(p).SOPInstanceUID): p.read_bytes() for p in (tmp_path / "opened").rglob("*.dcm")}
    assert {str(pydicom.dcmread(f).SOPInstanceUID): f.read_bytes() for f in files} == opened
    nope = run_cli("export", "--study", study, "--sealed", "--recipient", "nobody", "-o", str(tmp_path / "x"),
                   env=env)
    assert nope.returncode != 0 and "no recipient nobody" in nope.stderr
