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
import sys
from pathlib import Path
from typing import Callable, Sequence

from aepacs import __version__
from aepacs.config import Config, load_config
from aepacs.errors import AepacsError, ConfigError, KeyringError

log = logging.getLogger("aepacs")


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
        print(f"created keyring {path} (key version {ring.active_version}, "
              f"passphrase-protected: {'yes' if ring.protected else 'no'})")
        return 0
    ring = load_keyring(config)
    if args.keys_command == "rotate":
        version = ring.rotate()
        print(f"rotated keyring {path}: key version {version} is now active "
              f"(versions held: {', '.join(map(str, ring.versions))})")
        return 0
    print(f"keyring {path} (passphrase-protected: {'yes' if ring.protected else 'no'})")
    print(f"{'version':>7}  {'created':20}  state")
    for k in ring.info():
        print(f"{k.version:>7}  {k.created:20}  {'active' if k.version == ring.active_version else 'decrypt-only'}")
    return 0


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

    header, data = open_bytes(_read(args.input), load_keyring(config), name=str(args.input))
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
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    return 0


# -- import / export ------------------------------------------------------------
def cmd_import(args: argparse.Namespace, config: Config) -> int:
    from aepacs.pipeline.archive import Archive
    from aepacs.pipeline.ingest import import_paths

    for p in args.paths:
        if not Path(p).exists():
            raise AepacsError(f"{p}: no such file or directory")
    with Archive(config) as archive:
        s = import_paths(archive, args.paths, progress=not args.quiet)
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
        summary = receive_files(args.from_files, keyring, args.output)
    else:
        chosen = [(lvl, getattr(args, lvl)) for lvl in ("patient", "study", "series", "instance")
                  if getattr(args, lvl)]
        if len(chosen) != 1 or not args.host or not args.port:
            raise AepacsError("give --host, --port and one of --patient/--study/--series/--instance "
                              "(or --from-files DIR)")
        tls = client_ssl_context(args.tls_ca, args.tls_cert, args.tls_key) if args.tls_ca else None
        level, value = chosen[0]
        summary = retrieve(args.host, args.port, args.called_aet, args.aet, level, value, keyring, args.output,
                           move_to_self=args.move_to_self, bind=args.bind, tls=tls)
    print(f"retrieved {len(summary.written)} instances into {args.output}; {len(summary.failed)} failed"
          + (f"; final status 0x{summary.status:04X}" if summary.status is not None else ""))
    for uid, reason in summary.failed:
        print(f"  FAILED {reason}", file=sys.stderr)
    bad_status = summary.status is not None and summary.status not in (0x0000, 0xB000)
    if not summary.written and not summary.failed and not bad_status:
        raise AepacsError("nothing matched the selection")
    return 1 if summary.failed or bad_status else 0


def cmd_demo(args: argparse.Namespace, config: Config) -> int:
    from aepacs.demo import run_demo

    return run_demo(config, data=args.data or None, keep=args.keep, home=args.home)


# -- parser ---------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    common = _common()
    parser = argparse.ArgumentParser(prog="aepacs", parents=[common],
                                     description="Encrypted, learned-compression DICOM archive.")
    parser.add_argument("--version", action="version", version=f"aepacs {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    keys = sub.add_parser("keys", parents=[common], help="manage the keyring (init | list | rotate)")
    keys.add_argument("keys_command", choices=["init", "list", "rotate"])
    keys.set_defaults(func=cmd_keys)

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

    p = sub.add_parser("demo", parents=[common],
                       help="import the bundled sample files into a fresh archive and export them back")
    p.add_argument("--data", type=Path, action="append", metavar="DIR", help="sample data (repeatable)")
    p.add_argument("--home", type=Path, metavar="DIR", help="data directory (default: a temporary one)")
    p.add_argument("--keep", action="store_true", help="keep the temporary data directory")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    args = build_parser().parse_args(argv)
    debug = getattr(args, "debug", False)
    try:
        config = load_config(getattr(args, "config", None))
        logging.basicConfig(level=logging.DEBUG if debug else config.log.level,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        if not debug:  # pydicom's remarks on odd input: the archive keeps the bytes as they came

            logging.getLogger("pydicom").setLevel(logging.ERROR)
            logging.getLogger("pynetdicom").setLevel(logging.WARNING)  # aepacs logs one line per association
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
