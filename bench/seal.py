"""Seal / open throughput against a plain AES-256-GCM pass over the same bytes.

Two objects of real CT pixels: one 512x512 slice (0.5 MB) and a 16-frame
object built from 16 consecutive slices (8.4 MB). For each, in one run:

* ``AES-GCM``   AES-256-GCM encrypt (decrypt) of the bytes, by the library the container uses
  (pyca/cryptography, OpenSSL): the baseline
* ``container`` :func:`aepacs.crypto.seal.seal` / ``open_sealed`` of the same bytes
  (fresh data key, key wrap, header, AAD): the cost of the format
* ``pipeline``  ``seal_bytes`` / ``open_bytes`` of the DICOM object: split,
  JPEG-LS, round-trip verification, header zstd, seal (and the reverse)

MB/s are of the original object's bytes; the ratio column divides by the
AES-GCM figure of the same object in the same run. Times are medians.

Recipients (issue 20): ``seal to recipient`` is :func:`~aepacs.crypto.seal.seal_to` of the sealed
object (the data key unwrapped under the KEK and wrapped to an X25519 public key by HPKE, the key
slot swapped: what the archive adds to each object it sends a recipient), ``open as recipient`` is
``open_sealed`` with the recipient's private key; both next to AES-GCM of the same bytes.

Then (``--cget N``, default 500) sealed-mode C-GET of N real CT slices from ``aepacs serve`` by a
pynetdicom SCU that keeps what it receives: once as an unregistered AE (the archive's KEK-sealed
objects, as before recipients) and once as a registered recipient's AE (each object sealed to it),
alternating, median of 3 each; the ratio is the recipient's rate over the other's.

Usage: ``python bench/seal.py [--repeat N] [--cget N]``
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import os
import platform
import sys
import tempfile
from io import BytesIO
from pathlib import Path

import pydicom
from cryptography import __version__ as cryptography_version
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT))

from common import median_time  # noqa: E402

from aepacs.config import DEFAULT_CONFIG_PATH, load_config  # noqa: E402
from aepacs.crypto.keyring import Keyring  # noqa: E402
from aepacs.crypto.recipients import RecipientKey  # noqa: E402
from aepacs.crypto.seal import for_recipient, open_sealed, seal, seal_to  # noqa: E402
from aepacs.pipeline.ingest import seal_bytes  # noqa: E402
from aepacs.pipeline.retrieve import open_bytes  # noqa: E402

CT_DIR = ROOT.parent / "shared" / "data" / "ct" / "lung-pet-ct-dx-A0001" / "series-2-5mm"


def ct_objects() -> dict[str, bytes]:
    """A real CT slice and a 16-frame object made of 16 real slices."""
    files = sorted(glob.glob(str(CT_DIR / "*.dcm")))
    if len(files) < 16:
        sys.exit(f"bench/seal.py needs the CT series in {CT_DIR}")
    single = Path(files[20]).read_bytes()
    slices = [pydicom.dcmread(f) for f in files[20:36]]
    ds = slices[0]
    ds.NumberOfFrames = len(slices)
    ds.PixelData = b"".join(s.PixelData for s in slices)
    buf = BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return {"CT slice 0.5 MB": single, "CT 16 frames 8.4 MB": buf.getvalue()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--cget", type=int, default=500, metavar="N", help="C-GET N CT slices (0: skip)")
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="aepacs-bench-"))
    cfg = dataclasses.replace(load_config(DEFAULT_CONFIG_PATH), data_dir=home)
    ring = Keyring.create(cfg.keyring_path)
    aesgcm = AESGCM(os.urandom(32))
    uid, study = "1.2.826.0.1.3680043.8.498.7", "1.2.826.0.1.3680043.8.498.8"

    print(f"# bench/seal.py — {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"Python {platform.python_version()}, cryptography {cryptography_version}, repeat {args.repeat}")
    print("| object | operation | AES-GCM MB/s | container MB/s | ratio | pipeline MB/s | ratio | stored/original |")
    print("|---|---|---|---|---|---|---|---|")
    for name, data in ct_objects().items():
        mb = len(data) / 1e6
        nonce = os.urandom(12)
        ct = aesgcm.encrypt(nonce, data, None)
        blob = seal(data, object_uid=uid, study_uid=study, codec="raw", keyring=ring)
        _, sealed = seal_bytes(data, ring, cfg)
        times = {
            "seal": (
                median_time(lambda: aesgcm.encrypt(nonce, data, None), args.repeat),
                median_time(lambda: seal(data, object_uid=uid, study_uid=study, codec="raw", keyring=ring),
                            args.repeat),
                median_time(lambda: seal_bytes(data, ring, cfg), args.repeat)),
            "open": (
                median_time(lambda: aesgcm.decrypt(nonce, ct, None), args.repeat),
                median_time(lambda: open_sealed(blob, ring), args.repeat),
                median_time(lambda: open_bytes(sealed, ring), args.repeat)),
        }
        for op, (t_aes, t_box, t_pipe) in times.items():
            aes, box, pipe = mb / t_aes, mb / t_box, mb / t_pipe
            print(f"| {name} | {op} | {aes:,.0f} | {box:,.0f} | {box / aes:.2f} | {pipe:,.0f} | {pipe / aes:.3f} "
                  f"| {len(sealed) / len(data):.3f} |")
        reader = RecipientKey.generate("site-a")
        to_reader = seal_to(blob, ring, reader.public)
        three = [reader.public] + [RecipientKey.generate(f"site-{n}").public for n in "bc"]
        blind = bytes(seal(data, object_uid=uid, study_uid=study, codec="raw", recipients=three))
        for op, t_aes, t_rec in (
                ("seal to recipient (HPKE re-wrap)",
                 median_time(lambda: aesgcm.encrypt(nonce, data, None), args.repeat),
                 median_time(lambda: seal_to(blob, ring, reader.public), args.repeat)),
                ("open as recipient", median_time(lambda: aesgcm.decrypt(nonce, ct, None), args.repeat),
                 median_time(lambda: open_sealed(to_reader, reader), args.repeat)),
                ("blind archive: seal to 3 recipients", median_time(lambda: aesgcm.encrypt(nonce, data, None),
                                                                    args.repeat),
                 median_time(lambda: seal(data, object_uid=uid, study_uid=study, codec="raw", recipients=three),
                             args.repeat)),
                ("blind archive: a recipient's own slot (no key)", median_time(
                    lambda: aesgcm.encrypt(nonce, data, None), args.repeat),
                 median_time(lambda: for_recipient(blind, reader.id), args.repeat))):
            print(f"| {name} | {op} | {mb / t_aes:,.0f} | {mb / t_rec:,.0f} ({t_rec * 1e6:,.0f} us) | "
                  f"{t_aes / t_rec:.2f} | | | |")
    if args.cget:
        from recipients_cget import cget_ratio  # noqa: PLC0415 -- starts a server: only when asked

        cget_ratio(args.cget)


if __name__ == "__main__":
    main()
