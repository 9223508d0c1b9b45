"""``aepacs demo``: what came back, compared with what was sent.

Exact, or a correctly marked derived image at a measured quality.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.multival import MultiValue

from aepacs.codec.quality import psnr, ssim
from aepacs.dicom.frames import read_frames
from aepacs.net.send import Storable


def _read(path: Path) -> pydicom.Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(path)

def comparable(ds: pydicom.Dataset) -> pydicom.Dataset:
    """`ds` without group lengths and Data Set Trailing Padding (media-only: not sent over a network)."""
    for elem in list(ds):
        if elem.tag.element == 0 or elem.tag == 0xFFFCFFFC:
            del ds[elem.tag]
    return ds

def same_instance(original: Path, retrieved: Path) -> bool:
    """Every element equal, the raw pixel data bytes included (the file meta aside: each writer makes its own)."""
    a, b = comparable(_read(original)), comparable(_read(retrieved))
    return bool(a == b and a.get("PixelData") == b.get("PixelData"))

def frames(path: Path) -> np.ndarray:
    """Stored values ``(frames, rows, columns, samples)``, read by ``aepacs eval``'s own reader.

    Empty (no frames) for what that reader leaves out (other than 8 or 16 bits allocated).
    """
    found = read_frames(path)
    return np.stack([f.pixels for f in found]) if found else np.empty((0, 0, 0, 0), np.int32)

@dataclass
class ModalityResult:
    """What one modality did in one part."""

    sent: int = 0
    acked: int = 0
    found: int = 0
    retrieved: int = 0
    ingest_s: float = 0.0
    retrieve_s: float = 0.0
    original_bytes: int = 0
    stored_bytes: int = 0
    refused: dict[str, str] = field(default_factory=dict)  #: file name -> status the archive answered
    exact: int = 0  #: came back identical to the file sent
    derived: int = 0  #: came back as a correctly marked lossy derived image
    images: list[dict[str, Any]] = field(default_factory=list)  #: per frame of a derived image

def _compare(r: ModalityResult, path: Path, sources: dict[str, Storable], lossy: bool) -> None:
    """Count a retrieved file against the one of `sources` it came from (others are left alone)."""
    ds = _read(path)
    source = sources.get(str(ds.SOPInstanceUID))
    if source is not None:  # the original instance, as it was sent
        r.retrieved += 1
        r.exact += same_instance(source.path, path)
        return
    refs = ds.get("SourceImageSequence") or []
    source = sources.get(str(refs[0].ReferencedSOPInstanceUID)) if refs else None
    if source is None:
        return
    r.retrieved += 1
    original, decoded = frames(source.path), frames(path)
    marked = (ds.ImageType[0] == "DERIVED" and str(ds.get("LossyImageCompression", "")) == "01"
              and any(c.CodeValue == "113040" for c in ds.get("DerivationCodeSequence", [])))
    r.derived += bool(lossy and marked and decoded.shape == original.shape)
    ratios = ds.LossyImageCompressionRatio
    ratio = float(ratios[-1] if isinstance(ratios, MultiValue) else ratios)  # ours is the last one
    for i, (a, b) in enumerate(zip(original, decoded, strict=False)):
        r.images.append({"source": str(source.path), "sop_instance_uid": source.sop_uid, "frame": i,
                         "modality": source.modality, "rows": a.shape[0], "columns": a.shape[1], "ratio": ratio,
                         "psnr": round(psnr(a[None], b[None]), 4), "ssim": round(ssim(a[None], b[None]), 5),
                         "retrieved": str(path)})

def _summary(r: ModalityResult) -> dict[str, Any]:
    return {"sent": r.sent, "acknowledged": r.acked, "refused": r.refused, "found": r.found, "retrieved": r.retrieved,
            "original_bytes": r.original_bytes, "stored_bytes": r.stored_bytes, "exact": r.exact,
            "derived": r.derived, "ingest_per_s": round(r.found / max(r.ingest_s, 1e-9), 2),
            "retrieve_per_s": round(r.retrieved / max(r.retrieve_s, 1e-9), 2),
            "psnr_mean": round(float(np.mean([i["psnr"] for i in r.images])), 4) if r.images else None,
            "ssim_mean": round(float(np.mean([i["ssim"] for i in r.images])), 5) if r.images else None}
