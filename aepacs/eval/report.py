"""The eval report: ``results.json``, ``report.md`` and PNG figures."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from aepacs.eval.baselines import LOSSLESS, LOSSY
from aepacs.eval.run import TARGET_RATIOS, EvalResult

#: short names of the lossy families in tables and figures
NAMES = {"aepacs": "aepacs", **{f: label.split(" (")[0] for f, label in LOSSY}}


def _f(x: Any, digits: int = 2) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def rd_figure(modality: str, s: dict[str, Any], path: Path) -> None:
    """Rate-distortion curves of the learned codec and the standard codecs at the same bytes."""
    import matplotlib  # noqa: PLC0415 -- the eval extra, imported when a figure is drawn

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415 -- after choosing the backend

    fig, ax = plt.subplots(figsize=(6, 4), dpi=110)
    for family, style in zip(NAMES, ("o-", "s--", "^--", "d--"), strict=False):
        label = "aepacs (learned)" if family == "aepacs" else f"{NAMES[family]}, same bytes"
        pts = [(r["bpp"], r["psnr"]) for r in s.get(family, []) if r["psnr"] is not None]
        if pts:
            ax.plot(*zip(*pts, strict=False), style, label=label)
    if "paper" in s and s["paper"].get("psnr") is not None:
        ax.axhline(s["paper"]["psnr"], color="grey", ls=":", label=f"paper model (ratio {s['paper']['ratio']:.2f})")
    ax.set_xlabel("bits per pixel")
    ax.set_ylabel("PSNR (dB, data range max-min)")
    ax.set_title(f"{modality}: rate-distortion, {s['images']} images")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def crops_figure(modality: str, ex: dict[str, np.ndarray], path: Path, size: int = 128) -> None:
    """Original, learned, JPEG 2000 and the learned error, on one centre crop."""
    import matplotlib  # noqa: PLC0415 -- the eval extra, imported when a figure is drawn

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415 -- after choosing the backend

    orig = ex["original"].astype(np.float64)
    h, w = orig.shape[:2]
    y, x = max(0, h // 2 - size // 2), max(0, w // 2 - size // 2)
    crop = lambda a: a.astype(np.float64)[y:y + size, x:x + size]  # noqa: E731
    lo, hi = float(orig.min()), float(orig.max())
    panels = [("original", crop(orig), lo, hi), (f"aepacs gain {int(ex['gain'])}", crop(ex["decoded"]), lo, hi),
              ("JPEG 2000, same bytes", crop(ex["jpeg2000"]), lo, hi)]
    diff = crop(ex["decoded"]) - crop(orig)
    m = max(float(np.abs(diff).max()), 1.0)
    fig, axes = plt.subplots(1, 4, figsize=(13, 3.6), dpi=100)
    for ax, (title, img, a, b) in zip(axes, panels, strict=False):
        ax.imshow(img[..., 0] if img.shape[2] == 1 else (img - a) / max(b - a, 1), cmap="gray", vmin=a, vmax=b)
        ax.set_title(title)
        ax.axis("off")
    axes[3].imshow(diff.mean(axis=2), cmap="coolwarm", vmin=-m, vmax=m)
    axes[3].set_title(f"aepacs - original (±{m:.0f})")
    axes[3].axis("off")
    fig.suptitle(f"{modality}: centre crop, full stored range")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_report(result: EvalResult, out: Path, command: str = "") -> None:
    """Write ``results.json``, ``report.md`` and the figures into `out`."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(result.to_json(), indent=1) + "\n")
    lines = [f"# aepacs eval: {result.model}", ""]
    if command:
        lines += ["Command:", "", f"    {command}", ""]
    lines += ["Ratios: stored pixel bytes / coded pixel bytes. PSNR and SSIM over the original's stored range "
              "(max - min); CT also inside a soft-tissue window (W 400 / L 40 HU). JPEG 2000 (OpenJPEG, "
              "irreversible), HTJ2K (OpenJPH, irreversible) and JPEG-XL (libjxl effort 7): each the largest "
              "stream not over the learned stream's bytes, per image.", ""]
    for modality, s in result.summary.items():
        lines += [f"## {modality} ({s['images']} images)", ""]
        if s["aepacs"]:
            lines += _lossy_tables(s)
        ll, jls = s.get("aepacs-lossless"), s.get("jpegls")
        if ll and jls:
            verdict = "beats" if ll["ratio"] > jls["ratio"] else "does not beat"
            lines += [f"Lossless: aepacs {ll['ratio']:.2f}:1 vs JPEG-LS {jls['ratio']:.2f}:1 — the learned lossless "
                      f"mode {verdict} JPEG-LS on {modality}.", "",
                      "| lossless codec | ratio | encode ms |", "|---|---|---|"]
            for family, label in (("aepacs-lossless", result.model), ("jpegls", "JPEG-LS"), *LOSSLESS):
                if family in s:
                    lines.append(f"| {label} | {s[family]['ratio']:.3f} | {_f(s[family]['encode_ms'], 1)} |")
            lines += [""]
        if "paper" in s:
            p = s["paper"]
            lines += [f"Paper's model: ratio {p['ratio']:.3f} (float32 latent), PSNR {_f(p['psnr'])} dB, "
                      f"SSIM {_f(p['ssim'], 4)}.", ""]
        if "noise" in s:
            lines += ["Noise (the paper's Table 6): original vs noisy, and original vs decoded noisy.", "",
                      "| noise | SSIM noisy | MSE noisy | SSIM decoded | MSE decoded |", "|---|---|---|---|---|"]
            for kind, v in s["noise"].items():
                lines.append(f"| {kind} | {_f(v['ssim_noisy'], 4)} | {_f(v['mse_noisy'], 1)} | "
                             f"{_f(v['ssim_decoded'], 4)} | {_f(v['mse_decoded'], 1)} |")
            lines += [""]
        if s["aepacs"]:
            rd = out / f"rd_{modality}.png"
            rd_figure(modality, s, rd)
            lines += [f"![rate-distortion {modality}]({rd.name})", ""]
        if modality in result.examples:
            crops = out / f"crops_{modality}.png"
            crops_figure(modality, result.examples[modality], crops)
            lines += [f"![crops {modality}]({crops.name})", ""]
    (out / "report.md").write_text("\n".join(lines))


def _lossy_tables(s: dict[str, Any]) -> list[str]:
    """The lossy head-to-head at the target ratios and the per-gain table of one modality."""
    fams = list(NAMES)
    window = any(a.get("aepacs_psnr_window") is not None for a in s["at_ratio"].values())
    head = (["target"] + [f"{NAMES[f]} ratio / PSNR / SSIM" for f in fams]
            + (["W400/L40 PSNR " + " / ".join(NAMES[f] for f in fams)] if window else []))
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for t in TARGET_RATIOS:
        a = s["at_ratio"].get(str(t))
        if a is None:
            lines.append(f"| {t}:1 | not reached at any gain of this run |" + " |" * (len(head) - 2))
            continue
        cells = [f"{t}:1"] + [f"{_f(a[f + '_ratio'])} / {_f(a[f + '_psnr'])} / {_f(a[f + '_ssim'], 4)}" for f in fams]
        if window:
            cells.append(" / ".join(_f(a[f + "_psnr_window"]) for f in fams))
        lines.append("| " + " | ".join(cells) + " |")
    others = " | ".join(f"{NAMES[f]} PSNR" for f in fams[1:])
    lines += ["", f"| gain | bpp | ratio | PSNR | SSIM | window PSNR | {others} | enc ms | dec ms |",
              "|" + "---|" * (8 + len(fams) - 1)]
    for i, a in enumerate(s["aepacs"]):
        others = " | ".join(_f(s[f][i]["psnr"]) if i < len(s[f]) else "-" for f in fams[1:])
        lines.append(f"| {a['gain']} | {_f(a['bpp'], 3)} | {_f(a['ratio'])} | {_f(a['psnr'])} "
                     f"| {_f(a['ssim'], 4)} | {_f(a['psnr_window'])} | {others} "
                     f"| {_f(a['encode_ms'], 1)} | {_f(a['decode_ms'], 1)} |")
    return lines + [""]

