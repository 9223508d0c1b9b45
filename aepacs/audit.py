"""The audit trail: one hash-chained record per security-relevant event.

Records are modelled on the DICOM audit messages of PS3.15 Annex A.5: an
event (``EventID`` code of DCM, e.g. 110104 *DICOM Instances Transferred*), an
action (Create, Read, Update, Delete, Execute), an outcome (0 success, 4 minor
failure, 8 serious failure, 12 major failure), the time, the active
participants (calling and called AE titles and network addresses, the user or
process) and the participant objects (patient IDs, study UIDs, how many
instances). They never carry pixel data or key material: only the fields
below exist.

Storage is an append-only JSON-lines file. Each line carries ``prev`` (the
hash of the line before; 64 zeros for the first) and ``hash`` (SHA-256 of
``prev`` and the line's other fields in canonical JSON), so an edited line
breaks its own hash and a deleted one breaks the next line's ``prev``. A head
file beside it (``<file>.head``) holds the sequence number and hash of the
last line, so a truncated tail is found too. Writers in several processes
(the server, its spool workers, ``aepacs rekey``) serialise on an exclusive
``flock`` of the file, and each record is flushed and fsynced before the
call returns. When ``audit.syslog`` is set, every record is also sent to that
collector as an RFC 5424 message (facility 13, *log audit*).
"""

from __future__ import annotations

import datetime as dt
import fcntl
import getpass
import hashlib
import json
import os
import socket
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from aepacs.errors import InputError
from aepacs.store.atomic import private_dir

GENESIS = "0" * 64

#: event name -> (DCM EventID code, meaning, action code, DCM EventTypeCode or None)
EVENTS: dict[str, tuple[str, str, str, str | None]] = {
    "store": ("110104", "DICOM Instances Transferred", "C", None),
    "retrieve": ("110104", "DICOM Instances Transferred", "R", None),
    "query": ("110112", "Query", "E", None),
    "import": ("110107", "Import", "C", None),
    "export": ("110106", "Export", "R", None),
    "remove": ("110103", "DICOM Instances Accessed", "D", None),          # a stored file deleted
    "association-rejected": ("110113", "Security Alert", "E", "110126"),  # Node Authentication
    "login-refused": ("110114", "User Authentication", "E", "110122"),    # Login (a DICOMweb request)
    "key-change": ("110113", "Security Alert", "U", "110129"),            # Security Configuration
    "rekey": ("110113", "Security Alert", "U", "110135"),                 # Object Security Attributes Changed
    "reencode": ("110103", "DICOM Instances Accessed", "U", None),        # stored objects coded again
    "model-change": ("110113", "Security Alert", "U", "110131"),          # Software Configuration
    "schema-change": ("110113", "Security Alert", "U", "110131"),         # Software Configuration (the index)
    "application-start": ("110100", "Application Activity", "E", "110120"),
    "application-stop": ("110100", "Application Activity", "E", "110121"),
}

#: PS3.15 EventOutcomeIndicator values aepacs records (12, major failure, it never does).
SUCCESS, MINOR_FAILURE, SERIOUS_FAILURE = 0, 4, 8

__all__ = ["EVENTS", "AuditTrail", "Party", "Verification", "describe", "parse_since", "read", "verify"]


@dataclass(frozen=True)
class Party:
    """An active participant: an application entity or a process, and where it was."""

    ae: str | None = None
    address: str | None = None

    def as_json(self) -> dict[str, str]:
        return {k: v for k, v in (("ae", self.ae), ("address", self.address)) if v}


def _canonical(record: dict[str, Any]) -> bytes:
    return json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _digest(prev: str, body: dict[str, Any]) -> str:
    return hashlib.sha256(prev.encode() + _canonical(body)).hexdigest()


def _user() -> str:
    try:
        name = getpass.getuser()
    except (KeyError, OSError):
        name = str(os.getuid())
    return f"{name} (pid {os.getpid()})"


class AuditTrail:
    """Where an aepacs process writes its audit records.

    Parameters
    ----------
    path : Path
        The JSON-lines file (created owner-only).
    syslog : str, optional
        ``udp://host:port`` or ``tcp://host:port`` of an RFC 5424 collector.
    """

    def __init__(self, path: Path, syslog: str | None = None) -> None:
        self.path = Path(path)
        self.head = self.path.with_name(self.path.name + ".head")
        self.syslog = syslog
        self._lock = threading.Lock()
        if syslog:
            url = urlparse(syslog)
            if url.scheme not in ("udp", "tcp") or not url.hostname or not url.port:
                raise InputError(f"audit.syslog: expected udp://host:port or tcp://host:port, got {syslog!r}")

    @classmethod
    def for_config(cls, config: Any) -> AuditTrail:
        """The trail an :class:`aepacs.config.Config` names (``audit.path``, ``audit.syslog``)."""
        return cls(config.audit_path, config.audit.syslog)

    def record(self, event: str, *, outcome: int = SUCCESS, source: Party | None = None,
               destination: Party | None = None, patients: Iterable[str] = (), studies: Iterable[str] = (),
               objects: int | None = None, detail: str | None = None) -> dict[str, Any]:
        """Append one record and return it (with its ``seq``, ``prev`` and ``hash``)."""
        code, meaning, action, type_code = EVENTS[event]
        body: dict[str, Any] = {
            "time": dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds"),
            "event": event, "event_id": {"code": code, "scheme": "DCM", "meaning": meaning},
            "action": action, "outcome": int(outcome), "user": _user(),
            "host": socket.gethostname(),
        }
        if type_code:
            body["event_type"] = {"code": type_code, "scheme": "DCM"}
        if source is not None and source.as_json():
            body["source"] = source.as_json()
        if destination is not None and destination.as_json():
            body["destination"] = destination.as_json()
        if patients := sorted({p for p in patients if p}):
            body["patients"] = patients
        if studies := sorted({s for s in studies if s}):
            body["studies"] = studies
        if objects is not None:
            body["objects"] = int(objects)
        if detail:
            body["detail"] = detail[:500]
        with self._lock:
            line = self._append(body)
        if self.syslog:
            self._send(line)
        return line

    def _append(self, body: dict[str, Any]) -> dict[str, Any]:
        private_dir(self.path.parent)
        fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            seq, prev = _last(fd)
            body = {"seq": seq + 1, **body, "prev": prev}
            record = {**body, "hash": _digest(prev, body)}
            os.write(fd, _canonical(record) + b"\n")
            os.fsync(fd)
            tmp = self.head.with_name(self.head.name + ".tmp")
            tmp.write_text(json.dumps({"seq": record["seq"], "hash": record["hash"]}))
            os.chmod(tmp, 0o600)
            os.replace(tmp, self.head)
            return record
        finally:
            os.close(fd)  # releases the lock

    def _send(self, record: dict[str, Any]) -> None:
        url = urlparse(self.syslog or "")
        severity = 6 if record["outcome"] == SUCCESS else 4  # informational / warning
        message = (f"<{13 * 8 + severity}>1 {record['time']} {record['host']} aepacs {os.getpid()} "
                   f"{record['event_id']['code']} - ").encode() + _canonical(record)
        try:
            if url.scheme == "udp":
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                    s.sendto(message, (url.hostname, url.port))
            else:  # RFC 6587 octet counting
                assert url.port is not None  # checked in __init__
                with socket.create_connection((url.hostname, url.port), timeout=5) as s:
                    s.sendall(str(len(message)).encode() + b" " + message)
        except OSError:
            pass  # the file is the record of truth; a collector being down must not stop the archive


def _last(fd: int) -> tuple[int, str]:
    """(seq, hash) of the file's last record; (0, GENESIS) when it is empty."""
    size = os.lseek(fd, 0, os.SEEK_END)
    if size == 0:
        return 0, GENESIS
    chunk = min(size, 1 << 16)
    while True:
        tail = os.pread(fd, chunk, size - chunk)
        lines = tail.rstrip(b"\n").split(b"\n")
        if len(lines) > 1 or chunk == size:
            last = json.loads(lines[-1])
            return int(last["seq"]), str(last["hash"])
        chunk = min(size, chunk * 4)


@dataclass
class Verification:
    """What :func:`verify` found: how many records, and every break in the chain."""

    records: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def verify(path: Path) -> Verification:
    """Walk the chain of the audit file at `path`; see the module docstring."""
    path = Path(path)
    out = Verification()
    prev, seq = GENESIS, 0
    if not path.exists():
        out.problems.append(f"{path}: no audit file")
        return out
    with open(path, "rb") as f:
        for number, raw in enumerate(f, 1):
            out.records += 1
            try:
                record = json.loads(raw)
                body = {k: v for k, v in record.items() if k != "hash"}
                claimed = record["hash"]
            except (ValueError, KeyError, AttributeError):
                out.problems.append(f"line {number}: not an audit record")
                prev, seq = GENESIS, seq + 1
                continue
            if record.get("prev") != prev:
                out.problems.append(f"line {number} (seq {record.get('seq')}): does not follow the line "
                                    "before it (a line was deleted, inserted or reordered)")
            if record.get("seq") != seq + 1:
                out.problems.append(f"line {number}: sequence {record.get('seq')} after {seq}")
            if _digest(str(record.get("prev")), body) != claimed:
                out.problems.append(f"line {number} (seq {record.get('seq')}): edited (hash mismatch)")
            prev, seq = claimed, int(record.get("seq") or seq + 1)
    head = path.with_name(path.name + ".head")
    if head.exists():
        try:
            last = json.loads(head.read_text())
        except ValueError:
            out.problems.append(f"{head}: unreadable")
        else:
            if (last.get("seq"), last.get("hash")) != (seq, prev):
                out.problems.append(f"the last record is seq {seq}, but {head.name} says seq {last.get('seq')}: "
                                    "records were removed from the end (or the head file was changed)")
    elif out.records:
        out.problems.append(f"{head}: missing")
    return out


def read(path: Path, *, since: dt.datetime | None = None, patient: str | None = None) -> Iterator[dict[str, Any]]:
    """Records of the audit file at `path`, oldest first, filtered by time and patient ID."""
    path = Path(path)
    if not path.exists():
        return
    with open(path, "rb") as f:
        for raw in f:
            try:
                record = json.loads(raw)
            except ValueError:
                continue
            if since is not None and dt.datetime.fromisoformat(record["time"]) < since:
                continue
            if patient is not None and patient not in record.get("patients", ()):
                continue
            yield record


def parse_since(text: str, now: dt.datetime | None = None) -> dt.datetime:
    """``--since``: an ISO date or date-time (UTC unless it says), or an age such as ``90m``, ``12h``, ``7d``."""
    now = now or dt.datetime.now(dt.timezone.utc)
    text = text.strip()
    units = {"m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
    if text[-1:] in units and text[:-1].isdigit():
        return now - dt.timedelta(seconds=int(text[:-1]) * units[text[-1]])
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        raise InputError(f"--since {text!r}: expected a date (2026-11-24), a date-time or an age (12h, 7d)") from None
    return when if when.tzinfo else when.replace(tzinfo=dt.timezone.utc)


def describe(record: dict[str, Any]) -> str:
    """One line of :func:`read` output for people."""
    outcomes = {SUCCESS: "ok", MINOR_FAILURE: "minor failure", SERIOUS_FAILURE: "serious failure", 12: "major failure"}
    outcome = outcomes.get(record.get("outcome"), "?")  # type: ignore[arg-type]  # None or odd values: "?"
    src, dst = record.get("source", {}), record.get("destination", {})

    def who(p: dict[str, str]) -> str:
        return "/".join(v for v in (p.get("ae"), p.get("address")) if v) or "-"

    parts = [record.get("time", "?"), f"#{record.get('seq')}", record.get("event", "?"), outcome,
             f"{who(src)} -> {who(dst)}", f"user {record.get('user', '?')}"]
    if record.get("patients"):
        parts.append("patients " + ",".join(record["patients"]))
    if record.get("studies"):
        parts.append(f"{len(record['studies'])} studies")
    if record.get("objects") is not None:
        parts.append(f"{record['objects']} objects")
    if record.get("detail"):
        parts.append(record["detail"])
    return "  ".join(parts)
