"""The real ``aepacs`` command in child processes."""

from __future__ import annotations

import os
import random
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from aepacs.crypto.keyring import Keyring
from aepacs.crypto.seal import open_sealed, read_header
from tests.conftest import ct_files, current_ref, run_cli
from tests.net.dcmtk import run

CT = current_ref("ct")  # the version a bare "ct" route resolves to


def test_keys_init_list_rotate(env: dict[str, str], tmp_path: Path) -> None:
    out = run_cli("keys", "init", env=env, check=True).stdout
    assert "key version 1" in out and "passphrase-protected: no" in out
    path = tmp_path / "home" / "keyring.json"
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert run_cli("keys", "init", env=env).returncode == 2
    assert "version 2 is now active" in run_cli("keys", "rotate", env=env, check=True).stdout
    listing = run_cli("keys", "list", env=env, check=True).stdout
    assert "1  " in listing and "decrypt-only" in listing and "active" in listing
    ring = Keyring.load(path)
    for v in ring.versions:
        assert ring.kek(v).hex() not in listing
    os.chmod(path, 0o644)
    proc = run_cli("keys", "list", env=env)
    assert proc.returncode == 2 and "chmod 600" in proc.stderr and "Traceback" not in proc.stderr


def test_passphrase_comes_from_the_environment(env: dict[str, str]) -> None:
    secret = {**env, "AEPACS_KEYRING_PASSPHRASE": "s3cret phrase"}
    assert "passphrase-protected: yes" in run_cli("keys", "init", env=secret, check=True).stdout
    assert run_cli("keys", "rotate", env=secret, check=True).returncode == 0
    proc = run_cli("keys", "list", env=env)
    assert proc.returncode == 2 and "passphrase-protected" in proc.stderr
    bad = run_cli("keys", "list", env={**env, "AEPACS_KEYRING_PASSPHRASE": "wrong"})
    assert bad.returncode == 2 and "wrong passphrase" in bad.stderr


def test_seal_info_open_round_trip(env: dict[str, str], tmp_path: Path) -> None:
    src = ct_files()[0]
    run_cli("keys", "init", env=env, check=True)
    sealed, opened = tmp_path / "x.aepx", tmp_path / "x.dcm"
    out = run_cli("seal", str(src), "-o", str(sealed), env=env, check=True).stdout
    assert f"codec ae:{CT}" in out  # the default CT route: the wavelet model, lossless
    info = run_cli("info", str(sealed), env=env, check=True).stdout
    header = read_header(sealed.read_bytes())
    assert header.object_uid in info and re.search(r"sealed under key version\s+1\n", info)
    import pydicom

    name = str(pydicom.dcmread(src).PatientName)
    assert name and name not in info  # the clear header shows no patient data
    run_cli("open", str(sealed), "-o", str(opened), env=env, check=True)
    assert opened.read_bytes() == src.read_bytes()


def test_lossy_route_seal_info_open(env: dict[str, str], tmp_path: Path) -> None:
    import pydicom

    src = ct_files()[12]
    site = tmp_path / "site.yaml"
    site.write_text("routes:\n  CT: {model: ct, mode: lossy, min_psnr: 30}\n")
    env = {**env, "AEPACS_CONFIG": str(site)}
    run_cli("keys", "init", env=env, check=True)
    sealed, opened = tmp_path / "x.aepx", tmp_path / "x.dcm"
    assert f"codec ae:{CT}" in run_cli("seal", str(src), "-o", str(sealed), env=env, check=True).stdout
    info = run_cli("info", str(sealed), env=env, check=True).stdout
    assert re.search(rf"lossy\s+yes: model {CT}", info) and re.search(r"quality at sealing\s+PSNR [\d.]+ dB", info)
    run_cli("open", str(sealed), "-o", str(opened), env=env, check=True)
    ds = pydicom.dcmread(opened)
    assert ds.ImageType[0] == "DERIVED" and ds.SourceImageSequence[0].ReferencedSOPInstanceUID == \
        pydicom.dcmread(src).SOPInstanceUID


def test_errors_are_one_line_naming_the_file(env: dict[str, str], tmp_path: Path) -> None:
    run_cli("keys", "init", env=env, check=True)
    sealed = tmp_path / "x.aepx"
    run_cli("seal", str(ct_files()[0]), "-o", str(sealed), env=env, check=True)
    data = bytearray(sealed.read_bytes())
    data[-40] ^= 1
    bad = tmp_path / "tampered.aepx"
    bad.write_bytes(bytes(data))
    target = tmp_path / "never.dcm"
    proc = run_cli("open", str(bad), "-o", str(target), env=env)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and str(bad) in lines[0] and "altered" in lines[0]
    assert not target.exists()
    debug = run_cli("--debug", "open", str(bad), "-o", str(target), env=env)
    assert debug.returncode != 0 and "Traceback" in debug.stderr
    notdicom = tmp_path / "notes.txt"
    notdicom.write_text("hello")
    proc = run_cli("seal", str(notdicom), "-o", str(tmp_path / "n.aepx"), env=env)
    assert proc.returncode == 1 and str(notdicom) in proc.stderr and "Traceback" not in proc.stderr
    proc = run_cli("info", str(notdicom), env=env)
    assert proc.returncode == 1 and "not an aepacs sealed object" in proc.stderr


def test_import_export_via_cli(env: dict[str, str], tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for p in ct_files()[:5]:
        shutil.copy(p, src)
    run_cli("keys", "init", env=env, check=True)
    out = run_cli("import", str(src), "-q", env=env, check=True).stdout
    assert "imported 5 new" in out
    import pydicom

    study = str(pydicom.dcmread(ct_files()[0], stop_before_pixels=True).StudyInstanceUID)
    out = run_cli("export", "--study", study, "-o", str(tmp_path / "out"), "-q", env=env, check=True).stdout
    assert "exported 5 files" in out
    assert sorted(p.read_bytes() for p in (tmp_path / "out").rglob("*.dcm")) == \
        sorted(p.read_bytes() for p in src.iterdir())
    dcmdump = Path("/usr/bin/dcmdump")  # dcmtk, the third-party reader (CI installs it)
    if dcmdump.exists() or os.environ.get("CI"):
        for path in (tmp_path / "out").rglob("*.dcm"):
            check = subprocess.run([str(dcmdump), "-q", str(path)], capture_output=True, text=True)
            assert check.returncode == 0 and "E: " not in check.stderr, check.stderr
    proc = run_cli("export", "--study", "1.2.3.4", "-o", str(tmp_path / "none"), env=env)
    assert proc.returncode == 1 and "no archived instance" in proc.stderr


def _indexed(db: Path) -> int:
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(db, timeout=30) as conn:
            return conn.execute("select count(*) from instances").fetchone()[0]
    except sqlite3.OperationalError:
        return 0


def test_sigkill_during_import_loses_nothing_and_rerun_completes(env: dict[str, str], tmp_path: Path) -> None:
    files = ct_files()
    src = tmp_path / "src"
    src.mkdir()
    for p in files:
        shutil.copy(p, src)
    run_cli("keys", "init", env=env, check=True)
    home = Path(env["AEPACS_HOME"])
    db = home / "index.sqlite3"
    rng = random.Random(7)
    kills = 0
    for _trial in range(4):
        proc = subprocess.Popen([sys.executable, "-m", "aepacs", "import", str(src), "-q"],
                                env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        before = _indexed(db)
        deadline = time.time() + 60
        target = before + rng.randint(1, 8)  # kill at a random point after some progress
        while _indexed(db) < target and proc.poll() is None and time.time() < deadline:
            time.sleep(rng.uniform(0.0, 0.05))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait()
        _check_consistent(home, allowed_orphans=kills)
    assert kills >= 2
    done = run_cli("import", str(src), "-q", env=env, check=True).stdout
    assert "0 failed" in done
    assert _indexed(db) == len(files)
    rows = _check_consistent(home, allowed_orphans=kills)
    assert len(rows) == len({r[0] for r in rows}) == len(files)


def _check_consistent(home: Path, allowed_orphans: int) -> list[tuple[str, str]]:
    """No partial blob, no row without its blob, every blob opens; at most one orphan per kill."""
    ring = Keyring.load(home / "keyring.json")
    with sqlite3.connect(home / "index.sqlite3", timeout=30) as conn:
        rows = conn.execute("select sop_uid, blob_key from instances").fetchall()
    blobs = {p.name[:64]: p for p in (home / "blobs").rglob("*.aepx")}
    for sop, key in rows:
        assert key in blobs, f"index row {sop} points at a missing blob"
    for path in blobs.values():
        header, _ = open_sealed(path.read_bytes(), ring, name=str(path))  # whole, authentic blob
        assert header.object_uid
    assert len(set(blobs) - {k for _, k in rows}) <= allowed_orphans
    stray = [p for p in (home / "blobs").rglob("*") if p.is_file() and p.suffix != ".aepx"]
    assert all(p.parent.name == ".tmp" for p in stray)  # only temporaries, swept by the next run
    return rows


def test_os_errors_are_one_line_too(env: dict[str, str], tmp_path: Path) -> None:
    run_cli("keys", "init", env=env, check=True)
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(ct_files()[0], src)
    run_cli("import", str(src), "-q", env=env, check=True)
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the export directory should be")
    import pydicom

    study = str(pydicom.dcmread(ct_files()[0], stop_before_pixels=True).StudyInstanceUID)
    proc = run_cli("export", "--study", study, "-o", str(blocked), "-q", env=env)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert str(blocked) in proc.stderr


def test_serve_and_retrieve_commands(env: dict[str, str], tmp_path: Path) -> None:
    from tests.net.conftest import free_port, start_serve

    run_cli("keys", "init", env=env, check=True)
    port = free_port()
    server = start_serve(Path(env["AEPACS_HOME"]), port, tmp_path / "serve.log")
    try:
        src = tmp_path / "src"
        src.mkdir()
        for p in ct_files()[:3]:
            shutil.copy(p, src)
        run("storescu", "-aec", "AEPACS", "+sd", "127.0.0.1", str(port), str(src))  # skips without dcmtk
        import pydicom

        study = str(pydicom.dcmread(ct_files()[0], stop_before_pixels=True).StudyInstanceUID)
        deadline = time.time() + 300  # acknowledged = spooled; archived (and queryable) moments later (a bound)
        while _indexed(Path(env["AEPACS_HOME"]) / "index.sqlite3") < 3 and time.time() < deadline:
            time.sleep(0.1)
        out = run_cli("retrieve", "--host", "127.0.0.1", "--port", str(port), "--study", study,
                      "-o", str(tmp_path / "out"), env=env, check=True).stdout
        assert "retrieved 3 instances" in out and "final status 0x0000" in out
        got = {str(pydicom.dcmread(p).SOPInstanceUID) for p in (tmp_path / "out").rglob("*.dcm")}
        assert got == {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in src.iterdir()}
        moved = run_cli("retrieve", "--host", "127.0.0.1", "--port", str(port), "--study", study,
                        "--move-to-self", str(free_port()), "--aet", "UNKNOWN", "-o", str(tmp_path / "m"), env=env)
        assert moved.returncode == 1 and "0xA801" in moved.stdout  # not a configured move destination
        assert "server.move_destinations: {UNKNOWN: [HOST," in moved.stderr  # and what to configure
    finally:
        server.send_signal(signal.SIGTERM)
        assert server.wait(60) == 0


def test_json_logs_are_one_object_per_line(env: dict[str, str], tmp_path: Path) -> None:
    import json
    import signal
    import subprocess
    import sys

    from tests.net.conftest import free_port

    site = tmp_path / "site.yaml"
    # one spool worker and no catch-up worker: SIGTERM right after the start waits for the workers
    # still starting (imports, codecs warmed), which on a slow CI host took over two minutes for three
    site.write_text(f"log:\n  format: json\nserver:\n  port: {free_port()}\n"
                    "ingest:\n  workers: 1\n  max_lag_s: 0\n")
    run_cli("keys", "init", env=env, check=True)
    proc = subprocess.Popen([sys.executable, "-m", "aepacs", "serve", "--config", str(site)],
                            env={**os.environ, **env}, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    first = []
    while not first or "listening on" not in first[-1]:  # up to the "listening on" line (a new index says so first)
        line = proc.stderr.readline()
        assert line, "serve exited before listening"
        first.append(line)
    proc.send_signal(signal.SIGTERM)
    rest = proc.communicate(timeout=120)[1]
    assert proc.returncode == 0
    lines = [*first, *rest.splitlines()]
    records = [json.loads(line) for line in lines if line.strip()]
    assert all({"time", "level", "logger", "message"} <= r.keys() for r in records)
    assert any("listening on" in r["message"] for r in records) and records[-1]["message"] == "stopped"


def test_serve_on_a_port_in_use_is_a_configuration_error_at_once(env: dict[str, str]) -> None:
    import socket

    run_cli("keys", "init", env=env, check=True)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        t0 = time.monotonic()
        proc = run_cli("serve", "--port", str(port), env=env, timeout=120)
        elapsed = time.monotonic() - t0
    assert proc.returncode == 2, proc.stderr
    assert f"cannot listen on 127.0.0.1:{port}" in proc.stderr and "Traceback" not in proc.stderr
    print(f"serve refused a port in use after {elapsed:.1f} s")


def test_a_route_to_a_missing_model_stops_serve_and_import(env: dict[str, str], tmp_path: Path) -> None:
    site = tmp_path / "site.yaml"
    site.write_text("routes:\n  CT: ct@9:lossy\n  MR: nosuch:lossless\n")
    run_cli("keys", "init", env=env, check=True)
    for args in (["serve", "--port", "11999"], ["import", str(ct_files()[0])]):
        proc = run_cli("--config", str(site), *args, env=env, timeout=120)
        assert proc.returncode == 2, (args, proc.stderr)
        assert "routes.CT: model ct@9 not found" in proc.stderr and "routes.MR: no model named 'nosuch'" in proc.stderr


def test_config_reports_every_unknown_key(env: dict[str, str], tmp_path: Path) -> None:
    site = tmp_path / "site.yaml"
    site.write_text("serverr: {}\nstore:\n  min_free: 3\ningest:\n  worker: 2\n")
    proc = run_cli("--config", str(site), "keys", "list", env=env)
    assert proc.returncode == 2
    for key in ("serverr: unknown key", "store.min_free: unknown key", "ingest.worker: unknown key"):
        assert key in proc.stderr


def test_output_into_a_closed_pipe_is_no_error(env: dict[str, str]) -> None:
    proc = subprocess.run(f"{sys.executable} -m aepacs models list | head -1", shell=True, capture_output=True,
                          text=True, env={**os.environ, **env})
    assert proc.stdout.startswith("model") and "Broken pipe" not in proc.stderr and "Error" not in proc.stderr


def test_eval_without_its_extra_says_what_to_install_before_working(env: dict[str, str], tmp_path: Path) -> None:
    out = tmp_path / "out"
    code = ("import sys; sys.modules['matplotlib'] = None; from aepacs.cli import main; "
            f"sys.exit(main(['eval', '--model', 'ct', '--data', {str(ct_files()[0])!r}, '-o', {str(out)!r}]))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, **env})
    assert proc.returncode == 2, proc.stderr
    assert "needs the eval extra (missing: matplotlib): pip install 'aepacs[eval]'" in proc.stderr
    assert not out.exists()  # refused before any work


def test_numba_caches_under_the_data_directory_when_the_package_is_read_only(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from aepacs.cli.common import numba_cache
    from aepacs.config import load_config

    monkeypatch.delenv("NUMBA_CACHE_DIR", raising=False)
    monkeypatch.setenv("AEPACS_HOME", str(tmp_path / "home"))
    config = load_config()
    assert numba_cache(config, tmp_path) is None  # writable: numba's own place, beside the code
    read_only = tmp_path / "no-such-install"  # os.access is true for root on any existing directory
    cache = numba_cache(config, read_only)
    assert cache == tmp_path / "home" / "cache" / "numba" and os.environ["NUMBA_CACHE_DIR"] == str(cache)
    assert cache.stat().st_mode & 0o777 == 0o700
