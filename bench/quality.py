"""Held-out quality of the shipped wavelet models against JPEG 2000 and JPEG-LS.

For each modality's held-out images (CT: 4 slices of series 3, the model was trained on
series 2; MR ``MR2_UNCR``, CR ``RG1_UNCR``, US ``US1_UNCR`` from pydicom-data):

* lossless ratio against JPEG-LS (CharLS) on the same frames;
* at 16:1 and 32:1: the finest gain whose ratio reaches the target, its PSNR (data range
  max - min of the original), and JPEG 2000 (OpenJPEG) at the same bytes.

Usage: ``python bench/quality.py [--version @3]``; the table goes to docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pydicom

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
CT = ROOT.parent / "shared" / "data" / "ct" / "lung-pet-ct-dx-A0001" / "series-3-5mm"


def cases() -> list[tuple[str, str, np.ndarray]]:
    from pydicom.data import get_testdata_file

    out = []
    files = sorted(CT.glob("*.dcm"))
    if files:
        out.append(("CT series 3, 4 slices", "ct",
                    np.stack([pydicom.dcmread(f).pixel_array for f in files[20:60:10]])[..., None]))
    for name, model in (("MR2_UNCR.dcm", "mr"), ("RG1_UNCR.dcm", "cr"), ("US1_UNCR.dcm", "us")):
        px = pydicom.dcmread(get_testdata_file(name)).pixel_array
        out.append((name, model, px[None, ..., None] if px.ndim == 2 else px[None]))
    return out


def main() -> None:
    import imagecodecs

    from aepacs.codec.learned import codec_for
    from aepacs.codec.quality import psnr
    from aepacs.eval.baselines import j2k_at_budget, jpegls_bytes
    from aepacs.models.registry import SHIPPED, Registry

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", default="", help="e.g. @3 (default: each model's current version)")
    args = parser.parse_args()
    registry = Registry(SHIPPED)
    print("| image (model) | target | aepacs ratio | aepacs dB | JPEG 2000 ratio | JPEG 2000 dB | gap |")
    print("|---|---|---|---|---|---|---|")
    lossless = []
    for name, ref, px in cases():
        model = registry.load(ref + args.version)
        raw = px.shape[1] * px.shape[2] * px.shape[3] * (2 if px.dtype.itemsize > 1 else 1)
        ours = sum(len(codec_for(model, "lossless").encode(f[None])) for f in px)
        jls = sum(jpegls_bytes(f)[0] if px.shape[-1] == 1 else len(imagecodecs.jpegls_encode(f)) for f in px)
        lossless.append((name, len(px) * raw / ours, len(px) * raw / jls))
        gains = codec_for(model).gains
        for target in (16, 32):
            rows = []
            for f in px:
                best = None
                for k in range(gains):
                    data, rec = codec_for(model, "lossy", gain=k).encode_reconstruct(f[None])
                    if raw / len(data) >= target:
                        best = (raw / len(data), psnr(f, rec[0]), len(data))
                if best is None:
                    break
                n, jrec, _, _ = j2k_at_budget(f, best[2])
                rows.append((best[0], best[1], raw / n, psnr(f, jrec)))
            if len(rows) < len(px):
                print(f"| {name} ({model.ref}) | {target}:1 | not reached | | | | |")
                continue
            r = np.array(rows).mean(axis=0)
            print(f"| {name} ({model.ref}) | {target}:1 | {r[0]:.2f} | {r[1]:.2f} | {r[2]:.2f} | {r[3]:.2f} "
                  f"| {r[1] - r[3]:+.2f} |", flush=True)
    print()
    print("| image | aepacs lossless | JPEG-LS |")
    print("|---|---|---|")
    for name, ours, jls in lossless:
        print(f"| {name} | {ours:.2f}:1 | {jls:.2f}:1 |")


if __name__ == "__main__":
    main()
