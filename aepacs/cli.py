"""The ``aepacs`` command line.

Every command reads the configuration (``--config FILE`` or
``$AEPACS_CONFIG`` over the embedded default; data under ``$AEPACS_HOME``).
Errors print one line naming the file or object and what is wrong, and exit
non-zero; ``--debug`` shows the traceback too.

Exit status: 0 success; 1 some objects failed; 2 usage, configuration or
keyring error.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

from aepacs import __version__
from aepacs.audit import MINOR_FAILURE, SUCCESS, AuditTrail, Party
from aepacs.config import Config, load_config
from aepacs.errors import AepacsError, ConfigError, KeyringError
from aepacs.logs import configure as configure_logging

log = logging.getLogger("aepacs")


def numba_cache(config: Config, package: Path | None = None) -> Path | None:
    """Where numba caches the codecs' compiled loops: beside them when that is writable, else in the data directory.

    A read-only install (a wheel in a system path) would otherwise compile them
    again in every process: seconds before the first learned-route instance is
    archived. Set before numba is imported; worker processes inherit it.
    ``$NUMBA_CACHE_DIR``, when set, wins.
    """
    if os.environ.get("NUMBA_CACHE_DIR"):
        return Path(os.environ["NUMBA_CACHE_DIR"])
    package = package or Path(__file__).resolve().parent / "codec"
    if os.access(package, os.W_OK):
        return None  # numba's own choice: the package's __pycache__
    from aepacs.store.atomic import private_dir

    cache = private_dir(config.data_dir / "cache" / "numba")
    os.environ["NUMBA_CACHE_DIR"] = str(cache)
    return cache


def _common() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--config", metavar="FILE", default=argparse.SUPPRESS,
                   help="site configuration laid over the embedded default")
    p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                   help="show tracebacks and debug logging")
    return p


def _mb(n: float) -> str:
    return f"{n / 1e6:.2f}"


# -- keys --------------------------------------------------------------------
def cmd_keys(args: argparse.Namespace, config: Config) -> int:
    from aepacs.crypto.keyring import Keyring, passphrase_from_env
    from aepacs.pipeline.archive import load_keyring

    path = config.keyring_path
    if args.keys_command == "init":
        ring = Keyring.create(path, passphrase_from_env(config.keyring.passphrase_env))
        _audit(config).record("key-change", detail=f"keyring {path} created, key version {ring.active_version}")
        print(f"created keyring {path} (key version {ring.active_version}, "
              f"passphrase-protected: {'yes' if ring.protected else 'no'})")
        return 0
    ring = load_keyring(config)
    if args.keys_command == "retire":
        return _retire(config, ring, args.version, args.yes)
    if args.keys_command == "rotate":
        version = ring.rotate()
        _audit(config).record("key-change", detail=f"keyring {path} rotated: key version {version} active")
        print(f"rotated keyring {path}: key version {version} is now active "
              f"(versions held: {', '.join(map(str, ring.versions))})")
        return 0
    print(f"keyring {path} (passphrase-protected: {'yes' if ring.protected else 'no'})")
    print(f"{'version':>7}  {'created':20}  state")
    for k in ring.info():
        print(f"{k.version:>7}  {k.created:20}  {'active' if k.version == ring.active_version else 'decrypt-only'}")
    return 0


STRANDED = ("Sealed copies outside this archive that are wrapped under key version {v} can then never be "
            "opened again: transport objects already delivered by C-GET or C-MOVE (to other PACS, to "
            "'aepacs retrieve' sites that kept them sealed), files made by 'aepacs seal', and backups of the "
            "blob store or index taken before the last rekey.")


def _retire(config: Config, ring: Any, version: int | None, yes: bool = False) -> int:
    """``keys retire VERSION --yes``: destroy a key once nothing in the archive is wrapped under it."""
    from aepacs.crypto.seal import read_header
    from aepacs.store.index import Index

    if version is None:
        raise AepacsError("keys retire needs the VERSION to retire")
    index = Index(config.index_url)
    try:
        in_index = index.kek_versions().get(version, 0)
    finally:
        index.close()
    spooled = 0
    if config.spool_path.is_dir():
        for entry in config.spool_path.rglob("*.aepx"):
            try:
                spooled += read_header(entry.read_bytes(), str(entry)).kek_version == version
            except (OSError, AepacsError):
                continue
    if in_index or spooled:
        raise AepacsError(f"key version {version} still opens {in_index} archived objects and {spooled} "
                          f"spooled ones; run 'aepacs rekey' first (nothing was changed)")
    if not yes:
        print(f"aepacs: nothing in the archive needs key version {version} any more, but retiring destroys it. "
              + STRANDED.format(v=version) + f" Run 'aepacs keys retire {version} --yes' to destroy it "
              "(nothing was changed).", file=sys.stderr)
        return 2
    ring.retire(version)
    _audit(config).record("key-change", detail=f"key version {version} retired and destroyed")
    print(f"retired key version {version}: destroyed from {ring.path} "
          f"(versions held: {', '.join(map(str, ring.versions))})")
    return 0


# -- rekey ----------------------------------------------------------------------
def cmd_rekey(args: argparse.Namespace, config: Config) -> int:
    from aepacs.pipeline.rekey import rekey

    summary = rekey(config, mode=args.mode, workers=args.workers if args.workers is not None
                    else config.rekey.workers, dask=args.dask, limit=args.limit, dry_run=args.dry_run,
                    verify=args.verify, progress=not args.quiet)
    if args.dry_run:
        print(f"rekey {args.mode} (dry run): {summary.skipped} objects would be rekeyed")
        return 0
    for line in summary.lines():
        print(line)
    _audit(config).record("rekey", outcome=MINOR_FAILURE if summary.failed else SUCCESS,
                          detail=f"rekey --mode {args.mode}: " + "; ".join(summary.lines()))
    return 1 if summary.failed else 0


# -- seal / open / info --------------------------------------------------------
def _read(path: Path) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise AepacsError(f"{path}: cannot read ({exc.strerror})") from None


def _write(path: Path, data: bytes) -> None:
    from aepacs.store.atomic import atomic_write

    path = Path(path)
    if not path.parent.is_dir():
        raise AepacsError(f"{path}: directory {path.parent} does not exist")
    atomic_write(path, data, mode=0o600)


def cmd_seal(args: argparse.Namespace, config: Config) -> int:
    from aepacs.errors import InputError
    from aepacs.pipeline.archive import load_keyring
    from aepacs.pipeline.ingest import seal_bytes

    data = _read(args.input)
    try:
        encoded, blob = seal_bytes(data, load_keyring(config), config)
    except InputError as exc:
        raise AepacsError(f"{args.input}: {exc}") from None
    _write(args.output, blob)
    print(f"sealed {args.input} -> {args.output}: {len(data):,} -> {len(blob):,} bytes "
          f"(codec {encoded.codec}, ratio {len(data) / len(blob):.2f})")
    return 0


def cmd_open(args: argparse.Namespace, config: Config) -> int:
    from aepacs.pipeline.archive import load_keyring
    from aepacs.pipeline.retrieve import open_bytes

    header, data = open_bytes(_read(args.input), load_keyring(config), name=str(args.input),
                              registry=_registry(config))
    _write(args.output, data)
    print(f"opened {args.input} -> {args.output}: {header.object_uid}, {len(data):,} bytes")
    return 0


def cmd_info(args: argparse.Namespace, config: Config) -> int:
    from aepacs.crypto.seal import FORMAT_VERSION, read_header
    from aepacs.store.blobs import blob_key

    blob = _read(args.input)
    h = read_header(blob, str(args.input))
    rows = [("file", str(args.input)), ("format", f"aepacs sealed object v{FORMAT_VERSION}"),
            ("object (SOP Instance UID)", h.object_uid), ("study UID", h.study_uid or "-"),
            ("codec", h.codec), ("sealed under key version", str(h.sealed_kek_version)),
            ("data key wrapped by key version", str(h.kek_version)),
            ("payload bytes (encrypted)", f"{h.payload_length:,}"), ("total bytes", f"{len(blob):,}"),
            ("sha256", blob_key(blob)), ("cipher", "AES-256-GCM, 96-bit nonce; DEK wrapped by AES-256-GCM")]
    rows += _payload_rows(blob, config, str(args.input))
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    return 0


def _payload_rows(blob: bytes, config: Config, name: str) -> list[tuple[str, str]]:
    """What the encrypted manifest says (codec, model, measured quality), when the keyring opens it."""
    from aepacs.codec.payload import read_manifest
    from aepacs.crypto.seal import open_sealed
    from aepacs.pipeline.archive import load_keyring

    try:
        _, payload = open_sealed(blob, load_keyring(config), name=name)
        manifest, _ = read_manifest(payload)
    except AepacsError as exc:
        return [("payload", f"not opened ({exc})")]
    rows = [("original bytes", f"{manifest['size']:,}"), ("original sha256", manifest["sha256"]),
            ("pixel codec", manifest.get("pixels", {}).get("codec", "-"))]
    lossy = manifest.get("lossy")
    if lossy:
        rows += [("lossy", f"yes: model {lossy['model']}, ratio {lossy['ratio']}:1"),
                 ("quality at sealing", f"PSNR {lossy['psnr']} dB, SSIM {lossy['ssim']}")]
    else:
        rows += [("lossy", "no (decodes bit for bit)")]
    return rows


# -- import / export ------------------------------------------------------------
def cmd_import(args: argparse.Namespace, config: Config) -> int:
    from aepacs.pipeline.archive import Archive
    from aepacs.pipeline.ingest import check_routes, import_paths

    check_routes(config)
    for p in args.paths:
        if not Path(p).exists():
            raise AepacsError(f"{p}: no such file or directory")
    with Archive(config) as archive:
        s = import_paths(archive, args.paths, progress=not args.quiet)
        archive.audit.record("import", outcome=MINOR_FAILURE if s.failed else SUCCESS, objects=s.added,
                             source=Party(address=", ".join(map(str, args.paths))[:200]),
                             detail=f"{s.added} added, {s.same} already archived, {len(s.failed)} failed")
    ratio = s.source_bytes / s.stored_bytes if s.stored_bytes else 0.0
    print(f"imported {s.added} new, {s.same} already archived, {s.conflicts} conflicting UIDs kept out, "
          f"{len(s.skipped)} skipped, {len(s.failed)} failed; "
          f"{_mb(s.source_bytes)} MB -> {_mb(s.stored_bytes)} MB (ratio {ratio:.2f})")
    for path, reason in s.skipped if args.verbose else []:
        print(f"  skipped {path}: {reason}")
    for path, reason in s.failed:
        print(f"  FAILED {path}: {reason}", file=sys.stderr)
    return 1 if s.failed else 0


def cmd_export(args: argparse.Namespace, config: Config) -> int:
    from aepacs.pipeline.archive import Archive
    from aepacs.pipeline.retrieve import export

    with Archive(config) as archive:
        s = export(archive, args.output, patient_id=args.patient, study_uid=args.study,
                   series_uid=args.series, sop_uid=args.instance, progress=not args.quiet)
        archive.audit.record("export", outcome=MINOR_FAILURE if s.failed else SUCCESS, objects=len(s.written),
                             patients=[args.patient or ""], studies=[args.study or ""],
                             destination=Party(address=str(args.output)),
                             detail=f"{len(s.failed)} failed" if s.failed else None)
    if not s.written and not s.failed:
        raise AepacsError("no archived instance matches the selection")
    print(f"exported {len(s.written)} files ({_mb(s.bytes_written)} MB) to {args.output}; "
          f"{len(s.failed)} failed")
    for uid, reason in s.failed:
        print(f"  FAILED {reason}", file=sys.stderr)
    return 1 if s.failed else 0


def cmd_serve(args: argparse.Namespace, config: Config) -> int:
    from aepacs.net.server import ArchiveServer

    overrides = {k: v for k, v in (("port", args.port), ("ae_title", args.aet), ("bind", args.bind))
                 if v is not None}
    if overrides:
        config = load_config(getattr(args, "config", None), overrides={"server": overrides})
    return ArchiveServer(config, workers=args.workers).serve_forever()


def cmd_retrieve(args: argparse.Namespace, config: Config) -> int:
    from aepacs.net.client import client_ssl_context, receive_files, retrieve
    from aepacs.pipeline.archive import load_keyring

    keyring = load_keyring(config)
    if args.from_files:
        summary = receive_files(args.from_files, keyring, args.output, registry=_registry(config))
    else:
        chosen = [(lvl, getattr(args, lvl)) for lvl in ("patient", "study", "series", "instance")
                  if getattr(args, lvl)]
        if len(chosen) != 1 or not args.host or not args.port:
            raise AepacsError("give --host, --port and one of --patient/--study/--series/--instance "
                              "(or --from-files DIR)")
        tls = client_ssl_context(args.tls_ca, args.tls_cert, args.tls_key) if args.tls_ca else None
        level, value = chosen[0]
        summary = retrieve(args.host, args.port, args.called_aet, args.aet, level, value, keyring, args.output,
                           move_to_self=args.move_to_self, bind=args.bind, tls=tls, registry=_registry(config))
    _audit(config).record("retrieve", outcome=MINOR_FAILURE if summary.failed else SUCCESS, objects=len(summary.written),
                          source=Party(None if args.from_files else args.called_aet,
                                       str(args.from_files) if args.from_files else f"{args.host}:{args.port}"),
                          destination=Party(args.aet, str(args.output)), patients=[args.patient or ""],
                          studies=[args.study or ""], detail="opened and decoded by aepacs retrieve")
    print(f"retrieved {_count(len(summary.written), 'instance')} into {args.output}; {len(summary.failed)} failed"
          + (f"; final status 0x{summary.status:04X}" if summary.status is not None else ""))
    for uid, reason in summary.failed:
        print(f"  FAILED {reason}", file=sys.stderr)
    if summary.status == 0xA801:
        print(f"  the archive does not know {args.aet} as a C-MOVE destination: add it to its configuration, "
              f"server.move_destinations: {{{args.aet}: [HOST, {args.move_to_self}]}} "
              f"(HOST: this machine's address as the archive reaches it), and restart it", file=sys.stderr)
    bad_status = summary.status is not None and summary.status not in (0x0000, 0xB000)
    if not summary.written and not summary.failed and not bad_status:
        raise AepacsError("nothing matched the selection")
    return 1 if summary.failed or bad_status else 0


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def cmd_send(args: argparse.Namespace, config: Config) -> int:
    from aepacs.net.client import client_ssl_context
    from aepacs.net.send import send_files, storables

    files, skipped = storables(args.paths)
    if not files:
        raise AepacsError(f"no sendable DICOM files under {', '.join(map(str, args.paths))}")
    tls = client_ssl_context(args.tls_ca, args.tls_cert, args.tls_key) if args.tls_ca else None
    summary = send_files(args.host, args.port, args.called_aet, args.aet, files, tls=tls)
    stored = set(summary.stored)
    for path, status in summary.statuses.items():
        if path not in stored:
            print(f"  REFUSED {path}: {'no response' if status is None else f'0x{status:04X}'}", file=sys.stderr)
    print(f"sent {len(files)} files to {args.called_aet}@{args.host}:{args.port} in {summary.seconds:.1f} s: "
          f"{len(stored)} stored, {len(files) - len(stored)} refused; {skipped} files skipped (not sendable DICOM)")
    return 0 if len(stored) == len(files) else 1


def cmd_audit(args: argparse.Namespace, config: Config) -> int:
    from aepacs.audit import describe, parse_since, read, verify

    path = config.audit_path
    if args.audit_command == "verify":
        result = verify(path)
        for problem in result.problems:
            print(f"  {problem}", file=sys.stderr)
        print(f"audit trail {path}: {result.records} records, "
              + ("chain intact" if result.ok else f"{len(result.problems)} problems: NOT INTACT"))
        return 0 if result.ok else 1
    since = parse_since(args.since) if args.since else None
    for record in read(path, since=since, patient=args.patient):
        print(describe(record))
    return 0


def _audit(config: Config) -> AuditTrail:
    return AuditTrail.for_config(config)


def cmd_demo(args: argparse.Namespace, config: Config) -> int:
    from aepacs.demo import run_demo

    return run_demo(data=args.data or None, keep=args.keep, home=args.home, learned=not args.lossless_only)


# -- models / train / eval ---------------------------------------------------------
def _registry(config: Config):  # type: ignore[no-untyped-def]
    from aepacs.models.registry import config_registry

    return config_registry(config)


def cmd_train(args: argparse.Namespace, config: Config) -> int:
    import torch

    from aepacs.models.registry import Registry
    from aepacs.models.train import TrainConfig, train

    if args.threads:
        torch.set_num_threads(args.threads)
    hyper = dict(kv.split("=", 1) for kv in args.hyper or [])
    cfg = TrainConfig(name=args.name or args.modality[0].lower(), modality=[m.upper() for m in args.modality],
                      data=[str(d) for d in args.data], arch=args.arch, epochs=args.epochs, steps=args.steps,
                      batch=args.batch, patch=args.patch, lmbda=args.lmbda, lr=args.lr, seed=args.seed,
                      channels=args.channels, hyper={k: float(v) if "." in v else int(v) for k, v in hyper.items()})
    registry = Registry(args.registry or config.models_path)
    model = train(cfg, args.out, resume=args.resume, registry=registry, progress=not args.quiet)
    _audit(config).record("model-change", detail=f"trained {model.ref} ({model.arch}) into {model.path}")
    print(f"trained {model.ref} ({model.arch}) -> {model.path}")
    for row in model.manifest.get("metrics", {}).get("rate_distortion", []):
        quality = "lossless" if row["psnr"] is None else f"PSNR {row['psnr']:.2f} dB"
        print(f"  gain {row['gain']:>2}: {row['bpp']:.3f} bpp, {quality}")
    return 0


def cmd_models(args: argparse.Namespace, config: Config) -> int:
    import json

    registry = _registry(config)
    if args.models_command == "list":
        print(f"{'model':16} {'arch':10} {'modality':10} {'current':7} path")
        for name, version, path in registry.entries():
            cur = "yes" if registry.current(name) == version else ""
            manifest = json.loads((path / "manifest.json").read_text())
            print(f"{name + '@' + str(version):16} {manifest.get('arch', '?'):10} "
                  f"{','.join(manifest.get('modality', [])):10} {cur:7} {path}")
        return 0
    if not args.ref:
        raise AepacsError(f"models {args.models_command}: name the model (NAME or NAME@VERSION)")
    if args.models_command == "verify":
        model = registry.verify(args.ref)
        print(f"{model.ref}: {len(model.manifest['files'])} files match their SHA-256 (digest {model.digest[:16]})")
    elif args.models_command == "promote":
        model = registry.promote(args.ref)
        _audit(config).record("model-change", detail=f"promoted {model.ref} (digest {model.digest[:16]})")
        print(f"{model.ref} is now the current {model.name}")
    else:
        model = registry.verify(args.ref)
        print(json.dumps(model.manifest, indent=2, sort_keys=True))
    return 0


def cmd_eval(args: argparse.Namespace, config: Config) -> int:
    import importlib.util
    import shlex

    missing = [m for m in ("imagecodecs", "SimpleITK", "matplotlib") if importlib.util.find_spec(m) is None]
    if missing:  # before a minute of work, not after it
        raise ConfigError(f"aepacs eval needs the eval extra (missing: {', '.join(missing)}): "
                          f"pip install 'aepacs[eval]'")
    import torch

    from aepacs.eval.noise import KINDS
    from aepacs.eval.report import write_report
    from aepacs.eval.run import evaluate, frames_for

    if args.threads:
        torch.set_num_threads(args.threads)
    registry = _registry(config)
    model = registry.load(args.model)
    paper = registry.load(args.paper) if args.paper else None
    frames = frames_for(model, [str(d) for d in args.data], args.limit)
    if not frames:
        raise AepacsError(f"no {'/'.join(model.manifest.get('modality', []))} images under {args.data}")
    noise = list(KINDS) if args.noise == ["all"] else (args.noise or [])
    result = evaluate(model, frames, gains=args.gains, paper=paper, noise=noise, progress=not args.quiet)
    write_report(result, args.output, command="aepacs " + " ".join(shlex.quote(a) for a in sys.argv[1:]))
    for modality, s in result.summary.items():
        for t, a in s["at_ratio"].items():
            print(f"{modality} {t}:1  aepacs {a['aepacs_ratio']}:1 {a['aepacs_psnr']} dB   "
                  f"JPEG 2000 {a['jpeg2000_ratio']}:1 {a['jpeg2000_psnr']} dB")
    print(f"report: {args.output / 'report.md'}")
    return 0


# -- parser ---------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    common = _common()
    parser = argparse.ArgumentParser(prog="aepacs", parents=[common],
                                     description="Encrypted, learned-compression DICOM archive.")
    parser.add_argument("--version", action="version", version=f"aepacs {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    keys = sub.add_parser("keys", parents=[common], help="manage the keyring (init | list | rotate | retire V)")
    keys.add_argument("keys_command", choices=["init", "list", "rotate", "retire"])
    keys.add_argument("version", type=int, nargs="?", metavar="VERSION", help="retire: the key version to destroy")
    keys.add_argument("--yes", action="store_true",
                      help="retire: destroy the key although sealed copies outside the archive may need it")
    keys.set_defaults(func=cmd_keys)

    p = sub.add_parser("rekey", parents=[common],
                       help="bring every object under the active key (nightly, after 'keys rotate')")
    p.add_argument("--mode", choices=["rewrap", "full"], default="rewrap",
                   help="rewrap: new key slot, same ciphertext; full: fresh data key, re-encrypted")
    p.add_argument("--workers", type=int, metavar="N", help="local worker processes (default: rekey.workers)")
    p.add_argument("--dask", metavar="ADDRESS", help="run on a Dask scheduler (tcp://host:8786)")
    p.add_argument("--limit", type=int, metavar="N", help="rekey at most N objects")
    p.add_argument("--dry-run", action="store_true", help="count what would be rekeyed; change nothing")
    p.add_argument("--verify", action="store_true", help="rewrap: authenticate each whole object first")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_rekey)

    p = sub.add_parser("seal", parents=[common], help="encode and seal one DICOM file")
    p.add_argument("input", type=Path, metavar="IN.dcm")
    p.add_argument("-o", "--output", type=Path, required=True, metavar="OUT.aepx")
    p.set_defaults(func=cmd_seal)

    p = sub.add_parser("open", parents=[common], help="open and decode one sealed object")
    p.add_argument("input", type=Path, metavar="IN.aepx")
    p.add_argument("-o", "--output", type=Path, required=True, metavar="OUT.dcm")
    p.set_defaults(func=cmd_open)

    p = sub.add_parser("info", parents=[common], help="print the clear header of a sealed object")
    p.add_argument("input", type=Path, metavar="FILE")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("import", parents=[common], help="seal every DICOM file under DIR into the archive")
    p.add_argument("paths", type=Path, nargs="+", metavar="DIR")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.add_argument("-v", "--verbose", action="store_true", help="list skipped files")
    p.set_defaults(func=cmd_import)

    p = sub.add_parser("export", parents=[common], help="write archived instances back as DICOM files")
    sel = p.add_mutually_exclusive_group(required=True)
    sel.add_argument("--patient", metavar="ID")
    sel.add_argument("--study", metavar="UID")
    sel.add_argument("--series", metavar="UID")
    sel.add_argument("--instance", metavar="UID")
    p.add_argument("-o", "--output", type=Path, required=True, metavar="DIR")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("serve", parents=[common], help="run the archive SCP (C-ECHO/STORE/FIND/GET/MOVE)")
    p.add_argument("--port", type=int, help="listen port (server.port)")
    p.add_argument("--aet", metavar="TITLE", help="AE title (server.ae_title)")
    p.add_argument("--bind", metavar="ADDR", help="listen address (server.bind; default 127.0.0.1)")
    p.add_argument("--workers", type=int, help="conversion worker processes (ingest.workers)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("retrieve", parents=[common],
                       help="retrieve from an archive (or open received files) and write decoded DICOM")
    p.add_argument("--host", help="archive host")
    p.add_argument("--port", type=int, help="archive port")
    p.add_argument("--called-aet", default="AEPACS", metavar="TITLE", help="archive AE title (default AEPACS)")
    p.add_argument("--aet", default="AEPACS_SCU", metavar="TITLE", help="our AE title (default AEPACS_SCU)")
    sel = p.add_mutually_exclusive_group()
    sel.add_argument("--patient", metavar="ID")
    sel.add_argument("--study", metavar="UID")
    sel.add_argument("--series", metavar="UID")
    sel.add_argument("--instance", metavar="UID")
    sel.add_argument("--from-files", type=Path, nargs="+", metavar="DIR",
                     help="open sealed objects that arrived as files instead")
    p.add_argument("-o", "--output", type=Path, required=True, metavar="DIR")
    p.add_argument("--move-to-self", type=int, metavar="PORT",
                   help="use C-MOVE to a storage SCP run here on PORT (instead of C-GET)")
    p.add_argument("--bind", default="127.0.0.1", metavar="ADDR", help="address of that storage SCP")
    p.add_argument("--tls-ca", type=Path, metavar="PEM", help="use TLS, trusting these CAs")
    p.add_argument("--tls-cert", type=Path, metavar="PEM", help="client certificate (with --tls-ca)")
    p.add_argument("--tls-key", type=Path, metavar="PEM", help="client key (with --tls-cert)")
    p.set_defaults(func=cmd_retrieve)

    p = sub.add_parser("send", parents=[common],
                       help="C-STORE DICOM files to a storage SCP, each as stored (its own transfer syntax)")
    p.add_argument("paths", type=Path, nargs="+", metavar="FILE_OR_DIR")
    p.add_argument("--host", required=True, help="peer host")
    p.add_argument("--port", type=int, required=True, help="peer port")
    p.add_argument("--called-aet", default="AEPACS", metavar="TITLE", help="peer AE title (default AEPACS)")
    p.add_argument("--aet", default="AEPACS_SCU", metavar="TITLE", help="our AE title (default AEPACS_SCU)")
    p.add_argument("--tls-ca", type=Path, metavar="PEM", help="use TLS, trusting these CAs")
    p.add_argument("--tls-cert", type=Path, metavar="PEM", help="client certificate (with --tls-ca)")
    p.add_argument("--tls-key", type=Path, metavar="PEM", help="client key (with --tls-cert)")
    p.set_defaults(func=cmd_send)

    p = sub.add_parser("train", parents=[common], help="train a codec model on DICOM files")
    p.add_argument("--modality", nargs="+", required=True, metavar="MOD", help="modalities to train on (CT, MR, ...)")
    p.add_argument("--data", type=Path, nargs="+", required=True, metavar="DIR", help="DICOM files or directories")
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="training directory (checkpoints)")
    p.add_argument("--name", help="model name (default: the modality, lower case)")
    p.add_argument("--arch", choices=["wavelet", "factorized", "paper"], default="wavelet")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--steps", type=int, default=200, help="steps per epoch (default 200)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--patch", type=int, default=128, help="crop size (default 128)")
    p.add_argument("--lambda", dest="lmbda", type=float, default=150.0, help="rate-distortion weight at gain 0 (default 150)")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--channels", type=int, default=1, choices=[1, 3])
    p.add_argument("--hyper", nargs="*", metavar="KEY=VALUE", help="architecture arguments (factorized: n, m, s, gains, gain0; wavelet: fit_taps=0 keeps CDF 9/7)")
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
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("audit", parents=[common], help="print the audit trail, or verify its hash chain")
    p.add_argument("audit_command", nargs="?", choices=["verify"], help="verify: check the hash chain")
    p.add_argument("--since", metavar="WHEN", help="from this date, date-time or age (12h, 7d)")
    p.add_argument("--patient", metavar="ID", help="only records naming this patient ID")
    p.set_defaults(func=cmd_audit)

    p = sub.add_parser("demo", parents=[common],
                       help="the archive over DICOM on the bundled sample files: send, find, retrieve, compare")
    p.add_argument("--data", type=Path, action="append", metavar="DIR", help="sample data (repeatable)")
    p.add_argument("--home", type=Path, metavar="DIR",
                   help="data directory, kept, with the report (default: a temporary one; report in ~/.aepacs/demo)")
    p.add_argument("--keep", action="store_true", help="keep the temporary data directory")
    p.add_argument("--lossless-only", action="store_true", help="skip the learned lossy part")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    os.umask(0o077)  # keys, index, spool, blobs, audit, exports: the owner's alone, whatever the shell's umask
    args = build_parser().parse_args(argv)
    debug = getattr(args, "debug", False)
    try:
        config = load_config(getattr(args, "config", None))
        configure_logging(logging.DEBUG if debug else config.log.level, config.log.format)
        numba_cache(config)
        func: Callable[[argparse.Namespace, Config], int] = args.func
        return func(args, config)
    except (ConfigError, KeyringError) as exc:
        if debug:
            raise
        print(f"aepacs: error: {exc}", file=sys.stderr)
        return 2
    except AepacsError as exc:
        if debug:
            raise
        print(f"aepacs: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("aepacs: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # 'aepacs models list | head': the reader has all it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit's flush
        return 0
    except OSError as exc:
        if debug:
            raise
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"aepacs: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # a bug: still one line, the traceback under --debug
        if debug:
            raise
        print(f"aepacs: internal error: {type(exc).__name__}: {exc} (run with --debug for the traceback)",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
