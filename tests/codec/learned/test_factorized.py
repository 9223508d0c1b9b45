from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from aepacs.codec.learned import codec_for
from aepacs.codec.learned.factorized.codec import FactorizedCodec, frame_gains, synthesis
from aepacs.codec.quality import psnr
from aepacs.errors import CodecError
from tests.conftest import ct_slices


def _variants() -> dict[str, np.ndarray]:
    ct = ct_slices(3).astype(np.int64)
    unit = (ct - ct.min()) / (ct.max() - ct.min())
    return {
        "u8": np.round(unit * 255).astype(np.uint8)[:1],
        "u12": np.round(unit * 4095).astype(np.uint16)[:1],
        "u16": np.round(unit * 65535).astype(np.uint16)[:1],
        "s12": np.clip(ct, -2048, 2047).astype(np.int16)[:1],
        "s16": ct.astype(np.int16)[:1],
        "odd": ct.astype(np.int16)[:1, 11:48, 7:60],          # 37 x 53
        "multiframe": ct.astype(np.int16)[:, 32:96, 16:112],  # 3 frames of 64 x 96
        "tiny": ct.astype(np.int16)[:1, 60:63, 60:62],        # 3 x 2 (inside any CT slice here)
    }


@pytest.mark.parametrize("name", list(_variants()))
def test_lossless_mode_is_bit_exact(ct_model, name: str) -> None:  # type: ignore[no-untyped-def]
    pixels = _variants()[name]
    codec = FactorizedCodec(ct_model, "lossless")
    back = codec.decode(codec.encode(pixels))
    assert back.shape == pixels.shape
    assert np.array_equal(back, pixels.astype(np.int64))


def test_lossy_mode_gains_trade_bytes_for_quality(ct_model) -> None:  # type: ignore[no-untyped-def]
    pixels = ct_slices(1)
    sizes, quality = [], []
    for k in (0, synthesis(ct_model).gains // 2, synthesis(ct_model).gains - 1):
        codec = FactorizedCodec(ct_model, "lossy", gain=k)
        stream = codec.encode(pixels)
        sizes.append(len(stream))
        quality.append(psnr(pixels, codec.decode(stream)))
    assert sizes == sorted(sizes) and quality == sorted(quality)
    assert sizes[0] < pixels.nbytes / 8  # the latent, entropy coded, is far smaller than the image


def test_target_psnr_picks_the_smallest_gain_reaching_it(ct_model) -> None:  # type: ignore[no-untyped-def]
    pixels = ct_slices(1)
    codec = FactorizedCodec(ct_model, "lossy", target_psnr=50.0)
    stream = codec.encode(pixels)
    assert psnr(pixels, codec.decode(stream)) >= 50.0
    (k,) = frame_gains(stream)
    if k > 0:
        lower = FactorizedCodec(ct_model, "lossy", gain=k - 1)
        assert psnr(pixels, lower.decode(lower.encode(pixels))) < 50.0


@pytest.mark.parametrize(("ref", "gain", "slices"), [("ct@1", 6, 1), ("ct", 12, 2)])  # factorized, wavelet
def test_decoding_in_another_process_gives_the_same_pixels(shipped, ref: str, gain: int, slices: int,  # type: ignore[no-untyped-def]
                                                           tmp_path: Path) -> None:
    model = shipped.load(ref)
    pixels = ct_slices(slices)
    codec = codec_for(model, "lossy", gain=gain)
    stream = codec.encode(pixels)
    (tmp_path / "s.bin").write_bytes(stream)
    code = ("import hashlib, torch; torch.set_num_threads(1); from pathlib import Path; "
            "from aepacs.codec.learned import codec_for; from aepacs.models.registry import Registry; "
            f"m = Registry({str(model.path.parents[1])!r}).load({model.ref!r}); "
            f"print(hashlib.sha256(codec_for(m).decode(Path({str(tmp_path / 's.bin')!r}).read_bytes())"
            ".tobytes()).hexdigest())")
    runs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
            for _ in range(2)}
    assert runs == {hashlib.sha256(codec.decode(stream).tobytes()).hexdigest()}


def test_damaged_or_foreign_streams_are_refused(ct_model) -> None:  # type: ignore[no-untyped-def]
    pixels = ct_slices(1)[:, :64, :64]
    codec = FactorizedCodec(ct_model, "lossless")
    stream = codec.encode(pixels)
    with pytest.raises(CodecError):
        codec.decode(stream[:-5])
    with pytest.raises(CodecError):
        codec.decode(b"XXXX" + stream[4:])
    with pytest.raises(CodecError, match="1-sample"):
        codec.encode(np.zeros((1, 16, 16, 3), dtype=np.uint8))
    with pytest.raises(CodecError, match="integer"):
        codec.encode(np.zeros((1, 16, 16, 1), dtype=np.float32))
