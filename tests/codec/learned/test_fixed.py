"""The frozen synthesis is exact integer arithmetic: checked against an int64 reference."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import torch

from aepacs.codec.learned.factorized.codec import synthesis
from aepacs.codec.learned.factorized.fixed import ACT_BITS, FA, GAIN_BITS, FixedSynthesis, freeze
from aepacs.codec.learned.factorized.net import FactorizedCodecNet


def _conv_int(a: np.ndarray, w: np.ndarray) -> np.ndarray:
    """'Same' convolution (cross-correlation) in int64, batch of one."""
    k = w.shape[-1]
    p = k // 2
    c, h, wd = a.shape
    padded = np.zeros((c, h + 2 * p, wd + 2 * p), dtype=np.int64)
    padded[:, p:p + h, p:p + wd] = a
    out = np.zeros((w.shape[0], h, wd), dtype=np.int64)
    for dy in range(k):
        for dx in range(k):
            out += np.einsum("oc,chw->ohw", w[:, :, dy, dx], padded[:, dy:dy + h, dx:dx + wd])
    return out


def reference(frozen: dict[str, torch.Tensor], q: np.ndarray, k: int) -> np.ndarray:
    limit = 2 ** (FA + ACT_BITS)
    gm = int(frozen["gain_mult"][k])
    y = ((q.astype(np.int64) * gm) >> GAIN_BITS) + frozen["mean"].numpy()[:, None, None]
    y = np.clip(y, -limit, limit)
    a = y
    i = 0
    while f"w{i}" in frozen:
        out = _conv_int(a, frozen[f"w{i}"].numpy()) + frozen[f"b{i}"].numpy()[:, None, None]
        a = np.clip(out >> int(frozen[f"fw{i}"]), 0, limit)
        i += 1
    out = (_conv_int(a, frozen["w_last"][k].numpy()) + frozen["b_last"][k].numpy()[:, None, None]
           + _conv_int(y, frozen["skip_w"][k].numpy()) + frozen["skip_b"][k].numpy()[:, None, None])
    a = np.clip(out >> int(frozen["fw_last"][k]), -limit, limit)
    s = int(frozen["shuffle"])
    c, h, w = a.shape
    return a.reshape(c // (s * s), s, s, h, w).transpose(0, 3, 1, 4, 2).reshape(c // (s * s), h * s, w * s)


def test_frozen_synthesis_equals_int64_reference(ct_model) -> None:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(3)
    torch.manual_seed(3)
    random_net = FactorizedCodecNet(channels=3, n=8, gains=4)
    shipped = {k: torch.from_numpy(v) for k, v in ct_model.tensors("synthesis.safetensors").items()}
    for frozen in (shipped, freeze(random_net)):
        synth = FixedSynthesis(frozen)
        m = synth.latent_channels
        for k in (0, synth.gains - 1):
            q = np.round(rng.laplace(0, 40, size=(1, m, 13, 17))).astype(np.int64)
            got = synth(q, k)[0]
            assert np.array_equal(got, reference(frozen, q[0], k))


def test_same_pixels_with_other_thread_counts_and_batches(ct_model) -> None:  # type: ignore[no-untyped-def]
    synth = synthesis(ct_model)
    q = np.round(np.random.default_rng(4).laplace(0, 60, size=(3, synth.latent_channels, 40, 36))).astype(np.int64)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = synth(q, 5)
        torch.set_num_threads(2)
        batched = synth(q, 5)
        single = np.concatenate([synth(q[i:i + 1], 5) for i in range(3)])
    finally:
        torch.set_num_threads(before)
    assert np.array_equal(one, batched) and np.array_equal(one, single)


def test_same_pixels_in_a_separate_process(ct_model, tmp_path) -> None:  # type: ignore[no-untyped-def]
    q = np.round(np.random.default_rng(5).laplace(0, 60, size=(1, synthesis(ct_model).latent_channels, 32, 32)))
    np.save(tmp_path / "q.npy", q.astype(np.int64))
    code = (f"import numpy as np, torch, hashlib; torch.set_num_threads(1); "
            f"from aepacs.models.registry import Registry; "
            f"from aepacs.codec.learned.factorized.codec import synthesis; "
            f"m = Registry({str(ct_model.path.parents[1])!r}).load({ct_model.ref!r}); "
            f"print(hashlib.sha256(synthesis(m)(np.load({str(tmp_path / 'q.npy')!r}), 7).tobytes()).hexdigest())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    import hashlib

    assert out == hashlib.sha256(synthesis(ct_model)(np.load(tmp_path / "q.npy"), 7).tobytes()).hexdigest()
