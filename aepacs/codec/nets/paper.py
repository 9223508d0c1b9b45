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

import torch
from torch import nn


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
