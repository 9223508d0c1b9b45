"""``aepacs train | models | eval``: the model registry, training and the evaluation against standard codecs.

Training and evaluation need torch (``aepacs[train]``) and the eval extra
(``aepacs[eval]``); they are imported when those commands run, so that the
archive's own commands work without them.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shlex
import sys
import time
from pathlib import Path

from aepacs.cli.common import audit, count
from aepacs.config import Config
from aepacs.errors import AepacsError, ConfigError
from aepacs.models.registry import Registry, config_registry
from aepacs.pipeline.codecs import learned_routes, warm_up


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("train", parents=[common], help="train a codec model on DICOM files")
    p.add_argument("--modality", nargs="+", required=True, metavar="MOD", help="modalities to train on (CT, MR, ...)")
    p.add_argument("--data", type=Path, nargs="+", required=True, metavar="DIR", help="DICOM files or directories")
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="training directory (checkpoints)")
    p.add_argument("--name", help="model name (default: the modality, lower case)")
    p.add_argument("--arch", choices=["mixing", "wavelet", "factorized", "paper"], default="wavelet")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--steps", type=int, default=200, help="steps per epoch (default 200)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--patch", type=int, default=128, help="crop size (default 128)")
    p.add_argument("--lambda", dest="lmbda", type=float, default=150.0,
                   help="rate-distortion weight at gain 0 (default 150)")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--channels", type=int, default=1, choices=[1, 3])
    p.add_argument("--hyper", nargs="*", metavar="KEY=VALUE",
                   help="architecture arguments (factorized: n, m, s, gains, gain0; wavelet: fit_taps=0 keeps CDF 9/7)")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--registry", type=Path, metavar="DIR", help="registry to add the model to (models.path)")
    p.add_argument("--resume", action="store_true", help="continue from the checkpoint in --out")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("models", parents=[common], help="the model registry (list | show | verify | promote)")
    p.add_argument("models_command", choices=["list", "show", "verify", "promote"])
    p.add_argument("ref", nargs="?", metavar="NAME[@VERSION]")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("eval", parents=[common], help="measure a model against JPEG 2000 / JPEG-LS on images")
    p.add_argument("--model", required=True, metavar="NAME@VERSION")
    p.add_argument("--data", type=Path, nargs="+", required=True, metavar="DIR")
    p.add_argument("-o", "--output", type=Path, required=True, metavar="REPORT_DIR")
    p.add_argument("--noise", nargs="+", metavar="KIND", help="noise experiment: all, or salt-and-pepper speckle ...")
    p.add_argument("--paper", metavar="NAME@VERSION", help="the paper's model to compare (arch paper)")
    p.add_argument("--limit", type=int, help="at most this many images per modality (evenly spaced)")
    p.add_argument("--gains", type=int, nargs="+", help="gains to measure (default: every other one)")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--workers", type=int, default=1, metavar="N",
                   help="measure images on N local processes (encode/decode times then share the cores)")
    p.add_argument("--dask", metavar="ADDRESS", help="measure images on a Dask scheduler (tcp://host:8786)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_eval)


def cmd_train(args: argparse.Namespace, config: Config) -> int:
    import torch  # noqa: PLC0415 -- the train extra, imported when training

    from aepacs.training.train import TrainConfig, train  # noqa: PLC0415 -- needs torch

    if args.threads:
        torch.set_num_threads(args.threads)
    hyper = dict(kv.split("=", 1) for kv in args.hyper or [])
    cfg = TrainConfig(name=args.name or args.modality[0].lower(), modality=[m.upper() for m in args.modality],
                      data=[str(d) for d in args.data], arch=args.arch, epochs=args.epochs, steps=args.steps,
                      batch=args.batch, patch=args.patch, lmbda=args.lmbda, lr=args.lr, seed=args.seed,
                      channels=args.channels, hyper={k: float(v) if "." in v else int(v) for k, v in hyper.items()})
    registry = Registry(args.registry or config.models_path)
    model = train(cfg, args.out, resume=args.resume, registry=registry, progress=not args.quiet)
    audit(config).record("model-change", detail=f"trained {model.ref} ({model.arch}) into {model.path}")
    print(f"trained {model.ref} ({model.arch}) -> {model.path}")
    for row in model.manifest.get("metrics", {}).get("rate_distortion", []):
        quality = "lossless" if row["psnr"] is None else f"PSNR {row['psnr']:.2f} dB"
        print(f"  gain {row['gain']:>2}: {row['bpp']:.3f} bpp, {quality}")
    return 0


def cmd_models(args: argparse.Namespace, config: Config) -> int:
    registry = config_registry(config)
    if args.models_command == "list":
        print(f"{'model':16} {'arch':10} {'modality':10} {'current':7} path")
        for name, version, path in registry.entries():
            cur = "yes" if registry.current(name) == version else ""
            manifest = json.loads((path / "manifest.json").read_text())
            print(f"{name + '@' + str(version):16} {manifest.get('arch', '?'):10} "
                  f"{','.join(manifest.get('modality', [])):10} {cur:7} {path}")
        return 0
    if args.models_command == "verify" and not args.ref:
        return _verify_all(config)
    if not args.ref:
        raise AepacsError(f"models {args.models_command}: name the model (NAME or NAME@VERSION)")
    if args.models_command == "verify":
        model = registry.verify(args.ref)
        print(f"{model.ref}: {len(model.manifest['files'])} files match their SHA-256 (digest {model.digest[:16]})")
    elif args.models_command == "promote":
        model = registry.promote(args.ref)
        audit(config).record("model-change", detail=f"promoted {model.ref} (digest {model.digest[:16]})")
        print(f"{model.ref} is now the current {model.name}")
    else:
        model = registry.verify(args.ref)
        print(json.dumps(model.manifest, indent=2, sort_keys=True))
    return 0


def _verify_all(config: Config) -> int:
    """Every model's files against their hashes, then every learned route's codec once there and back.

    The run compiles the codecs' numba loops into their cache: after an
    install, it spares the first instances archived a minute of compiling.
    """
    registry = config_registry(config)
    for name, version, _ in registry.entries():
        model = registry.verify(f"{name}@{version}")
        print(f"{model.ref}: {len(model.manifest['files'])} files match their SHA-256")
    started = time.perf_counter()
    failed = warm_up(config)
    for line in failed:
        print(line, file=sys.stderr)
    routes = len(learned_routes(config))
    print(f"{count(routes - len(failed), 'learned route')} of {routes} coded a test frame there and back "
          f"({time.perf_counter() - started:.1f} s, numba's compiled loops cached)")
    return 1 if failed else 0


def cmd_eval(args: argparse.Namespace, config: Config) -> int:
    missing = [m for m in ("SimpleITK", "matplotlib") if importlib.util.find_spec(m) is None]
    if missing:  # before a minute of work, not after it
        raise ConfigError(f"aepacs eval needs the eval extra (missing: {', '.join(missing)}): "
                          f"pip install 'aepacs[eval]'")
    import torch  # noqa: PLC0415 -- the train extra (the paper's baseline), imported when evaluating

    from aepacs.eval.noise import KINDS  # noqa: PLC0415 -- the eval extra, checked above
    from aepacs.eval.report import write_report  # noqa: PLC0415 -- the eval extra
    from aepacs.eval.run import evaluate, frames_for  # noqa: PLC0415 -- the eval extra

    if args.threads:
        torch.set_num_threads(args.threads)
    registry = config_registry(config)
    model = registry.load(args.model)
    paper = registry.load(args.paper) if args.paper else None
    frames = frames_for(model, [str(d) for d in args.data], args.limit)
    if not frames:
        raise AepacsError(f"no {'/'.join(model.manifest.get('modality', []))} images under {args.data}")
    noise = list(KINDS) if args.noise == ["all"] else (args.noise or [])
    result = evaluate(model, frames, gains=args.gains, paper=paper, noise=noise, progress=not args.quiet,
                      workers=args.workers, dask=args.dask)
    write_report(result, args.output, command="aepacs " + " ".join(shlex.quote(a) for a in sys.argv[1:]))
    for modality, s in result.summary.items():
        for t, a in s["at_ratio"].items():
            print(f"{modality} {t}:1  aepacs {a['aepacs_ratio']}:1 {a['aepacs_psnr']} dB   "
                  f"JPEG 2000 {a['jpeg2000_psnr']} dB  HTJ2K {a['htj2k-lossy_psnr']} dB  "
                  f"JPEG-XL {a['jpegxl-lossy_psnr']} dB (same bytes)")
    print(f"report: {args.output / 'report.md'}")
    return 0
