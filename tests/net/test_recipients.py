"""C-GET and C-MOVE sealed to the requester's recipient key: opened with its private key alone; revoked
and unregistered requesters refused (as ``transport.unregistered`` says), audited."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pydicom

from aepacs.audit import read
from aepacs.crypto.recipients import RecipientKey
from aepacs.dicom.status import Status
from aepacs.net.client import retrieve
from aepacs.store.recipients import RecipientRows
from tests.conftest import run_cli
from tests.net.conftest import Running, free_port
from tests.net.test_server import store_series


def _register(srv: Running, key: RecipientKey, aet: str) -> None:
    RecipientRows(srv.archive.index).add(key.name, key.id, key.public.public_key, aet=aet)


def test_a_c_get_is_sealed_to_the_requester_and_opens_with_its_private_key_alone(
        make_server: Callable[..., Running], tmp_path: Path) -> None:
    srv = make_server()
    study, _, sent = store_series(srv, 4, seed=11)
    srv.wait_archived()
    site_a, site_b = RecipientKey.generate("site-a"), RecipientKey.generate("site-b")
    _register(srv, site_a, "SITEA")
    _register(srv, site_b, "SITEB")
    got = retrieve("127.0.0.1", srv.port, srv.aet, "SITEA", "study", study, site_a, tmp_path / "a")
    assert got.status == 0 and not got.failed and len(got.written) == 4
    back = {str(pydicom.dcmread(p).SOPInstanceUID): pydicom.dcmread(p) for p in got.written}
    assert all(back[str(ds.SOPInstanceUID)] == ds for ds in sent)
    # what was sealed to A: B's key does not open it, nor does the archive's own keyring, each object named
    for other, why in ((site_b, f"sealed to recipient {site_a.id}, not to site-b"),
                       (srv.keyring, "recipient's private key")):
        wrong = retrieve("127.0.0.1", srv.port, srv.aet, "SITEA", "study", study, other, tmp_path / "wrong")
        assert len(wrong.failed) == 4 and not wrong.written
        uids = {str(ds.SOPInstanceUID) for ds in sent}  # each message names the instance it could not open
        assert {m.split(":")[0] for _, m in wrong.failed} == uids and all(why in m for _, m in wrong.failed)
    assert not (tmp_path / "wrong").exists() or not any((tmp_path / "wrong").rglob("*.dcm"))
    records = [r for r in read(srv.config.audit_path) if r["event"] == "retrieve" and r["outcome"] == 0]
    assert any(f"sealed to recipient site-a ({site_a.id})" in r["detail"] for r in records)
    # an AE of no recipient gets the archive's KEK-sealed form (the tests' site allows it: transport.unregistered)
    viewer = retrieve("127.0.0.1", srv.port, srv.aet, "VIEWER", "study", study, srv.keyring, tmp_path / "viewer")
    assert viewer.status == 0 and len(viewer.written) == 4
    no = retrieve("127.0.0.1", srv.port, srv.aet, "VIEWER", "study", study, site_a, tmp_path / "no")
    assert len(no.failed) == 4 and all("not to recipient site-a" in message for _, message in no.failed)


def test_a_c_move_is_sealed_to_the_destinations_recipient(make_server: Callable[..., Running],
                                                           tmp_path: Path) -> None:
    port = free_port()
    srv = make_server(server={"move_destinations": {"SITEA": ["127.0.0.1", port]}})
    study, _, sent = store_series(srv, 3, seed=14)
    srv.wait_archived()
    site_a = RecipientKey.generate("site-a")
    _register(srv, site_a, "SITEA")
    got = retrieve("127.0.0.1", srv.port, srv.aet, "SITEA", "study", study, site_a, tmp_path / "a",
                   move_to_self=port)
    assert got.status == 0 and not got.failed and len(got.written) == 3
    back = {str(pydicom.dcmread(p).SOPInstanceUID): pydicom.dcmread(p) for p in got.written}
    assert all(back[str(ds.SOPInstanceUID)] == ds for ds in sent)


def test_revoked_and_unregistered_requesters_are_refused(make_server: Callable[..., Running],
                                                         env: dict[str, str], tmp_path: Path) -> None:
    srv = make_server(transport={"unregistered": "refuse"})
    study, _, _ = store_series(srv, 2, seed=12)
    srv.wait_archived()
    site_b = RecipientKey.generate("site-b")
    _register(srv, site_b, "SITEB")
    assert RecipientRows(srv.archive.index).revoke("site-b")
    for aet, key, why in (("SITEB", site_b, "recipient site-b (AE title SITEB) is revoked"),
                          ("STRANGER", srv.keyring, "AE title STRANGER is no registered recipient")):
        got = retrieve("127.0.0.1", srv.port, srv.aet, aet, "study", study, key, tmp_path / aet)
        assert got.status == Status.NOT_AUTHORIZED and not got.written
        refused = [r for r in read(srv.config.audit_path) if r["event"] == "retrieve" and r["outcome"] != 0]
        assert any(why in r["detail"] for r in refused)
    cli = run_cli("retrieve", "--host", "127.0.0.1", "--port", str(srv.port), "--aet", "STRANGER", "--study", study,
                  "-o", str(tmp_path / "cli"), env=env)  # the command line says what to do about it
    assert cli.returncode == 1 and "final status 0x0124" in cli.stdout
    assert "aepacs recipients add SITE --public-key SITE.pub.json --aet STRANGER" in cli.stderr
