"""``aepacs serve | web-token | retrieve | send``: the archive SCP (DIMSE, DICOMweb), its tokens, and clients."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from aepacs.audit import MINOR_FAILURE, SUCCESS, Party
from aepacs.cli.common import audit, count
from aepacs.cli.recipients import PASSPHRASE_ENV
from aepacs.config import Config, load_config
from aepacs.crypto.keyring import Keyring, passphrase_from_env
from aepacs.crypto.recipients import RecipientKey
from aepacs.dicom.status import Status
from aepacs.errors import AepacsError
from aepacs.models.registry import config_registry
from aepacs.net.client import Receiver, client_ssl_context, receive_files, retrieve
from aepacs.net.send import send_files, storables
from aepacs.net.server import ArchiveServer
from aepacs.net.webclient import retrieve_web, store_web
from aepacs.pipeline.archive import load_keyring
from aepacs.web.auth import new_token
from aepacs.web.viewer import OHIF_VERSION, install


def _tls_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tls-ca", type=Path, metavar="PEM", help="use TLS, trusting these CAs")
    p.add_argument("--tls-cert", type=Path, metavar="PEM", help="client certificate (with --tls-ca)")
    p.add_argument("--tls-key", type=Path, metavar="PEM", help="client key (with --tls-cert)")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("serve", parents=[common], help="run the archive SCP (C-ECHO/STORE/FIND/GET/MOVE)")
    p.add_argument("--port", type=int, help="listen port (server.port)")
    p.add_argument("--aet", metavar="TITLE", help="AE title (server.ae_title)")
    p.add_argument("--bind", metavar="ADDR", help="listen address (server.bind; default 127.0.0.1)")
    p.add_argument("--workers", type=int, help="conversion worker processes (ingest.workers)")
    p.add_argument("--web-port", type=int, metavar="PORT", help="DICOMweb listen port (web.port; 0: off)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("web-token", parents=[common],
                       help="make a DICOMweb bearer token; prints it once, and the digest web.tokens_sha256 lists")
    p.set_defaults(func=cmd_web_token)

    p = sub.add_parser("viewer", parents=[common], help="the OHIF viewer aepacs serve serves at /viewer/")
    vsub = p.add_subparsers(dest="viewer_command", required=True)
    v = vsub.add_parser("install", parents=[common],
                        help="npm pack @ohif/app from the npm registry, verify it, unpack it into web.viewer")
    v.add_argument("--version", default=OHIF_VERSION, help=f"@ohif/app version (default {OHIF_VERSION})")
    v.add_argument("--dest", type=Path, metavar="DIR", help="install here instead of web.viewer")
    v.set_defaults(func=cmd_viewer_install)

    p = sub.add_parser("retrieve", parents=[common],
                       help="retrieve from an archive (or open received files) and write decoded DICOM")
    p.add_argument("--host", help="archive host")
    p.add_argument("--port", type=int, help="archive port")
    p.add_argument("--dicomweb", metavar="URL",
                   help="retrieve over WADO-RS from this service root (https://host:port/dicomweb) instead of DIMSE; "
                        "the bearer token is read from $AEPACS_WEB_TOKEN")
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
    p.add_argument("--recipient-key", type=Path, metavar="FILE",
                   help="open what the archive sealed to this recipient with its private key (SITE.key.json from "
                        "'aepacs recipient init'; passphrase from $AEPACS_RECIPIENT_PASSPHRASE) instead of the "
                        "archive's keyring, which this machine then does not need")
    _tls_options(p)
    p.set_defaults(func=cmd_retrieve)

    p = sub.add_parser("send", parents=[common],
                       help="C-STORE (or STOW-RS) DICOM files to a storage SCP, each as stored (its own transfer "
                            "syntax)")
    p.add_argument("paths", type=Path, nargs="+", metavar="FILE_OR_DIR")
    p.add_argument("--host", help="peer host")
    p.add_argument("--port", type=int, help="peer port")
    p.add_argument("--dicomweb", metavar="URL",
                   help="send by STOW-RS to this service root (https://host:port/dicomweb) instead of C-STORE; "
                        "the bearer token is read from $AEPACS_WEB_TOKEN")
    p.add_argument("--called-aet", default="AEPACS", metavar="TITLE", help="peer AE title (default AEPACS)")
    p.add_argument("--aet", default="AEPACS_SCU", metavar="TITLE", help="our AE title (default AEPACS_SCU)")
    _tls_options(p)
    p.set_defaults(func=cmd_send)


def cmd_serve(args: argparse.Namespace, config: Config) -> int:
    overrides = {k: v for k, v in (("port", args.port), ("ae_title", args.aet), ("bind", args.bind))
                 if v is not None}
    sections: dict[str, dict[str, object]] = {"server": overrides} if overrides else {}
    if args.web_port is not None:
        sections["web"] = {"port": args.web_port}
    if sections:
        config = load_config(getattr(args, "config", None), overrides=sections)
    return ArchiveServer(config, workers=args.workers).serve_forever()


def cmd_web_token(args: argparse.Namespace, config: Config) -> int:
    token, digest = new_token()
    print(f"token (give it to the client; it is not stored anywhere): {token}")
    print(f"add to web.tokens_sha256: {digest}")
    return 0


def cmd_viewer_install(args: argparse.Namespace, config: Config) -> int:
    dest = install(args.dest or config.resolve(config.web.viewer), args.version)
    print(f"OHIF {args.version} installed in {dest}; aepacs serve serves it at /viewer/ when web.port is set")
    return 0


def cmd_retrieve(args: argparse.Namespace, config: Config) -> int:
    keyring: Keyring | RecipientKey = load_keyring(config) if args.recipient_key is None else \
        RecipientKey.load(args.recipient_key, passphrase_from_env(PASSPHRASE_ENV))
    if args.from_files:
        summary = receive_files(args.from_files, keyring, args.output, registry=config_registry(config))
    elif args.dicomweb:
        chosen = [(lvl, getattr(args, lvl)) for lvl in ("study", "series", "instance") if getattr(args, lvl)]
        if len(chosen) != 1:
            raise AepacsError("with --dicomweb give one of --study/--series/--instance")
        context = client_ssl_context(args.tls_ca, args.tls_cert, args.tls_key) if args.tls_ca else None
        summary = retrieve_web(args.dicomweb, *chosen[0], Receiver(keyring, args.output, config_registry(config)),
                               token=os.environ.get("AEPACS_WEB_TOKEN"), context=context)
        summary.status = None  # an HTTP status, not a DIMSE one
    else:
        chosen = [(lvl, getattr(args, lvl)) for lvl in ("patient", "study", "series", "instance")
                  if getattr(args, lvl)]
        if len(chosen) != 1 or not args.host or not args.port:
            raise AepacsError("give --host, --port and one of --patient/--study/--series/--instance "
                              "(or --from-files DIR)")
        tls = client_ssl_context(args.tls_ca, args.tls_cert, args.tls_key) if args.tls_ca else None
        level, value = chosen[0]
        summary = retrieve(args.host, args.port, args.called_aet, args.aet, level, value, keyring, args.output,
                           move_to_self=args.move_to_self, bind=args.bind, tls=tls, registry=config_registry(config))
    audit(config).record("retrieve", outcome=MINOR_FAILURE if summary.failed else SUCCESS, objects=len(summary.written),
                         source=Party(None if args.from_files or args.dicomweb else args.called_aet,
                                      str(args.from_files) if args.from_files
                                      else args.dicomweb or f"{args.host}:{args.port}"),
                         destination=Party(args.aet, str(args.output)), patients=[args.patient or ""],
                         studies=[args.study or ""], detail="opened and decoded by aepacs retrieve")
    print(f"retrieved {count(len(summary.written), 'instance')} into {args.output}; {len(summary.failed)} failed"
          + (f"; final status 0x{summary.status:04X}" if summary.status is not None else ""))
    for _uid, reason in summary.failed:
        print(f"  FAILED {reason}", file=sys.stderr)
    if summary.status == Status.MOVE_DESTINATION_UNKNOWN:
        print(f"  the archive does not know {args.aet} as a C-MOVE destination: add it to its configuration, "
              f"server.move_destinations: {{{args.aet}: [HOST, {args.move_to_self}]}} "
              f"(HOST: this machine's address as the archive reaches it), and restart it", file=sys.stderr)
    if summary.status == Status.NOT_AUTHORIZED:
        print(f"  the archive seals nothing to {args.aet}: it is no registered recipient there, or a revoked one. "
              "Make a key pair here ('aepacs recipient init --name SITE -o DIR'), have the archive register its "
              f"public key ('aepacs recipients add SITE --public-key SITE.pub.json --aet {args.aet}'), and "
              "retrieve with --recipient-key DIR/SITE.key.json", file=sys.stderr)
    bad_status = summary.status is not None and summary.status not in (Status.SUCCESS, Status.SUBOPERATIONS_FAILED)
    if not summary.written and not summary.failed and not bad_status:
        raise AepacsError("nothing matched the selection")
    return 1 if summary.failed or bad_status else 0


def cmd_send(args: argparse.Namespace, config: Config) -> int:
    files, skipped = storables(args.paths)
    if not files:
        raise AepacsError(f"no sendable DICOM files under {', '.join(map(str, args.paths))}")
    tls = client_ssl_context(args.tls_ca, args.tls_cert, args.tls_key) if args.tls_ca else None
    if args.dicomweb:
        web = store_web(args.dicomweb, [(f.path, f.sop_uid) for f in files], token=os.environ.get("AEPACS_WEB_TOKEN"),
                        context=tls)
        for path, reason in web.refused.items():
            print(f"  REFUSED {path}: {reason}", file=sys.stderr)
        print(f"sent {len(files)} files to {args.dicomweb} in {web.seconds:.1f} s: {len(web.stored)} stored, "
              f"{len(web.refused)} refused; {skipped} files skipped (not sendable DICOM)")
        return 0 if not web.refused else 1
    if not args.host or not args.port:
        raise AepacsError("give --host and --port (or --dicomweb URL)")
    summary = send_files(args.host, args.port, args.called_aet, args.aet, files, tls=tls)
    stored = set(summary.stored)
    for path, status in summary.statuses.items():
        if path not in stored:
            print(f"  REFUSED {path}: {'no response' if status is None else f'0x{status:04X}'}", file=sys.stderr)
    print(f"sent {len(files)} files to {args.called_aet}@{args.host}:{args.port} in {summary.seconds:.1f} s: "
          f"{len(stored)} stored, {len(files) - len(stored)} refused; {skipped} files skipped (not sendable DICOM)")
    return 0 if len(stored) == len(files) else 1
