"""AttnGAN discriminators: one per generator stage, with unconditional and conditional heads.

Paper section 3.1 (Eq. 3-4, the joint conditional-unconditional loss of StackGAN++), as the
official code computes it (docs/DESIGN.md, "Discriminators"), returning logits (the losses use
BCE-with-logits, the numerically safe form of the original's sigmoid + BCE):

- Trunk: log2(s / 4) stride-2 reductions of the s x s image down to `[B, 8ndf, 4, 4]`. At
  s = 64 these are four 4x4 stride-2 convs 3 -> ndf -> 2ndf -> 4ndf -> 8ndf (no bias; BN on all
  but the first; LeakyReLU 0.2). At s = 128 / 256 one / two downBlocks (4x4 stride-2 conv, BN,
  LeakyReLU) double the channels further and as many 3x3 conv blocks bring them back to 8ndf.
  Below 64 (CPU presets) there are fewer stride-2 convs, each as wide as the last ones at 64
  (at 32: 3 -> 2ndf -> 4ndf -> 8ndf), so the trunk still ends at `[8ndf, 4, 4]`.
- Unconditional head: 4x4 stride-4 conv 8ndf -> 1 -> a logit per image.
- Conditional head: the raw sentence vector `[B, D]` tiled to 4x4, concatenated with the trunk
  features, conv3x3 (no bias) + BN + LeakyReLU to 8ndf, then its own 4x4 stride-4 conv -> logit.

Init as the generator (`init_weights`: orthogonal convs, BN N(1, 0.02)), as the original
applies one `weights_init` to every network.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from attngan.config import ConfigError
from attngan.nn.generator import init_weights

__all__ = ["Discriminator", "build_discriminators"]


def _leaky() -> nn.LeakyReLU:
    return nn.LeakyReLU(0.2, inplace=True)


def _down(in_channels: int, out_channels: int, batch_norm: bool = True) -> list[nn.Module]:
    layers: list[nn.Module] = [nn.Conv2d(in_channels, out_channels, 4, 2, 1, bias=False)]
    if batch_norm:
        layers.append(nn.BatchNorm2d(out_channels))
    return layers + [_leaky()]


def _block3x3(in_channels: int, out_channels: int) -> list[nn.Module]:
    return [
        nn.Conv2d(in_channels, out_channels, 3, 1, 1, bias=False),
        nn.BatchNorm2d(out_channels),
        _leaky(),
    ]


class Discriminator(nn.Module):
    """Discriminator for s x s images.

    Args:
        image_size: s, 4·2^k with k >= 1.
        ndf: base width.
        text_dim: D, the width of the sentence vector.

    forward(images [B, 3, s, s]) -> features [B, 8ndf, 4, 4];
    uncond_logits(features) -> [B]; cond_logits(features, sentence [B, D]) -> [B].
    """

    def __init__(self, image_size: int, ndf: int, text_dim: int):
        super().__init__()
        reductions = math.log2(image_size / 4) if image_size >= 8 else 0
        if image_size < 8 or reductions != int(reductions):
            raise ConfigError(
                f"a discriminator needs an image side of 4·2^k with k >= 1 "
                f"(8, 16, 32, 64, ...), got {image_size}; fix data.base_size"
            )
        reductions = int(reductions)
        self.image_size = image_size
        self.text_dim = text_dim
        top = ndf * 8
        first = min(reductions, 4)
        # The widths of the first `first` convs: the last of them always ends at 8ndf.
        widths = [3] + [top // 2 ** (first - 1 - i) for i in range(first)]
        layers: list[nn.Module] = []
        for i in range(first):
            layers += _down(widths[i], widths[i + 1], batch_norm=i > 0)
        extra = reductions - first  # 0 at s <= 64, 1 at 128, 2 at 256
        for i in range(extra):
            layers += _down(top * 2**i, top * 2 ** (i + 1))
        for i in reversed(range(extra)):
            layers += _block3x3(top * 2 ** (i + 1), top * 2**i)
        self.trunk = nn.Sequential(*layers)
        self.uncond_head = nn.Conv2d(top, 1, kernel_size=4, stride=4)
        self.joint = nn.Sequential(*_block3x3(top + text_dim, top))
        self.cond_head = nn.Conv2d(top, 1, kernel_size=4, stride=4)
        self.apply(init_weights)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.trunk(images)  # [B, 8ndf, 4, 4]

    def uncond_logits(self, features: torch.Tensor) -> torch.Tensor:
        return self.uncond_head(features).view(-1)  # [B]

    def cond_logits(self, features: torch.Tensor, sentence: torch.Tensor) -> torch.Tensor:
        tiled = sentence.view(-1, self.text_dim, 1, 1).expand(-1, -1, 4, 4)  # [B, D, 4, 4]
        joint = self.joint(torch.cat([features, tiled], dim=1))  # [B, 8ndf, 4, 4]
        return self.cond_head(joint).view(-1)  # [B]


def build_discriminators(config, text_dim: int) -> nn.ModuleList:
    """One Discriminator per pyramid level of `config.data` (a full `Config`)."""
    return nn.ModuleList(
        [Discriminator(size, config.gan.ndf, text_dim) for size in config.data.image_sizes]
    )
