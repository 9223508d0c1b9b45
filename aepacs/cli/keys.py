"""``aepacs keys``: create, list, rotate and retire the key-encryption keys."""

from __future__ import annotations

import argparse
import sys

from aepacs.cli.common import audit
from aepacs.config import Config
from aepacs.crypto.keyring import Keyring, passphrase_from_env
from aepacs.errors import AepacsError
from aepacs.pipeline.archive import load_keyring
from aepacs.pipeline.keys import still_wrapped

STRANDED = ("Sealed copies outside this archive that are wrapped under key version {v} can then never be "
            "opened again: transport objects already delivered by C-GET or C-MOVE to readers that are not "
            "registered recipients (to other PACS, to 'aepacs retrieve' sites that kept them sealed), files made "
            "by 'aepacs seal' or 'export --sealed' without --recipient, and backups of the blob store or index "
            "taken before the last rekey. Copies sealed to recipients ('aepacs recipients') are not affected.")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser) -> None:
    keys = sub.add_parser("keys", parents=[common], help="manage the keyring (init | list | rotate | retire V)")
    keys.add_argument("keys_command", choices=["init", "list", "rotate", "retire"])
    keys.add_argument("version", type=int, nargs="?", metavar="VERSION", help="retire: the key version to destroy")
    keys.add_argument("--yes", action="store_true",
                      help="retire: destroy the key although sealed copies outside the archive may need it")
    keys.set_defaults(func=cmd_keys)


def cmd_keys(args: argparse.Namespace, config: Config) -> int:
    path = config.keyring_path
    if args.keys_command == "init":
        ring = Keyring.create(path, passphrase_from_env(config.keyring.passphrase_env))
        audit(config).record("key-change", detail=f"keyring {path} created, key version {ring.active_version}")
        print(f"created keyring {path} (key version {ring.active_version}, "
              f"passphrase-protected: {'yes' if ring.protected else 'no'})")
        return 0
    ring = load_keyring(config)
    if args.keys_command == "retire":
        return _retire(config, ring, args.version, args.yes)
    if args.keys_command == "rotate":
        version = ring.rotate()
        audit(config).record("key-change", detail=f"keyring {path} rotated: key version {version} active")
        print(f"rotated keyring {path}: key version {version} is now active "
              f"(versions held: {', '.join(map(str, ring.versions))})")
        return 0
    print(f"keyring {path} (passphrase-protected: {'yes' if ring.protected else 'no'})")
    print(f"{'version':>7}  {'created':20}  state")
    for k in ring.info():
        print(f"{k.version:>7}  {k.created:20}  {'active' if k.version == ring.active_version else 'decrypt-only'}")
    return 0


def _retire(config: Config, ring: Keyring, version: int | None, yes: bool = False) -> int:
    """``keys retire VERSION --yes``: destroy a key once nothing in the archive is wrapped under it."""
    if version is None:
        raise AepacsError("keys retire needs the VERSION to retire")
    wrapped = still_wrapped(config, version)
    if wrapped.journaled:
        raise AepacsError(f"key version {version} still opens {wrapped.journaled} files in Orthanc's storage area "
                          f"journal ({config.journal_path}), not yet moved into the archive: start Orthanc (or let "
                          f"it finish storing), which moves them, then run 'aepacs rekey' (nothing was changed)")
    if any(wrapped):
        raise AepacsError(f"key version {version} still opens {wrapped.archived} archived objects and "
                          f"{wrapped.spooled} spooled ones; run 'aepacs rekey' first (nothing was changed)")
    if not yes:
        print(f"aepacs: nothing in the archive needs key version {version} any more, but retiring destroys it. "
              + STRANDED.format(v=version) + f" Run 'aepacs keys retire {version} --yes' to destroy it "
              "(nothing was changed).", file=sys.stderr)
        return 2
    ring.retire(version)
    audit(config).record("key-change", detail=f"key version {version} retired and destroyed")
    print(f"retired key version {version}: destroyed from {ring.path} "
          f"(versions held: {', '.join(map(str, ring.versions))})")
    return 0
