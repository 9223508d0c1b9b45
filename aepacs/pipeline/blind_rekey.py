"""Rekeying a blind archive (``sealing: recipients-only``) through one of its recipients.

A blind archive holds no key that opens what it stores, so it cannot re-wrap a data key itself. Its
objects are brought under the current recipients (one added, one revoked) in three steps, the middle one
on a recipient's machine, the archive never seeing a data key::

    archive:    aepacs rekey --export-slots slots.jsonl            (export_slots)
    recipient:  aepacs rekey --recipient-key A.key.json --slots slots.jsonl -o rewrapped.jsonl
                                                                 (rewrap_slots: HPKE, its private key)
    archive:    aepacs rekey --import-slots rewrapped.jsonl         (import_slots)

A slot file is JSON lines: first ``{"format": "aepacs-slots", "version": 1, "archive", "created",
"recipients": [{"name", "id", "public_key"}]}`` (whom to wrap to: the archive's active recipients), then one
line per object ``{"uid", "blob_key", "header", "slot"}`` (base64: its clear header and current key slot).
The recipient's answer has the same form, ``slot`` the new one. The ciphertext never moves and is never
touched: the new slot goes to the index row (as a KEK rewrap's does,
:func:`aepacs.pipeline.retrieve.fetch_blob`), switched only while the row still points at the same blob.

What each side checks: the recipient, that every data key it re-wraps unwraps under its own key for that
very header (HPKE authenticates slot and header), and it prints whom it wraps to (a compromised archive
could list a key of its own: compare the ids with the recipients' own); the archive, that each new slot is
a well-formed list for exactly its active recipients, for an object whose row still holds the exported blob.
"""

from __future__ import annotations

import base64
import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tqdm import tqdm

from aepacs.crypto.recipients import FORMAT_VERSION as PUBLIC_VERSION
from aepacs.crypto.recipients import PUBLIC_FORMAT, Recipient, RecipientKey
from aepacs.crypto.seal import HEAD_BYTES, RecipientList, head_parts, parse_slot, rewrap_to
from aepacs.errors import AepacsError, InputError, OpenError
from aepacs.pipeline.archive import Archive
from aepacs.pipeline.batch import Summary
from aepacs.store.atomic import atomic_lines

log = logging.getLogger("aepacs.rekey")

FORMAT = "aepacs-slots"
VERSION = 1
_BATCH = 500


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: Any, what: str) -> bytes:
    try:
        return base64.b64decode(str(text).encode("ascii"), validate=True)
    except (ValueError, UnicodeEncodeError):
        raise InputError(f"slot file: {what} is not base64") from None


def _head(recipients: tuple[Recipient, ...], archive_name: str, **extra: Any) -> str:
    return json.dumps({"format": FORMAT, "version": VERSION, "archive": archive_name, "created": time.time(),
                       "recipients": [{"name": r.name, "id": r.id, "public_key": _b64(r.public_key)}
                                      for r in recipients], **extra})


Line = tuple[int, dict[str, Any] | str]  #: an object line: its number, and the object or why it is not one


def read_slot_file(path: Path, *, progress: str | None = None
                   ) -> tuple[dict[str, Any], tuple[Recipient, ...], Iterator[Line]]:
    """A slot file's head, the recipients it names (checked) and its object lines, read as they are used.

    Only the head is read here; a file of millions of objects is never held in memory. A malformed object
    line is not an error of the whole file: it comes as its reason, for the caller to count as a failure.
    `progress`: the label of a progress bar over the file's bytes, or None for none.

    Raises
    ------
    InputError
        The file cannot be read, or its head is not an aepacs slot file's.
    """
    try:
        with path.open("rb") as f:
            first = f.readline()
        try:
            head = json.loads(first)
        except ValueError:
            head = None  # (binary, another format, empty)
        if not isinstance(head, dict) or head.get("format") != FORMAT or head.get("version") != VERSION:
            raise ValueError("not an aepacs slot file of a known version")
        recipients = tuple(Recipient.from_doc({"format": PUBLIC_FORMAT, "version": PUBLIC_VERSION, **r},
                                              f"{path}: recipient") for r in head["recipients"])
    except OSError as exc:
        raise InputError(f"{path}: cannot read the slot file ({exc.strerror})") from None
    except (KeyError, TypeError, ValueError) as exc:
        raise InputError(f"{path}: {exc}") from None
    if not recipients:
        raise InputError(f"{path}: names no recipient to wrap to")
    return head, recipients, _object_lines(path, progress)


def _object_lines(path: Path, progress: str | None) -> Iterator[Line]:
    with path.open("rb") as f, tqdm(desc=progress, total=path.stat().st_size, unit="B", unit_scale=True,
                                     disable=progress is None) as bar:
        for number, raw in enumerate(f, 1):
            bar.update(len(raw))
            if number == 1 or not raw.strip():
                continue
            try:
                obj = json.loads(raw)
            except ValueError:
                yield number, f"line {number} is not JSON"
                continue
            yield number, obj if isinstance(obj, dict) else f"line {number} is not an object"


def _object_line(obj: dict[str, Any], slot: bytes) -> str:
    return json.dumps({"uid": obj["uid"], "blob_key": obj["blob_key"], "header": obj["header"], "slot": _b64(slot)})


def export_slots(archive: Archive, out: Path, *, progress: bool = True) -> int:
    """Write every blind object's clear header and key slot to `out`, with the recipients to wrap to.

    Returns
    -------
    int
        Objects listed.

    Raises
    ------
    AepacsError
        Not a blind archive, or no active recipient.
    """
    recipients = archive.seal_recipients() if archive.config.blind else ()
    if not recipients:
        raise AepacsError("rekey --export-slots: only a blind archive (sealing: recipients-only) is rekeyed "
                          "through its recipients")

    def lines() -> Iterator[str]:
        yield _head(recipients, archive.config.server.ae_title)
        after = 0
        with tqdm(desc="export slots", unit="object", disable=not progress) as bar:
            while rows := archive.index.blind_candidates(after_pk=after, limit=_BATCH):
                for row in rows:
                    header, slot = head_parts(archive.store.read_prefix(row.blob_key, HEAD_BYTES), row.sop_uid)
                    if row.key_slot is not None:
                        slot = bytes(row.key_slot)
                    yield _object_line({"uid": row.sop_uid, "blob_key": row.blob_key, "header": _b64(header)},
                                       slot)
                bar.update(len(rows))
                after = rows[-1].pk

    listed = atomic_lines(out, lines()) - 1
    archive.audit.record("key-change", detail=f"rekey: {listed} key slots exported to {out.name} for "
                                              f"re-wrapping to {', '.join(r.name for r in recipients)}")
    return listed


def rewrap_slots(slots: Path, key: RecipientKey, out: Path, *, progress: bool = True) -> tuple[int, list[str]]:
    """On a recipient's machine: re-wrap each data key in `slots` to the recipients it names, with `key`.

    Returns
    -------
    (int, list of str)
        Slots re-wrapped, and one line per object that could not be (not sealed to `key`, tampered, a
        malformed line).
    """
    head, recipients, objects = read_slot_file(slots, progress="re-wrap" if progress else None)
    failed: list[str] = []

    def lines() -> Iterator[str]:
        yield _head(recipients, str(head.get("archive", "")), rewrapped_by=key.id)
        for _, obj in objects:
            if isinstance(obj, str):
                failed.append(obj)
                continue
            uid = str(obj.get("uid", "?"))
            try:
                yield _object_line(obj, rewrap_to(_unb64(obj["header"], "header"), _unb64(obj["slot"], "slot"),
                                                  key, recipients, name=uid))
            except (KeyError, AepacsError) as exc:
                failed.append(f"{uid}: {exc}")

    return atomic_lines(out, lines()) - 1, failed


def import_slots(archive: Archive, path: Path, *, progress: bool = True) -> Summary:
    """Install the re-wrapped key slots of `path` (see the module docstring for what is checked).

    Returns
    -------
    Summary
        ``done``: switched; ``skipped``: the object changed or left meanwhile; ``failed``: refused, with why
        (a malformed line among them).
    """
    _, recipients, objects = read_slot_file(path, progress="import slots" if progress else None)
    active = {r.id for r in archive.seal_recipients()}
    if {r.id for r in recipients} != active:
        raise InputError(f"{path}: wraps to recipients {sorted(r.id for r in recipients)}, not to this archive's "
                         f"active ones {sorted(active)} (export the slots again)")
    summary = Summary("rekey import-slots")
    for number, obj in objects:
        uid = f"line {number}" if isinstance(obj, str) else str(obj.get("uid", "?"))
        try:
            if isinstance(obj, str):
                raise InputError(obj)
            if _install(archive, obj, uid, active):
                summary.done += 1
            else:
                summary.skipped += 1
        except (KeyError, AepacsError) as exc:
            summary.failed += 1
            summary.failures.append((uid, str(exc)))
    archive.audit.record("key-change", detail=f"rekey: {summary.done} key slots re-wrapped by a recipient "
                                              f"installed from {path.name}, {len(summary.failures)} refused")
    return summary


def _install(archive: Archive, obj: dict[str, Any], uid: str, active: set[str]) -> bool:
    """Switch one object's key slot to the re-wrapped one; False when the object changed or left meanwhile.

    Raises
    ------
    AepacsError
        The new slot is refused: not a list for exactly the `active` recipients, or made for another header.
    """
    slot, blob_key = _unb64(obj["slot"], "slot"), str(obj["blob_key"])
    parsed = parse_slot(slot, uid)
    if not isinstance(parsed, RecipientList) or set(parsed.recipient_ids) != active:
        raise OpenError(uid, "the new slot is not a recipient list for the archive's active recipients")
    row = archive.index.get(uid)
    if row is None or row.blob_key != blob_key or row.kek_version != 0:
        return False
    header, _ = head_parts(archive.store.read_prefix(blob_key, HEAD_BYTES), uid)
    if header != _unb64(obj["header"], "header"):
        raise OpenError(uid, "the new slot was made for another header than the object's")
    return bool(archive.index.swap_slots([(uid, blob_key, 0, slot, 0)]))


__all__ = ["export_slots", "rewrap_slots", "import_slots", "read_slot_file"]
