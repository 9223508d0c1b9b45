"""``aepacs eval`` for real, with small settings: held-out CT, the JPEG 2000 and JPEG-LS baselines."""

from __future__ import annotations

import json
from pathlib import Path

import pydicom
import pytest

from tests.conftest import SHARED_CT, ct_files, run_cli


def test_eval_report_on_held_out_ct(home: Path, tmp_path: Path) -> None:
    held_out = SHARED_CT / "series-3-5mm"  # the shipped CT model was trained on series 2
    data = held_out if held_out.is_dir() else ct_files()[0].parent
    out = tmp_path / "report"
    run_cli("eval", "--model", "ct@1", "--data", str(data), "--limit", "2", "--gains", "0", "6",
            "--noise", "gaussian", "salt-and-pepper", "-o", str(out), "-q", check=True)
    results = json.loads((out / "results.json").read_text())
    rows = results["rows"]
    assert {r["family"] for r in rows} == {"aepacs", "jpeg2000", "htj2k-lossy", "jpegxl-lossy", "aepacs-lossless",
                                           "jpegls", "jpegxl", "jpeg2000-lossless", "htj2k"}
    assert len(results["images"]) == 2
    images = {i["image"]: i for i in results["images"]}
    for r in rows:  # ratio = stored pixel bytes / coded bytes
        stored = images[r["image"]]["rows"] * images[r["image"]]["columns"] * 2
        assert abs(r["bytes"] * r["ratio"] / stored - 1) < 1e-3
    for mine in (r for r in rows if r["family"] == "aepacs"):
        for family in ("jpeg2000", "htj2k-lossy", "jpegxl-lossy"):  # never more bytes than we used
            other = next(r for r in rows if r["family"] == family and r["image"] == mine["image"]
                         and r["gain"] == mine["gain"])
            assert other["bytes"] <= mine["bytes"] and other["psnr"] > 20, family
        assert mine["psnr"] > 30 and "psnr_window" in mine  # CT: also inside the soft-tissue window
    ct = results["summary"]["CT"]
    assert set(ct["at_ratio"]) == {"8", "16", "32"}
    assert ct["at_ratio"]["16"]["htj2k-lossy_psnr"] is not None and ct["at_ratio"]["16"]["jpegxl-lossy_psnr"]
    assert ct["aepacs-lossless"]["ratio"] > 1 and ct["jpegls"]["ratio"] > 1
    assert set(ct["noise"]) == {"gaussian", "salt-and-pepper"}
    report = (out / "report.md").read_text()
    assert "JPEG-LS" in report and "rd_CT.png" in report
    for png in ("rd_CT.png", "crops_CT.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("model, filename, modality", [
    ("mr@1", "MR2_UNCR.dcm", "MR"), ("cr@1", "RG1_UNCR.dcm", "CR"), ("us@1", "US1_UNCR.dcm", "US")])
def test_eval_other_modalities_on_held_out_images(home: Path, tmp_path: Path, model: str, filename: str,
                                                 modality: str) -> None:
    import data_store

    data = Path(data_store.__file__).parent / "data" / filename  # not among the model's training files
    ds = pydicom.dcmread(data)
    if ds.Rows > 768:  # RG1_UNCR, 1955 x 1841: its central 768 x 768 (the baselines' rate search dominates)
        y, x = (ds.Rows - 768) // 2, (ds.Columns - 768) // 2
        ds.PixelData = ds.pixel_array[y:y + 768, x:x + 768].copy().tobytes()
        ds.Rows = ds.Columns = 768
        data = tmp_path / filename
        ds.save_as(data, enforce_file_format=True)
    out = tmp_path / "report"
    run_cli("eval", "--model", model, "--data", str(data), "--gains", "6", "-o", str(out), "-q", check=True)
    summary = json.loads((out / "results.json").read_text())["summary"][modality]
    assert summary["images"] == 1
    assert summary["aepacs"][0]["psnr"] > 25 and summary["jpeg2000"][0]["psnr"] > 25
    assert summary["jpegls"]["ratio"] > 1 and summary["aepacs-lossless"]["ratio"] > 1
    assert (out / f"rd_{modality}.png").is_file()


def test_eval_of_a_lossless_only_model_against_the_lossless_baselines(home: Path, tmp_path: Path) -> None:
    held_out = SHARED_CT / "series-3-5mm"  # ct@4 was trained on series 2
    if not held_out.is_dir():
        pytest.skip("needs ../shared/data/ct")
    out = tmp_path / "report"
    run_cli("eval", "--model", "ct@4", "--data", str(held_out), "--limit", "2", "-o", str(out), "-q", check=True)
    results = json.loads((out / "results.json").read_text())
    assert {r["family"] for r in results["rows"]} == {"aepacs-lossless", "jpegls", "jpegxl", "jpeg2000-lossless",
                                                      "htj2k"}
    ct = results["summary"]["CT"]
    assert ct["aepacs-lossless"]["ratio"] > ct["jpegls"]["ratio"] > 1  # held-out slices, the same run
    report = (out / "report.md").read_text()
    assert "JPEG-XL lossless" in report and "HTJ2K lossless" in report and "rd_CT.png" not in report


def test_eval_on_a_scheduler_and_two_worker_processes_gives_the_figures_measured_here(tmp_path: Path) -> None:
    """aepacs eval --dask: every figure but the encode and decode times is what one process measures."""
    from pydicom.data import get_testdata_file

    from aepacs.eval.run import evaluate, frames_for
    from aepacs.models.registry import Registry
    from tests.dask_cluster import Cluster

    model = Registry.default().load("ct@3")
    frames = frames_for(model, [get_testdata_file("CT_small.dcm"), str(ct_files()[0])])
    assert len(frames) >= 2

    def figures(rows: list[dict[str, object]]) -> list[dict[str, object]]:
        return [{k: v for k, v in r.items() if k not in ("encode_ms", "decode_ms")} for r in rows]

    here = evaluate(model, frames, gains=[10], progress=False)
    cluster = Cluster(tmp_path)
    try:
        there = evaluate(model, frames, gains=[10], progress=False, dask=cluster.address)
    finally:
        cluster.stop()
    assert there.images == here.images and figures(there.rows) == figures(here.rows)
    assert there.summary.keys() == here.summary.keys()
    proc = run_cli("eval", "--model", "ct@3", "--data", get_testdata_file("CT_small.dcm"), "--gains", "10",
                   "--workers", "2", "-q", "-o", str(tmp_path / "report"), check=True)
    assert (tmp_path / "report" / "report.md").exists(), proc.stdout
