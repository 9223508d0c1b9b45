"""The factorized synthesis frozen to integers: the same pixels on every machine.

A float network gives slightly different results on different CPUs (SIMD
width, summation order, fused multiply-add), and a lossless residual or a
recorded reconstruction hash cannot tolerate a single flipped rounding.
Following Ballé, Johnston and Minnen, "Integer networks for data
compression with latent-variable models" (ICLR 2019), the synthesis is
run on integers only:

* weights ``W_int = round(W * 2**fw)``, biases ``round(b * 2**(FA + fw))``;
* activations are integers with ``FA`` fraction bits, clamped to
  ``±2**(FA + ACT_BITS)``;
* each convolution is computed in float64 on those integers. Every product
  and partial sum is an integer below ``2**52`` (``fw`` is chosen per layer
  to guarantee it), and float64 represents such integers exactly whatever
  the summation order, so the result is exact; then ``floor(out / 2**fw)``
  rescales, a ReLU clips, and depth-to-space only moves values.

The last layer and the linear path from the latent are added before the
one rescale; depth-to-space then makes the image.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from aepacs.codec.learned.factorized.net import FactorizedCodecNet
from aepacs.errors import CodecError

FA = 16
"""Fraction bits of activations."""
ACT_BITS = 9
"""Activations are clamped to ``±2**ACT_BITS`` (in real units)."""
GAIN_BITS = 16
"""Extra fraction bits of the dequantization factors ``2**(FA + GAIN_BITS) / g``."""
_EXACT = 52


def _fw(w: torch.Tensor, budget: int) -> int:
    """Weight fraction bits keeping every sum of this layer below ``2**budget``."""
    fan_in = w.shape[1] * w.shape[2] * w.shape[3]
    wmax = float(w.abs().max()) or 1.0
    fw = min(24, math.floor(budget - math.log2(fan_in) - FA - ACT_BITS - math.log2(wmax)))
    if fw < 8:
        raise CodecError("synthesis weights too large to freeze exactly")
    return fw


@torch.no_grad()
def freeze(net: FactorizedCodecNet) -> dict[str, torch.Tensor]:
    """Integer tensors that decode exactly like :class:`FixedSynthesis` everywhere.

    Returns
    -------
    dict
        ``w{i}``, ``b{i}``, ``fw{i}`` per hidden synthesis convolution (ReLU
        after each); per gain, the last convolution scaled by ``s_k``
        (``w_last``, ``b_last``, ``fw_last``) and the linear path at the same
        fraction bits (``skip_w``, ``skip_b``); ``mean``, ``gain_mult``.
    """
    convs = [m for m in net.synthesis if isinstance(m, nn.Conv2d)]
    frozen: dict[str, torch.Tensor] = {}
    last = len(convs) - 1
    assert net.synthesis_skip.bias is not None and all(c.bias is not None for c in convs)
    skip_w = net.synthesis_skip.weight.detach().double()
    skip_b = net.synthesis_skip.bias.detach().double()
    for i, conv in enumerate(convs[:last]):
        assert conv.bias is not None
        w = conv.weight.detach().double()
        fw = _fw(w, _EXACT - 1)
        frozen[f"w{i}"] = torch.round(w * 2**fw).long()
        frozen[f"b{i}"] = torch.round(conv.bias.detach().double() * 2 ** (FA + fw)).long()
        frozen[f"fw{i}"] = torch.tensor(fw)
    # the last layer, scaled by s_k, one copy per gain; it and the linear path are added,
    # so each gets half the room below 2**52 and they share their fraction bits
    ws, bs, fws, sws, sbs = [], [], [], [], []
    skip_fw = _fw(skip_w, _EXACT - 2)
    for k in range(len(net.gains)):
        scale = float(net.fade[k]) * float(torch.exp(net.log_branch_s[k].detach().double()))
        w = convs[last].weight.detach().double() * scale
        fw = min(_fw(w, _EXACT - 2), skip_fw)
        ws.append(torch.round(w * 2**fw).long())
        bias = convs[last].bias
        assert bias is not None
        bs.append(torch.round(bias.detach().double() * scale * 2 ** (FA + fw)).long())
        fws.append(fw)
        sws.append(torch.round(skip_w * 2**fw).long())
        sbs.append(torch.round(skip_b * 2 ** (FA + fw)).long())
    frozen["w_last"], frozen["b_last"], frozen["fw_last"] = torch.stack(ws), torch.stack(bs), torch.tensor(fws)
    frozen["skip_w"], frozen["skip_b"] = torch.stack(sws), torch.stack(sbs)
    for key, value in frozen.items():
        if key.startswith(("b", "skip_b")) and value.numel() and int(value.abs().max()) >= 2 ** (_EXACT - 2):
            raise CodecError(f"synthesis {key} too large to freeze exactly")
    frozen["mean"] = torch.round(net.mean.detach().double() * 2**FA).long()
    frozen["gain_mult"] = torch.from_numpy(np.round(2.0 ** (FA + GAIN_BITS) / np.array(net.gains)).astype(np.int64))
    frozen["shuffle"] = torch.tensor(net.shuffle.upscale_factor)
    return frozen


class FixedSynthesis:
    """Runs a frozen synthesis: integer latent in, integer image out (``FA`` fraction bits)."""

    def __init__(self, frozen: dict[str, torch.Tensor]) -> None:
        self.layers = []
        i = 0
        while f"w{i}" in frozen:
            self.layers.append((frozen[f"w{i}"].double(), frozen[f"b{i}"].double(),
                                2.0 ** -int(frozen[f"fw{i}"])))
            i += 1
        if not self.layers:
            raise CodecError("frozen synthesis has no layers")
        self.last = (frozen["w_last"].double(), frozen["b_last"].double(), frozen["fw_last"].tolist())
        self.skip = (frozen["skip_w"].double(), frozen["skip_b"].double())
        self.mean = frozen["mean"].double().view(1, -1, 1, 1)
        self.gain_mult = frozen["gain_mult"].tolist()
        self.shuffle = int(frozen["shuffle"])

    @property
    def gains(self) -> int:
        return len(self.gain_mult)

    @property
    def latent_channels(self) -> int:
        return int(self.mean.shape[1])

    def __call__(self, q: torch.Tensor | np.ndarray, k: int) -> np.ndarray:
        """Decode integer latents ``(B, M, h, w)`` at gain `k` to ``(B, C, 4h, 4w)`` int64.

        One item at a time: float64 convolutions run about twice as fast per
        image unbatched here, and the result is the same either way.
        """
        if not 0 <= k < self.gains:
            raise CodecError(f"gain index {k} out of range")
        q = np.asarray(q)
        return np.concatenate([self._one(q[i:i + 1], k) for i in range(len(q))])

    @torch.inference_mode()
    def _one(self, q: np.ndarray, k: int) -> np.ndarray:
        limit = float(2 ** (FA + ACT_BITS))
        y = torch.floor(torch.as_tensor(np.asarray(q), dtype=torch.float64) * self.gain_mult[k]
                        * 2.0**-GAIN_BITS) + self.mean
        a = y = y.clamp(-limit, limit)
        for w, b, scale in self.layers:
            out = F.conv2d(a, w, padding=w.shape[-1] // 2) + b.view(1, -1, 1, 1)
            a = torch.floor(out * scale).clamp(0.0, limit)
        w, b, fw = self.last[0][k], self.last[1][k], self.last[2][k]
        out = (F.conv2d(a, w, padding=w.shape[-1] // 2) + b.view(1, -1, 1, 1)
               + F.conv2d(y, self.skip[0][k]) + self.skip[1][k].view(1, -1, 1, 1))
        a = torch.floor(out * 2.0**-fw).clamp(-limit, limit)
        return F.pixel_shuffle(a, self.shuffle).numpy().astype(np.int64)
