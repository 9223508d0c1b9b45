"""``aepacs recipient`` (on the reader's machine) and ``aepacs recipients`` (at the archive).

- ``recipient init --name SITE -o DIR``: make SITE's X25519 key pair: ``DIR/SITE.key.json`` (the private key,
  owner-only; passphrase-protected when ``$AEPACS_RECIPIENT_PASSPHRASE`` is set) and ``DIR/SITE.pub.json``
  (the public key, to give the archive).
- ``recipients add SITE --public-key FILE [--aet AET] [--dicomweb-token-sha256 HEX]``: register it.
- ``recipients list``, ``recipients revoke SITE`` (at once; audited).
"""

from __future__ import annotations

import argparse
import datetime as dt
import re
from pathlib import Path

from aepacs.cli.common import audit
from aepacs.config import Config
from aepacs.crypto.keyring import passphrase_from_env
from aepacs.crypto.recipients import Recipient, RecipientKey, check_name
from aepacs.errors import AepacsError, InputError
from aepacs.store.index import Index
from aepacs.store.recipients import RecipientRows

#: Where ``recipient init`` takes the passphrase protecting the private key from (never the command line).
PASSPHRASE_ENV = "AEPACS_RECIPIENT_PASSPHRASE"
_AET = re.compile(r"[\x20-\x5b\x5d-\x7e]{1,16}")  # PS3.5 AE: 16 characters, no backslash or control
_SHA256 = re.compile(r"[0-9a-f]{64}")
_PUBLIC_MAX = 64 << 10  # a public key file is a few hundred bytes


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser) -> None:
    one = sub.add_parser("recipient", parents=[common],
                         help="on a reading site: make its key pair (recipient init --name SITE -o DIR)")
    one.add_argument("recipient_command", choices=["init"])
    one.add_argument("--name", required=True, help="the site's or user's name (letters, digits, . _ -)")
    one.add_argument("-o", "--out", type=Path, required=True, metavar="DIR",
                     help="where to write SITE.key.json (private) and SITE.pub.json (for the archive)")
    one.set_defaults(func=cmd_recipient)
    many = sub.add_parser("recipients", parents=[common],
                          help="at the archive: whom it seals what it sends to (add | list | revoke)")
    many.add_argument("recipients_command", choices=["add", "list", "revoke"])
    many.add_argument("site", nargs="?", metavar="SITE", help="add, revoke: the recipient's name")
    many.add_argument("--public-key", type=Path, metavar="FILE", help="add: the SITE.pub.json it made")
    many.add_argument("--aet", help="add: the AE title it retrieves as (C-GET, C-MOVE)")
    many.add_argument("--dicomweb-token-sha256", metavar="HEX",
                      help="add: the SHA-256 of its DICOMweb bearer token (as 'aepacs web-token' prints it)")
    many.set_defaults(func=cmd_recipients)


def cmd_recipient(args: argparse.Namespace, config: Config) -> int:
    name = check_name(args.name)
    key = RecipientKey.generate(name)
    private, public = args.out / f"{name}.key.json", args.out / f"{name}.pub.json"
    if public.exists():
        raise InputError(f"{public}: exists; not overwriting a recipient's public key")
    passphrase = passphrase_from_env(PASSPHRASE_ENV)
    key.save(private, passphrase)
    public.write_text(key.public.to_json(), encoding="utf-8")
    public.chmod(0o644)  # (the public half: meant to be handed over)
    print(f"created recipient {name} (id {key.id}): private key {private} (passphrase-protected: "
          f"{'yes' if passphrase else 'no'}; keep it on this machine), public key {public} (give it to the archive)")
    return 0


def cmd_recipients(args: argparse.Namespace, config: Config) -> int:
    index = Index(config.index_url)
    try:
        rows = RecipientRows(index)
        if args.recipients_command == "list":
            return _list(rows)
        if not args.site:
            raise InputError(f"recipients {args.recipients_command} needs the SITE")
        name = check_name(args.site)
        if args.recipients_command == "revoke":
            if not rows.revoke(name):
                raise AepacsError(f"recipients: no active recipient {name}")
            audit(config).record("key-change", detail=f"recipient {name} revoked: nothing is sealed to it any more")
            print(f"revoked recipient {name}: from now on the archive seals nothing to it and refuses its retrievals "
                  "in sealed mode (copies it already holds still open with its key)")
            return 0
        return _add(config, rows, name, args)
    finally:
        index.close()


def _add(config: Config, rows: RecipientRows, name: str, args: argparse.Namespace) -> int:
    if args.public_key is None:
        raise InputError("recipients add needs --public-key FILE (the SITE.pub.json 'aepacs recipient init' made)")
    try:
        with args.public_key.open("rb") as f:
            data = f.read(_PUBLIC_MAX + 1)
    except OSError as exc:
        raise InputError(f"{args.public_key}: cannot read ({exc.strerror})") from None
    if len(data) > _PUBLIC_MAX:
        raise InputError(f"{args.public_key}: over {_PUBLIC_MAX} bytes, not a recipient's public key file")
    text = data.decode("utf-8", "replace")
    recipient = Recipient.from_json(text, str(args.public_key))
    aet = None if args.aet is None else args.aet.strip()
    if aet is not None and not _AET.fullmatch(aet):
        raise InputError(f"--aet {args.aet!r}: an AE title is 1-16 characters, no backslash")
    token = args.dicomweb_token_sha256
    if token is not None and not _SHA256.fullmatch(token.lower()):
        raise InputError("--dicomweb-token-sha256: 64 hex digits (the token's SHA-256)")
    rows.add(name, recipient.id, recipient.public_key, aet=aet, token_sha256=token.lower() if token else None)
    audit(config).record("key-change", detail=f"recipient {name} added (id {recipient.id}"
                         + (f", AE {aet}" if aet else "") + (", DICOMweb token" if token else "") + ")")
    print(f"added recipient {name} (id {recipient.id}" + (f", AE title {aet}" if aet else "")
          + (", DICOMweb token" if token else "") + ")")
    return 0


def _list(rows: RecipientRows) -> int:
    found = rows.all()
    if not found:
        print("no recipients (add one with 'aepacs recipients add SITE --public-key FILE --aet AET')")
        return 0
    print(f"{'name':24}  {'id':32}  {'AE title':16}  {'token':5}  state")
    for row in found:
        state = "active" if row.revoked_at is None else \
            "revoked " + dt.datetime.fromtimestamp(row.revoked_at, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        print(f"{row.name:24}  {row.recipient_id:32}  {row.aet or '-':16}  {'yes' if row.token_sha256 else 'no':5}  "
              f"{state}")
    return 0
