from __future__ import annotations

import hashlib
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pydicom
import pytest
import zstandard

from aepacs.codec.learned import codec_for
from aepacs.codec.learned.mixing import kernel
from aepacs.codec.learned.mixing.codec import MixingCodec
from aepacs.codec.lossless import JpegLsCodec
from aepacs.errors import CodecError
from aepacs.training import mixing_fit
from tests.codec.learned.test_factorized import _variants
from tests.conftest import SHARED_CT, decode_in_child

T = TypeVar("T")
ROOT = Path(__file__).resolve().parents[3]


@dataclass
class _Draft:
    """A mixing model outside the registry (what training codes with)."""

    tensors_: dict[str, np.ndarray]
    channels: int = 1
    arch: str = "mixing"
    ref: str = "draft"
    _cache: dict[Hashable, Any] = field(default_factory=dict)

    @property
    def manifest(self) -> dict[str, Any]:
        return {"hyper": {"channels": self.channels}}

    def tensors(self, filename: str) -> dict[str, np.ndarray]:
        return self.tensors_

    def cached(self, key: Hashable, make: Callable[[], T]) -> T:
        value: T = self._cache.setdefault(key, make())
        return value


def _held_out_slice(i: int = 30) -> np.ndarray:
    """A real CT slice of series 3 (ct@4 was trained on series 2 only)."""
    files = sorted((SHARED_CT / "series-3-5mm").glob("*.dcm"))
    if not files:
        pytest.skip("needs ../shared/data/ct")
    return pydicom.dcmread(files[i]).pixel_array.astype(np.int16)[None, ..., None]


@pytest.fixture(scope="module")
def ct4(shipped):  # type: ignore[no-untyped-def]
    return shipped.load("ct@4")


@pytest.mark.parametrize("name", list(_variants()))
def test_lossless_is_bit_exact(ct4, name: str) -> None:  # type: ignore[no-untyped-def]
    pixels = _variants()[name]
    codec = MixingCodec(ct4, "lossless")
    stream = codec.encode(pixels)
    back = codec.decode(stream)
    assert back.shape == pixels.shape and np.array_equal(back, pixels.astype(np.int64))
    assert codec.frame_gains(stream) == [0] * len(pixels)


def test_colour_and_sparse_histograms_are_bit_exact() -> None:
    from pydicom.data import get_testdata_file

    states = {0: kernel.initial_state(), 1: kernel.initial_state()}
    codec = MixingCodec(_Draft(mixing_fit.tensors(states), channels=3), "lossless")  # type: ignore[arg-type]
    rgb = pydicom.dcmread(get_testdata_file("US1_UNCR.dcm")).pixel_array[None, 100:261, 50:333]  # odd-sized crop
    stream = codec.encode(rgb)
    assert np.array_equal(codec.decode(stream), rgb.astype(np.int64)) and len(stream) < rgb.nbytes / 2
    grey = MixingCodec(_Draft(mixing_fit.tensors({0: states[0]})), "lossless")  # type: ignore[arg-type]
    sparse = (_variants()["u8"].astype(np.int64) * 37 - 3000).astype(np.int16)  # 256 values over a span of 9435
    stream = grey.encode(sparse)
    assert np.array_equal(grey.decode(stream), sparse.astype(np.int64))
    # the value map is used: ranks cost what the 8-bit image costs, not what a 14-bit span would
    assert len(stream) < 1.1 * len(grey.encode(_variants()["u8"]))


def test_beats_jpeg_ls_on_a_held_out_slice(ct4) -> None:  # type: ignore[no-untyped-def]
    pixels = _held_out_slice()
    ours = len(codec_for(ct4, "lossless").encode(pixels))
    assert ours < 0.95 * len(JpegLsCodec().encode(pixels, None))


def test_known_answer_stream(ct4) -> None:  # type: ignore[no-untyped-def]
    # pins the stream: a change of the coder or of ct@4 that moves a byte must be deliberate
    # (a new architecture or model version), because sealed objects hold these bytes
    pixels = _held_out_slice()[:, 200:328, 160:288]
    stream = MixingCodec(ct4, "lossless").encode(pixels)
    assert hashlib.sha256(stream).hexdigest() == KNOWN_ANSWER


KNOWN_ANSWER = "32ec4ca5974ce38f88d60f759bd40b23dc4c613a6b82c26839c84b43cf198972"


_CHILD = """
import hashlib, json, sys
import numpy as np
from aepacs.codec.learned import codec_for
from aepacs.models.registry import SHIPPED, Registry
pixels = np.load(sys.argv[1])
codec = codec_for(Registry(SHIPPED).load("ct@4"), "lossless")
stream = open(sys.argv[2], "rb").read()
print(json.dumps({"pixels": hashlib.sha256(codec.decode(stream).astype(np.int64).tobytes()).hexdigest(),
                  "stream": hashlib.sha256(codec.encode(pixels)).hexdigest()}))
"""


@pytest.mark.parametrize("cpu", ["host", "generic"])
def test_another_process_and_cpu_target_decode_identically(ct4, tmp_path: Path, cpu: str) -> None:  # type: ignore[no-untyped-def]
    pixels = _held_out_slice(20)[:, 96:416, 96:416]
    stream = MixingCodec(ct4, "lossless").encode(pixels)
    got = decode_in_child(_CHILD, pixels, stream, tmp_path, cpu)
    assert got["pixels"] == hashlib.sha256(pixels.astype(np.int64).tobytes()).hexdigest()
    assert got["stream"] == hashlib.sha256(stream).hexdigest()


def test_damaged_streams_and_lossy_routes_are_refused(ct4) -> None:  # type: ignore[no-untyped-def]
    pixels = _variants()["odd"]
    codec = MixingCodec(ct4, "lossless")
    stream = codec.encode(pixels)
    for bad in (stream[:10], stream[:-7], stream + b"\0" * 9):
        with pytest.raises(CodecError):
            codec.decode(bad)
    from aepacs.codec.learned.mixing.codec import _values

    with pytest.raises(CodecError, match="larger than its span"):  # a value map cannot expand past its span
        _values(zstandard.ZstdCompressor().compress(b"\xff" * 1_000_000), 100)
    lossy = codec_for(ct4, "lossy")  # what a retrieval makes: it decodes, and refuses to encode
    assert np.array_equal(lossy.decode(stream), pixels.astype(np.int64))
    with pytest.raises(CodecError, match="lossless model"):
        lossy.encode(pixels)


def test_training_is_deterministic_and_resumes_to_the_same_state() -> None:
    frames = [f[..., :1].astype(np.int64) for f in _variants()["multiframe"]]
    straight = mixing_fit.fit_states(frames, 1, 2, progress=False)
    seen: dict[int, Any] = {}
    mixing_fit.fit_states(frames, 1, 1, progress=False, checkpoint=lambda e, s: seen.update({e: s}))
    resumed = mixing_fit.fit_states(frames, 1, 2, progress=False, start=seen[1], done=1)
    for name in mixing_fit.STATE:
        assert np.array_equal(straight[0][name], resumed[0][name])
    assert not np.array_equal(straight[0]["slots"], kernel.initial_state()["slots"])
