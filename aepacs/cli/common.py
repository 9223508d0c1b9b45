"""What every command group shares: the common options, file reading and writing, the audit trail."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from aepacs.audit import AuditTrail
from aepacs.config import Config
from aepacs.errors import AepacsError
from aepacs.store.atomic import atomic_write, private_dir


def common_options() -> argparse.ArgumentParser:
    """The options every command takes (``--config``, ``--debug``), as a parent parser."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--config", metavar="FILE", default=argparse.SUPPRESS,
                   help="site configuration laid over the embedded default")
    p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                   help="show tracebacks and debug logging")
    return p


def read_input(path: Path) -> bytes:
    """The bytes of a file named on the command line (one-line error when it cannot be read)."""
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise AepacsError(f"{path}: cannot read ({exc.strerror})") from None


def write_output(path: Path, data: bytes | bytearray) -> None:
    """Write a command's output file atomically, owner-only."""
    path = Path(path)
    if not path.parent.is_dir():
        raise AepacsError(f"{path}: directory {path.parent} does not exist")
    atomic_write(path, data, mode=0o600)


def audit(config: Config) -> AuditTrail:
    """The configuration's audit trail."""
    return AuditTrail.for_config(config)


def mb(n: float) -> str:
    return f"{n / 1e6:.2f}"


def count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def numba_cache(config: Config, package: Path | None = None) -> Path | None:
    """Where numba caches the codecs' compiled loops: beside them when that is writable, else in the data directory.

    A read-only install (a wheel in a system path) would otherwise compile them
    again in every process: seconds before the first learned-route instance is
    archived. Set before numba is imported; worker processes inherit it.
    ``$NUMBA_CACHE_DIR``, when set, wins.
    """
    if os.environ.get("NUMBA_CACHE_DIR"):
        return Path(os.environ["NUMBA_CACHE_DIR"])
    package = package or Path(__file__).resolve().parents[1] / "codec"
    if os.access(package, os.W_OK):
        return None  # numba's own choice: the package's __pycache__
    cache = private_dir(config.data_dir / "cache" / "numba")
    os.environ["NUMBA_CACHE_DIR"] = str(cache)
    return cache
