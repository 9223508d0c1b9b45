"""Training for real, briefly: reproducible, resumable, and a verified registry entry at the end."""

from __future__ import annotations

from pathlib import Path

import torch

from aepacs.models.registry import Registry
from aepacs.training.train import TrainConfig, train
from tests.conftest import ct_files


def _cfg(**kw: object) -> TrainConfig:
    data = [str(p) for p in ct_files()[:6]]
    base = dict(name="ct", modality=["CT"], data=data, arch="factorized", epochs=1, steps=3, batch=2, patch=64,
                hyper={"n": 8})
    return TrainConfig(**{**base, **kw})  # type: ignore[arg-type]


def _weights(model) -> bytes:  # type: ignore[no-untyped-def]
    return b"".join(t.tobytes() for _, t in sorted(model.tensors("analysis.safetensors").items()))


def test_training_writes_a_verified_entry_with_metrics(tmp_path: Path) -> None:
    model = train(_cfg(), tmp_path / "run", registry=Registry(tmp_path / "reg"), progress=False)
    assert model.ref == "ct@1" and model.arch == "factorized"
    t = model.manifest["training"]
    assert t["data_sha256"] and t["frames"] > 0 and t["epochs"] == 1 and t["validation"]
    rd = model.manifest["metrics"]["rate_distortion"]
    assert len(rd) >= 2 and all(r["bpp"] > 0 and r["psnr"] > 0 for r in rd)
    assert Registry(tmp_path / "reg").verify("ct@1").digest == model.digest


def test_same_seed_same_weights(tmp_path: Path) -> None:
    a = train(_cfg(), tmp_path / "a", registry=Registry(tmp_path / "ra"), progress=False)
    b = train(_cfg(), tmp_path / "b", registry=Registry(tmp_path / "rb"), progress=False)
    c = train(_cfg(seed=1), tmp_path / "c", registry=Registry(tmp_path / "rc"), progress=False)
    assert _weights(a) == _weights(b) != _weights(c)


def test_resume_continues_from_the_checkpoint(tmp_path: Path) -> None:
    reg = Registry(tmp_path / "reg")
    train(_cfg(epochs=1), tmp_path / "run", registry=reg, progress=False)
    state = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert int(state["epoch"]) == 1
    resumed = train(_cfg(epochs=2), tmp_path / "run", resume=True, registry=reg, progress=False)
    assert int(torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["epoch"]) == 2
    straight = train(_cfg(epochs=2), tmp_path / "straight", registry=Registry(tmp_path / "r2"), progress=False)
    assert _weights(resumed) == _weights(straight)  # resuming is the same as never stopping


def test_wavelet_training_fits_taps_and_an_entropy_model_that_pays(tmp_path: Path) -> None:
    from pydicom.data import get_testdata_file

    from aepacs.codec.learned import codec_for
    from aepacs.codec.learned.wavelet.codec import WaveletCodec
    from aepacs.dicom.frames import collect
    from aepacs.training.wavelet_fit import Draft

    data = [str(get_testdata_file("emri_small.dcm"))]  # 10 real MR frames, 64 x 64
    cfg = TrainConfig(name="mr", modality=["MR"], data=data, arch="wavelet", epochs=2)
    model = train(cfg, tmp_path / "run", registry=Registry(tmp_path / "reg"), progress=False)
    assert model.arch == "wavelet" and Registry(tmp_path / "reg").verify("mr@1").digest == model.digest
    fit = model.manifest["training"]["taps_fit"]
    assert fit["loss"]["fitted"] <= fit["loss"]["cdf97"] and len(fit["lambda"]) == len(fit["gains"])
    assert model.manifest["metrics"]["rate_distortion"] and model.manifest["default_gain"] is not None
    pixels = collect(data)[0].pixels[None]
    trained = codec_for(model, "lossless")
    stream = trained.encode(pixels)
    assert (trained.decode(stream) == pixels).all()
    untrained = WaveletCodec(Draft(1), "lossless")  # CDF 9/7, uniform starting probabilities
    assert len(stream) < len(untrained.encode(pixels))


def test_wavelet_training_resumes_to_the_same_model(tmp_path: Path) -> None:
    from pydicom.data import get_testdata_file

    from aepacs.codec.learned.wavelet.codec import WaveletCodec

    data = [str(get_testdata_file("emri_small.dcm"))]

    def run(out: str, epochs: int, resume: bool = False, reg: str = "reg") -> bytes:
        cfg = TrainConfig(name="mr", modality=["MR"], data=data, arch="wavelet", epochs=epochs,
                          hyper={"precision": 4, "rdo": 30})  # as the @6 models: fraction bits, RDO
        model = train(cfg, tmp_path / out, resume=resume, registry=Registry(tmp_path / reg), progress=False)
        assert model.manifest["hyper"]["precision"] == 4 and WaveletCodec(model, "lossy").rdo == 30
        return b"".join(t.tobytes() for _, t in sorted(model.tensors("wavelet.safetensors").items()))

    run("run", 1)
    assert (tmp_path / "run" / "wavelet-taps.json").exists() and (tmp_path / "run" / "wavelet-init.npz").exists()
    resumed = run("run", 2, resume=True)
    assert resumed == run("straight", 2, reg="reg2")  # resuming is the same as never stopping
