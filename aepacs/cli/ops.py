"""``aepacs rekey | reencode | spool | db | audit | orthanc-compress | orthanc-migrate | orthanc-sweep |
demo``: operations on the whole archive, a node's spool, the index schema, the audit trail, another
program's storage area (Orthanc's), and the demonstration."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from sqlalchemy.exc import SQLAlchemyError

from aepacs.audit import MINOR_FAILURE, SUCCESS, describe, parse_since, read, verify
from aepacs.cli.common import audit
from aepacs.cli.recipients import PASSPHRASE_ENV
from aepacs.config import Config, load_config
from aepacs.crypto.keyring import passphrase_from_env
from aepacs.crypto.recipients import RecipientKey
from aepacs.demo.run import run_demo
from aepacs.errors import InputError, StoreError
from aepacs.net.orthanc import OrthancApi
from aepacs.pipeline.archive import Archive
from aepacs.pipeline.area_jobs import compress_pending, follow, migrate_files, sweep_unknown
from aepacs.pipeline.batch import Summary
from aepacs.pipeline.blind_rekey import export_slots, import_slots, read_slot_file, rewrap_slots
from aepacs.pipeline.reencode import reencode
from aepacs.pipeline.rekey import rekey
from aepacs.pipeline.storage_area import StorageArea
from aepacs.pipeline.workers import adopt
from aepacs.store import migrate
from aepacs.store.index import make_engine, shown_url, writer


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser) -> None:
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
    blind = p.add_argument_group("a blind archive (sealing: recipients-only), rekeyed through a recipient "
                                 "(docs/FORMAT.md)")
    blind.add_argument("--export-slots", type=Path, metavar="FILE",
                       help="at the archive: write every object's key slot, and whom to wrap to, to FILE")
    blind.add_argument("--recipient-key", type=Path, metavar="KEY",
                       help="on a recipient's machine: re-wrap the slots of --slots with this private key")
    blind.add_argument("--slots", type=Path, metavar="FILE", help="with --recipient-key: the exported slot file")
    blind.add_argument("-o", "--out", type=Path, metavar="FILE", help="with --recipient-key: the re-wrapped slots")
    blind.add_argument("--import-slots", type=Path, metavar="FILE",
                       help="at the archive: install the slots a recipient re-wrapped")
    p.set_defaults(func=cmd_rekey)

    p = sub.add_parser("reencode", parents=[common],
                       help="code every lossless object stored with one codec again with another")
    p.add_argument("--from", dest="source", required=True, metavar="CODEC",
                   help="a model version (ct@3) or a standard codec (jpegls, htj2k, jpegxl, zstd)")
    p.add_argument("--to", dest="target", required=True, metavar="CODEC",
                   help="a model (ct@6; a bare name: its current version) or a standard codec")
    p.add_argument("--workers", type=int, metavar="N", help="local worker processes (default: one per core)")
    p.add_argument("--dask", metavar="ADDRESS", help="run on a Dask scheduler (tcp://host:8786)")
    p.add_argument("--limit", type=int, metavar="N", help="re-encode at most N objects")
    p.add_argument("--dry-run", action="store_true", help="count what would be re-encoded; change nothing")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_reencode)

    p = sub.add_parser("spool", parents=[common],
                       help="adopt the spool of a node that will not come back (docs/SCALING.md)")
    p.add_argument("spool_command", choices=["adopt"])
    p.add_argument("directory", type=Path, metavar="DIR", help="the dead node's spool directory")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_spool)

    p = sub.add_parser("db", parents=[common],
                       help="the index schema: upgrade it to this release's (every node stopped), or show it")
    p.add_argument("db_command", choices=["upgrade", "current"])
    p.set_defaults(func=cmd_db)

    p = sub.add_parser("audit", parents=[common], help="print the audit trail, or verify its hash chain")
    p.add_argument("audit_command", nargs="?", choices=["verify"], help="verify: check the hash chain")
    p.add_argument("--since", metavar="WHEN", help="from this date, date-time or age (12h, 7d)")
    p.add_argument("--patient", metavar="ID", help="only records naming this patient ID")
    p.set_defaults(func=cmd_audit)

    p = sub.add_parser("orthanc-compress", parents=[common],
                       help="code the DICOM files Orthanc keeps in aepacs (its storage area) losslessly")
    p.add_argument("--follow", action="store_true", help="keep coding new files as Orthanc stores them")
    p.add_argument("--interval", type=float, default=1.0, metavar="S", help="--follow: look for new files every S s")
    p.add_argument("--parent", type=int, metavar="PID", help="--follow: stop when process PID is gone")
    p.add_argument("--age", type=float, default=0.0, metavar="S",
                   help="only files stored at least S seconds ago (new ones read back faster as they came)")
    _orthanc_options(p, "code")
    p.set_defaults(func=cmd_orthanc_compress)

    p = sub.add_parser("orthanc-migrate", parents=[common],
                       help="move a running Orthanc's own storage directory into aepacs (its storage area)")
    p.add_argument("--orthanc", required=True, metavar="URL",
                   help="Orthanc's REST API (http://host:8042; http://user:password@host:8042)")
    p.add_argument("--storage", required=True, type=Path, metavar="DIR",
                   help="Orthanc's StorageDirectory from before (the plugin's Aepacs.MigrateFrom)")
    p.add_argument("--delete", action="store_true", help="remove each plaintext file once its sealed copy reads back")
    _orthanc_options(p, "move")
    p.set_defaults(func=cmd_orthanc_migrate)

    p = sub.add_parser("orthanc-sweep", parents=[common],
                       help="remove files Orthanc handed to aepacs but never committed (it was killed meanwhile)")
    p.add_argument("--orthanc", required=True, metavar="URL", help="Orthanc's REST API, as for orthanc-migrate")
    p.add_argument("--min-age", type=float, default=3600.0, metavar="S",
                   help="only files stored at least S seconds ago (default: an hour)")
    p.add_argument("--force", action="store_true", help="even when more than 1%% of the files would go")
    _orthanc_options(p)
    p.set_defaults(func=cmd_orthanc_sweep)

    p = sub.add_parser("demo", parents=[common],
                       help="the archive over DICOM on the bundled sample files: send, find, retrieve, compare")
    p.add_argument("--data", type=Path, action="append", metavar="DIR", help="sample data (repeatable)")
    p.add_argument("--home", type=Path, metavar="DIR",
                   help="data directory, kept, with the report (default: a temporary one; report in ~/.aepacs/demo)")
    p.add_argument("--keep", action="store_true",
                   help="keep the data directory, and the DICOMweb server with the viewer up until Ctrl-C")
    p.add_argument("--viewer", type=Path, metavar="DIR",
                   help="the installed OHIF viewer (default: web.viewer; aepacs viewer install puts it there)")
    p.add_argument("--lossless-only", action="store_true", help="skip the learned lossy part")
    p.set_defaults(func=cmd_demo)


def cmd_rekey(args: argparse.Namespace, config: Config) -> int:
    if args.recipient_key is not None:
        if args.slots is None or args.out is None:
            raise InputError("rekey --recipient-key needs --slots FILE (exported by the archive) and -o FILE")
        key = RecipientKey.load(args.recipient_key, passphrase_from_env(PASSPHRASE_ENV))
        head, recipients, _ = read_slot_file(args.slots)
        print(f"re-wrapping the data keys of {head.get('archive') or 'the archive'} with recipient {key.name} "
              f"({key.id}) to: " + ", ".join(f"{r.name} ({r.id})" for r in recipients))
        done, failed = rewrap_slots(args.slots, key, args.out, progress=not args.quiet)
        for line in failed:
            print(f"not re-wrapped: {line}", file=sys.stderr)
        print(f"{done} key slots re-wrapped into {args.out}; {len(failed)} not (give {args.out.name} to the "
              "archive: aepacs rekey --import-slots)")
        return 1 if failed else 0
    if args.export_slots is not None:
        with Archive(config) as archive:
            n = export_slots(archive, args.export_slots, progress=not args.quiet)
        print(f"{n} key slots written to {args.export_slots} (a recipient re-wraps them: aepacs rekey "
              "--recipient-key KEY --slots FILE -o FILE)")
        return 0
    if args.import_slots is not None:
        with Archive(config) as archive:
            return _report(config, "rekey", import_slots(archive, args.import_slots, progress=not args.quiet))
    summary = rekey(config, mode=args.mode, workers=args.workers if args.workers is not None
                    else config.rekey.workers, dask=args.dask, limit=args.limit, dry_run=args.dry_run,
                    verify=args.verify, progress=not args.quiet)
    if args.dry_run:
        print(f"rekey {args.mode} (dry run): {summary.skipped} objects would be rekeyed")
        return 0
    return _report(config, "rekey", summary)


def cmd_reencode(args: argparse.Namespace, config: Config) -> int:
    summary = reencode(config, args.source, args.target, workers=args.workers, dask=args.dask, limit=args.limit,
                       dry_run=args.dry_run, progress=not args.quiet)
    if args.dry_run:
        print(f"{summary.job} (dry run): {summary.skipped} objects would be re-encoded")
        for line in summary.notes:
            print(line)
        return 0
    return _report(config, "reencode", summary)


def cmd_spool(args: argparse.Namespace, config: Config) -> int:
    if not args.directory.is_dir():
        raise InputError(f"{args.directory}: not a directory")
    with Archive(config) as archive:
        counts = adopt(archive, args.directory, progress=not args.quiet)
    line = (f"spool {args.directory}: {sum(counts.values())} entries; " +
            ", ".join(f"{n} {what}" for what, n in sorted(counts.items())))
    print(line)
    audit(config).record("import", outcome=MINOR_FAILURE if counts["failed"] else SUCCESS,
                         detail=f"aepacs spool adopt: {line}")
    if counts["failed"]:
        print(f"kept in {args.directory / 'failed'}: entries that cannot be archived as instances", file=sys.stderr)
    return 1 if counts["failed"] else 0


def _orthanc_options(p: argparse.ArgumentParser, verb: str | None = None) -> None:
    """The options of the commands on Orthanc's storage area: the plugin's Keyring and Models, and for those
    that `verb` files one by one, how many and whether to show progress."""
    p.add_argument("--keyring", type=Path, help="the keyring file (overrides keyring.path)")
    p.add_argument("--models", type=Path, help="the model registry (overrides models.path)")
    if verb:
        p.add_argument("--limit", type=int, help=f"{verb} at most this many files")
        p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def _with_paths(args: argparse.Namespace, config: Config) -> Config:
    """`config` with the plugin's Keyring and Models settings laid over it."""
    overrides = {k: {"path": str(v)} for k, v in (("keyring", args.keyring), ("models", args.models)) if v}
    return load_config(getattr(args, "config", None), overrides=overrides) if overrides else config


def cmd_orthanc_migrate(args: argparse.Namespace, config: Config) -> int:
    if not args.storage.is_dir():
        raise InputError(f"{args.storage}: not a directory")
    api = OrthancApi(args.orthanc)
    with Archive(_with_paths(args, config)) as archive:
        counts = migrate_files(StorageArea(archive, legacy=args.storage), api.files(), delete=args.delete,
                               limit=args.limit, progress=not args.quiet)
    line = "orthanc-migrate: " + (", ".join(f"{n} {what}" for what, n in sorted(counts.items())) or "no files")
    print(line)
    audit(config).record("import", outcome=MINOR_FAILURE if counts["failed"] else SUCCESS,
                         detail=f"{line} (from {args.storage})")
    return 1 if counts["failed"] else 0


def cmd_orthanc_sweep(args: argparse.Namespace, config: Config) -> int:
    known = [(uuid, content_type) for uuid, content_type, _ in OrthancApi(args.orthanc).files()]
    with Archive(_with_paths(args, config)) as archive:
        removed = sweep_unknown(StorageArea(archive), known, min_age_s=args.min_age, force=args.force)
    print(f"orthanc-sweep: {len(known)} files known to Orthanc; removed {removed} it never committed")
    return 0


def cmd_orthanc_compress(args: argparse.Namespace, config: Config) -> int:
    config = _with_paths(args, config)
    with Archive(config) as archive:
        area = StorageArea(archive)
        if args.follow:
            counts = follow(area, interval=args.interval, parent=args.parent, age_s=args.age)
        else:
            counts = compress_pending(area, limit=args.limit, progress=not args.quiet, age_s=args.age)
    print("orthanc-compress: " + (", ".join(f"{n} {what}" for what, n in sorted(counts.items())) or "nothing to code"))
    return 1 if counts["failed"] else 0


def _report(config: Config, event: str, summary: Summary) -> int:
    """Print a batch job's summary and audit it; exit 1 when any object failed."""
    for line in summary.lines():
        print(line)
    audit(config).record(event, outcome=MINOR_FAILURE if summary.failed else SUCCESS,
                         detail="; ".join(summary.lines()))
    return 1 if summary.failed else 0


def _revision(now: str | None) -> str:
    return {None: "empty (no schema yet)", "legacy": "made before schema migrations"}.get(now, f"revision {now}")


def cmd_db(args: argparse.Namespace, config: Config) -> int:
    engine = make_engine(config.index_url)
    shown = shown_url(config.index_url)
    try:
        if args.db_command == "current":
            with engine.connect() as conn:
                now = migrate.revision(conn)
            print(f"index {shown}: {_revision(now)}; this release needs revision {migrate.head()}"
                  + ("" if now == migrate.head() else " (aepacs db upgrade)"))
            return 0
        with writer(engine) as conn, conn.begin():
            before, after = migrate.upgrade(conn)
    except SQLAlchemyError as exc:
        raise StoreError(f"index {shown}: {type(exc).__name__}: {exc}") from None
    finally:
        engine.dispose()
    if before != after:
        audit(config).record("schema-change", detail=f"aepacs db upgrade: index {_revision(before)} -> {after}")
    print(f"index {shown}: {_revision(before)} -> revision {after}" if before != after
          else f"index {shown}: at revision {after} already")
    return 0


def cmd_audit(args: argparse.Namespace, config: Config) -> int:
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


def cmd_demo(args: argparse.Namespace, config: Config) -> int:
    return run_demo(data=args.data or None, keep=args.keep, home=args.home, learned=not args.lossless_only,
                    viewer=args.viewer or config.resolve(config.web.viewer))
