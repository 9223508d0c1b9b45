"""WADO-RS in sealed mode, sealed to the recipient whose DICOMweb token asks: opened on a reader's machine
that has its private key and no keyring; a revoked token's recipient refused."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import closing
from pathlib import Path

import pydicom
import requests

from aepacs.audit import read
from aepacs.config import load_config
from aepacs.crypto.recipients import RecipientKey
from aepacs.crypto.seal import read_header
from aepacs.store.index import Index
from aepacs.store.recipients import RecipientRows
from tests.conftest import ct_files, run_cli
from tests.net.conftest import Running, free_port
from tests.web.conftest import TOKEN, TOKEN_SHA256, Web


def test_wado_rs_is_sealed_to_the_tokens_recipient_and_opens_without_the_keyring(
        make_web: Callable[..., Web], tmp_path: Path) -> None:
    web = make_web(retrieve_as="sealed")
    originals = [pydicom.dcmread(f) for f in ct_files()[:3]]
    web.client.store_instances(originals)
    web.running.wait_archived()
    study = str(originals[0].StudyInstanceUID)
    site_a = RecipientKey.generate("site-a")
    site_a.save(tmp_path / "reader" / "site-a.key.json")
    rows = RecipientRows(web.running.archive.index)
    rows.add("site-a", site_a.id, site_a.public.public_key, token_sha256=TOKEN_SHA256)
    reader = {"AEPACS_HOME": str(tmp_path / "reader-home"), "AEPACS_WEB_TOKEN": TOKEN}  # no keyring there
    out = run_cli("retrieve", "--dicomweb", web.url, "--study", study, "-o", str(tmp_path / "out"),
                  "--recipient-key", str(tmp_path / "reader" / "site-a.key.json"), env=reader, check=True)
    assert not (tmp_path / "reader-home" / "keyring.json").exists(), out.stdout
    got = {str(pydicom.dcmread(p).SOPInstanceUID): pydicom.dcmread(p) for p in (tmp_path / "out").rglob("*.dcm")}
    assert len(got) == 3 and all(got[str(ds.SOPInstanceUID)] == ds for ds in originals)
    # the archive's own keyring does not open what was sealed to the token's recipient
    other = run_cli("retrieve", "--dicomweb", web.url, "--study", study, "-o", str(tmp_path / "other"),
                    env={"AEPACS_HOME": str(web.running.config.data_dir), "AEPACS_WEB_TOKEN": TOKEN})
    assert other.returncode == 1 and "recipient's private key" in other.stderr
    assert rows.revoke("site-a")
    refused = requests.get(f"{web.url}/studies/{study}", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60)
    assert refused.status_code == 403 and "site-a" in refused.json()["error"] and "revoked" in refused.json()["error"]
    details = [r["detail"] for r in read(web.running.config.audit_path) if r["event"] == "retrieve"]
    assert any(f"sealed to recipient site-a ({site_a.id})" in d for d in details)
    assert any("WADO-RS refused: recipient site-a" in d for d in details)


def test_a_blind_archive_serves_wado_rs_sealed_to_the_tokens_recipient(
        make_server: Callable[..., Running], tmp_path: Path) -> None:
    site_a = RecipientKey.generate("site-a")
    site_a.save(tmp_path / "reader" / "site-a.key.json")
    with closing(Index(load_config().index_url)) as index:  # registered first: a blind archive needs one
        RecipientRows(index).add("site-a", site_a.id, site_a.public.public_key, token_sha256=TOKEN_SHA256)
    web = Web(make_server(server={"retrieve_as": "sealed"}, web={"port": free_port(), "tokens_sha256": [TOKEN_SHA256]},
                          sealing="recipients-only", transport={"unregistered": "refuse"}))
    originals = [pydicom.dcmread(f) for f in ct_files()[:3]]
    web.client.store_instances(originals)
    web.running.wait_archived()
    archive = web.running.archive
    assert {read_header(archive.store.get(r.blob_key)).recipient_ids for r in archive.index.find()} == {(site_a.id,)}
    study = str(originals[0].StudyInstanceUID)
    reader = {"AEPACS_HOME": str(tmp_path / "reader-home"), "AEPACS_WEB_TOKEN": TOKEN, "AEPACS_CONFIG": ""}
    run_cli("retrieve", "--dicomweb", web.url, "--study", study, "-o", str(tmp_path / "out"),
            "--recipient-key", str(tmp_path / "reader" / "site-a.key.json"), env=reader, check=True)
    got = {str(pydicom.dcmread(p).SOPInstanceUID): pydicom.dcmread(p) for p in (tmp_path / "out").rglob("*.dcm")}
    assert len(got) == 3 and all(got[str(ds.SOPInstanceUID)] == ds for ds in originals)
