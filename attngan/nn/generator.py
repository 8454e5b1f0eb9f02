"""AttnGAN generator: conditioning augmentation, a first stage and attention stages.

Paper section 3.1, Eq. 1-2, as the official code computes it (docs/DESIGN.md, "Generator"): the
first stage maps [c, z] to `[ngf, base, base]` through upBlocks; each attention stage attends from
the incoming features to the projected words with `word_attention` (its concat variant writes
[h, context], the residual blocks' input, in one pass) and doubles the side; a tanh head per
stage makes its image. The original's `weights_init` initialises every layer.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from attngan.config import ConfigError, GANConfig
from attngan.ops.word_attention import word_attention

__all__ = ["Generator", "ConditioningAugmentation", "ResBlock", "up_block", "init_weights"]


def init_weights(module: nn.Module) -> None:
    """The original's weights_init, applied with `Module.apply`: orthogonal convolutions and
    linear layers, linear biases 0 (convolution biases keep PyTorch's default, as there: only
    the discriminators' logit convolutions have one), BatchNorm weights N(1, 0.02), biases 0."""
    if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Linear)):
        nn.init.orthogonal_(module.weight, 1.0)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


def _conv3x3(in_channels: int, out_channels: int) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=1, padding=1, bias=False)


def up_block(in_channels: int, out_channels: int) -> nn.Sequential:
    """Nearest x2 upsampling, conv3x3 to 2·out, BN, GLU: `[B, in, H, W]` -> `[B, out, 2H, 2W]`."""
    return nn.Sequential(
        nn.Upsample(scale_factor=2, mode="nearest"),
        _conv3x3(in_channels, out_channels * 2),
        nn.BatchNorm2d(out_channels * 2),
        nn.GLU(dim=1),
    )


class ResBlock(nn.Module):
    """x + BN(conv3x3(GLU(BN(conv3x3(x))))): the residual block of the attention stages."""

    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(
            _conv3x3(channels, channels * 2),
            nn.BatchNorm2d(channels * 2),
            nn.GLU(dim=1),
            _conv3x3(channels, channels),
            nn.BatchNorm2d(channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class ConditioningAugmentation(nn.Module):
    """F^ca: sentence `[B, D]` -> (c, mu, logvar), each `[B, cond_dim]`."""

    def __init__(self, text_dim: int, cond_dim: int):
        super().__init__()
        self.cond_dim = cond_dim
        self.fc = nn.Linear(text_dim, cond_dim * 4)
        self.glu = nn.GLU(dim=1)

    def forward(self, sentence: torch.Tensor):
        x = self.glu(self.fc(sentence))  # [B, 2·cond_dim]
        mu, logvar = x[:, : self.cond_dim], x[:, self.cond_dim :]
        eps = torch.randn_like(mu)
        return mu + eps * torch.exp(0.5 * logvar), mu, logvar


class _FirstStage(nn.Module):
    """F_0: `[B, cond_dim + z_dim]` -> `[B, ngf, base_size, base_size]`."""

    def __init__(self, in_dim: int, ngf: int, num_up: int):
        super().__init__()
        self.channels = ngf * 2**num_up
        self.fc = nn.Sequential(
            nn.Linear(in_dim, self.channels * 4 * 4 * 2, bias=False),
            nn.BatchNorm1d(self.channels * 4 * 4 * 2),
            nn.GLU(dim=1),
        )
        self.up = nn.Sequential(
            *[up_block(self.channels // 2**i, self.channels // 2 ** (i + 1)) for i in range(num_up)]
        )

    def forward(self, cz: torch.Tensor) -> torch.Tensor:
        h = self.fc(cz).view(-1, self.channels, 4, 4)  # [B, C0, 4, 4]
        return self.up(h)


class _AttentionStage(nn.Module):
    """F_i: (h `[B, ngf, H, W]`, words `[B, D, L]`, lengths `[B]`) ->
    (h' `[B, ngf, 2H, 2W]`, attn `[B, L, H, W]`, or None without return_attention)."""

    def __init__(self, ngf: int, text_dim: int, r_num: int, impl: str):
        super().__init__()
        self.impl = impl
        self.project = nn.Conv1d(text_dim, ngf, kernel_size=1, bias=False)  # U of e' = U e
        self.residual = nn.Sequential(*[ResBlock(ngf * 2) for _ in range(r_num)])
        self.up = up_block(ngf * 2, ngf)

    def forward(
        self,
        h: torch.Tensor,
        words: torch.Tensor,
        lengths: torch.Tensor,
        return_attention: bool = True,
    ):
        projected = self.project(words)  # [B, ngf, L]
        result = word_attention(
            h, projected, lengths, impl=self.impl, return_attn=return_attention, concat=True
        )
        joined, attn = result if return_attention else (result, None)  # [B, 2ngf, H, W]
        return self.up(self.residual(joined)), attn


class Generator(nn.Module):
    """The multi-stage attentional generator.

    Args:
        config: GANConfig (ngf, z_dim, cond_dim, r_num).
        text_dim: D, the width of the DAMSM text features.
        branch_num: number of stages (pyramid levels), >= 1.
        base_size: first stage's image side, 4·2^k with k >= 1 (64 in the paper).
        impl: implementation of `word_attention` ("auto", "reference", "cpp", ...).

    forward(z [B, z_dim], sentence [B, D], words [B, D, L] (padded slots any value),
            lengths [B] in 1..L, return_attention=True) ->
        (images: list of branch_num tensors [B, 3, s_i, s_i] in [-1, 1], s_i = base_size·2^i;
         attention maps: list of branch_num - 1 tensors, the one of stage i >= 1 [B, L, s_{i-1},
         s_{i-1}] (its incoming resolution; 0 at padded words), or an empty list with
         return_attention=False (training: the kernels then write no map); mu, logvar [B, cond_dim])
    """

    def __init__(
        self, config: GANConfig, text_dim: int, branch_num: int, base_size: int, impl: str = "auto"
    ):
        super().__init__()
        num_up = math.log2(base_size / 4) if base_size >= 8 else 0
        if base_size < 8 or num_up != int(num_up):
            raise ConfigError(
                f"data.base_size must be 4·2^k with k >= 1 (8, 16, 32, 64, ...), "
                f"got {base_size}; set data.base_size=64 (or 32 for CPU presets)"
            )
        if branch_num < 1:
            raise ConfigError(f"data.branch_num must be at least 1, got {branch_num}")
        self.z_dim = config.z_dim
        self.text_dim = text_dim
        self.image_sizes = tuple(base_size * 2**i for i in range(branch_num))
        self.ca = ConditioningAugmentation(text_dim, config.cond_dim)
        self.first = _FirstStage(config.cond_dim + config.z_dim, config.ngf, int(num_up))
        self.stages = nn.ModuleList(
            [
                _AttentionStage(config.ngf, text_dim, config.r_num, impl)
                for _ in range(branch_num - 1)
            ]
        )
        self.heads = nn.ModuleList(
            [nn.Sequential(_conv3x3(config.ngf, 3), nn.Tanh()) for _ in range(branch_num)]
        )
        self.apply(init_weights)

    @classmethod
    def from_config(cls, config, text_dim: int, impl: str | None = None) -> "Generator":
        """Build from a full `Config`: stages and base size from `config.data`, impl from
        `config.run.impl` unless given."""
        return cls(
            config.gan,
            text_dim,
            config.data.branch_num,
            config.data.base_size,
            config.run.impl if impl is None else impl,
        )

    def forward(
        self,
        z: torch.Tensor,
        sentence: torch.Tensor,
        words: torch.Tensor,
        lengths: torch.Tensor,
        return_attention: bool = True,
    ):
        c, mu, logvar = self.ca(sentence)  # [B, cond_dim] each
        h = self.first(torch.cat([c, z], dim=1))  # [B, ngf, s0, s0]
        images = [self.heads[0](h)]
        attention_maps = []
        for stage, head in zip(self.stages, self.heads[1:]):
            h, attn = stage(h, words, lengths, return_attention)
            images.append(head(h))
            if return_attention:
                attention_maps.append(attn)
        return images, attention_maps, mu, logvar
