"""Codec speed on real CT slices, and the paper's Table 3 done honestly.

In one run, on the same 512x512 slices of ``../shared/data/ct`` (series 3,
held out from the shipped CT model's training):

* ``aepacs``      the shipped CT model, lossy at its default gain, one slice per task on
                  ``--threads`` threads: encode (lifting, quantization, entropy coding and
                  its check, the reconstruction) and decode
* ``JPEG 2000``   OpenJPEG (imagecodecs) at the same bytes per slice
* quality at 16:1 and 32:1: the finest gain reaching each ratio, and JPEG 2000
  at the bytes of each of its slices
* ``paper``       the paper's autoencoder (a registry model of arch ``paper`` when
                  one is given with ``--paper``, else its architecture untrained:
                  speed does not depend on the weights), float32 latent
* Table 3: AES-256-GCM of the raw slice against encoder + entropy coding +
  AES-256-GCM of the latent, end to end, and the bytes each produces.
* lossless, on the same slices and threads: the CT default route (the shipped
  wavelet model's lossless mode), the mixing model (``--mixing``, ``ct@4``),
  JPEG-XL (effort 7), JPEG-LS (CharLS) and HTJ2K (OpenJPH), each decoded
  and compared with the slice.

Slices per second on the stated thread count; ratios divide by JPEG 2000
in the same run (for speed) or by the raw AES path (Table 3).

Usage: ``python bench/codec.py [--slices N] [--threads T] [--paper REF]``
"""

from __future__ import annotations

import argparse
import glob
import os
import platform
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pydicom
import torch
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT))

from common import median_time  # noqa: E402

from aepacs.codec.learned import codec_for  # noqa: E402
from aepacs.codec.quality import psnr  # noqa: E402
from aepacs.dicom.pixels import PixelMeta  # noqa: E402
from aepacs.eval.baselines import j2k_at_budget  # noqa: E402
from aepacs.eval.paper import PaperAutoencoder  # noqa: E402
from aepacs.eval.paper import network as paper_network  # noqa: E402
from aepacs.models.registry import SHIPPED, Registry  # noqa: E402

CT_DIR = ROOT.parent / "shared" / "data" / "ct" / "lung-pet-ct-dx-A0001" / "series-3-5mm"


def slices(n: int) -> np.ndarray:
    files = sorted(glob.glob(str(CT_DIR / "*.dcm")))
    if not files:
        sys.exit(f"bench/codec.py needs the CT series in {CT_DIR}")
    picks = np.linspace(0, len(files) - 1, min(n, len(files))).round().astype(int)
    return np.stack([pydicom.dcmread(files[i]).pixel_array for i in picks]).astype(np.int16)[..., None]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--slices", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--model", default="ct", help="registry model (default: the promoted shipped CT model)")
    ap.add_argument("--paper", help="registry model of arch paper (default: untrained architecture)")
    ap.add_argument("--mixing", default="ct@4", help="the lossless mixing model to time (default ct@4)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    px = slices(args.slices)
    n = len(px)
    model = Registry(SHIPPED).load(args.model)
    codec = codec_for(model, "lossy")
    stream = codec.encode(px)
    per_slice = [codec.encode(px[i:i + 1]) for i in range(n)]
    pool = ThreadPoolExecutor(args.threads)  # one slice per task: how the codec is used on many slices
    enc = median_time(lambda: list(pool.map(lambda i: codec.encode(px[i:i + 1]), range(n))), args.repeat)
    dec = median_time(lambda: list(pool.map(codec.decode, per_slice)), args.repeat)
    rec = codec.decode(stream)
    quality = float(np.mean([psnr(px[i], rec[i]) for i in range(n)]))  # per slice, as for JPEG 2000

    j2k = [j2k_at_budget(px[i], len(per_slice[i])) for i in range(n)]
    j2k_enc = sum(r[2] for r in j2k) / 1000
    j2k_dec = sum(r[3] for r in j2k) / 1000
    j2k_psnr = float(np.mean([psnr(px[i], j2k[i][1]) for i in range(n)]))

    paper = (paper_network(Registry.default().load(args.paper)) if args.paper else PaperAutoencoder(channels=1)).eval()
    x = torch.from_numpy(((px.astype(np.float32) - px.min()) / (px.max() - px.min())).transpose(0, 3, 1, 2).copy())
    with torch.inference_mode():
        latent = paper.encoder(x[:1])
        p_enc = median_time(lambda: [paper.encoder(x[i:i + 1]) for i in range(n)], args.repeat)
        p_dec = median_time(lambda: [paper.decoder(latent) for _ in range(n)], args.repeat)

    # Table 3: encrypting the raw slice vs encoding it and encrypting the latent
    aesgcm = AESGCM(os.urandom(32))

    def aes(data: bytes) -> bytes:
        return aesgcm.encrypt(os.urandom(12), data, None)  # ciphertext and tag

    raw = px[0].tobytes()
    t_raw = median_time(lambda: aes(raw), 20)
    t_ae = median_time(lambda: aes(codec.encode(px[:1])), args.repeat)
    with torch.inference_mode():
        t_paper = median_time(lambda: aes(paper.encoder(x[:1]).numpy().tobytes()), args.repeat)

    print(f"# bench/codec.py — {platform.node()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"{args.threads} threads, {n} CT slices 512x512 (held out), allocator: default")
    print(f"{'codec':30} {'enc slices/s':>12} {'dec slices/s':>12} {'enc vs J2K':>10} {'dec vs J2K':>10} "
          f"{'ratio':>7} {'PSNR':>7}")
    ratio = px.nbytes / sum(map(len, per_slice))
    rows = [(f"aepacs {model.ref} (default gain)", n / enc, n / dec, ratio, quality),
            ("JPEG 2000 (same bytes)", n / j2k_enc, n / j2k_dec, px.nbytes / sum(r[0] for r in j2k), j2k_psnr),
            ("paper (float32 latent)", n / p_enc, n / p_dec, px.nbytes / (latent.numel() * 4 * n), float("nan"))]
    for name, e, d, r, q in rows:
        print(f"{name:30} {e:12.1f} {d:12.1f} {e / rows[1][1]:10.2f} {d / rows[1][2]:10.2f} {r:7.2f} {q:7.2f}")
    print()
    lossless_speed(px, pool, args.repeat, [model.ref, args.mixing])
    print()
    print("Table 3, one slice end to end (median):")
    print(f"{'path':44} {'ms':>8} {'bytes':>9} {'vs raw AES':>10}")
    for name, t, size in (("AES-256-GCM of the raw slice", t_raw, len(raw) + 16),
                          ("aepacs encode + entropy code + AES-256-GCM", t_ae, len(per_slice[0]) + 16),
                          ("paper encoder + AES-256-GCM of float latent", t_paper, latent.numel() * 4 + 16)):
        print(f"{name:44} {1000 * t:8.2f} {size:9,} {t / t_raw:10.1f}x")
    print()
    print("Quality at equal bytes per slice (PSNR over max - min of each slice):")
    print(f"{'target':>7} {'gain':>5} {'ratio':>7} {'aepacs dB':>10} {'J2K ratio':>10} {'J2K dB':>8} {'gap dB':>7}")
    for target in (16, 32):
        gains = []  # the finest gain whose ratio over these slices still reaches the target
        for k in range(codec.gains):
            c = codec_for(model, "lossy", gain=k)
            coded = [c.encode_reconstruct(px[i:i + 1]) for i in range(n)]
            if px.nbytes / sum(len(d) for d, _ in coded) >= target:
                gains.append((k, coded))
        k, coded = gains[-1]
        ours = float(np.mean([psnr(px[i], coded[i][1][0]) for i in range(n)]))
        theirs = [j2k_at_budget(px[i], len(coded[i][0])) for i in range(n)]
        jq = float(np.mean([psnr(px[i], t[1]) for i, t in enumerate(theirs)]))
        print(f"{target:>6}:1 {k:5} {px.nbytes / sum(len(d) for d, _ in coded):7.2f} {ours:10.2f} "
              f"{px.nbytes / sum(t[0] for t in theirs):10.2f} {jq:8.2f} {ours - jq:+7.2f}")


def lossless_speed(px: np.ndarray, pool: ThreadPoolExecutor, repeat: int, refs: list[str]) -> None:
    """Lossless slices per second, encode and decode, one slice per task, and each codec's ratio."""
    import imagecodecs

    from aepacs.codec.lossless import JpegLsCodec, JpegXlCodec

    registry = Registry(SHIPPED)
    coders: dict[str, tuple[Callable[[np.ndarray], bytes], Callable[[bytes], np.ndarray]]] = {}
    for ref in refs:
        c = codec_for(registry.load(ref), "lossless")
        coders[f"aepacs {c.model.ref} lossless"] = (c.encode, c.decode)
    meta = PixelMeta(rows=px.shape[1], columns=px.shape[2], frames=1, samples=1, bits_allocated=16,
                     bits_stored=16, signed=True, planar=0, photometric="MONOCHROME2", big_endian=False)
    jxl, jls = JpegXlCodec(), JpegLsCodec()
    coders["JPEG-XL lossless (effort 7)"] = (lambda a: jxl.encode(a, meta), lambda d: jxl.decode(d, meta))
    coders["JPEG-LS (CharLS)"] = (lambda a: jls.encode(a, meta), lambda d: jls.decode(d, meta))
    lo = int(px.min())  # OpenJPH takes unsigned samples
    coders["HTJ2K lossless (OpenJPH)"] = (
        lambda a: imagecodecs.htj2k_encode((a[0, ..., 0].astype(np.int64) - lo).astype(np.uint16), level=0),
        lambda d: (imagecodecs.htj2k_decode(d).astype(np.int64) + lo)[None, ..., None])
    n = len(px)
    print("Lossless, the same slices, one slice per task on the same threads:")
    print(f"{'codec':34} {'enc slices/s':>12} {'dec slices/s':>12} {'ratio':>7} {'x JPEG-XL':>9}")
    rows = []
    for name, (enc, dec) in coders.items():
        coded = [enc(px[i:i + 1]) for i in range(n)]
        for i in range(n):
            if not np.array_equal(np.asarray(dec(coded[i])).reshape(px[i:i + 1].shape), px[i:i + 1]):
                sys.exit(f"{name} did not give back slice {i} exactly")
        te = median_time(lambda enc=enc: list(pool.map(lambda i: enc(px[i:i + 1]), range(n))), repeat)
        td = median_time(lambda dec=dec, coded=coded: list(pool.map(dec, coded)), repeat)
        rows.append((name, n / te, n / td, sum(len(c) for c in coded)))
    jxl_bytes = next(r[3] for r in rows if r[0].startswith("JPEG-XL"))
    for name, e, d, nbytes in rows:
        print(f"{name:34} {e:12.1f} {d:12.1f} {px.nbytes / nbytes:7.3f} {jxl_bytes / nbytes:9.3f}")


if __name__ == "__main__":
    main()
