"""``aepacs demo``, part three: the same files over DICOMweb (STOW-RS, QIDO-RS, WADO-RS), and the OHIF viewer.

A fresh archive serves decoded originals (``retrieve_as: decoded``, what a
web viewer needs) with DICOMweb on a free loopback port and a bearer token
made for the run. Each modality's files are stored by STOW-RS, found by
QIDO-RS, retrieved series by series by WADO-RS through the retrieval client
and compared with the files sent. When the viewer is installed, the CT
study is opened in it (headless Debian chromium) and a screenshot kept.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aepacs.crypto.keyring import Keyring
from aepacs.demo.compare import ModalityResult, _compare
from aepacs.demo.report import _rate as _per_s
from aepacs.net.client import Receiver
from aepacs.net.send import Storable
from aepacs.net.webclient import WebError, get, retrieve_web, store_web
from aepacs.web.auth import new_token

__all__ = ["WebPart", "print_web_table", "run_web_part"]


@dataclass
class WebPart:
    """What part three measured, and the server it ran on (still up: :meth:`stop` it)."""

    results: dict[str, ModalityResult] = field(default_factory=dict)
    stow_s: dict[str, float] = field(default_factory=dict)  #: STOW-RS answered, per modality
    bytes_retrieved: dict[str, int] = field(default_factory=dict)
    first_frame_ms: float | None = None
    root: str = ""
    token: str = ""
    study: str | None = None  #: the CT study the viewer URL opens
    server: Any = None

    @property
    def viewer_url(self) -> str | None:
        """The viewer's page of the CT study (None without a CT study)."""
        base = self.root.removesuffix("/dicomweb")
        return f"{base}/viewer/viewer?StudyInstanceUIDs={self.study}" if self.study else None

    def summary(self) -> dict[str, Any]:
        """The figures as ``demo.json`` keeps them."""
        out: dict[str, Any] = {}
        for modality, r in self.results.items():
            out[modality] = {"sent": r.sent, "stored": r.acked, "refused": r.refused, "found": r.found,
                             "retrieved": r.retrieved, "exact": r.exact,
                             "stow_per_s": _rate(r.acked, self.stow_s.get(modality, 0.0)),
                             "queryable_per_s": _rate(r.found, r.ingest_s),
                             "retrieve_per_s": _rate(r.retrieved, r.retrieve_s),
                             "retrieve_mb_per_s": round(self.bytes_retrieved.get(modality, 0) / 1e6
                                                        / max(r.retrieve_s, 1e-9), 2)}
        return {"modalities": out, "first_frame_ms": self.first_frame_ms}

    def stop(self) -> int:
        return int(self.server.stop()) if self.server is not None else 0


def _rate(count: int, seconds: float) -> float:
    return round(count / seconds, 2) if count and seconds > 0 else 0.0


def _get(url: str, token: str, accept: str) -> bytes:
    return get(url, token, accept)[2]


def _instances(root: str, token: str) -> list[dict[str, Any]]:
    body = _get(f"{root}/instances?limit=10000", token, "application/dicom+json")
    return json.loads(body) if body else []


def _value(item: dict[str, Any], tag: str) -> str:
    return str((item.get(tag, {}).get("Value") or [""])[0])


def _first_frame_ms(root: str, token: str, series: str) -> float:
    """A viewer's first steps, timed: QIDO-RS the series' instances, one's metadata, its first frame."""
    t0 = time.perf_counter()
    found = json.loads(_get(f"{root}/instances?SeriesInstanceUID={series}", token, "application/dicom+json"))
    first = found[0]
    instance = (f"{root}/studies/{_value(first, '0020000D')}/series/{series}/instances/"
                f"{_value(first, '00080018')}")
    _get(f"{instance}/metadata", token, "application/dicom+json")
    _get(f"{instance}/frames/1", token, 'multipart/related; type="application/octet-stream"')
    return round((time.perf_counter() - t0) * 1000, 1)


def run_web_part(home: Path, keyring: Keyring, viewer: Path | None, port: int,
                 start: Callable[[Path, Path], Any], groups: dict[str, list[Storable]],
                 progress: Callable[[str], None] = lambda _: None) -> WebPart:
    """Start an archive with DICOMweb on `port` in `home` (`start(home, config_file)` returns the server),
    send `groups` by STOW-RS, find them by QIDO-RS, retrieve them by WADO-RS, compare. The server is left up."""
    part = WebPart()
    part.token, digest = new_token()
    config_file = home / "web.yaml"
    web: dict[str, Any] = {"port": port, "tokens_sha256": [digest]}
    if viewer is not None:
        web["viewer"] = str(viewer.resolve())
    config_file.write_text(json.dumps({"server": {"retrieve_as": "decoded"}, "web": web}, indent=2) + "\n")
    part.root = f"http://127.0.0.1:{port}/dicomweb"
    part.server = start(home, config_file)
    try:
        _measure(part, keyring, groups, home / "retrieved", progress)
    except BaseException:
        part.stop()
        raise
    return part


def _measure(part: WebPart, keyring: Keyring, groups: dict[str, list[Storable]], out: Path,
             progress: Callable[[str], None]) -> None:
    deadline = time.monotonic() + 60
    while True:  # the DICOM port answers first; DICOMweb starts beside it
        try:
            _instances(part.root, part.token)
            break
        except (OSError, WebError):  # not listening yet
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
    for modality, group in groups.items():
        progress(f"{modality} ({len(group)})")
        r = part.results[modality] = ModalityResult(sent=len(group))
        mine = {f.sop_uid: f for f in group}
        t0 = time.perf_counter()
        stow = store_web(part.root, [(f.path, f.sop_uid) for f in group], token=part.token)
        part.stow_s[modality] = stow.seconds
        r.acked = len(stow.stored)
        r.refused = {f"{p.parent.name}/{p.name}": reason for p, reason in stow.refused.items()}
        stored = set(stow.stored)
        found: list[dict[str, Any]] = []
        while time.perf_counter() - t0 < 1200:  # answered from the spool; queryable once archived
            found = [i for i in _instances(part.root, part.token) if _value(i, "00080018") in stored]
            if len(found) >= len(stored):
                break
            time.sleep(0.1)
        r.ingest_s, r.found = time.perf_counter() - t0, len(found)
        t0 = time.perf_counter()
        size = 0
        for series in sorted({_value(i, "0020000E") for i in found}):
            got = retrieve_web(part.root, "series", series, Receiver(keyring, out / modality.strip("()")),
                               token=part.token)
            for path in got.written:
                size += path.stat().st_size
                _compare(r, path, mine, lossy=False)
        r.retrieve_s = time.perf_counter() - t0
        part.bytes_retrieved[modality] = size
        shown = [i for i in found if _viewable(i)]
        if modality == "CT" and shown:
            by_study: dict[str, list[dict[str, Any]]] = {}
            for i in shown:
                by_study.setdefault(_value(i, "0020000D"), []).append(i)
            part.study, largest = max(by_study.items(), key=lambda kv: len(kv[1]))
            part.first_frame_ms = _first_frame_ms(part.root, part.token, _value(largest[0], "0020000E"))


#: The smallest image the viewer's study is chosen among (a sample set's 16 x 16 test images, or a file-set's
#: records without pixels, show nothing in it).
VIEWABLE_SIDE = 64


def _viewable(instance: dict[str, Any]) -> bool:
    """Whether a QIDO-RS instance is an image the viewer can show: pixels of at least :data:`VIEWABLE_SIDE`."""
    try:
        return min(int(_value(instance, "00280010") or 0), int(_value(instance, "00280011") or 0)) >= VIEWABLE_SIDE
    except ValueError:
        return False


def print_web_table(part: WebPart) -> None:
    """Part three's table: one row per modality and a total."""
    head = (f"{'modality':<9}{'instances':>10}{'STOW/s':>9}{'queryable/s':>13}{'WADO-RS/s':>11}{'MB/s':>8}"
            "  check")
    lines = ["", head]
    total = ModalityResult()
    totals = {"stow": 0.0, "bytes": 0}
    for modality, r in part.results.items():
        lines.append(_row(modality, r, part.stow_s.get(modality, 0.0), part.bytes_retrieved.get(modality, 0)))
        for name in ("sent", "acked", "found", "retrieved", "exact"):
            setattr(total, name, getattr(total, name) + getattr(r, name))
        total.ingest_s += r.ingest_s
        total.retrieve_s += r.retrieve_s
        totals["stow"] += part.stow_s.get(modality, 0.0)
        totals["bytes"] += part.bytes_retrieved.get(modality, 0)
    lines.append(_row("all", total, totals["stow"], int(totals["bytes"])))
    print("\n".join(lines))
    if part.first_frame_ms is not None:
        print(f"time to the first CT frame (QIDO-RS the series, one instance's metadata, its frame 1): "
              f"{part.first_frame_ms:.0f} ms")


def _row(name: str, r: ModalityResult, stow_s: float, size: int) -> str:
    if not r.acked:
        return f"{name:<9}{0:>10}  (all {r.sent} refused: listed below)"
    mb = f"{size / 1e6 / r.retrieve_s:.1f}" if r.retrieve_s > 0 and size else "-"
    return (f"{name:<9}{r.acked:>10}{_per_s(r.acked, stow_s):>9}{_per_s(r.found, r.ingest_s):>13}"
            f"{_per_s(r.retrieved, r.retrieve_s):>11}{mb:>8}  {r.exact}/{r.acked} identical")
