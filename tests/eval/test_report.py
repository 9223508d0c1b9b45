"""The evaluation's summary rows and report tables, on rows whose answers are known by construction."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from aepacs.eval.report import write_report
from aepacs.eval.run import TARGET_RATIOS, EvalResult, summarise


def _row(image: int, family: str, gain: int | None, ratio: float, psnr: float | None, nbytes: int) -> dict[str, Any]:
    return {"image": image, "source": f"{image}.dcm", "modality": "CT", "family": family, "codec": family,
            "gain": gain, "bytes": nbytes, "bpp": 8 * nbytes / 4096, "ratio": ratio, "psnr": psnr,
            "ssim": 0.9 if psnr else 1.0, "encode_ms": 1.0, "decode_ms": 2.0}


@pytest.fixture
def rows() -> list[dict[str, Any]]:
    out = []
    for image in (0, 1):
        for gain, ratio in ((10, 40.0), (20, 20.0), (30, 10.0)):  # coarser gains, higher ratios
            nbytes = int(8192 / ratio)
            out.append(_row(image, "aepacs", gain, ratio, 30.0 + gain + image, nbytes))
            out.append(_row(image, "jpeg2000", gain, ratio, 29.0 + gain, nbytes))
        out.append(_row(image, "aepacs-lossless", None, 3.0 + image, None, 1000))
        out.append(_row(image, "jpegls", None, 2.5, None, 1000))
        for row in out[-2:]:  # as evaluate() writes them: lossless rows have no gain
            del row["gain"]
    return out


def test_at_a_target_ratio_each_image_uses_its_finest_gain_that_reaches_it(rows: list[dict[str, Any]]) -> None:
    s = summarise(rows, [])["CT"]
    assert s["images"] == 2
    for target in TARGET_RATIOS:
        a = s["at_ratio"][str(target)]
        reach = [(g, r) for g, r in ((10, 40.0), (20, 20.0), (30, 10.0)) if r >= target]
        gain, ratio = max(reach, key=lambda gr: gr[0])
        assert a["aepacs_ratio"] == ratio and a["jpeg2000_ratio"] == ratio  # JPEG 2000 at the same bytes
        assert a["aepacs_psnr"] == pytest.approx(30.0 + gain + 0.5)
        assert a["jpeg2000_psnr"] == pytest.approx(29.0 + gain)


def test_per_gain_means_and_the_lossless_ratio_over_all_bytes(rows: list[dict[str, Any]]) -> None:
    s = summarise(rows, [])["CT"]
    assert [r["gain"] for r in s["aepacs"]] == [10, 20, 30]
    assert s["aepacs"][1]["psnr"] == pytest.approx(50.5) and s["jpeg2000"][1]["psnr"] == pytest.approx(49.0)
    assert s["aepacs-lossless"]["ratio"] == pytest.approx(3.5)  # (3 * 1000 + 4 * 1000) / 2000
    assert s["jpegls"]["ratio"] == pytest.approx(2.5)


def test_the_report_states_the_lossless_verdict_and_lists_every_gain(rows: list[dict[str, Any]],
                                                                      tmp_path: Path) -> None:
    result = EvalResult(model="ct@3", rows=rows, summary=summarise(rows, []))
    write_report(result, tmp_path, command="aepacs eval --model ct@3")
    report = (tmp_path / "report.md").read_text()
    assert "the learned lossless mode beats JPEG-LS on CT" in report
    assert sum(line.startswith(("| 10 |", "| 20 |", "| 30 |")) for line in report.splitlines()) == 3
    assert json.loads((tmp_path / "results.json").read_text())["summary"]["CT"]["images"] == 2
    assert (tmp_path / "rd_CT.png").stat().st_size > 0


def test_a_target_no_gain_reaches_is_left_out_not_filled_with_another_ratio(rows: list[dict[str, Any]],
                                                                           tmp_path: Path) -> None:
    low = [r for r in rows if r.get("gain") != 10]  # the finest remaining stream of each image is 20:1
    s = summarise(low, [])["CT"]
    assert set(s["at_ratio"]) == {"8", "16"} and s["at_ratio"]["16"]["aepacs_ratio"] == 20.0
    write_report(EvalResult(model="ct@6", rows=low, summary={"CT": s}), tmp_path, command="aepacs eval")
    assert "| 32:1 | not reached at any gain of this run |" in (tmp_path / "report.md").read_text()
