from __future__ import annotations

import re
from pathlib import Path

from tests.conftest import SHARED_CT, run_cli


def test_demo_runs_the_main_job_end_to_end(tmp_path: Path) -> None:
    home = tmp_path / "demo"
    proc = run_cli("demo", "--home", str(home), env={"AEPACS_CONFIG": ""})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "RESULT: every archived file came back bit for bit" in out
    total = re.search(r"^all\s+(\d+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+(\d+)/(\d+)$", out, re.M)
    assert total, out
    n, exact, of = int(total[1]), int(total[5]), int(total[6])
    assert n > (200 if SHARED_CT.is_dir() else 100) and exact == of == n
    assert float(total[4]) > 1.5  # the archive is smaller than what it holds
    for modality in ("CT", "MR", "CR", "US", "SR", "SEG"):
        assert re.search(rf"^{modality}\s+\d+", out, re.M), modality
    if SHARED_CT.is_dir():
        assert str(SHARED_CT.parent) in out
    assert (home / "keyring.json").exists() and (home / "index.sqlite3").exists()
    # part two: the learned lossy routes with the shipped models
    assert "RESULT: every lossy object came back as a marked derived image" in out
    learned = out.split("learned lossy routes", 1)[1]
    for modality in ("CT", "MR", "CR", "US"):
        row = re.search(rf"^{modality}\s+(\d+)\s+[\d.]+\s+[\d.]+\s+([\d.]+)\s+([\d.]+)\s+[\d.]+\s+(\d+)/(\d+)$",
                        learned, re.M)
        assert row, modality
        assert int(row[1]) > 0 and int(row[4]) == int(row[5]) == int(row[1])
        assert float(row[2]) > 2  # lossy, at each route's target PSNR
