"""Lossless ratio and speed on held-out real images: the mixing models against the standard codecs.

In one run, on the same frames (none of them in the models' training data,
which the manifests record):

* ``mixing``    the ``@4`` model of the modality (architecture ``mixing``)
* ``wavelet``   the ``@3`` model's lossless mode (the previous default route)
* ``JPEG-XL``   libjxl effort 7, lossless (imagecodecs)
* ``JPEG-LS``   CharLS (the archive's lossless fallback)
* ``JPEG 2000`` OpenJPEG, reversible 5/3
* ``HTJ2K``     OpenJPH, reversible

Ratio = stored bytes (2 per sample above 8 bits) / compressed bytes, summed
over the modality's frames (byte-weighted); ``x JXL`` divides JPEG-XL's bytes
by the codec's. Every mixing stream is decoded and compared with the original.
Speed: frames per second of one thread, median over the frames, for the CT
slices (512x512).

Ablation (``--ablation``): on the same frames, the mixing coder with each part
replaced by its classical counterpart -- no LMS filter (the inverse-error blend
alone), no mixing network (the activity context's adaptive probability alone,
as a single-context coder), and the untrained starting
state instead of the trained one -- and what each part is worth in bytes.

Usage: ``python bench/lossless.py [--only CT MR ...] [--limit N] [--ablation]``
"""

from __future__ import annotations

import argparse
import glob
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

import imagecodecs
import numpy as np
import pydicom.data

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from aepacs.codec.learned import codec_for  # noqa: E402
from aepacs.codec.learned.mixing import kernel  # noqa: E402
from aepacs.codec.learned.mixing.codec import planes_of  # noqa: E402
from aepacs.codec.lossless import JpegLsCodec  # noqa: E402
from aepacs.dicom.frames import collect  # noqa: E402
from aepacs.eval.baselines import unsigned  # noqa: E402
from aepacs.models.registry import SHIPPED, Registry  # noqa: E402

DATA = ROOT.parent / "shared" / "data"


def _pydicom(*names: str) -> list[str]:
    return [pydicom.data.get_testdata_file(n) for n in names]


#: held-out frames per modality: (model, wavelet model, sources)
HELD_OUT: dict[str, tuple[str, str, list[str]]] = {
    "CT": ("ct@4", "ct@3", sorted(glob.glob(str(DATA / "ct/lung-pet-ct-dx-A0001/series-3-5mm/*.dcm")))
           + _pydicom("693_UNCR.dcm", "CT_small.dcm", "eCT_Supplemental.dcm")),
    "MR": ("mr@4", "mr@3", sorted(glob.glob(str(DATA / "mr/dcm_qa_toshiba-galan-dti-b0/*.dcm")))
           + sorted(glob.glob(str(DATA / "mr/dcm_qa_philips-vanderbilt-dti-b0/*.dcm")))
           + _pydicom("MR2_UNCR.dcm", "MR-SIEMENS-DICOM-WithOverlays.dcm", "emri_small.dcm", "MR_small.dcm")),
    # the only other uncompressed CR here (cr@4 was trained on RG3): one image, not a claim
    "CR": ("cr@4", "cr@3", _pydicom("RG1_UNCR.dcm")),
    # the only uncompressed colour US here (us@4 was trained on three other colour images)
    "US": ("us@4", "us@3", _pydicom("US1_UNCR.dcm")),
}


def _standard(frame: np.ndarray) -> dict[str, Callable[[], bytes]]:
    work, _, bits = unsigned(frame)
    signed = frame.astype(np.int16 if frame.min() < 0 else np.uint16)
    return {
        "JPEG-XL": lambda: imagecodecs.jpegxl_encode(work, lossless=True, effort=7),
        "JPEG-LS": lambda: JpegLsCodec().encode(signed[None], None),
        "JPEG 2000": lambda: imagecodecs.jpeg2k_encode(work, level=0, reversible=True, bitspersample=bits),
        "HTJ2K": lambda: imagecodecs.htj2k_encode(work, level=0),
    }


def _timed(fn: Callable[[], bytes]) -> tuple[bytes, float]:
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="+", metavar="MOD", help="modalities (default: all held-out sets)")
    ap.add_argument("--limit", type=int, help="at most this many frames per modality (evenly spaced)")
    ap.add_argument("--ablation", action="store_true", help="what each learned part is worth (mixing coder)")
    args = ap.parse_args()
    registry = Registry(SHIPPED)
    print(f"# bench/lossless.py on {platform.processor() or platform.machine()}, one thread per codec")
    for modality, (ref, wref, files) in HELD_OUT.items():
        if args.only and modality not in args.only:
            continue
        frames = collect(files, modalities=[modality, "DX"] if modality == "CR" else [modality],
                         channels=3 if modality == "US" else 1, min_size=16)
        if args.limit and len(frames) > args.limit:
            frames = [frames[int(i)] for i in np.linspace(0, len(frames) - 1, args.limit).round()]
        if args.ablation:
            ablation(modality, ref, frames, registry)
            continue
        mixing = codec_for(registry.verify(ref), "lossless")
        wavelet = codec_for(registry.verify(wref), "lossless")
        names = ["mixing", "wavelet", "JPEG-XL", "JPEG-LS", "JPEG 2000", "HTJ2K"]
        size = dict.fromkeys(names, 0)
        per_source: dict[str, dict[str, int]] = {}
        enc: dict[str, list[float]] = {n: [] for n in names}
        dec: list[float] = []
        raw = 0
        for f in frames:
            px = f.pixels[None]
            nraw = f.pixels.size * (2 if int(f.pixels.max()) - int(f.pixels.min()) > 255 else 1)
            raw += nraw
            src = per_source.setdefault(Path(f.source).parent.name if "shared" in f.source else Path(f.source).name,
                                        {"frames": 0, "raw": 0, **dict.fromkeys(names, 0)})
            src["frames"] += 1
            src["raw"] += nraw
            coded: dict[str, tuple[bytes, float]] = {"mixing": _timed(lambda px=px: mixing.encode(px)),
                                                     "wavelet": _timed(lambda px=px: wavelet.encode(px))}
            coded.update({n: _timed(fn) for n, fn in _standard(f.pixels).items()})
            t0 = time.perf_counter()
            back = mixing.decode(coded["mixing"][0])
            dec.append(time.perf_counter() - t0)
            if not np.array_equal(back, px):
                sys.exit(f"mixing codec did not give back {f.source} exactly")
            for n, (data, secs) in coded.items():
                size[n] += len(data)
                src[n] += len(data)
                enc[n].append(secs)
        print(f"\n## {modality}: {len(frames)} held-out frames from {len(per_source)} sources, models {ref} and {wref}")
        print("| codec | ratio | x JPEG-XL | encode ms (median) |")
        print("|---|---|---|---|")
        for n in names:
            print(f"| {n} | {raw / size[n]:.3f} | {size['JPEG-XL'] / size[n]:.3f} | {1000 * np.median(enc[n]):.1f} |")
        print(f"mixing decode ms (median): {1000 * np.median(dec):.1f}")
        print("\n| source | frames | mixing | JPEG-XL | JPEG-LS | mixing x JPEG-XL |")
        print("|---|---|---|---|---|---|")
        for s, v in per_source.items():
            print(f"| {s} | {v['frames']} | {v['raw'] / v['mixing']:.3f} | {v['raw'] / v['JPEG-XL']:.3f} "
                  f"| {v['raw'] / v['JPEG-LS']:.3f} | {v['JPEG-XL'] / v['mixing']:.3f} |")


ABLATIONS = {"full codec": 0, "no LMS filter": kernel.NO_LMS, "no mixing network": kernel.NO_MIXER}


def ablation(modality: str, ref: str, frames: list, registry: Registry) -> None:  # type: ignore[type-arg]
    """Bytes of the mixing coder over `frames` with each part switched off (and untrained)."""
    model = registry.verify(ref)
    trained = codec_for(model, "lossless").states[0]  # type: ignore[attr-defined]
    planes = [p - p.min() for f in frames for p in planes_of(f.pixels)]
    rows = {name: sum(len(kernel.encode(p, int(p.max()), trained, flag)) for p in planes)
            for name, flag in ABLATIONS.items()}
    rows["untrained start"] = sum(len(kernel.encode(p, int(p.max()), kernel.initial_state())) for p in planes)
    full = rows["full codec"]
    print(f"\n## {modality} ablation: {len(frames)} held-out frames, {ref}")
    print("| variant | bytes | vs full codec |")
    print("|---|---|---|")
    for name, n in rows.items():
        print(f"| {name} | {n} | {100 * (n / full - 1):+.2f} % |")


if __name__ == "__main__":
    main()
