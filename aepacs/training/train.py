"""Training a codec network on real DICOM and writing it to the registry.

Random crops of frames read from DICOM files (:mod:`aepacs.dicom.frames`),
drawn from a seeded generator so a run is reproducible; a progress bar; a
checkpoint after every epoch (tensors only, read back with
``weights_only=True``) from which ``resume`` continues; and at the end a
registry entry whose manifest records the command, the data and its hash,
the time taken and the metrics measured with the real codec on the
validation frames.
"""

from __future__ import annotations

import ast
import io
import json
import math
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from aepacs.codec.learned import codec_for
from aepacs.codec.learned.factorized.fixed import freeze
from aepacs.codec.learned.factorized.net import FactorizedCodecNet
from aepacs.codec.learned.wavelet import subband
from aepacs.codec.learned.wavelet.codec import MAX_LEVELS
from aepacs.codec.quality import mse, psnr
from aepacs.dicom.frames import Frame, collect, fingerprint, patches
from aepacs.eval.paper import PaperAutoencoder, paper_decode
from aepacs.models.registry import Model, ModelError, Registry
from aepacs.store.atomic import atomic_write
from aepacs.training import mixing_fit, wavelet_fit
from aepacs.training.wavelet_fit import Draft

CHECKPOINT = "checkpoint.pt"
#: The float networks trained by gradient descent, by architecture (``wavelet`` is fitted by
#: :mod:`aepacs.training.wavelet_fit` instead; the codecs are in :mod:`aepacs.codec.learned`).
NETWORKS: dict[str, type[FactorizedCodecNet] | type[PaperAutoencoder]] = {"factorized": FactorizedCodecNet,
                                                                          "paper": PaperAutoencoder}


@dataclass
class TrainConfig:
    """What a training run needs; every field is recorded in the manifest."""

    name: str
    modality: list[str]
    data: list[str]
    arch: str = "wavelet"
    epochs: int = 10
    steps: int = 200  # per epoch
    batch: int = 8
    patch: int = 128
    lmbda: float = 150.0
    lr: float = 1e-3
    seed: int = 0
    hyper: dict[str, Any] = field(default_factory=dict)
    val_fraction: float = 0.1
    channels: int = 1


def _device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def split(frames: list[Frame], fraction: float) -> tuple[list[Frame], list[Frame]]:
    """Training and validation frames: the last `fraction` of each source file's frames
    order, at least one frame, go to validation (never both sides of one frame)."""
    sources = sorted({f.source for f in frames})
    nval = max(1, round(len(sources) * fraction)) if len(sources) > 1 else 0
    val_sources = set(sources[len(sources) - nval:])
    train = [f for f in frames if f.source not in val_sources]
    val = [f for f in frames if f.source in val_sources] or frames[-1:]
    return train or frames, val


def _state(net: torch.nn.Module, opt: torch.optim.Optimizer, epoch: int, rng: np.random.Generator,
           seconds: float) -> dict[str, Any]:
    return {"model": net.state_dict(), "optimizer": opt.state_dict(), "epoch": epoch,
            "rng": torch.from_numpy(np.frombuffer(repr(rng.bit_generator.state).encode(), dtype=np.uint8).copy()),
            "torch_rng": torch.get_rng_state(), "seconds": seconds}


def _rng_from(state: dict[str, Any]) -> np.random.Generator:
    rng = np.random.default_rng()
    rng.bit_generator.state = ast.literal_eval(bytes(state["rng"].numpy()).decode())
    return rng


def train(cfg: TrainConfig, out: Path, *, resume: bool = False, registry: Registry | None = None,
          progress: bool = True) -> Model:
    """Train `cfg` with checkpoints in `out`; add the result to `registry` (default: `out`).

    Returns
    -------
    Model
        The verified registry entry.
    """
    out.mkdir(parents=True, exist_ok=True)
    frames = collect(cfg.data, modalities=cfg.modality, channels=cfg.channels)
    if not frames:
        raise ModelError(f"no {'/'.join(cfg.modality)} frames with {cfg.channels} channel(s) under {cfg.data}")
    train_frames, val_frames = split(frames, cfg.val_fraction)
    registry = registry or Registry(out / "registry")
    if cfg.arch == "wavelet":
        return _train_wavelet(cfg, train_frames, val_frames, registry, progress, out, resume)
    if cfg.arch == "mixing":
        return _train_mixing(cfg, train_frames, val_frames, registry, progress, out, resume)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    device = _device()
    net = NETWORKS[cfg.arch](channels=cfg.channels, **cfg.hyper).to(device)
    opt_cls = torch.optim.Adamax if cfg.arch == "paper" else torch.optim.Adam
    opt = opt_cls(net.parameters(), lr=cfg.lr)
    start, spent = 0, 0.0
    ckpt = out / CHECKPOINT
    if resume and ckpt.is_file():
        state = torch.load(ckpt, weights_only=True, map_location=device)
        net.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        start, spent = int(state["epoch"]), float(state["seconds"])
        rng = _rng_from(state)
        torch.set_rng_state(state["torch_rng"])
    total = cfg.epochs * cfg.steps
    batches = patches(train_frames, cfg.patch, cfg.batch, rng)
    bar = tqdm(total=total, initial=start * cfg.steps, desc=f"train {cfg.name}", disable=not progress,
               unit="step", file=sys.stderr)
    for epoch in range(start, cfg.epochs):
        t0 = time.monotonic()
        net.train()
        for step in range(epoch * cfg.steps, (epoch + 1) * cfg.steps):
            for group in opt.param_groups:  # the last fifth of the steps at a tenth of the rate
                group["lr"] = cfg.lr * (1.0 if step < 0.8 * total else 0.1)
            x = torch.from_numpy(next(batches)).to(device)
            k = int(rng.integers(len(getattr(net, "gains", [0]))))
            loss, stats = net.loss(x, lmbda=cfg.lmbda, k=k)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
            opt.step()
            bar.update()
            bar.set_postfix({key: f"{v:.3g}" for key, v in stats.items()}, refresh=False)
        spent += time.monotonic() - t0
        torch.save(_state(net, opt, epoch + 1, rng, spent), ckpt.with_suffix(".tmp"))
        ckpt.with_suffix(".tmp").replace(ckpt)
    bar.close()
    net = net.cpu().eval()
    manifest = {
        "arch": cfg.arch, "hyper": net.hyper(), "modality": cfg.modality,
        "training": {
            "command": " ".join(shlex.quote(a) for a in sys.argv) if sys.argv else "",
            "data": cfg.data, "sources": sorted({f.source for f in train_frames}),
            "validation": sorted({f.source for f in val_frames}),
            "frames": len(train_frames), "data_sha256": fingerprint(train_frames),
            "epochs": cfg.epochs, "steps_per_epoch": cfg.steps, "batch": cfg.batch, "patch": cfg.patch,
            "lambda": cfg.lmbda, "lr": cfg.lr, "seed": cfg.seed, "seconds": round(spent, 1),
            "device": str(device), "torch": torch.__version__,
        },
    }
    weights = _weights(net, cfg.arch)
    model = registry.add(cfg.name, manifest, weights)
    metrics = validation_metrics(model, val_frames)
    return registry.add_metrics(model, metrics, default_gain=default_gain(metrics))


#: Operating points the wavelet entropy model is fitted on: lossless and the lossy range in use.
TAP_FRAMES = 6  #: training frames (evenly spaced) the lifting taps are fitted on


def _train_wavelet(cfg: TrainConfig, train_frames: list[Frame], val_frames: list[Frame], registry: Registry,
                   progress: bool, out: Path, resume: bool) -> Model:
    """Fit a wavelet model: lifting taps on rate + lambda * distortion, then its entropy model.

    See :mod:`aepacs.training.wavelet_fit`. A one-epoch entropy model for CDF 9/7
    codes the tap trials; the final entropy model is fitted for the fitted taps
    over ``cfg.epochs`` epochs. Deterministic; no randomness. ``cfg.hyper["fit_taps"] = 0``
    keeps CDF 9/7 (for a modality whose held-out images the fit does not help).

    Checkpoints in `out`: ``wavelet-taps.json`` once the taps are fitted,
    ``wavelet-init.npz`` after each entropy-model epoch; with `resume` a run
    continues from them (same result as an uninterrupted run).
    """
    t0 = time.monotonic()
    precision = int(cfg.hyper.get("precision", 0))  # --hyper precision=N: fraction bits of the lossy transform
    rdo = int(cfg.hyper.get("rdo", 0))  # --hyper rdo=L: the lossy encoder's rate-distortion multiplier
    pixels = [f.pixels for f in train_frames]
    chosen = [pixels[i] for i in sorted({int(i) for i in np.linspace(0, len(pixels) - 1, TAP_FRAMES)})]
    taps_file, init_file = out / "wavelet-taps.json", out / "wavelet-init.npz"
    if resume and taps_file.exists():
        saved = json.loads(taps_file.read_text())
        taps, taps_report = np.array(saved["taps"], np.int64), saved["report"]
    else:
        if int(cfg.hyper.get("fit_taps", 1)):
            rough = wavelet_fit.fit_init(pixels, cfg.channels, wavelet_fit.cdf97_taps(), 1, progress=progress,
                                         precision=precision, rdo=rdo)
            taps, taps_report = wavelet_fit.fit_taps(chosen, cfg.channels, rough, progress=progress,
                                                     precision=precision, rdo=rdo)
        else:  # --hyper fit_taps=0: CDF 9/7 as it is
            taps, taps_report = wavelet_fit.cdf97_taps(1), {"fitted": False}
        atomic_write(taps_file, json.dumps({"taps": taps.tolist(), "report": taps_report}).encode())
    init, done = None, 0
    if resume and init_file.exists():
        with np.load(init_file) as saved:
            init, done = saved["init"].astype(np.uint16), int(saved["epoch"])

    def checkpoint(epoch: int, table: np.ndarray) -> None:
        buf = io.BytesIO()
        np.savez(buf, init=table, epoch=epoch)
        atomic_write(init_file, buf.getvalue())

    init = wavelet_fit.fit_init(pixels, cfg.channels, taps, cfg.epochs, progress=progress, precision=precision,
                                rdo=rdo, start=init, done=done, checkpoint=checkpoint)
    manifest = {
        "arch": "wavelet", "modality": cfg.modality,
        "hyper": {**cfg.hyper, "channels": cfg.channels, "levels": MAX_LEVELS, "contexts": subband.NCTX,
                  "taps": (f"fitted on rate + lambda * distortion from CDF 9/7, {taps.shape[1]} per step"
                           if taps_report.get("fitted", True) else "CDF 9/7")
                          + ", integer lifting with 14 fraction bits"},
        "training": {
            "command": " ".join(shlex.quote(a) for a in sys.argv) if sys.argv else "",
            "data": cfg.data, "sources": sorted({f.source for f in train_frames}),
            "validation": sorted({f.source for f in val_frames}),
            "frames": len(train_frames), "data_sha256": fingerprint(train_frames), "epochs": cfg.epochs,
            "fit_gains": ["lossless" if g is None else g for g in wavelet_fit.INIT_GAINS],
            "taps_fit": {"frames": len(chosen), **taps_report},
            "seconds": round(time.monotonic() - t0, 1), "device": "cpu",
        },
    }
    weights = {"wavelet.safetensors": Draft(cfg.channels, init, taps, precision, rdo).tensors()}
    model = registry.add(cfg.name, manifest, weights)
    metrics = validation_metrics(model, val_frames)
    return registry.add_metrics(model, metrics, default_gain=default_gain(metrics))


def _train_mixing(cfg: TrainConfig, train_frames: list[Frame], val_frames: list[Frame], registry: Registry,
                  progress: bool, out: Path, resume: bool) -> Model:
    """Fit a mixing model's starting state (:mod:`aepacs.training.mixing_fit`); deterministic.

    Checkpoint in `out`: ``mixing-state.npz`` after each epoch; with `resume`
    a run continues from it (the same model as an uninterrupted run).
    """
    t0 = time.monotonic()
    state_file = out / "mixing-state.npz"
    start: dict[int, dict[str, np.ndarray]] | None = None
    done = 0
    if resume and state_file.exists():
        with np.load(state_file) as saved:
            done = int(saved["epoch"])
            start = {int(k.split(".")[0]): {} for k in saved.files if k != "epoch"}
            for key in saved.files:
                if key != "epoch":
                    kind, name = key.split(".")
                    start[int(kind)][name] = saved[key].astype(np.int64)

    def checkpoint(epoch: int, states: dict[int, dict[str, np.ndarray]]) -> None:
        buf = io.BytesIO()
        np.savez(buf, epoch=np.array(epoch), **mixing_fit.tensors(states))  # type: ignore[arg-type]
        atomic_write(state_file, buf.getvalue())

    states = mixing_fit.fit_states([f.pixels for f in train_frames], cfg.channels, cfg.epochs, progress=progress,
                                   start=start, done=done, checkpoint=checkpoint)
    manifest = {
        "arch": "mixing", "modality": cfg.modality,
        "hyper": {**cfg.hyper, "channels": cfg.channels, "lossless": True},
        "training": {
            "command": " ".join(shlex.quote(a) for a in sys.argv) if sys.argv else "",
            "data": cfg.data, "sources": sorted({f.source for f in train_frames}),
            "validation": sorted({f.source for f in val_frames}),
            "frames": len(train_frames), "data_sha256": fingerprint(train_frames), "epochs": cfg.epochs,
            "max_count": mixing_fit.MAX_COUNT, "seconds": round(time.monotonic() - t0, 1), "device": "cpu",
        },
    }
    model = registry.add(cfg.name, manifest, {"mixing.safetensors": mixing_fit.tensors(states)})
    codec = codec_for(model, "lossless")
    frames = val_frames[:8]
    bits = sum(8 * len(codec.encode(f.pixels[None])) for f in frames)
    size = sum(f.pixels.size for f in frames)
    return registry.add_metrics(model, {"validation_frames": len(frames), "lossless_bpp": round(bits / size, 4)})


DEFAULT_PSNR = 50.0


def default_gain(metrics: dict[str, Any]) -> int | None:
    """The smallest measured gain reaching ``DEFAULT_PSNR`` on validation (else the finest measured)."""
    rows = metrics.get("rate_distortion") or []
    if not rows:
        return None
    good = [r["gain"] for r in rows if r["psnr"] is None or r["psnr"] >= DEFAULT_PSNR]
    return min(good) if good else max(r["gain"] for r in rows)


def _numpy(tensors: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().numpy() for k, v in tensors.items()}


def _weights(net: torch.nn.Module, arch: str) -> dict[str, dict[str, np.ndarray]]:
    if arch == "paper":
        return {"weights.safetensors": _numpy(dict(net.state_dict()))}
    assert isinstance(net, FactorizedCodecNet)
    state = {k: v for k, v in net.state_dict().items() if not k.startswith("synthesis.")}
    return {"analysis.safetensors": _numpy(state), "synthesis.safetensors": _numpy(freeze(net))}


def validation_metrics(model: Model, frames: list[Frame], limit: int = 8) -> dict[str, Any]:
    """Bits per pixel and PSNR of the real codec on validation frames, per gain."""
    frames = frames[:limit]
    if model.arch == "paper":  # the paper's model: PSNR of the mean MSE over the data ranges
        errs = [mse(f.pixels, paper_decode(model, f)[0]) / max(int(f.pixels.max()) - int(f.pixels.min()), 1) ** 2
                for f in frames]
        return {"validation_frames": len(frames), "psnr": round(-10 * math.log10(max(float(np.mean(errs)), 1e-20)), 2)}
    per_gain = []
    gains = codec_for(model).gains
    for k in range(0, gains, max(1, gains // 16 if model.arch == "wavelet" else gains // 4)):
        codec = codec_for(model, "lossy", gain=k)
        bpp, q = [], []
        for f in frames:
            px = f.pixels[None]
            data = codec.encode(px, None)
            rec = codec.decode(data)
            bpp.append(8 * len(data) / (px.shape[1] * px.shape[2] * px.shape[3]))
            q.append(psnr(px, rec))
        mean_q = float(np.mean(q))  # inf: every validation frame came back exactly
        per_gain.append({"gain": k, "bpp": round(float(np.mean(bpp)), 4),
                         "psnr": None if math.isinf(mean_q) else round(mean_q, 2)})
    return {"validation_frames": len(frames), "rate_distortion": per_gain}
