"""The deployment files: systemd units that systemd accepts, and an example site config that loads."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from aepacs.config import load_config

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"


def test_systemd_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze not installed")
    aepacs = Path(sys.executable).with_name("aepacs")  # the installed console script stands in for /usr/bin/aepacs
    units = []
    for unit in sorted((DEPLOY / "systemd").iterdir()):
        text = unit.read_text()
        assert "/usr/bin/aepacs" in text or unit.suffix == ".timer"
        (tmp_path / unit.name).write_text(text.replace("/usr/bin/aepacs", str(aepacs)))
        units.append(str(tmp_path / unit.name))
    proc = subprocess.run([tool, "verify", *units], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    serve = (DEPLOY / "systemd" / "aepacs.service").read_text()
    for option in ("ProtectSystem=strict", "NoNewPrivileges=yes", "PrivateTmp=yes", "User=aepacs",
                   "ReadWritePaths=/var/lib/aepacs /var/log/aepacs"):
        assert option in serve


def test_the_production_example_config_loads_with_tls_and_an_allow_list() -> None:
    config = load_config(DEPLOY / "site.example.yaml")
    assert config.server.tls.enabled and config.server.tls.require_client_certificate
    assert config.server.allowed_calling_aets and config.server.bind == "0.0.0.0"
    assert config.index_url.startswith("postgresql") and config.store_location.startswith("s3://")
    assert config.metrics.bind == "127.0.0.1" and config.metrics.port
    assert config.log.format == "json" and config.audit.syslog


def test_the_haproxy_example_is_a_valid_configuration() -> None:
    from tests.haproxy import HAPROXY, config

    if not HAPROXY.exists():
        if os.environ.get("CI"):
            raise AssertionError("haproxy missing: .ci/run must install haproxy")
        pytest.skip("haproxy not installed")
    check = subprocess.run([str(HAPROXY), "-c", "-f", str(DEPLOY / "haproxy.cfg")], capture_output=True,
                           text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "check port" in config(104, [(11112, 9464)], 8404)  # the tests' balancer checks /health alike


def test_the_wheel_installs_what_the_units_documentation_names(tmp_path: Path) -> None:
    """Issue 14: Documentation= named a file no install put there."""
    import re
    import zipfile

    root = DEPLOY.parent
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                           "-w", str(tmp_path), str(root)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    [wheel] = list(tmp_path.glob("aepacs-*.whl"))
    data = {n.split(".data/data/", 1)[1] for n in zipfile.ZipFile(wheel).namelist() if ".data/data/" in n}
    prefix = "/opt/aepacs/"  # the runbook's venv
    for unit in (DEPLOY / "systemd").glob("*.service"):
        docs = re.search(r"^Documentation=(.*)$", unit.read_text(), re.M)
        assert docs, unit.name
        for url in docs.group(1).split():
            assert url.startswith("file://" + prefix), url
            assert url[len("file://" + prefix):] in data, (unit.name, url, sorted(data))
