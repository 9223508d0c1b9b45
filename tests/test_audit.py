"""The audit trail: hash-chained, tamper-evident, written by every process, free of pixels and keys."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

from aepacs.audit import AuditTrail, Party, parse_since, read, verify
from tests.conftest import run_cli


def _trail(tmp_path: Path, n: int = 5) -> AuditTrail:
    trail = AuditTrail(tmp_path / "audit.jsonl")
    for i in range(n):
        trail.record("store", source=Party("MODALITY", "10.0.0.1:104"), patients=[f"P{i}"],
                     studies=[f"1.2.3.{i}"], objects=i + 1)
    return trail


def _lines(trail: AuditTrail) -> list[str]:
    return trail.path.read_text().splitlines(keepends=True)


def test_an_intact_chain_verifies(tmp_path: Path) -> None:
    trail = _trail(tmp_path)
    result = verify(trail.path)
    assert result.ok and result.records == 5
    first = json.loads(_lines(trail)[0])
    assert first["event_id"] == {"code": "110104", "scheme": "DCM", "meaning": "DICOM Instances Transferred"}
    assert first["action"] == "C" and first["outcome"] == 0 and first["seq"] == 1
    assert oct(trail.path.stat().st_mode & 0o777) == "0o600"


def test_an_edited_line_is_detected(tmp_path: Path) -> None:
    trail = _trail(tmp_path)
    lines = _lines(trail)
    lines[2] = lines[2].replace('"objects":3', '"objects":30')
    trail.path.write_text("".join(lines))
    result = verify(trail.path)
    assert not result.ok and any("line 3" in p and "edited" in p for p in result.problems)


def test_a_deleted_line_is_detected(tmp_path: Path) -> None:
    trail = _trail(tmp_path)
    lines = _lines(trail)
    del lines[1]
    trail.path.write_text("".join(lines))
    result = verify(trail.path)
    assert not result.ok and any("deleted" in p for p in result.problems)


def test_a_removed_tail_is_detected(tmp_path: Path) -> None:
    trail = _trail(tmp_path)
    trail.path.write_text("".join(_lines(trail)[:-1]))
    result = verify(trail.path)
    assert not result.ok and any("removed from the end" in p for p in result.problems)


def test_writers_in_several_processes_keep_one_chain(tmp_path: Path) -> None:
    code = ("import sys; from aepacs.audit import AuditTrail; t = AuditTrail(sys.argv[1]); "
            "[t.record('query', detail=f'{sys.argv[2]} {i}') for i in range(40)]")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "audit.jsonl"), str(w)]) for w in range(3)]
    assert all(p.wait(120) == 0 for p in procs)
    result = verify(tmp_path / "audit.jsonl")
    assert result.ok and result.records == 120


def test_records_go_to_a_syslog_collector_too(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as collector:
        collector.bind(("127.0.0.1", 0))
        collector.settimeout(10)
        trail = AuditTrail(tmp_path / "audit.jsonl", syslog=f"udp://127.0.0.1:{collector.getsockname()[1]}")
        trail.record("key-change", detail="rotated")
        message = collector.recv(65536).decode()
    assert message.startswith("<110>1 ")  # facility 13 (log audit), informational; RFC 5424 version 1
    header, _, body = message.partition(" - ")
    assert header.split()[3] == "aepacs" and header.split()[5] == "110113"
    assert json.loads(body)["event"] == "key-change" and verify(trail.path).ok


def test_since_and_patient_filters(tmp_path: Path) -> None:
    trail = _trail(tmp_path)
    assert [r["patients"] for r in read(trail.path, patient="P3")] == [["P3"]]
    assert len(list(read(trail.path, since=parse_since("1h")))) == 5
    assert list(read(trail.path, since=parse_since("2999-01-01"))) == []


def test_cli_prints_and_verifies(env: dict[str, str]) -> None:
    assert run_cli("keys", "init", env=env, check=True).returncode == 0
    assert run_cli("keys", "rotate", env=env, check=True).returncode == 0
    shown = run_cli("audit", "--since", "1d", env=env, check=True).stdout
    assert shown.count("key-change") == 2 and "key version 2 active" in shown
    assert "chain intact" in run_cli("audit", "verify", env=env, check=True).stdout
    path = Path(env["AEPACS_HOME"]) / "audit.jsonl"
    path.write_text(path.read_text().replace("version 2 active", "version 9 active"))
    bad = run_cli("audit", "verify", env=env)
    assert bad.returncode == 1 and "NOT INTACT" in bad.stdout and "edited" in bad.stderr
