"""Training and evaluation images: DICOM frames read from files and directories.

Frames are kept as stored integers (``rows x columns x samples``, int32);
:func:`normalize` maps one to [0, 1] by its own minimum and maximum, the
same mapping the codec applies (so PSNR over the data range is PSNR of
the network's output).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError

log = logging.getLogger("aepacs.dicom.frames")


@dataclass(frozen=True)
class Frame:
    """One image frame and where it came from."""

    pixels: np.ndarray  # (rows, columns, samples) int32
    source: str
    modality: str
    bits_stored: int
    signed: bool
    rescale: tuple[float, float] = (1.0, 0.0)  # slope, intercept


def dicom_files(paths: Iterable[str | Path]) -> list[Path]:
    """Files under `paths` (files or directories, recursively), sorted."""
    out: list[Path] = []
    for p in map(Path, paths):
        out.extend(sorted(q for q in p.rglob("*") if q.is_file()) if p.is_dir() else [p])
    return out


def read_frames(path: Path) -> list[Frame]:
    """Integer image frames of one DICOM file; empty when it has none aepacs can model."""
    try:
        ds = pydicom.dcmread(path)
        if "PixelData" not in ds or int(ds.get("BitsAllocated", 0)) not in (8, 16):
            return []
        arr = ds.pixel_array
    except (InvalidDicomError, OSError, ValueError, AttributeError, RuntimeError, NotImplementedError) as exc:
        log.debug("skipping %s: %s", path, exc)
        return []
    samples = int(ds.get("SamplesPerPixel", 1))
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    arr = np.asarray(arr).reshape(frames, int(ds.Rows), int(ds.Columns), samples).astype(np.int32)
    rescale = (float(ds.get("RescaleSlope", 1) or 1), float(ds.get("RescaleIntercept", 0) or 0))
    modality, bits = str(ds.get("Modality", "")), int(ds.get("BitsStored", 8))
    signed = bool(int(ds.get("PixelRepresentation", 0)))
    return [Frame(pixels=f, source=str(path), modality=modality, bits_stored=bits, signed=signed, rescale=rescale)
            for f in arr]


def collect(paths: Iterable[str | Path], *, modalities: Iterable[str] | None = None,
            channels: int | None = None, min_size: int = 32) -> list[Frame]:
    """Frames under `paths` of the given modalities and channel count."""
    wanted = {m.upper() for m in modalities} if modalities else None
    out = []
    for f in dicom_files(paths):
        for frame in read_frames(f):
            if wanted is not None and frame.modality.upper() not in wanted:
                continue
            if channels is not None and frame.pixels.shape[2] != channels:
                continue
            if min(frame.pixels.shape[:2]) < min_size or frame.pixels.max() == frame.pixels.min():
                continue
            out.append(frame)
    return out


def fingerprint(frames: Iterable[Frame]) -> str:
    """SHA-256 over the frames' pixels, in order: identifies a training set."""
    h = hashlib.sha256()
    for f in frames:
        h.update(np.ascontiguousarray(f.pixels).tobytes())
    return h.hexdigest()


def normalize(pixels: np.ndarray) -> tuple[np.ndarray, int, int]:
    """``(pixels - min) / (max - min)`` as float32, with the integer min and max."""
    lo, hi = int(pixels.min()), int(pixels.max())
    return ((pixels.astype(np.float32) - lo) / max(hi - lo, 1)).astype(np.float32), lo, hi


def patches(frames: list[Frame], size: int, batch: int, rng: np.random.Generator) -> Iterator[np.ndarray]:
    """Endless batches ``(batch, channels, size, size)`` of random crops in [0, 1].

    Frames smaller than `size` are edge-padded. Crops are drawn uniformly
    over frames, then over positions; crops that are nearly constant (air
    around a patient) are redrawn once, so training sees anatomy.
    """
    norm = [normalize(f.pixels)[0] for f in frames]
    while True:
        out = np.empty((batch, frames[0].pixels.shape[2], size, size), dtype=np.float32)
        for i in range(batch):
            for _ in range(2):
                img = norm[rng.integers(len(norm))]
                h, w = img.shape[:2]
                if h < size or w < size:
                    img = np.pad(img, ((0, max(0, size - h)), (0, max(0, size - w)), (0, 0)), mode="edge")
                    h, w = img.shape[:2]
                y, x = rng.integers(h - size + 1), rng.integers(w - size + 1)
                crop = img[y:y + size, x:x + size]
                if crop.std() > 0.01:
                    break
            out[i] = crop.transpose(2, 0, 1)
        yield out
