"""Frame encoders and decoders for 64x64 video: DCGAN-64 and VGG-64 (Denton & Fergus 2018).

    encoder: x (B, C, 64, 64)            -> code (B, G) in (-1, 1), skips [s1, s2, s3, s4]
    decoder: code (B, G), skips          -> logits (B, C, 64, 64)   (mean = sigmoid(logits))

With width ``nf`` (the papers use 64), the skips are, finest first:

    dcgan: (nf, 32, 32), (2nf, 16, 16), (4nf, 8, 8), (8nf, 4, 4)       4x4 stride-2 convolutions
    vgg:   (nf, 64, 64), (2nf, 32, 32), (4nf, 16, 16), (8nf, 8, 8)      3x3 convolutions + max-pooling

The decoder mirrors the encoder and concatenates each skip before the layer
at its resolution (U-Net style), as in SVG's ``models/dcgan_64.py`` and
``models/vgg_64.py``. Departures: the width is a parameter, the decoder
returns logits (the emission applies the sigmoid, or uses them as Bernoulli
logits), and the normalization is selectable: ``batch`` (the papers'),
``group`` (batch-independent: use it when a batch can hold one example in
training, where batch norm of the 1x1 code fails) or ``none``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

NORMS = {
    "batch": nn.BatchNorm2d,
    "group": lambda c: nn.GroupNorm(math.gcd(c, 32), c),
    "none": lambda c: nn.Identity(),
}


def _block(conv: nn.Module, out: int, norm: str) -> nn.Sequential:
    return nn.Sequential(conv, NORMS[norm](out), nn.LeakyReLU(0.2))


def _conv3(a: int, b: int, norm: str) -> nn.Sequential:
    return _block(nn.Conv2d(a, b, 3, 1, 1), b, norm)


class DCGANEncoder(nn.Module):
    def __init__(self, channels: int, g_dim: int, nf: int = 64, norm: str = "batch"):
        super().__init__()
        widths = [channels, nf, 2 * nf, 4 * nf, 8 * nf]
        self.down = nn.ModuleList(_block(nn.Conv2d(a, b, 4, 2, 1), b, norm) for a, b in zip(widths[:-1], widths[1:]))
        self.code = nn.Sequential(nn.Conv2d(8 * nf, g_dim, 4, 1, 0), NORMS[norm](g_dim), nn.Tanh())
        self.skip_shapes = [(w, 64 >> (i + 1), 64 >> (i + 1)) for i, w in enumerate(widths[1:])]

    def forward(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        skips, h = [], x
        for layer in self.down:
            h = layer(h)
            skips.append(h)
        return self.code(h).flatten(1), skips           # (B, G), [(B, nf, 32, 32), ...]


class DCGANDecoder(nn.Module):
    def __init__(self, channels: int, g_dim: int, nf: int = 64, norm: str = "batch"):
        super().__init__()
        self.g_dim = g_dim
        self.start = _block(nn.ConvTranspose2d(g_dim, 8 * nf, 4, 1, 0), 8 * nf, norm)     # 1 -> 4
        widths = [8 * nf, 4 * nf, 2 * nf, nf]
        self.up = nn.ModuleList(_block(nn.ConvTranspose2d(2 * a, b, 4, 2, 1), b, norm)   # 4 -> 8 -> 16 -> 32
                                for a, b in zip(widths[:-1], widths[1:]))
        self.out = nn.ConvTranspose2d(2 * nf, channels, 4, 2, 1)                          # 32 -> 64

    def forward(self, code: Tensor, skips: list[Tensor]) -> Tensor:
        h = self.start(code.view(-1, self.g_dim, 1, 1))
        for layer, skip in zip(self.up, reversed(skips[1:])):
            h = layer(torch.cat([h, skip], 1))
        return self.out(torch.cat([h, skips[0]], 1))


class VGGEncoder(nn.Module):
    def __init__(self, channels: int, g_dim: int, nf: int = 64, norm: str = "batch"):
        super().__init__()
        plan = [(channels, nf, nf), (nf, 2 * nf, 2 * nf), (2 * nf, 4 * nf, 4 * nf, 4 * nf),
                (4 * nf, 8 * nf, 8 * nf, 8 * nf)]
        self.stages = nn.ModuleList(nn.Sequential(*(_conv3(a, b, norm) for a, b in zip(p[:-1], p[1:]))) for p in plan)
        self.pool = nn.MaxPool2d(2, 2)
        self.code = nn.Sequential(nn.Conv2d(8 * nf, g_dim, 4, 1, 0), NORMS[norm](g_dim), nn.Tanh())
        self.skip_shapes = [(p[-1], 64 >> i, 64 >> i) for i, p in enumerate(plan)]

    def forward(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        skips, h = [], x
        for i, stage in enumerate(self.stages):
            h = stage(self.pool(h) if i else h)
            skips.append(h)
        return self.code(self.pool(h)).flatten(1), skips  # (B, G), [(B, nf, 64, 64), ...]


class VGGDecoder(nn.Module):
    def __init__(self, channels: int, g_dim: int, nf: int = 64, norm: str = "batch"):
        super().__init__()
        self.g_dim = g_dim
        self.start = _block(nn.ConvTranspose2d(g_dim, 8 * nf, 4, 1, 0), 8 * nf, norm)     # 1 -> 4
        plan = [(16 * nf, 8 * nf, 8 * nf, 4 * nf), (8 * nf, 4 * nf, 4 * nf, 2 * nf), (4 * nf, 2 * nf, nf)]
        self.stages = nn.ModuleList(nn.Sequential(*(_conv3(a, b, norm) for a, b in zip(p[:-1], p[1:]))) for p in plan)
        self.last = nn.Sequential(_conv3(2 * nf, nf, norm), nn.ConvTranspose2d(nf, channels, 3, 1, 1))
        self.upsample = nn.UpsamplingNearest2d(scale_factor=2)

    def forward(self, code: Tensor, skips: list[Tensor]) -> Tensor:
        h = self.start(code.view(-1, self.g_dim, 1, 1))
        for stage, skip in zip(self.stages, reversed(skips[1:])):               # 8, 16, 32
            h = stage(torch.cat([self.upsample(h), skip], 1))
        return self.last(torch.cat([self.upsample(h), skips[0]], 1))            # 64


BACKBONES = {"dcgan": (DCGANEncoder, DCGANDecoder), "vgg": (VGGEncoder, VGGDecoder)}
