"""The paper's architecture, layer by layer, against its Table 2 (224 x 224 x 3 input)."""

from __future__ import annotations

import torch
from torch import nn

from aepacs.eval.paper import PaperAutoencoder

# (layer kind, output channels, height, width) as listed in the paper's Table 2
TABLE_2 = [
    ("conv", 64, 224, 224), ("pool", 64, 112, 112), ("conv", 64, 112, 112), ("conv", 32, 112, 112),
    ("dense", 3, 112, 112),
    ("convT", 32, 112, 112), ("convT", 64, 112, 112), ("upsample", 64, 224, 224), ("convT", 64, 224, 224),
    ("dense", 3, 224, 224),
]
KINDS = {nn.Conv2d: "conv", nn.MaxPool2d: "pool", nn.ConvTranspose2d: "convT", nn.Upsample: "upsample"}


def test_layer_shapes_match_table_2() -> None:
    net = PaperAutoencoder(channels=3).eval()
    seen: list[tuple[str, int, int, int]] = []

    def hook(module: nn.Module, _inp: object, out: torch.Tensor) -> None:
        kind = KINDS[type(module)]
        if kind == "conv" and module.kernel_size == (1, 1):
            kind = "dense"  # a Keras Dense on an image acts per pixel: a 1x1 convolution
        seen.append((kind, *out.shape[1:]))

    for m in net.modules():
        if type(m) in KINDS:
            m.register_forward_hook(hook)
    with torch.no_grad():
        out = net(torch.rand(1, 3, 224, 224))
    assert seen == TABLE_2
    assert out.shape == (1, 3, 224, 224) and float(out.min()) >= 0 and float(out.max()) <= 1
    latent = net.encoder(torch.rand(1, 3, 224, 224))
    assert latent.numel() * 4 == 224 * 224 * 3  # float32 latent: as many bytes as the 8-bit RGB input
