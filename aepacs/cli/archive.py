"""``aepacs seal | open | info | import | export``: sealed objects as files, and the archive from and to folders."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from aepacs.audit import MINOR_FAILURE, SUCCESS, Party
from aepacs.cli.common import mb, read_input, write_output
from aepacs.config import Config
from aepacs.crypto.seal import FORMAT_VERSION, read_header
from aepacs.errors import AepacsError, InputError
from aepacs.models.registry import config_registry
from aepacs.pipeline.archive import Archive, load_keyring
from aepacs.pipeline.codecs import check_routes
from aepacs.pipeline.ingest import import_paths, seal_bytes
from aepacs.pipeline.recipients import recipient_for, recipient_named
from aepacs.pipeline.retrieve import describe_payload, export, open_bytes
from aepacs.store.blobs import blob_key


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser) -> None:
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
    p.add_argument("--sealed", action="store_true",
                   help="write the sealed objects (.aepx), not decoded DICOM: sealed to --recipient, else under the "
                        "archive's key (for a reader holding the keyring, where transport.unregistered allows it)")
    p.add_argument("--recipient", metavar="SITE", help="with --sealed: the registered recipient whose key opens them")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_export)


def cmd_seal(args: argparse.Namespace, config: Config) -> int:
    data = read_input(args.input)
    try:
        encoded, blob = seal_bytes(data, load_keyring(config), config)
    except InputError as exc:
        raise AepacsError(f"{args.input}: {exc}") from None
    write_output(args.output, blob)
    print(f"sealed {args.input} -> {args.output}: {len(data):,} -> {len(blob):,} bytes "
          f"(codec {encoded.codec}, ratio {len(data) / len(blob):.2f})")
    return 0


def cmd_open(args: argparse.Namespace, config: Config) -> int:
    header, data = open_bytes(read_input(args.input), load_keyring(config), name=str(args.input),
                              registry=config_registry(config))
    write_output(args.output, data)
    print(f"opened {args.input} -> {args.output}: {header.object_uid}, {len(data):,} bytes")
    return 0


def cmd_info(args: argparse.Namespace, config: Config) -> int:
    blob = read_input(args.input)
    h = read_header(blob, str(args.input))
    rows = [("file", str(args.input)), ("format", f"aepacs sealed object v{FORMAT_VERSION}"),
            ("object (SOP Instance UID)", h.object_uid), ("study UID", h.study_uid or "-"),
            ("codec", h.codec), ("sealed under key version", str(h.sealed_kek_version)),
            ("data key wrapped by key version", str(h.kek_version)),
            ("payload bytes (encrypted)", f"{h.payload_length:,}"), ("total bytes", f"{len(blob):,}"),
            ("sha256", blob_key(blob)), ("cipher", "AES-256-GCM, 96-bit nonce; DEK wrapped by AES-256-GCM")]
    try:
        keyring = load_keyring(config)
    except AepacsError as exc:
        rows += [("payload", f"not opened ({exc})")]
    else:
        rows += describe_payload(blob, keyring, str(args.input))
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    return 0


def cmd_import(args: argparse.Namespace, config: Config) -> int:
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
          f"{mb(s.source_bytes)} MB -> {mb(s.stored_bytes)} MB (ratio {ratio:.2f})")
    for path, reason in s.skipped if args.verbose else []:
        print(f"  skipped {path}: {reason}")
    for path, reason in s.failed:
        print(f"  FAILED {path}: {reason}", file=sys.stderr)
    return 1 if s.failed else 0


def cmd_export(args: argparse.Namespace, config: Config) -> int:
    if args.recipient and not args.sealed:
        raise InputError("--recipient goes with --sealed (decoded files are not sealed to anyone)")
    with Archive(config) as archive:
        recipient = None
        if args.sealed:  # to the recipient named, else as transport.unregistered allows
            recipient = recipient_named(archive, args.recipient) if args.recipient else recipient_for(archive)
        s = export(archive, args.output, patient_id=args.patient, study_uid=args.study,
                   series_uid=args.series, sop_uid=args.instance, progress=not args.quiet,
                   sealed=args.sealed, recipient=recipient)
        notes = [f"sealed to recipient {recipient.name} ({recipient.id})" if recipient
                 else "sealed under the archive's key"] if args.sealed else []
        notes += [f"{len(s.failed)} failed"] if s.failed else []
        archive.audit.record("export", outcome=MINOR_FAILURE if s.failed else SUCCESS, objects=len(s.written),
                             patients=[args.patient or ""], studies=[args.study or ""],
                             destination=Party(address=str(args.output)), detail="; ".join(notes) or None)
    if not s.written and not s.failed:
        raise AepacsError("no archived instance matches the selection")
    print(f"exported {len(s.written)} files ({mb(s.bytes_written)} MB) to {args.output}; "
          f"{len(s.failed)} failed")
    for _uid, reason in s.failed:
        print(f"  FAILED {reason}", file=sys.stderr)
    return 1 if s.failed else 0
