"""``aepacs demo``: the table per modality and the figure of one slice."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from aepacs.demo.compare import ModalityResult, frames


def _mb(n: float) -> str:
    return f"{n / 1e6:.2f}"

def print_table(results: dict[str, ModalityResult], lossy: bool) -> None:
    """Print one part's table, one row per modality and a total."""
    head = (f"{'modality':<9}{'instances':>10}{'original MB':>13}{'stored MB':>11}{'ratio':>7}{'image':>7}"
            f"{'PSNR dB':>9}{'SSIM':>8}{'ingest/s':>10}{'retrieve/s':>12}  check")
    lines = ["", head]
    total = ModalityResult()
    for modality, r in results.items():
        lines.append(_row(modality, r, lossy))
        for name in ("sent", "acked", "found", "retrieved", "original_bytes", "stored_bytes", "exact", "derived"):
            setattr(total, name, getattr(total, name) + getattr(r, name))
        total.ingest_s += r.ingest_s
        total.retrieve_s += r.retrieve_s
        total.images += r.images
    lines.append(_row("all", total, lossy))
    print("\n".join(lines))

def _row(name: str, r: ModalityResult, lossy: bool) -> str:
    if not r.acked:
        return f"{name:<9}{0:>10}  (all {r.sent} refused: listed below)"
    ratio = r.original_bytes / r.stored_bytes if r.stored_bytes else 0.0
    if r.images:
        quality = (f"{np.mean([i['ratio'] for i in r.images]):>7.2f}{np.mean([i['psnr'] for i in r.images]):>9.2f}"
                   f"{np.mean([i['ssim'] for i in r.images]):>8.4f}")
    else:
        quality = f"{'1.00' if not lossy else '-':>7}{'exact':>9}{'1':>8}"  # lossless: the pixels as they were
    check = (f"{r.derived} derived, {r.exact} exact of {r.acked}" if lossy
             else f"{r.exact}/{r.acked} identical")
    return (f"{name:<9}{r.acked:>10}{_mb(r.original_bytes):>13}{_mb(r.stored_bytes):>11}{ratio:>7.2f}{quality}"
            f"{_rate(r.found, r.ingest_s):>10}{_rate(r.retrieved, r.retrieve_s):>12}  {check}")

def _rate(count: int, seconds: float) -> str:
    """Instances per second, or '-' where there is nothing to rate."""
    return f"{count / seconds:.1f}" if count and seconds > 0 else "-"

def draw_slice(image: dict[str, Any], path: Path) -> Path | None:
    """Original / decoded / difference of one image, as a PNG (needs matplotlib: ``pip install aepacs[eval]``)."""
    try:
        import matplotlib  # noqa: PLC0415 -- the eval extra, when installed

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # noqa: PLC0415 -- after choosing the backend
    except ImportError:
        return None
    original = frames(Path(image["source"]))[image["frame"], ..., 0].astype(np.float64)
    decoded = frames(Path(image["retrieved"]))[image["frame"], ..., 0].astype(np.float64)
    diff = decoded - original
    lo, hi = np.percentile(original, [1, 99])
    span = max(float(np.abs(diff).max()), 1.0)
    fig, axes = plt.subplots(1, 3, figsize=(15, 5.4))
    for ax, data, title, kw in [
        (axes[0], original, "original", {"cmap": "gray", "vmin": lo, "vmax": hi}),
        (axes[1], decoded, f"decoded: {image['ratio']:.1f}:1, PSNR {image['psnr']:.2f} dB, SSIM {image['ssim']:.4f}",
         {"cmap": "gray", "vmin": lo, "vmax": hi}),
        (axes[2], diff, f"difference (stored units, ±{span:.0f})", {"cmap": "RdBu_r", "vmin": -span, "vmax": span}),
    ]:
        shown = ax.imshow(data, **kw)
        ax.set_title(title, fontsize=10)
        ax.axis("off")
    fig.colorbar(shown, ax=axes[2], fraction=0.046)
    fig.suptitle(f"{image['modality']} {Path(image['source']).name}: sealed, stored, retrieved over DICOM")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
