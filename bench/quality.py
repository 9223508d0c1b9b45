"""Lossy quality at equal bytes on held-out real images: the wavelet models against JPEG 2000, HTJ2K and JPEG-XL.

In one run, on the same frames (none of them in the models' training data,
which the manifests record), per modality and per target ratio 8, 16, 32
and 64:1:

* ``aepacs``    the modality's wavelet model (``ct``, ``mr``, ``cr``, ``us``; ``--version``
                picks one), at the finest gain whose stream reaches the target
* ``JPEG 2000`` OpenJPEG, irreversible 9/7, at the largest stream not over aepacs's bytes
* ``HTJ2K``     OpenJPH, irreversible 9/7, the same budget
* ``JPEG-XL``   libjxl effort 7, the same budget
* the paper's model (``--paper``, CT: ``paper-ct@1``): its ratio and PSNR on the same
  frames, once (its float32 latent is larger than the image, so it has no point at these
  ratios)

PSNR is over the original's stored range (max - min); for CT also inside the
soft-tissue window (W 400 / L 40 HU, after the rescale); SSIM as the quality
gate computes it. dB are averaged over frames, ratios are byte-weighted
(stored bytes, 2 per sample above 8 bits, over compressed bytes). A figure of
the rate-distortion points goes to ``--figure``.

Ablation (``--ablation``): the same frames with each part of the model
replaced in turn -- the rate-distortion optimised indices by the dead-zone
quantizer's, the lossy fraction bits by none (the ``@3`` transform), the
fitted lifting taps by CDF 9/7, the learned entropy-model start by the uniform
one -- each against JPEG 2000 at its own bytes, so the change in the gap is
what that part is worth in dB at equal bytes.

Usage: ``python bench/quality.py [--only CT MR] [--per-source N] [--version @5] [--ablation]``
"""

from __future__ import annotations

import argparse
import glob
import platform
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pydicom.data

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from aepacs.codec.learned.wavelet.codec import GAINS, WaveletCodec  # noqa: E402
from aepacs.codec.learned.wavelet.subband import uniform_init  # noqa: E402
from aepacs.codec.quality import psnr, ssim, window_psnr  # noqa: E402
from aepacs.dicom.frames import Frame, collect  # noqa: E402
from aepacs.eval.baselines import LOSSY, at_budget  # noqa: E402
from aepacs.models.registry import SHIPPED, Registry  # noqa: E402
from aepacs.training.wavelet_fit import Draft, cdf97_taps  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
TARGETS = (8, 16, 32, 64)
#: frames at least this many pixels a side are also summed up on their own: on smaller ones a
#: codestream's fixed header is a large part of a 16:1 budget (JPEG 2000's about 200 bytes)
FULL_SIZE = 256


def _pydicom(*names: str) -> list[str]:
    return [pydicom.data.get_testdata_file(n) for n in names]


def _series(path: str) -> list[str]:
    return sorted(glob.glob(str(DATA / path / "*.dcm")))


#: held-out sources per modality (the models' manifests name what they were trained on):
#: ct on CT series 2, mr@5 on the Siemens Trio MPRAGE, cr on RG3, us on three other colour images
HELD_OUT: dict[str, tuple[str, list[list[str]]]] = {
    "CT": ("ct", [_series("ct/lung-pet-ct-dx-A0001/series-3-5mm"),
                  *([f] for f in _pydicom("693_UNCR.dcm", "CT_small.dcm", "eCT_Supplemental.dcm"))]),
    "MR": ("mr", [_series("mr/dcm_qa_toshiba-galan-dti-b0"), _series("mr/dcm_qa_philips-vanderbilt-dti-b0"),
                  *([f] for f in _pydicom("MR2_UNCR.dcm", "MR-SIEMENS-DICOM-WithOverlays.dcm", "emri_small.dcm",
                                          "MR_small.dcm"))]),
    "CR": ("cr", [_pydicom("RG1_UNCR.dcm")]),  # the only other uncompressed CR/DX here
    "US": ("us", [_pydicom("US1_UNCR.dcm")]),  # the only other uncompressed colour US here
}


def frames_of(modality: str, per_source: int) -> list[Frame]:
    """Held-out frames of `modality`: at most `per_source` evenly spaced frames of each source."""
    out: list[Frame] = []
    for files in HELD_OUT[modality][1]:
        got = collect(files, modalities=[modality, "DX"] if modality == "CR" else [modality],
                      channels=3 if modality == "US" else 1, min_size=16)
        if len(got) > per_source:
            got = [got[int(i)] for i in np.linspace(0, len(got) - 1, per_source).round()]
        out.extend(got)
    return out


def source_name(frame: Frame) -> str:
    """A series of ../shared/data by its folder, a pydicom test file by its name."""
    return Path(frame.source).parent.name if "shared" in frame.source else Path(frame.source).name


def raw_bytes(pixels: np.ndarray) -> int:
    """What the frame takes uncompressed: 2 bytes per sample above 8 bits."""
    return int(pixels.size * (2 if int(pixels.max()) - int(pixels.min()) > 255 or pixels.min() < 0 else 1))


def metrics(frame: Frame, decoded: np.ndarray, modality: str) -> dict[str, float]:
    """PSNR (stored range), SSIM and, for CT, the soft-tissue window PSNR of one decoded frame."""
    out = {"psnr": psnr(frame.pixels, decoded), "ssim": ssim(frame.pixels[None], decoded[None])}
    if modality == "CT":
        out["window"] = window_psnr(frame.pixels, decoded, *frame.rescale)
    return out


def _ladder(codec: WaveletCodec, pixels: np.ndarray, raw: int, target: float,
            cache: dict[int, tuple[bytes, np.ndarray]]) -> int | None:
    """The finest gain whose stream reaches `target`:1 (the ratio falls as the gain rises)."""
    def at(gain: int) -> tuple[bytes, np.ndarray]:
        if gain not in cache:
            codec.gain = gain
            stream, recon = codec.encode_reconstruct(pixels[None])
            cache[gain] = (stream, recon[0])
        return cache[gain]

    lo, hi = 0, GAINS - 1
    if raw / len(at(lo)[0]) < target:
        return None
    if raw / len(at(hi)[0]) >= target:
        return hi
    while hi - lo > 1:  # ratio(lo) >= target > ratio(hi)
        mid = (lo + hi) // 2
        if raw / len(at(mid)[0]) >= target:
            lo = mid
        else:
            hi = mid
    return lo


def measure(job: tuple[Any, Frame, str, tuple[str, ...]]) -> list[dict[str, Any]]:
    """One frame at every target: aepacs and each standard codec in `families` at its bytes."""
    model, frame, modality, families = job
    codec = WaveletCodec(model, "lossy")
    raw = raw_bytes(frame.pixels)
    cache: dict[int, tuple[bytes, np.ndarray]] = {}
    rows = []
    for target in TARGETS:
        gain = _ladder(codec, frame.pixels, raw, target, cache)
        if gain is None:
            continue
        stream, recon = cache[gain]
        row: dict[str, Any] = {"target": target, "raw": raw, "gain": gain, "source": source_name(frame),
                               "side": min(frame.pixels.shape[:2]),
                               "aepacs": {"bytes": len(stream), **metrics(frame, recon, modality)}}
        for family in families:
            n, decoded, _, _ = at_budget(family, frame.pixels, len(stream))
            row[family] = {"bytes": n, **metrics(frame, decoded, modality)}
        rows.append(row)
    return rows


def run(model: Any, frames: list[Frame], modality: str, families: tuple[str, ...],
        pool: ProcessPoolExecutor) -> list[list[dict[str, Any]]]:
    return list(pool.map(measure, [(model, f, modality, families) for f in frames]))


def summary(results: list[list[dict[str, Any]]], target: int, codec: str, source: str | None = None,
            side: int = 0) -> dict[str, float] | None:
    """Byte-weighted ratio and mean metrics of `codec` over the frames (of `source`, at least `side`
    pixels a side) that reached `target`."""
    rows = [r for per_frame in results for r in per_frame
            if r["target"] == target and (source is None or r["source"] == source) and r["side"] >= side]
    if not rows:
        return None
    out = {"frames": float(len(rows)), "ratio": sum(r["raw"] for r in rows) / sum(r[codec]["bytes"] for r in rows)}
    for key in rows[0][codec]:
        if key != "bytes":  # a frame with no error in the window (all of it outside) has no finite dB there
            values = [r[codec][key] for r in rows if np.isfinite(r[codec][key])]
            out[key] = float(np.mean(values)) if values else float("inf")
    return out


NAMES = {"aepacs": "aepacs", **{f: label.split(" (")[0] for f, label in LOSSY}}


def table(modality: str, ref: str, nframes: int, nsources: int, results: list[list[dict[str, Any]]]) -> None:
    fams = [f for f, _ in LOSSY]
    print(f"\n## {modality}: {nframes} held-out frames from {nsources} sources, {ref}")
    head = ["target", "ratio"] + [f"{NAMES[c]} dB" for c in ["aepacs", *fams]] + ["vs JPEG 2000", "vs HTJ2K",
                                                                                     "vs JPEG-XL"]
    head += ["SSIM aepacs / J2K"] + (["W400/L40 dB aepacs / J2K / HTJ2K / JXL"] if modality == "CT" else [])
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    small = any(r["side"] < FULL_SIZE for per_frame in results for r in per_frame)
    for target, side in [(t, 0) for t in TARGETS] + ([(t, FULL_SIZE) for t in TARGETS] if small else []):
        s = {c: summary(results, target, c, side=side) for c in ["aepacs", *fams]}
        a = s["aepacs"]
        if a is None:
            print(f"| {target}:1 | not reached |" + " |" * (len(head) - 2))
            continue
        cells = [f"{target}:1 ({int(a['frames'])}{f', >= {side} px' if side else ''})", f"{a['ratio']:.2f}"]
        cells += [f"{s[c]['psnr']:.2f}" for c in ["aepacs", *fams]]  # type: ignore[index]
        cells += [f"{a['psnr'] - s[c]['psnr']:+.2f}" for c in fams]  # type: ignore[index]
        cells.append(f"{a['ssim']:.4f} / {s['jpeg2000']['ssim']:.4f}")  # type: ignore[index]
        if modality == "CT":
            cells.append(" / ".join(f"{s[c]['window']:.2f}" for c in ["aepacs", *fams]))  # type: ignore[index]
        print("| " + " | ".join(cells) + " |", flush=True)
    sources = sorted({r["source"] for per_frame in results for r in per_frame})
    if len(sources) > 1:
        print("\nPer source, dB over JPEG 2000 / HTJ2K / JPEG-XL at the same bytes (frames):\n")
        print("| source | " + " | ".join(f"{t}:1" for t in TARGETS) + " |")
        print("|---|" + "---|" * len(TARGETS))
        for src in sources:
            cells = []
            for t in TARGETS:
                s = {c: summary(results, t, c, src) for c in ["aepacs", *fams]}
                a = s["aepacs"]
                cells.append("" if a is None else " / ".join(f"{a['psnr'] - s[c]['psnr']:+.2f}" for c in fams)  # type: ignore[index]
                             + f" ({int(a['frames'])})")
            print(f"| {src} | " + " | ".join(cells) + " |")


def paper_row(paper: Any, frames: list[Frame]) -> None:
    """The paper's autoencoder on the same frames: byte-weighted ratio and mean PSNR."""
    from aepacs.eval.paper import paper_decode

    raw = coded = 0
    dbs = []
    for f in frames:
        rec, nbytes, _ = paper_decode(paper, f)
        raw, coded = raw + raw_bytes(f.pixels), coded + nbytes
        dbs.append(psnr(f.pixels, rec))
    print(f"\nThe paper's model ({paper.ref}) on the same frames: ratio {raw / coded:.2f}:1 (its float32 latent "
          f"is larger than the image), {np.mean(dbs):.2f} dB")


def figure(all_results: dict[str, list[list[dict[str, Any]]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fams = [f for f, _ in LOSSY]
    fig, axes = plt.subplots(1, len(all_results), figsize=(4.2 * len(all_results), 3.8), squeeze=False)
    for ax, (modality, results) in zip(axes[0], all_results.items(), strict=False):
        for codec in ["aepacs", *fams]:
            pts = [(s["ratio"], s["psnr"]) for t in TARGETS if (s := summary(results, t, codec)) is not None]
            if pts:
                x, y = zip(*pts, strict=False)
                ax.plot(x, y, "o-" if codec == "aepacs" else ".--", label=NAMES[codec])
        ax.set_xscale("log", base=2)
        ax.set_xlabel("compression ratio")
        ax.set_ylabel("PSNR over the stored range (dB)")
        ax.set_title(f"{modality} (held out)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    print(f"\nfigure: {path}")


def variants(model: Any) -> dict[str, Any]:
    """The model and each ablation of it: one learned (or added) part replaced at a time."""
    t = model.tensors("wavelet.safetensors")
    channels = int(model.manifest["hyper"]["channels"])
    precision = int(model.manifest["hyper"].get("precision", 0))
    lam = int(model.manifest["hyper"].get("rdo", 0))
    init, taps = t["init"].astype(np.uint16), t["taps"].astype(np.int64)
    cdf = cdf97_taps(taps.shape[1])
    out: dict[str, Any] = {"full model": model}
    if lam:
        out["dead-zone indices instead of rate-distortion optimised ones"] = Draft(channels, init, taps, precision)
    if precision:
        out["no fraction bits (the @3 transform)"] = Draft(channels, init, taps, 0, lam)
    if not np.array_equal(cdf, taps):
        out["CDF 9/7 taps instead of the fitted ones"] = Draft(channels, init, cdf, precision, lam)
    out["uniform entropy-model start instead of the learned one"] = Draft(channels, uniform_init(), taps, precision,
                                                                          lam)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="+", metavar="MOD", help="modalities (default: CT MR CR US)")
    ap.add_argument("--per-source", type=int, default=20, help="at most this many frames per source (default 20)")
    ap.add_argument("--version", default="", help="e.g. @3 (default: each model's current version)")
    ap.add_argument("--ablation", action="store_true", help="what each part of the model is worth (dB at equal bytes)")
    ap.add_argument("--figure", type=Path, default=ROOT / "docs" / "eval" / "quality.png")
    ap.add_argument("--paper", default="paper-ct@1", help="the paper's model for CT ('' for none)")
    args = ap.parse_args()
    registry = Registry(SHIPPED)
    print(f"# bench/quality.py on {platform.processor() or platform.machine()}, 2 processes, "
          f"{time.strftime('%Y-%m-%d')}")
    all_results = {}
    with ProcessPoolExecutor(2) as pool:
        for modality, (name, _) in HELD_OUT.items():
            if args.only and modality not in args.only:
                continue
            model = registry.verify(name + args.version)
            frames = frames_of(modality, args.per_source)
            nsources = len({source_name(f) for f in frames})
            if args.ablation:
                ablation(modality, model, frames, pool)
                continue
            t0 = time.monotonic()
            results = run(model, frames, modality, tuple(f for f, _ in LOSSY), pool)
            table(modality, model.ref, len(frames), nsources, results)
            if modality == "CT" and args.paper:
                paper_row(registry.verify(args.paper), frames)
            print(f"({time.monotonic() - t0:.0f} s)")
            all_results[modality] = results
    if all_results:
        figure(all_results, args.figure)


def ablation(modality: str, model: Any, frames: list[Frame], pool: ProcessPoolExecutor) -> None:
    print(f"\n## {modality} ablation: {len(frames)} held-out frames, {model.ref}; gap = dB over JPEG 2000 at "
          "the same bytes")
    print("| variant | " + " | ".join(f"{t}:1 gap" for t in TARGETS) + " | worth (mean change of the gap) |")
    print("|---|" + "---|" * len(TARGETS) + "---|")
    full: list[float] | None = None
    for name, variant in variants(model).items():
        results = run(variant, frames, modality, ("jpeg2000",), pool)
        gaps = []
        for t in TARGETS:
            a, j = summary(results, t, "aepacs"), summary(results, t, "jpeg2000")
            gaps.append(np.nan if a is None or j is None else a["psnr"] - j["psnr"])
        worth = "" if full is None else f"{np.nanmean(np.array(full) - np.array(gaps)):+.2f} dB"
        full = gaps if full is None else full
        print(f"| {name} | " + " | ".join(f"{g:+.2f}" for g in gaps) + f" | {worth} |", flush=True)


if __name__ == "__main__":
    main()
