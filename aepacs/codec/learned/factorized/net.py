"""The production codec network: analysis, synthesis and the entropy model.

Analysis (encoder side, float)::

    x (C channels, [0, 1]) -> space-to-depth 4 (16C values per 4x4 block)
      -> conv3x3 N, GDN -> conv3x3 N, GDN -> conv3x3 M, times a_k  (+ a linear 1x1 path)  = y

The latent ``y`` has ``M = 16C`` channels at 1/4 resolution: a learned,
context-aware 4x4 block transform. Its linear paths are the fixed 4x4 DCT
and its inverse, so the model starts invertible, trains to high fidelity
quickly, and has no error floor at fine steps.

Quantization: ``q = round(g_k * (y - mu))`` with a gain ``g_k`` from a fixed
ladder (the operating point) and a learned per-channel mean ``mu``.

Entropy model (hyperprior-style, forward adaptive): each channel is cut
into blocks of 16x16 latent values (64x64 pixels); the side information is
one discrete-Laplace scale index per block and channel (a fixed
hyper-analysis: the block's mean absolute value), and ``q`` is coded under
that scale. Air and flat regions cost almost nothing, detail gets bits.

Synthesis (decoder side; ReLU, convolutions and depth-to-space only, so it
can be frozen to integers by :mod:`aepacs.codec.learned.factorized.fixed`)::

    y_hat = q / g_k + mu -> conv3x3 N, ReLU -> conv3x3 N, ReLU -> conv3x3 16C, times s_k
      (+ a linear 1x1 path from y_hat) -> depth-to-space 4 = x_hat

``a_k`` and ``s_k`` are learned per gain: at fine steps the model can fall back
towards its invertible linear paths instead of carrying an error floor.

Training minimises ``bits per pixel + lambda_k * MSE`` with additive
uniform noise standing in for rounding, ``k`` drawn per batch, and
``lambda_k = lambda * g_k**2 / g_0**2`` (a finer step should buy a
proportionally smaller error), so one model covers the whole gain ladder.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

STRIDE = 4
BLOCK = 16  # latent values per side of one side-information block


def gain_ladder(count: int, base: float) -> list[float]:
    """Gains ``base * 2**(k/2)``: each step halves the quantization step every two."""
    return [base * 2.0 ** (k / 2) for k in range(count)]


class SimplifiedGDN(nn.Module):
    """``y_i = x_i / (beta_i + sum_j gamma_ij |x_j|)`` (Johnston et al. 2019)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.beta = nn.Parameter(torch.ones(channels))
        self.gamma = nn.Parameter(0.1 * torch.eye(channels).view(channels, channels, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        norm = F.conv2d(x.abs(), self.gamma.abs(), self.beta.abs() + 1e-6)
        return x / norm


def _laplace_cdf(v: torch.Tensor) -> torch.Tensor:
    return 0.5 + 0.5 * torch.sign(v) * (1 - torch.exp(-v.abs()))


def dct_4x4() -> torch.Tensor:
    """The orthonormal 2-D DCT-II of 4x4 blocks as a 16x16 matrix (rows: basis images)."""
    n = torch.arange(4, dtype=torch.float64)
    c = torch.cos(math.pi * (2 * n[None, :] + 1) * n[:, None] / 8) * math.sqrt(2 / 4)
    c[0] /= math.sqrt(2)
    return torch.einsum("ui,vj->uvij", c, c).reshape(16, 16).float()


def block_scales(z: torch.Tensor) -> torch.Tensor:
    """Per block of ``BLOCK x BLOCK`` latent values and channel: mean |z| (the hyper-analysis)."""
    return F.avg_pool2d(z.abs(), BLOCK, ceil_mode=True)


class FactorizedCodecNet(nn.Module):
    """Analysis/synthesis transforms with a forward-adaptive discrete Laplace prior.

    Parameters
    ----------
    channels : int
        Image channels (1 for grey, 3 for RGB).
    n : int
        Width of the hidden layers.
    gains : int
        Length of the gain ladder.
    gain0 : float
        Smallest gain.
    """

    stride = STRIDE

    fade: torch.Tensor  # a buffer: its type for the checker (nn.Module.__getattr__ says Tensor | Module)

    def __init__(self, channels: int = 1, n: int = 32, gains: int = 22, gain0: float = 4.0) -> None:
        super().__init__()
        self.channels, self.n, self.gain0 = channels, n, gain0
        m = 16 * channels
        self.gains = gain_ladder(gains, gain0)
        self.unshuffle = nn.PixelUnshuffle(4)
        self.analysis = nn.Sequential(
            nn.Conv2d(m, n, 3, padding=1), SimplifiedGDN(n),
            nn.Conv2d(n, n, 3, padding=1), SimplifiedGDN(n),
            nn.Conv2d(n, m, 3, padding=1),
        )
        self.analysis_skip = nn.Conv2d(m, m, 1)
        self.synthesis = nn.Sequential(
            nn.Conv2d(m, n, 3, padding=1), nn.ReLU(),
            nn.Conv2d(n, n, 3, padding=1), nn.ReLU(),
            nn.Conv2d(n, m, 3, padding=1),
        )
        self.synthesis_skip = nn.Conv2d(m, m, 1)
        self.shuffle = nn.PixelShuffle(4)
        with torch.no_grad():  # the orthonormal 4x4 DCT and its inverse
            basis = torch.block_diag(*[dct_4x4()] * channels)
            self.analysis_skip.weight.copy_(basis.view(m, m, 1, 1))
            self.synthesis_skip.weight.copy_(basis.t().contiguous().view(m, m, 1, 1))
            for skip in (self.analysis_skip, self.synthesis_skip):
                assert skip.bias is not None
                skip.bias.zero_()
            for conv in (self.analysis[-1], self.synthesis[-1]):
                assert isinstance(conv, nn.Conv2d)
                conv.weight.mul_(0.1)
        # fixed: the linear paths stay exact inverses, so fine steps have no error floor
        for p in (*self.analysis_skip.parameters(), *self.synthesis_skip.parameters()):
            p.requires_grad_(False)
        self.mean = nn.Parameter(torch.zeros(m))
        # per gain, how much the nonlinear branches add to the linear (DCT) paths: a coarse
        # step gains from the learned correction; a fine one wants an invertible transform,
        # so the branches fade out over the upper half of the ladder (learned factors on top)
        fade = torch.clamp((torch.arange(gains, dtype=torch.float32) - gains * 0.75) / (gains * 0.4 - gains * 0.75),
                           0.0, 1.0)
        self.register_buffer("fade", fade)
        self.log_branch_a = nn.Parameter(torch.zeros(gains))
        self.log_branch_s = nn.Parameter(torch.zeros(gains))

    def hyper(self) -> dict[str, object]:
        """Constructor arguments, for the manifest."""
        return {"channels": self.channels, "n": self.n, "gains": len(self.gains), "gain0": self.gain0}

    def analyse(self, x: torch.Tensor, k: int) -> torch.Tensor:
        u = self.unshuffle(x)
        return self.fade[k] * torch.exp(self.log_branch_a[k]) * self.analysis(u) + self.analysis_skip(u)

    def synthesise(self, y_hat: torch.Tensor, k: int) -> torch.Tensor:
        scale = self.fade[k] * torch.exp(self.log_branch_s[k])
        return self.shuffle(scale * self.synthesis(y_hat) + self.synthesis_skip(y_hat))

    def forward(self, x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Training pass: (reconstruction, total latent bits), rounding replaced by noise."""
        g = self.gains[k]
        z = (self.analyse(x, k) - self.mean.view(1, -1, 1, 1)) * g
        z = z + torch.empty_like(z).uniform_(-0.5, 0.5)
        b = block_scales(z.detach()).clamp_min(0.08)
        b = F.interpolate(b, scale_factor=BLOCK, mode="nearest")[:, :, :z.shape[2], :z.shape[3]]
        p = _laplace_cdf((z + 0.5) / b) - _laplace_cdf((z - 0.5) / b)
        bits = -torch.log2(p.clamp_min(1e-9)).sum()
        x_hat = self.synthesise(z / g + self.mean.view(1, -1, 1, 1), k)
        return x_hat, bits

    def loss(self, x: torch.Tensor, *, lmbda: float, k: int) -> tuple[torch.Tensor, dict[str, float]]:
        """``bpp + lambda_k * MSE`` for a batch in [0, 1]."""
        x_hat, bits = self(x, k)
        mse = torch.mean((x_hat - x) ** 2)
        bpp = bits / (x.shape[0] * x.shape[2] * x.shape[3])
        lam = lmbda * (self.gains[k] / self.gains[0]) ** 2
        stats = {"bpp": float(bpp.detach()), "mse": float(mse.detach())}
        return bpp + lam * mse, {**stats, "psnr": -10 * math.log10(max(stats["mse"], 1e-20))}

    @torch.no_grad()
    def quantize(self, x: torch.Tensor, k: int) -> torch.Tensor:
        """Encoder: the integer latent of images `x` (padded to the stride) at gain `k`."""
        return self.quantize_parts(self.analysis_parts(x), k)

    @torch.no_grad()
    def analysis_parts(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The nonlinear branch and the linear (DCT) path of the analysis, before the gain's weighting."""
        u = self.unshuffle(x)
        return self.analysis(u), self.analysis_skip(u)

    @torch.no_grad()
    def quantize_parts(self, parts: tuple[torch.Tensor, torch.Tensor], k: int) -> torch.Tensor:
        """:meth:`quantize` from :meth:`analysis_parts` (a rate search analyses once)."""
        branch, linear = parts
        y = self.fade[k] * torch.exp(self.log_branch_a[k]) * branch + linear
        return torch.round((y - self.mean.view(1, -1, 1, 1)) * self.gains[k])
