"""The paper's autoencoder, kept as the reproducible baseline.

Alslman, Alnagi, Ahmad, AbuHour, Younisse, Abu Al-haija: "Hybrid Encryption
Scheme for Medical Imaging Using AutoEncoder and Advanced Encryption
Standard", Electronics 2022, 11(23), 3967, Table 2. For a 224x224x3 input:

=========================  ==============
layer                      output
=========================  ==============
conv 64, 3x3, ReLU         224 x 224 x 64
max-pool 2x2               112 x 112 x 64
conv 64, 3x3, ReLU         112 x 112 x 64
conv 32, 3x3, ReLU         112 x 112 x 32
dense 3 (the latent)       112 x 112 x 3
transposed conv 32, ReLU   112 x 112 x 32
transposed conv 64, ReLU   112 x 112 x 64
upsample 2x                224 x 224 x 64
transposed conv 64, ReLU   224 x 224 x 64
dense 3, sigmoid           224 x 224 x 3
=========================  ==============

A Keras ``Dense`` layer on an image tensor acts on each pixel's channel
vector, i.e. a 1x1 convolution. Trained with Adamax on MSE. Its latent is
float32: as many bytes as 8-bit RGB input, more than 16-bit CT.
"""

from __future__ import annotations

import time

import numpy as np
import torch
from torch import nn

from aepacs.codec.learned.base import ModelFiles
from aepacs.dicom.frames import Frame, normalize
from aepacs.errors import CodecError


class PaperAutoencoder(nn.Module):
    """The paper's encoder/decoder pair for `channels`-channel images in [0, 1]."""

    def __init__(self, channels: int = 3) -> None:
        super().__init__()
        self.channels = channels
        self.encoder = nn.Sequential(
            nn.Conv2d(channels, 64, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(),
            nn.Conv2d(64, 32, 3, padding=1), nn.ReLU(),
            nn.Conv2d(32, 3, 1),
        )
        self.decoder = nn.Sequential(
            nn.ConvTranspose2d(3, 32, 3, padding=1), nn.ReLU(),
            nn.ConvTranspose2d(32, 64, 3, padding=1), nn.ReLU(),
            nn.Upsample(scale_factor=2, mode="nearest"),
            nn.ConvTranspose2d(64, 64, 3, padding=1), nn.ReLU(),
            nn.Conv2d(64, channels, 1), nn.Sigmoid(),
        )

    stride = 2

    def hyper(self) -> dict[str, int]:
        return {"channels": self.channels}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))

    def loss(self, x: torch.Tensor, **_: object) -> tuple[torch.Tensor, dict[str, float]]:
        """MSE, as the paper trains it."""
        mse = torch.mean((self(x) - x) ** 2)
        return mse, {"mse": float(mse.detach())}


def network(model: ModelFiles) -> PaperAutoencoder:
    """The network of a registry model of architecture ``paper``, weights loaded (once per process).

    Raises
    ------
    CodecError
        The model is not the paper's, or its weights do not fit the network.
    """
    if model.arch != "paper":
        raise CodecError(f"model {model.ref} ({model.arch}) is not the paper's autoencoder")

    def make() -> PaperAutoencoder:
        net = PaperAutoencoder(**model.manifest["hyper"])
        state = {k: torch.from_numpy(v) for k, v in model.tensors("weights.safetensors").items()}
        missing, unexpected = net.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise CodecError(f"{model.ref}: weights do not fit {model.arch} ({missing or unexpected})")
        return net.eval()

    return model.cached("network", make)


def paper_decode(model: ModelFiles, frame: Frame) -> tuple[np.ndarray, int, float]:
    """The paper's model on one frame: reconstruction, float32 latent bytes, ms."""
    net = network(model)
    x, lo, hi = normalize(frame.pixels)
    t = torch.from_numpy(x.transpose(2, 0, 1)[None])
    h, w = t.shape[2], t.shape[3]
    t = torch.nn.functional.pad(t, (0, w % 2, 0, h % 2), mode="replicate")
    t0 = time.perf_counter()
    with torch.inference_mode():
        latent = net.encoder(t)
        y = net.decoder(latent)[0, :, :h, :w].numpy().transpose(1, 2, 0)
    ms = 1000 * (time.perf_counter() - t0)
    rec = np.clip(np.round(y.astype(np.float64) * (hi - lo) + lo), lo, hi).astype(np.int64)
    return rec, latent.numel() * 4, ms
