"""``aepacs demo``: the main job on embedded defaults, end to end.

Creates a fresh data directory and keyring, imports the bundled sample
files (pydicom's test files, the ``pydicom-data`` package, and the real
chest CT series in ``../shared/data/ct`` when present), exports every study
back, and prints a table per modality of sizes, ratio and a bit-exact check
of each exported file against the SHA-256 of the file it came from. Then
it does the same with the learned lossy routes of ``configs/learned.yaml``
(the shipped models) and checks each lossy object comes back as a marked
derived image whose measured PSNR is what the index recorded.

The demo always uses the embedded default configuration in its own data
directory, so it never touches a real archive.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import shutil
import tempfile
import time
from collections import defaultdict
from io import BytesIO
from pathlib import Path
from typing import Any

import aepacs
from aepacs.config import DEFAULT_CONFIG_PATH, Config, load_config
from aepacs.crypto.keyring import Keyring
from aepacs.pipeline.archive import Archive
from aepacs.pipeline.ingest import import_paths, iter_files
from aepacs.pipeline.retrieve import export

SHARED_CT = Path(aepacs.__file__).resolve().parents[2] / "shared" / "data" / "ct"


def sample_dirs() -> list[Path]:
    """The bundled sample data that is present on this machine."""
    from pydicom.data import DATA_ROOT

    dirs = [Path(DATA_ROOT) / "test_files"]
    try:
        import data_store  # the pydicom-data package

        dirs.append(Path(data_store.__file__).parent / "data")
    except ImportError:
        pass
    if SHARED_CT.is_dir():
        dirs.append(SHARED_CT)
    return dirs


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def run_demo(config: Config | None = None, *, data: list[Path] | None = None, keep: bool = False,
             home: Path | None = None, learned: bool = True) -> int:
    """Run the demo and print its report; return 0 when every file came back bit for bit."""
    base = load_config(DEFAULT_CONFIG_PATH)
    keep = keep or home is not None
    home = Path(home) if home else Path(tempfile.mkdtemp(prefix="aepacs-demo-"))
    if home.exists() and any(home.iterdir()) and not (home / "keyring.json").exists():
        print(f"aepacs demo: {home} is not empty; choose a fresh --home")
        return 2
    cfg = dataclasses.replace(base, data_dir=home.resolve())
    sources = data or sample_dirs()
    print(f"aepacs demo: data directory {home}")
    print("sources: " + ", ".join(str(s) for s in sources))
    if not cfg.keyring_path.exists():
        Keyring.create(cfg.keyring_path)
    out_dir = home / "export"
    # the sample sets reuse SOP Instance UIDs across variants of one image: counted below, not logged
    logging.getLogger("aepacs.ingest").setLevel(logging.ERROR)
    with Archive(cfg) as archive:
        t0 = time.perf_counter()
        summary = import_paths(archive, sources)
        t_import = time.perf_counter() - t0
        t0 = time.perf_counter()
        for study in archive.index.studies():
            export(archive, out_dir, study_uid=study.study_uid, progress=False)
        t_export = time.perf_counter() - t0
        rows = archive.index.find()

    source_files = {_sha(p): p for p in iter_files(sources)}  # SHA-256 -> file, for both parts
    table: dict[str, list[float]] = defaultdict(lambda: [0, 0, 0, 0])  # n, source, stored, exact
    for row in rows:
        t = table[row.modality or "(none)"]
        t[0] += 1
        t[1] += row.source_size
        t[2] += row.blob_size
        exported = out_dir / row.series_uid / f"{row.sop_uid}.dcm"
        if exported.is_file():
            digest = _sha(exported)
            t[3] += digest == row.source_sha256 and digest in source_files

    print()
    print(f"{'modality':<9} {'instances':>9} {'original MB':>12} {'stored MB':>10} {'ratio':>6}  bit-exact")
    total = [0.0, 0.0, 0.0, 0.0]
    for modality in sorted(table):
        n, src, stored, exact = table[modality]
        total = [a + b for a, b in zip(total, table[modality])]
        print(f"{modality:<9} {n:>9} {src / 1e6:>12.2f} {stored / 1e6:>10.2f} {src / stored:>6.2f}  "
              f"{int(exact)}/{n}")
    n, src, stored, exact = total
    print(f"{'all':<9} {int(n):>9} {src / 1e6:>12.2f} {stored / 1e6:>10.2f} {src / max(stored, 1):>6.2f}  "
          f"{int(exact)}/{int(n)}")
    print()
    print(f"import: {summary.added} archived in {t_import:.1f} s ({summary.added / t_import:.0f} files/s); "
          f"{summary.conflicts} kept out (SOP Instance UID already archived with other bytes); "
          f"{len(summary.skipped)} skipped (not archivable DICOM instances); {len(summary.failed)} failed")
    print(f"export: {len(rows)} files in {t_export:.1f} s ({len(rows) / max(t_export, 1e-9):.0f} files/s)")
    ok = n > 0 and exact == n and not summary.failed
    print("RESULT: " + ("every archived file came back bit for bit" if ok else "MISMATCH — see above"))
    lossy_ok = lossy_demo(home / "learned", sources, source_files) if learned else True
    if keep:
        print(f"archive kept in {home}")
    else:
        shutil.rmtree(home, ignore_errors=True)
    return 0 if ok and lossy_ok else 1


def lossy_demo(home: Path, sources: list[Path], source_files: dict[str, Path]) -> bool:
    """Part two: the learned lossy routes of ``configs/learned.yaml`` with the shipped models.

    Imports the same samples into a second archive, retrieves every lossy
    object and checks it is a proper derived image whose pixels measure what
    the index recorded at sealing.
    """
    import numpy as np
    import pydicom

    from aepacs.codec.quality import psnr
    from aepacs.pipeline.ingest import GATE_FALLBACKS
    from aepacs.pipeline.retrieve import fetch

    cfg = dataclasses.replace(load_config(DEFAULT_CONFIG_PATH.parent / "learned.yaml"), data_dir=home.resolve())
    routed = {m: r.model for m, r in cfg.routes.items() if r.model}
    print()
    print("learned lossy routes (configs/learned.yaml, shipped models): "
          + ", ".join(f"{m} -> {model}" for m, model in sorted(routed.items())))
    home.mkdir(parents=True, exist_ok=True)
    Keyring.create(cfg.keyring_path)
    table: dict[str, list[Any]] = defaultdict(lambda: [0, 0, 0, [], 0])  # n, source, stored, psnr, derived ok
    logging.getLogger("pydicom").setLevel(logging.ERROR)  # remarks on odd sample files, as in part one
    with Archive(cfg) as archive:
        t0 = time.perf_counter()
        import_paths(archive, sources)
        t_import = time.perf_counter() - t0
        lossy = [r for r in archive.index.find() if r.psnr is not None]
        for row in lossy:
            t = table[row.modality]
            ds = pydicom.dcmread(BytesIO(fetch(archive, row.sop_uid)))
            original = pydicom.dcmread(source_files[row.source_sha256])
            measured = psnr(np.asarray(original.pixel_array), np.asarray(ds.pixel_array))
            derived = (ds.ImageType[0] == "DERIVED" and ds.LossyImageCompression == "01"
                       and ds.SourceImageSequence[0].ReferencedSOPInstanceUID == row.sop_uid
                       and abs(measured - row.psnr) < 0.01)
            t[0] += 1
            t[1] += row.source_size
            t[2] += row.blob_size
            t[3].append(row.psnr)
            t[4] += derived
    print(f"{'modality':<9} {'lossy':>6} {'original MB':>12} {'stored MB':>10} {'ratio':>6} {'PSNR mean':>10} "
          f"{'min':>6}  derived images")
    ok = bool(lossy)
    for modality in sorted(table):
        n, src, stored, q, good = table[modality]
        ok = ok and good == n
        print(f"{modality:<9} {n:>6} {src / 1e6:>12.2f} {stored / 1e6:>10.2f} {src / stored:>6.2f} "
              f"{np.mean(q):>10.2f} {min(q):>6.2f}  {good}/{n}")
    fallbacks = sum(GATE_FALLBACKS.values())
    print(f"import with learned routes: {t_import:.1f} s; {fallbacks} images stored losslessly instead "
          f"(below their route's quality floor, or not codable by the model)")
    print("RESULT: " + ("every lossy object came back as a marked derived image with the quality recorded"
                        if ok else "MISMATCH — see above"))
    return ok
