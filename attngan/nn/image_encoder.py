"""DAMSM image encoders: region features and a global code (docs/DESIGN.md, "Image encoders").

Both share `forward(images [B, 3, H, W] in [-1, 1]) -> (regions [B, D, h, w], code [B, D])` and
resize the images to `config.input_size` themselves:

* `InceptionEncoder`: the frozen Inception-v3 trunk of `inception.py` (Mixed_6e for the regions,
  Mixed_7c for the code) with the two trained heads of the official code. The trunk's BatchNorm
  follows the encoder's mode, as in the original's pretraining (batch statistics while training,
  the running ones in eval mode); gradients flow through it to the input either way.
* `SmallImageEncoder`: a small CNN for CPU-sized configs, trained from scratch with the heads.

`trainable_parameters()` returns what DAMSM pretraining optimizes.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from attngan.config import ConfigError, ImageEncoderConfig
from attngan.nn.inception import WEIGHTS_HINT, InceptionTrunk, load_inception_weights

__all__ = ["InceptionEncoder", "SmallImageEncoder", "build_image_encoder"]


def _resize(images: torch.Tensor, size: int, align_corners: bool = False) -> torch.Tensor:
    """Check `images` [B, 3, H, W] and bilinearly resize them to [B, 3, size, size]
    (`align_corners` when enlarging: see ImageEncoderConfig.align_corners)."""
    if images.dim() != 4 or images.shape[1] != 3 or not images.dtype.is_floating_point:
        raise ValueError(
            f"images must be a float tensor [B, 3, H, W] in [-1, 1], got "
            f"{images.dtype} of shape {tuple(images.shape)}"
        )
    if images.shape[-2:] == (size, size):
        return images
    # Antialias when shrinking (e.g. a 256 image for a 64 encoder) so the encoder sees the
    # image, not an aliased subsample of it; plain bilinear when enlarging, as the original
    # (whose PyTorch aligned the corners: `align_corners` reproduces that).
    shrinking = images.shape[-2] > size or images.shape[-1] > size
    return F.interpolate(
        images,
        size=(size, size),
        mode="bilinear",
        align_corners=align_corners and not shrinking,
        antialias=shrinking,
    )


def _init_heads(emb_features: nn.Conv2d, emb_cnn_code: nn.Linear) -> None:
    """Head weights U(-0.1, 0.1) as the official code; the Linear bias keeps its default."""
    nn.init.uniform_(emb_features.weight, -0.1, 0.1)
    nn.init.uniform_(emb_cnn_code.weight, -0.1, 0.1)


class InceptionEncoder(nn.Module):
    """Frozen Inception-v3 trunk + trainable projection heads (the paper's image encoder).

    Args:
        embed_dim: D, the text encoder's width.
        input_size: side the images are resized to (299 for the ImageNet weights).
        trunk: an InceptionTrunk holding the wanted weights; its weights are frozen here, its
            BatchNorm layers follow the encoder's train / eval mode (see the module docstring).
        align_corners: enlarge images with bilinear align_corners=True, as the original code
            did on the PyTorch its released encoders were trained with (<= 0.3.1).

    forward(images [B, 3, H, W] in [-1, 1]) -> (regions [B, D, 17, 17], code [B, D]) at 299.

    `trunk_in_bfloat16` (set by DAMSM pretraining with run.precision=bf16; not saved): the
    frozen trunk runs under bfloat16 autocast and hands float32 features to the heads.
    """

    def __init__(
        self, embed_dim: int, input_size: int, trunk: InceptionTrunk, align_corners: bool = False
    ):
        super().__init__()
        self.input_size = input_size
        self.align_corners = align_corners
        self.trunk = trunk
        self.trunk.requires_grad_(False)
        self.emb_features = nn.Conv2d(768, embed_dim, kernel_size=1, bias=False)
        self.emb_cnn_code = nn.Linear(2048, embed_dim)
        _init_heads(self.emb_features, self.emb_cnn_code)
        self.ignored_weight_keys: list[str] = []
        self.trunk_in_bfloat16 = False

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = _resize(images, self.input_size, self.align_corners)  # [B, 3, 299, 299]
        if self.trunk_in_bfloat16:
            with torch.autocast(x.device.type, torch.bfloat16):
                mixed_6e, mixed_7c = self.trunk(x)
            mixed_6e, mixed_7c = mixed_6e.float(), mixed_7c.float()
        else:  # (as it is, also under an autocast of the caller's)
            mixed_6e, mixed_7c = self.trunk(x)  # [B, 768, 17, 17], [B, 2048, 8, 8]
        regions = self.emb_features(mixed_6e)  # [B, D, 17, 17]
        # The original's 8x8 average pool; the global mean equals it at 299 and also works
        # for the smaller inputs tests use.
        pooled = F.adaptive_avg_pool2d(mixed_7c, 1).flatten(1)  # [B, 2048]
        code = self.emb_cnn_code(pooled)  # [B, D]
        return regions, code


def _norm(channels: int) -> nn.GroupNorm:
    """GroupNorm, not BatchNorm: the small CNN trains from scratch on images that are mostly
    black, and with BatchNorm it learned to lean on batch statistics, matching well in train
    mode and near chance in eval mode (measured on the shapes set). GroupNorm behaves the same
    in both modes and for a batch of one."""
    return nn.GroupNorm(num_groups=8, num_channels=channels)


def _down(in_channels: int, out_channels: int) -> nn.Sequential:
    """Halve the resolution: 4x4 stride-2 conv (no bias: a norm follows) -> norm -> LeakyReLU."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=4, stride=2, padding=1, bias=False),
        _norm(out_channels),
        nn.LeakyReLU(0.2, inplace=True),
    )


class SmallImageEncoder(nn.Module):
    """Small CNN with Inception's two outputs, trained from scratch, for CPU-sized configs.

    Args:
        embed_dim: D, the text encoder's width.
        input_size: side the images are resized to (a multiple of 16, at least 32).
        width: channels of the first block (a multiple of 8); later blocks have 2x, 4x, 8x.

    forward(images [B, 3, H, W] in [-1, 1]) -> (regions [B, D, s/8, s/8], code [B, D]) with
    s = input_size (8 x 8 regions at 64).
    """

    def __init__(self, embed_dim: int, input_size: int = 64, width: int = 64):
        super().__init__()
        self.input_size = input_size
        self.features = nn.Sequential(  # s -> s/8
            _down(3, width),
            _down(width, 2 * width),
            _down(2 * width, 4 * width),
            # One more 3x3 at s/8 widens each region's receptive field from 22 to 38 pixels
            # (at 64), enough to see a whole shape, not only part of its outline.
            nn.Conv2d(4 * width, 4 * width, kernel_size=3, padding=1, bias=False),
            _norm(4 * width),
            nn.LeakyReLU(0.2, inplace=True),
        )
        self.deep = _down(4 * width, 8 * width)  # s/8 -> s/16
        self.emb_features = nn.Conv2d(4 * width, embed_dim, kernel_size=1, bias=False)
        self.emb_cnn_code = nn.Linear(8 * width, embed_dim)
        _init_heads(self.emb_features, self.emb_cnn_code)

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = _resize(images, self.input_size)  # [B, 3, s, s]
        local = self.features(x)  # [B, 4w, s/8, s/8]
        regions = self.emb_features(local)  # [B, D, s/8, s/8]
        # Max, not mean, over positions: on mostly black images the mean is nearly the same
        # vector for every image, and DAMSM sat at chance for hundreds of steps (measured).
        pooled = self.deep(local).amax(dim=(2, 3))  # [B, 8w]
        code = self.emb_cnn_code(pooled)  # [B, D]
        return regions, code


def build_image_encoder(config: ImageEncoderConfig, embed_dim: int) -> nn.Module:
    """The image encoder `config` describes, with D = embed_dim.

    Inception loads `config.weights` (torchvision's inception_v3_google-*.pth) and keeps the
    ignored keys of that file in `encoder.ignored_weight_keys`; without weights it needs
    `config.random_init=true`. Raises ConfigError with the fix for any inconsistent setting.
    """
    if embed_dim < 1:
        raise ConfigError(
            f"the image encoder's width D must be >= 1, got {embed_dim}; "
            "set text_encoder.hidden_dim"
        )
    if config.backbone == "inception":
        if config.input_size < InceptionTrunk.MIN_INPUT_SIZE:
            raise ConfigError(
                f"image_encoder.input_size must be at least "
                f"{InceptionTrunk.MIN_INPUT_SIZE} for Inception-v3, got "
                f"{config.input_size}; set image_encoder.input_size=299"
            )
        trunk = InceptionTrunk()
        ignored: list[str] = []
        if config.weights is not None:
            ignored = load_inception_weights(trunk, config.weights)
        elif not config.random_init:
            raise ConfigError(
                "the Inception image encoder needs ImageNet weights and "
                f"image_encoder.weights is not set; {WEIGHTS_HINT}"
            )
        encoder = InceptionEncoder(embed_dim, config.input_size, trunk, config.align_corners)
        encoder.ignored_weight_keys = ignored
        return encoder
    if config.backbone == "small":
        if config.align_corners:
            raise ConfigError(
                "image_encoder.align_corners is only read by the inception "
                "backbone (the original's resize); remove it"
            )
        if config.weights is not None:
            raise ConfigError(
                f"image_encoder.weights={config.weights} is only read by the "
                "inception backbone; remove it or set "
                "image_encoder.backbone=inception"
            )
        if config.input_size < 32 or config.input_size % 16:
            raise ConfigError(
                f"image_encoder.input_size must be a multiple of 16 and at least "
                f"32 for the small backbone, got {config.input_size}; "
                "set image_encoder.input_size=64"
            )
        if config.width < 8 or config.width % 8:
            raise ConfigError(
                f"image_encoder.width must be a positive multiple of 8 (its "
                f"GroupNorm has 8 groups), got {config.width}; "
                "set image_encoder.width=32"
            )
        return SmallImageEncoder(embed_dim, config.input_size, config.width)
    raise ConfigError(
        f"image_encoder.backbone must be 'inception' or 'small', got {config.backbone!r}"
    )
