"""File names built from data, confined to their directory.

Every file aepacs names after something it received (``export``, ``retrieve``,
the retrieval client's receiver) is named here and nowhere else. A UID
becomes a path component only when it is a valid UID (digits and dots,
:func:`aepacs.dicom.records.uid_problem`); anything else (an object archived
by an older release, a crafted transport object) gets a name derived from its
hash, with a warning. The result is then resolved and refused unless it lies
inside the output directory, so neither ``..``, an absolute UID nor a
symbolic link planted under the output directory can lead a write elsewhere.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

from aepacs.dicom.records import shown, uid_problem
from aepacs.errors import PathError

log = logging.getLogger("aepacs.paths")

UNKNOWN_SERIES = "unknown-series"


def uid_component(uid: str) -> str:
    """`uid` when it is a valid UID, else ``uid-<first 32 hex digits of its SHA-256>``."""
    if uid_problem(uid) is None:
        return uid
    return "uid-" + hashlib.sha256(uid.encode("utf-8", "surrogateescape")).hexdigest()[:32]


def confined(root: Path, *parts: str) -> Path:
    """``root / parts...``, refused unless it resolves to a path inside `root`.

    Raises
    ------
    PathError
        The path would leave `root` (absolute parts, ``..``, a symbolic link).
    """
    base = Path(root).resolve()
    target = base.joinpath(*parts)
    resolved = target.resolve()
    if resolved == base or not resolved.is_relative_to(base):
        raise PathError(f"refusing to write {shown(str(target))}: outside {base}")
    return resolved


def instance_path(out_dir: Path, series_uid: str, sop_uid: str) -> Path:
    """Where an instance is written: ``OUT/<SeriesInstanceUID>/<SOPInstanceUID>.dcm``, confined to `out_dir`.

    UIDs that are not valid UIDs are replaced by a hashed name (logged as a
    warning naming the UID, escaped).
    """
    series = uid_component(series_uid) if series_uid else UNKNOWN_SERIES
    sop = uid_component(sop_uid)
    if series not in (series_uid, UNKNOWN_SERIES) or sop != sop_uid:
        log.warning("instance %s (series %s) has UIDs that are not valid UIDs; written as %s/%s.dcm",
                    shown(sop_uid), shown(series_uid), series, sop)
    return confined(out_dir, series, f"{sop}.dcm")
