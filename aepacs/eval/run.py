"""``aepacs eval``: per image and codec, bytes and quality, in one run.

For every frame: the learned codec at each requested gain (bytes, bits per
pixel, ratio, PSNR, SSIM, MSE, CT window PSNR, encode and decode ms) and
JPEG 2000, HTJ2K and JPEG-XL at the learned stream's bytes (the largest
stream not over them); the learned ``lossless`` mode against JPEG-LS,
JPEG-XL, JPEG 2000 and HTJ2K lossless; the paper's model when one is given.
Per modality: means at each gain, and the head-to-head at 8:1, 16:1 and
32:1 (the learned gain whose stream fits the budget, each standard codec at
the same bytes). The
paper's noise experiment, when asked: SSIM and MSE of (original, noisy)
against (original, decoded noisy).

Ratios are stored pixel bytes over coded pixel bytes (the DICOM header and
the encryption container are the same for every codec and left out).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from aepacs.codec.learned import codec_for
from aepacs.codec.quality import mse, psnr, ssim, window_psnr
from aepacs.dicom.frames import Frame, collect
from aepacs.eval.baselines import LOSSLESS, LOSSY, at_budget, jpegls_bytes, lossless_sizes
from aepacs.eval.noise import KINDS, add_noise
from aepacs.eval.paper import paper_decode
from aepacs.models.registry import Model, Registry
from aepacs.runners import completed

TARGET_RATIOS = (8, 16, 32)
#: the lossy families compared at each gain: the learned codec, then the standard codecs
LOSSY_FAMILIES = ("aepacs", *(f for f, _ in LOSSY))


@dataclass
class EvalResult:
    """Everything ``results.json`` holds."""

    model: str
    rows: list[dict[str, Any]] = field(default_factory=list)
    images: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    noise: list[dict[str, Any]] = field(default_factory=list)
    examples: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)  # for figures only

    def to_json(self) -> dict[str, Any]:
        return {"model": self.model, "images": self.images, "rows": self.rows,
                "summary": self.summary, "noise": self.noise}


def _fin(x: float) -> float | None:
    return None if math.isinf(x) or math.isnan(x) else round(float(x), 4)


def _quality(frame: Frame, decoded: np.ndarray) -> dict[str, Any]:
    a, b = frame.pixels[None], decoded.reshape(frame.pixels.shape)[None]
    q = {"psnr": _fin(psnr(a, b)), "ssim": round(ssim(a, b), 5), "mse": round(mse(a, b), 4)}
    if frame.modality == "CT":
        q["psnr_window"] = _fin(window_psnr(a, b, *frame.rescale))
    return q


def _row(image: int, frame: Frame, family: str, codec: str, nbytes: int, decoded: np.ndarray | None,
         enc_ms: float, dec_ms: float, **extra: Any) -> dict[str, Any]:
    pixels = frame.pixels.shape[0] * frame.pixels.shape[1]
    stored = frame.pixels.size * (1 if frame.bits_stored <= 8 else 2)
    row = {"image": image, "source": Path(frame.source).name, "modality": frame.modality, "family": family,
           "codec": codec, "bytes": nbytes, "bpp": round(8 * nbytes / pixels, 4),
           "ratio": round(stored / max(nbytes, 1), 3), "encode_ms": round(enc_ms, 2), "decode_ms": round(dec_ms, 2),
           **extra}
    if decoded is not None:
        row.update(_quality(frame, decoded))
    return row


def _timed(fn: Any, *args: Any) -> tuple[Any, float]:
    t0 = time.perf_counter()
    out = fn(*args)
    return out, 1000 * (time.perf_counter() - t0)


@dataclass
class ImageResult:
    """What one image adds to an :class:`EvalResult` (made where it is measured: here, or on a worker)."""

    image: dict[str, Any]
    rows: list[dict[str, Any]] = field(default_factory=list)
    noise: list[dict[str, Any]] = field(default_factory=list)
    example: dict[str, np.ndarray] | None = None


def measure_image(model: Model, i: int, frame: Frame, gains: list[int], paper: Model | None,
                  noise: list[str] | None) -> ImageResult:
    """Every codec on one image (the body of :func:`evaluate`)."""
    lossless = codec_for(model, "lossless")
    px = frame.pixels[None]
    out = ImageResult({"image": i, "source": frame.source, "modality": frame.modality, "rows": px.shape[1],
                       "columns": px.shape[2], "samples": px.shape[3], "bits_stored": frame.bits_stored})
    for k in gains:
        codec = codec_for(model, "lossy", gain=k)
        stream, enc = _timed(codec.encode, px)
        decoded, dec = _timed(codec.decode, stream)
        out.rows.append(_row(i, frame, "aepacs", f"{model.ref} gain {k}", len(stream), decoded[0], enc, dec, gain=k))
        for family, label in LOSSY:
            nbytes, other, oenc, odec = at_budget(family, frame.pixels, len(stream))
            out.rows.append(_row(i, frame, family, f"{label} at the bytes of gain {k}", nbytes, other,
                                 oenc, odec, gain=k))
            if family == "jpeg2000" and i == 0 and k == gains[len(gains) // 2]:
                out.example = {"original": frame.pixels, "decoded": decoded[0], "jpeg2000": other, "gain": np.array(k)}
    stream, enc = _timed(lossless.encode, px)
    back, dec = _timed(lossless.decode, stream)
    assert np.array_equal(back[0], frame.pixels), "lossless mode must be bit-exact"
    out.rows.append(_row(i, frame, "aepacs-lossless", f"{model.ref} lossless", len(stream), None, enc, dec))
    nbytes, enc = jpegls_bytes(frame.pixels)
    out.rows.append(_row(i, frame, "jpegls", "JPEG-LS lossless", nbytes, None, enc, 0.0))
    others = lossless_sizes(frame.pixels)
    for family, label in LOSSLESS:
        nbytes, enc = others[family]
        out.rows.append(_row(i, frame, family, label, nbytes, None, enc, 0.0))
    if paper is not None and int(paper.manifest["hyper"]["channels"]) == frame.pixels.shape[2]:
        rec, nbytes, ms = paper_decode(paper, frame)
        out.rows.append(_row(i, frame, "paper", f"paper {paper.ref} (float32 latent)", nbytes, rec, ms, 0.0))
    for kind in noise or []:
        noisy = add_noise(frame.pixels, kind, seed=i)
        codec = codec_for(model, "lossy")
        dec_px = codec.decode(codec.encode(noisy[None].astype(np.int64)))[0]
        a = frame.pixels[None]
        out.noise.append({"image": i, "modality": frame.modality, "kind": kind,
                          "ssim_noisy": round(ssim(a, noisy[None]), 5), "mse_noisy": round(mse(a, noisy[None]), 3),
                          "ssim_decoded": round(ssim(a, dec_px[None]), 5),
                          "mse_decoded": round(mse(a, dec_px[None]), 3)})
    return out


_MODELS: dict[Path, Model] = {}


def _model_at(path: Path) -> Model:
    """The model in directory `path` (``ROOT/NAME/VERSION``), verified once per worker process."""
    if path not in _MODELS:
        _MODELS[path] = Registry(path.parents[1]).verify(f"{path.parent.name}@{path.name}")
    return _MODELS[path]


def measure_on_worker(model_path: Path, paper_path: Path | None, gains: list[int], noise: list[str] | None,
                      job: tuple[int, Frame]) -> ImageResult:
    """:func:`measure_image` in a pool or Dask worker (models found by path: workers share the files)."""
    i, frame = job
    return measure_image(_model_at(model_path), i, frame, gains, _model_at(paper_path) if paper_path else None, noise)


def evaluate(model: Model, frames: list[Frame], *, gains: list[int] | None = None,
             paper: Model | None = None, noise: list[str] | None = None, progress: bool = True,
             workers: int = 1, dask: str | None = None) -> EvalResult:
    """Measure `model` (and the baselines) on `frames`; see the module docstring.

    Images are measured in this process (``workers=1``), on a local pool of
    `workers` processes, or on the Dask scheduler at `dask`; every figure but
    the encode and decode times is the same wherever it is measured.
    """
    if not codec_for(model, "lossless").lossy:  # a lossless-only model: its lossless mode against
        gains, noise = [], None  # the lossless baselines
    gains = gains if gains is not None else list(range(0, codec_for(model).gains, 2))
    result = EvalResult(model.ref)
    measured: dict[int, ImageResult] = {}
    bar = tqdm(total=len(frames), desc=f"eval {model.ref}", unit="image", disable=not progress)
    jobs = list(enumerate(frames))
    done = (measure_image(model, i, frame, gains, paper, noise) for i, frame in jobs) \
        if dask is None and workers == 1 else \
        completed(measure_on_worker, (model.path, paper.path if paper else None, gains, noise), jobs,
                  workers=workers, dask=dask, window=len(jobs))
    for one in done:
        measured[one.image["image"]] = one
        bar.update()
    bar.close()
    for i in sorted(measured):  # in image order, wherever each was measured
        one = measured[i]
        result.images.append(one.image)
        result.rows.extend(one.rows)
        result.noise.extend(one.noise)
        if one.example is not None:
            result.examples.setdefault(one.image["modality"], one.example)
    result.summary = summarise(result.rows, result.noise)
    return result


def _mean(rows: list[dict[str, Any]], key: str) -> float | None:
    vals = [r[key] for r in rows if r.get(key) is not None]
    return round(float(np.mean(vals)), 4) if vals else None


def summarise(rows: list[dict[str, Any]], noise: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-modality means per codec and gain, and the 16:1 / 32:1 head-to-head."""
    out: dict[str, Any] = {}
    for modality in sorted({r["modality"] for r in rows}):
        mine = [r for r in rows if r["modality"] == modality]
        s: dict[str, Any] = {"images": len({r["image"] for r in mine})}
        for family in LOSSY_FAMILIES:
            s[family] = [{"gain": k, **{key: _mean([r for r in mine if r["family"] == family and r["gain"] == k], key)
                                        for key in ("bpp", "ratio", "psnr", "ssim", "psnr_window", "encode_ms",
                                                    "decode_ms")}}
                         for k in sorted({r["gain"] for r in mine if r["family"] == family})]
        for family in ("aepacs-lossless", "jpegls", *(f for f, _ in LOSSLESS), "paper"):
            sel = [r for r in mine if r["family"] == family]
            if sel:
                total = sum(r["bytes"] for r in sel)
                stored = sum(r["bytes"] * r["ratio"] for r in sel)
                s[family] = {"ratio": round(stored / total, 3), "psnr": _mean(sel, "psnr"),
                             "ssim": _mean(sel, "ssim"), "encode_ms": _mean(sel, "encode_ms"),
                             "decode_ms": _mean(sel, "decode_ms")}
        s["at_ratio"] = {}
        for target in TARGET_RATIOS:
            pairs = []
            for image in sorted({r["image"] for r in mine}):
                cands = [r for r in mine if r["image"] == image and r["family"] == "aepacs"]
                if not cands:  # a lossless-only model
                    continue
                fits = [r for r in cands if r["ratio"] >= target]
                if not fits:  # no gain of this run reaches the target on this image: it sits this one out
                    continue
                pick = max(fits, key=lambda r: r["bytes"])
                pairs.append({r["family"]: r for r in mine if r["image"] == image and r["family"] in LOSSY_FAMILIES
                              and r["gain"] == pick["gain"]})
            if not pairs:
                continue
            s["at_ratio"][str(target)] = {f"{family}_{key}": _mean([p[family] for p in pairs if family in p], key)
                                          for family in LOSSY_FAMILIES
                                          for key in ("ratio", "psnr", "ssim", "psnr_window")}
        kinds = [n for n in noise if n["modality"] == modality]
        if kinds:
            s["noise"] = {k: {key: _mean([n for n in kinds if n["kind"] == k], key)
                              for key in ("ssim_noisy", "mse_noisy", "ssim_decoded", "mse_decoded")}
                          for k in KINDS if any(n["kind"] == k for n in kinds)}
        out[modality] = s
    return out


def frames_for(model: Model, data: list[str], limit: int | None = None) -> list[Frame]:
    """Frames under `data` of the model's modalities and channel count (at most `limit` per modality)."""
    frames = collect(data, modalities=model.manifest.get("modality") or None,
                     channels=int(model.manifest["hyper"]["channels"]))
    if not limit:
        return frames
    kept = []
    for modality in sorted({f.modality for f in frames}):
        mine = [f for f in frames if f.modality == modality]
        picks = np.unique(np.linspace(0, len(mine) - 1, min(limit, len(mine))).round().astype(int))
        kept += [mine[i] for i in picks]  # evenly spaced: a series' top, middle and bottom
    return kept
