"""Running the real dcmtk tools as third-party peers.

They are called by absolute path: pynetdicom installs console scripts named
storescu, findscu ... that would otherwise shadow them on PATH. TCP_NODELAY=1
keeps dcmtk from stalling ~40 ms per message on Nagle's algorithm.
"""

from __future__ import annotations

import os
import subprocess
import warnings
from pathlib import Path

import pydicom
import pytest

DCMTK = Path("/usr/bin")


def require(tool: str) -> Path:
    path = DCMTK / tool
    if not path.exists():
        if os.environ.get("CI"):
            raise AssertionError(f"{path} missing: .ci/run must install dcmtk")
        pytest.skip(f"{path} not installed (apt-get install dcmtk)")
    return path


def run(tool: str, *args: str, timeout: float = 300, check: bool = True,
        **kw: object) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([str(require(tool)), *args], capture_output=True, text=True, errors="replace",
                          timeout=timeout,
                          env={**os.environ, "TCP_NODELAY": "1"}, **kw)  # type: ignore[call-overload]
    if check and proc.returncode != 0:
        raise AssertionError(f"{tool} {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


def readable_by_dcmtk(path: Path) -> bool:
    return subprocess.run([str(require("dcmdump")), "-q", str(path)], capture_output=True).returncode == 0


def storescu_profile(files: list[Path], out: Path) -> Path:
    """A storescu --config-file proposing exactly each file's (SOP class, transfer syntax) pair,
    so compressed files travel as they are (storescu would otherwise try to decompress them)."""
    pairs: set[tuple[str, str]] = set()
    for f in files:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            meta = pydicom.dcmread(f, stop_before_pixels=True).file_meta
        pairs.add((str(meta.MediaStorageSOPClassUID), str(meta.TransferSyntaxUID)))
    syntaxes = sorted({ts for _, ts in pairs})
    lines = ["[[TransferSyntaxes]]"]
    for i, ts in enumerate(syntaxes):
        lines += [f"[TS{i}]", f"TransferSyntax1 = {ts}"]
    lines += ["[[PresentationContexts]]", "[AEPACS]"]
    for n, (sop, ts) in enumerate(sorted(pairs), 1):
        lines.append(f"PresentationContext{n} = {sop}\\TS{syntaxes.index(ts)}")
    lines += ["[[Profiles]]", "[AEPACS]", "PresentationContexts = AEPACS"]
    out.write_text("\n".join(lines) + "\n")
    return out
