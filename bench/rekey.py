"""Benchmark ``aepacs rekey`` against a plain ``cp -r`` of the same blob directory.

Builds an archive of N sealed objects of SIZE bytes (incompressible
payloads, as a learned or JPEG-LS stream is), then measures, in one run:

- ``cp -r`` of the blob directory (the baseline: MB/s a copy of the data achieves);
- ``rekey --mode rewrap`` after a rotation (objects/s; target >= 5,000);
- ``rekey --mode full`` after another rotation (MB/s of objects re-sealed; target >= 0.5x the copy).

Usage::

    python bench/rekey.py [--objects 10000] [--size 524288] [--workers N] [--dir DIR]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aepacs.config import load_config  # noqa: E402
from aepacs.crypto.keyring import Keyring  # noqa: E402
from aepacs.crypto.seal import seal  # noqa: E402
from aepacs.dicom.records import InstanceRecord  # noqa: E402
from aepacs.pipeline.archive import Archive  # noqa: E402
from aepacs.pipeline.rekey import rekey  # noqa: E402
from aepacs.store.index import BlobRef  # noqa: E402


def record(i: int, study: str) -> InstanceRecord:
    return InstanceRecord(
        patient_id="BENCH", issuer_of_patient_id="", patient_name="Bench^Rekey", patient_birth_date="",
        patient_sex="", study_uid=study, study_date="20261124", study_time="", accession_number="",
        study_id="", study_description="", referring_physician_name="", series_uid=study + ".1",
        modality="CT", series_number=1, series_description="", body_part_examined="",
        sop_uid=f"{study}.1.{i}", sop_class_uid="1.2.840.10008.5.1.4.1.1.2", instance_number=i,
        transfer_syntax_uid="1.2.840.10008.1.2.1", rows=512, columns=512, number_of_frames=None)


def build(archive: Archive, n: int, size: int) -> int:
    """Seal `n` objects of `size` random bytes into the archive; return total blob bytes."""
    study, total = "2.25.20261124", 0
    for i in tqdm(range(n), desc="build", unit="obj"):
        payload = os.urandom(size)
        blob = bytes(seal(payload, object_uid=f"{study}.1.{i}", study_uid=study, codec="raw",
                          keyring=archive.keyring))
        key = archive.store.put(blob)
        archive.index.add(record(i, study), BlobRef("raw", archive.keyring.active_version, key, len(blob),
                                                    size, "0" * 64))
        total += len(blob)
    return total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--objects", type=int, default=10_000)
    ap.add_argument("--size", type=int, default=512 * 1024)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--dir", type=Path, default=None, help="where the archive is built (default: a temp dir)")
    args = ap.parse_args()
    base = Path(tempfile.mkdtemp(prefix="aepacs-bench-rekey-", dir=args.dir))
    os.environ["AEPACS_HOME"] = str(base / "home")
    try:
        config = load_config()
        Keyring.create(config.keyring_path)
        with Archive(config) as archive:
            total = build(archive, args.objects, args.size)
        mb = total / 1e6
        subprocess.run(["sync"], check=True)

        t0 = time.perf_counter()
        subprocess.run(["cp", "-r", str(config.store_path), str(base / "copy")], check=True)
        subprocess.run(["sync"], check=True)
        copy_s = time.perf_counter() - t0
        shutil.rmtree(base / "copy")

        Keyring.load(config.keyring_path).rotate()
        rewrap = rekey(config, mode="rewrap", workers=args.workers, progress=True)
        Keyring.load(config.keyring_path).rotate()
        full = rekey(config, mode="full", workers=args.workers, progress=True)
        subprocess.run(["sync"], check=True)
        assert rewrap.failed == 0 and full.failed == 0, (rewrap.failures, full.failures)

        copy_mbs = mb / copy_s
        full_mbs = full.bytes_read / 1e6 / full.seconds
        print(f"\n{args.objects} objects of {args.size} B ({mb:.0f} MB), {args.workers} workers, {base}")
        print(f"{'run':<14}{'seconds':>9}{'objects/s':>11}{'MB/s':>9}{'vs cp -r':>10}")
        print(f"{'cp -r':<14}{copy_s:>9.2f}{args.objects / copy_s:>11.0f}{copy_mbs:>9.1f}{1.0:>10.2f}")
        for name, s in (("rekey rewrap", rewrap), ("rekey full", full)):
            mbs = s.bytes_read / 1e6 / s.seconds
            print(f"{name:<14}{s.seconds:>9.2f}{s.objects_per_s:>11.0f}{mbs:>9.1f}{mbs / copy_mbs:>10.2f}")
        print(f"\nrewrap: {rewrap.objects_per_s:.0f} objects/s (target >= 5000)")
        print(f"full:   {full_mbs / copy_mbs:.2f} x copy throughput (target >= 0.5)")
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
