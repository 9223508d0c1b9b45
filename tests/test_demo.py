"""``aepacs demo``: the archive over DICOM and DICOMweb on the bundled samples, and its figures against
``aepacs eval``."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests

from aepacs.demo.browser import viewport_stats
from tests.conftest import ARTEFACTS, SHARED_CT, corpus_dirs, run_cli


class Demo:
    def __init__(self, home: Path, out: str, report: dict[str, Any], kept: dict[str, Any]) -> None:
        self.home, self.out, self.report, self.kept = home, out, report, kept


def _kept_server(out: str, token: str) -> dict[str, Any]:
    """What a person finds while ``--keep`` holds part three's server up: the viewer page and the data."""
    url = re.search(r"^  (http://127\.0\.0\.1:\d+/viewer/viewer\?StudyInstanceUIDs=[0-9.]+)$", out, re.M)
    assert url, out
    base, study = url.group(1).split("/viewer/")[0], url.group(1).rsplit("=", 1)[1]
    auth = {"Authorization": f"Bearer {token}"}
    return {"study": study, "page": requests.get(url.group(1), timeout=30).text,
            "series": requests.get(f"{base}/dicomweb/studies/{study}/series", headers=auth, timeout=30).json(),
            "refused": requests.get(f"{base}/dicomweb/studies", timeout=30).status_code, "base": base}


def _slices(series: Path, count: int, into: Path) -> Path:
    """A directory holding `count` consecutive slices from the middle of `series`."""
    files = sorted(series.glob("*.dcm"))
    start = max(0, (len(files) - count) // 2)
    out = into / series.name
    out.mkdir()
    for f in files[start:start + count]:
        shutil.copy(f, out / f.name)
    return out


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory, viewer_dir: Path) -> Demo:
    home = tmp_path_factory.mktemp("demo") / "home"
    stderr = home.parent / "stderr.txt"
    with stderr.open("w") as err:  # --keep: the demo holds its DICOMweb server up until interrupted
        # the demo's own sample sets, with 20 slices of one of the two real CT series (the suite's time budget)
        shared = [_slices(SHARED_CT / "series-3-5mm", 20, home.parent)] if SHARED_CT.is_dir() else []
        data = [f"--data={d}" for d in (*corpus_dirs(), *shared)]
        proc = subprocess.Popen([sys.executable, "-m", "aepacs", "demo", "--home", str(home), "--keep",
                                 "--viewer", str(viewer_dir), *data], stdout=subprocess.PIPE, stderr=err, text=True,
                                env={**os.environ, "AEPACS_CONFIG": ""})
        assert proc.stdout is not None
        out = ""
        for line in proc.stdout:
            out += line
            if line.startswith("  http://"):  # the last line before it waits
                break
        token = re.search(r"with the token (\S+), then open", out)
        kept = _kept_server(out, token.group(1)) if token else {}
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=330)  # its server may archive what it still spools (stop waits 300 s)
    assert proc.returncode == 0, out + rest + stderr.read_text()
    assert kept, out
    return Demo(home, out + rest, json.loads((home / "demo.json").read_text()), kept)


def _table(text: str) -> dict[str, list[str]]:
    """Rows of a printed table: modality -> its columns."""
    return {m.group(1): m.group(2).split() for m in re.finditer(r"^(\S+)\s+(\d+\s.*)$", text, re.M)}


def test_demo_sends_finds_and_retrieves_everything_over_dicom(demo: Demo) -> None:
    out = demo.out
    assert "RESULT: every instance came back" in out
    lossless, learned = out.split("part one:", 1)[1].split("part three:", 1)[0].split("part two:", 1)
    rows = _table(lossless)
    n, exact = int(rows["all"][0]), rows["all"][-2]
    assert n > (150 if SHARED_CT.is_dir() else 70) and exact == f"{n}/{n}"  # every instance identical
    for modality in ("CT", "MR", "CR", "US", "SR", "SEG"):
        assert rows[modality][-2] == f"{rows[modality][0]}/{rows[modality][0]}", modality
    assert float(rows["all"][3]) > 1.5  # the archive is smaller than what it holds
    refused = demo.report["lossless"]
    assert sum(len(r["refused"]) for r in refused.values()) < 15  # only the malformed samples
    for r in refused.values():  # what was acknowledged was found by C-FIND and retrieved by C-GET
        assert r["acknowledged"] == r["found"] == r["retrieved"] == r["exact"]
        assert r["acknowledged"] == 0 or (r["ingest_per_s"] > 0 and r["retrieve_per_s"] > 0)
        for name in r["refused"]:  # a row saying "all N refused: listed below" finds them listed
            assert name in lossless, name
    archived = {m: row for m, row in rows.items() if m == "all" or refused.get(m, {}).get("acknowledged")}
    assert archived and all(len(row) == 11 for row in archived.values()), archived  # no blank column
    log = demo.home / "serve.log"  # each refusal's reason, kept beside the report
    assert str(log) in out and "refused (0xA900)" in log.read_text()

    rows = _table(learned)
    for modality in ("CT", "MR", "CR", "US"):
        r = demo.report["learned"][modality]
        assert f"{r['derived']} derived, {r['exact']} exact of {r['acknowledged']}" in " ".join(rows[modality])
        assert r["derived"] > 0 and r["derived"] + r["exact"] == r["acknowledged"] == r["retrieved"], modality
        assert 30 < r["psnr_mean"] < 80 and 0.9 < r["ssim_mean"] <= 1, modality
    png = demo.home / "demo-slice.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and str(png) in out
    assert (demo.home / "keyring.json").exists() and (demo.home / "index.sqlite3").exists()


def test_demo_part_three_over_dicomweb_and_the_viewer(demo: Demo) -> None:
    web = demo.out.split("part three:", 1)[1]
    rows = _table(web.split("time to the first", 1)[0])
    figures = demo.report["dicomweb"]["modalities"]
    n = int(rows["all"][0])
    assert n == sum(r["stored"] for r in figures.values()) and rows["all"][-2] == f"{n}/{n}"  # all identical
    for modality in ("CT", "MR", "CR", "US"):
        r = figures[modality]
        assert r["stored"] == r["found"] == r["retrieved"] == r["exact"] > 0, modality
        assert r["stow_per_s"] > 0 and r["queryable_per_s"] > 0 and r["retrieve_per_s"] > 0
        printed = [float(v) for v in rows[modality][1:4]]  # the table's one decimal, demo.json's two
        assert printed == pytest.approx([r["stow_per_s"], r["queryable_per_s"], r["retrieve_per_s"]], abs=0.051)
    lossless = demo.report["lossless"]  # the same files are refused over C-STORE and STOW-RS, but for one kind:
    over_dimse = {name for r in lossless.values() for name in r["refused"]}  # C-STORE also checks the UID
    over_web = {name for r in figures.values() for name in r["refused"]}  # it announced (STOW-RS has none)
    assert over_web and over_web <= over_dimse
    assert 0 < demo.report["dicomweb"]["first_frame_ms"] < 60_000
    # the viewer's URL for the CT study, its page served while --keep held the server up, the data behind it
    kept = demo.kept
    assert demo.report["viewer"]["url"].endswith(kept["study"]) and 'window.PUBLIC_URL="/viewer/"' in kept["page"]
    assert kept["series"] and all(s["00080060"]["Value"] == ["CT"] for s in kept["series"])
    assert kept["refused"] == 401  # the kept server still wants the token
    assert "stays up until Ctrl-C" in demo.out
    with pytest.raises(requests.exceptions.ConnectionError):  # and stopped on Ctrl-C
        requests.get(f"{kept['base']}/dicomweb/studies", timeout=10)
    # the screenshot next to demo-slice.png: the CT series drawn
    shot = demo.home / "demo-viewer.png"
    assert demo.report["viewer"]["screenshot"] == str(shot) and not demo.report["viewer"]["note"], demo.report
    ARTEFACTS.mkdir(parents=True, exist_ok=True)
    shutil.copy(shot, ARTEFACTS / "demo-viewer.png")
    mean, std = viewport_stats(shot.read_bytes())
    assert std > 15 and 5 < mean < 250


def test_demo_table_is_what_the_demo_measured(demo: Demo) -> None:
    """Each printed PSNR / SSIM / image ratio is the mean of the per-image figures in demo.json."""
    rows = _table(demo.out.split("part two:", 1)[1].split("part three:", 1)[0])
    for modality, summary in demo.report["learned"].items():
        images = [i for i in demo.report["images"] if i["modality"] == modality]
        if not images:
            continue
        ratio, db, ssim = (float(v) for v in rows[modality][4:7])
        assert ratio == pytest.approx(np.mean([i["ratio"] for i in images]), abs=0.006)
        assert db == pytest.approx(np.mean([i["psnr"] for i in images]), abs=0.006)
        assert ssim == pytest.approx(np.mean([i["ssim"] for i in images]), abs=6e-5)
        assert summary["derived"] == len({i["sop_instance_uid"] for i in images})


@pytest.mark.parametrize("modality, model", [("CT", "ct"), ("MR", "mr"), ("US", "us")])
def test_demo_figures_match_aepacs_eval_on_the_same_images(demo: Demo, tmp_path: Path, modality: str,
                                                           model: str) -> None:
    images = [i for i in demo.report["images"]  # aepacs eval leaves out images under 32 pixels a side
              if i["modality"] == modality and i["frame"] == 0 and min(i["rows"], i["columns"]) >= 32]
    picked = images[:: max(1, len(images) // 3)][:3]
    data = tmp_path / "data"
    data.mkdir()
    for i, image in enumerate(picked):
        shutil.copy(image["source"], data / f"{i}.dcm")
    gain = demo.report["gains"][modality]
    run_cli("eval", "--model", model, "--gains", str(gain), "--data", str(data), "-o", str(tmp_path / "eval"), "-q",
            env={"AEPACS_CONFIG": ""}, check=True)
    result = json.loads((tmp_path / "eval" / "results.json").read_text())
    first = {}  # file name -> its first frame's row at the demo's gain
    for row in result["rows"]:
        if row["family"] == "aepacs" and row["gain"] == gain:
            first.setdefault(row["source"], row)
    assert len(first) == len(picked)
    for i, image in enumerate(picked):
        row = first[f"{i}.dcm"]
        assert row["psnr"] == pytest.approx(image["psnr"], abs=1e-3), image["source"]
        assert row["ssim"] == pytest.approx(image["ssim"], abs=1e-4), image["source"]
        frames = sum(1 for j in demo.report["images"] if j["sop_instance_uid"] == image["sop_instance_uid"])
        if frames == 1:  # the demo's ratio is the instance's; eval's, the frame's
            assert row["ratio"] == pytest.approx(image["ratio"], rel=1e-3), image["source"]
