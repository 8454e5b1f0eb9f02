"""Inception-v3 (Szegedy et al., "Rethinking the Inception Architecture", 2016): the trunk the
DAMSM image encoder reads and the whole classifier the Inception Score and FID read
(docs/DESIGN.md, "Image encoders" and "Evaluation").

AttnGAN's image encoder reads two layers of an ImageNet-trained Inception-v3: Mixed_6e (768 x 17
x 17 at a 299 input) gives the local region features and Mixed_7c (2048 x 8 x 8) the global
code. `InceptionTrunk` is that trunk, with torchvision's module and parameter names
(`Conv2d_1a_3x3.conv.weight`, `Mixed_6e.branch7x7dbl_5.bn.running_var`, ...) so that
torchvision's `inception_v3_google-*.pth` loads into it key for key; the auxiliary classifier and
the final fully connected layer are not built for it, and their keys in such a file are ignored
and reported. `InceptionClassifier` adds the average pool and the classifier (`fc`) for the
evaluation metrics; with `tf_pools` its pooling branches are those of the TensorFlow graph of
2015 behind pytorch-fid's FID weights (`pt_inception-2015-12-05-*.pth`, the same key names):
average pools that leave the zero padding out of the mean, and a max pool in Mixed_7c. Weights
are only ever read from a path the user names; nothing is downloaded.

The Google weights expect images scaled to [-1, 1] (no ImageNet mean/std), which is what the
data pipeline and the generator produce, so no input transform happens here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from attngan.config import ConfigError
from attngan.nn.state_files import load_state_exactly, read_state_file

__all__ = [
    "BasicConv2d",
    "InceptionClassifier",
    "InceptionTrunk",
    "fold_batch_norms",
    "load_inception_state",
    "load_inception_weights",
    "read_inception_file",
    "WEIGHTS_HINT",
]

WEIGHTS_HINT = (
    "download torchvision's Inception-v3 weights yourself "
    "(https://download.pytorch.org/models/inception_v3_google-0cc3c7bd.pth) and pass "
    "image_encoder.weights=PATH, or set image_encoder.random_init=true for an untrained trunk "
    "(tests only), or use image_encoder.backbone=small"
)


class BasicConv2d(nn.Module):
    """Bias-free convolution -> BatchNorm (eps 0.001, as TensorFlow trained it) -> ReLU."""

    def __init__(self, in_channels: int, out_channels: int, **conv_kwargs):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, bias=False, **conv_kwargs)
        self.bn = nn.BatchNorm2d(out_channels, eps=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)), inplace=True)


@torch.no_grad()
def fold_batch_norms(module: nn.Module) -> nn.Module:
    """Fold the BatchNorm of every BasicConv2d in `module` (all in eval mode) into its
    convolution, in place: BN(conv(x)) = conv(x)·s + (β - μ·s) with s = γ / sqrt(σ² + ε) is one
    convolution of weight W·s and bias β - μ·s, computed in float64 and rounded once to the
    weights' dtype. Exact but for that rounding, for a network that stays in eval mode with
    these statistics (a frozen trunk). Returns `module`."""
    for block in module.modules():
        if not (isinstance(block, BasicConv2d) and isinstance(block.bn, nn.BatchNorm2d)):
            continue
        conv, bn = block.conv, block.bn
        if block.training or bn.running_var is None:
            raise ValueError(
                "fold_batch_norms: a BatchNorm in training mode (or without running "
                "statistics) normalizes with each batch's statistics and cannot be "
                "folded; put the network in eval mode first"
            )
        scale = bn.weight.double() / torch.sqrt(bn.running_var.double() + bn.eps)
        folded = nn.Conv2d(
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,
            conv.stride,
            conv.padding,
            conv.dilation,
            conv.groups,
            bias=True,
            device=conv.weight.device,
            dtype=conv.weight.dtype,
        )
        folded.weight.copy_(conv.weight.double() * scale[:, None, None, None])
        folded.bias.copy_(bn.bias.double() - bn.running_mean.double() * scale)
        block.conv = folded.eval().requires_grad_(conv.weight.requires_grad)
        block.bn = nn.Identity()
    return module


def _pool_branch_input(x: torch.Tensor, pool: str) -> torch.Tensor:
    """The 3x3, stride 1 pool in front of a block's pool branch: "avg" (torchvision), "avg_tf"
    (the mean over the window's pixels inside the image, as TensorFlow pools) or "max"."""
    if pool == "max":
        return F.max_pool2d(x, kernel_size=3, stride=1, padding=1)
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=pool == "avg")


class InceptionA(nn.Module):
    """35 x 35 block: 1x1, 5x5, double 3x3 and pooled branches."""

    def __init__(self, in_channels: int, pool_features: int, pool: str = "avg"):
        super().__init__()
        self.pool = pool
        self.branch1x1 = BasicConv2d(in_channels, 64, kernel_size=1)
        self.branch5x5_1 = BasicConv2d(in_channels, 48, kernel_size=1)
        self.branch5x5_2 = BasicConv2d(48, 64, kernel_size=5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, padding=1)
        self.branch_pool = BasicConv2d(in_channels, pool_features, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b1 = self.branch1x1(x)
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        bp = self.branch_pool(_pool_branch_input(x, self.pool))
        return torch.cat([b1, b5, b3, bp], dim=1)


class InceptionB(nn.Module):
    """Grid reduction 35 -> 17: strided 3x3, strided double 3x3, max pool."""

    def __init__(self, in_channels: int):
        super().__init__()
        self.branch3x3 = BasicConv2d(in_channels, 384, kernel_size=3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3(x)
        b3d = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        bp = F.max_pool2d(x, kernel_size=3, stride=2)
        return torch.cat([b3, b3d, bp], dim=1)


class InceptionC(nn.Module):
    """17 x 17 block with factorized 7x7 convolutions (1x7 then 7x1)."""

    def __init__(self, in_channels: int, channels_7x7: int, pool: str = "avg"):
        super().__init__()
        self.pool = pool
        c7 = channels_7x7
        self.branch1x1 = BasicConv2d(in_channels, 192, kernel_size=1)
        self.branch7x7_1 = BasicConv2d(in_channels, c7, kernel_size=1)
        self.branch7x7_2 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(in_channels, c7, kernel_size=1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(in_channels, 192, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b1 = self.branch1x1(x)
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        b7d = self.branch7x7dbl_1(x)
        for layer in (
            self.branch7x7dbl_2,
            self.branch7x7dbl_3,
            self.branch7x7dbl_4,
            self.branch7x7dbl_5,
        ):
            b7d = layer(b7d)
        bp = self.branch_pool(_pool_branch_input(x, self.pool))
        return torch.cat([b1, b7, b7d, bp], dim=1)


class InceptionD(nn.Module):
    """Grid reduction 17 -> 8: strided 3x3, 7x7-then-strided-3x3, max pool."""

    def __init__(self, in_channels: int):
        super().__init__()
        self.branch3x3_1 = BasicConv2d(in_channels, 192, kernel_size=1)
        self.branch3x3_2 = BasicConv2d(192, 320, kernel_size=3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(in_channels, 192, kernel_size=1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, kernel_size=3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = self.branch7x7x3_1(x)
        for layer in (self.branch7x7x3_2, self.branch7x7x3_3, self.branch7x7x3_4):
            b7 = layer(b7)
        bp = F.max_pool2d(x, kernel_size=3, stride=2)
        return torch.cat([b3, b7, bp], dim=1)


class InceptionE(nn.Module):
    """8 x 8 block whose 3x3 branches split into parallel 1x3 and 3x1 outputs."""

    def __init__(self, in_channels: int, pool: str = "avg"):
        super().__init__()
        self.pool = pool
        self.branch1x1 = BasicConv2d(in_channels, 320, kernel_size=1)
        self.branch3x3_1 = BasicConv2d(in_channels, 384, kernel_size=1)
        self.branch3x3_2a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 448, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, kernel_size=3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(in_channels, 192, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b1 = self.branch1x1(x)
        b3 = self.branch3x3_1(x)
        b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], dim=1)
        b3d = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        b3d = torch.cat([self.branch3x3dbl_3a(b3d), self.branch3x3dbl_3b(b3d)], dim=1)
        bp = self.branch_pool(_pool_branch_input(x, self.pool))
        return torch.cat([b1, b3, b3d, bp], dim=1)


class InceptionTrunk(nn.Module):
    """Inception-v3 from the image to Mixed_7c, returning Mixed_6e and Mixed_7c.

    forward(x [B, 3, H, W]) -> (mixed_6e [B, 768, h, w], mixed_7c [B, 2048, h', w']); at
    H = W = 299 these are 17 x 17 and 8 x 8. Any H, W >= 75 works (smaller inputs make the
    grids smaller), which keeps tests fast.

    A fresh trunk is randomly initialized with Kaiming-normal convolutions (fan-in, ReLU gain):
    with BatchNorm at its initial running statistics (eval mode) that keeps activations of
    order one through all layers, so an untrained trunk (`image_encoder.random_init=true`) still
    gives non-degenerate features for tests.

    With `tf_pools`, the pool branches pool as the TensorFlow graph behind pytorch-fid's weights
    does (see the module docstring); no parameter changes.
    """

    MIN_INPUT_SIZE = 75

    def __init__(self, tf_pools: bool = False):
        super().__init__()
        avg = "avg_tf" if tf_pools else "avg"
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, kernel_size=3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, kernel_size=3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, kernel_size=3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, kernel_size=1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, kernel_size=3)
        self.Mixed_5b = InceptionA(192, pool_features=32, pool=avg)
        self.Mixed_5c = InceptionA(256, pool_features=64, pool=avg)
        self.Mixed_5d = InceptionA(288, pool_features=64, pool=avg)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, channels_7x7=128, pool=avg)
        self.Mixed_6c = InceptionC(768, channels_7x7=160, pool=avg)
        self.Mixed_6d = InceptionC(768, channels_7x7=160, pool=avg)
        self.Mixed_6e = InceptionC(768, channels_7x7=192, pool=avg)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE(1280, pool=avg)
        self.Mixed_7c = InceptionE(2048, pool="max" if tf_pools else "avg")
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if x.shape[-1] < self.MIN_INPUT_SIZE or x.shape[-2] < self.MIN_INPUT_SIZE:
            raise ValueError(
                f"Inception-v3 needs inputs of at least {self.MIN_INPUT_SIZE}x"
                f"{self.MIN_INPUT_SIZE}, got {tuple(x.shape[-2:])}; set "
                "image_encoder.input_size to 299 (the size it was trained at)"
            )
        x = self.Conv2d_1a_3x3(x)  # [B, 32, 149, 149] at 299
        x = self.Conv2d_2a_3x3(x)  # [B, 32, 147, 147]
        x = self.Conv2d_2b_3x3(x)  # [B, 64, 147, 147]
        x = F.max_pool2d(x, kernel_size=3, stride=2)  # [B, 64, 73, 73]
        x = self.Conv2d_3b_1x1(x)  # [B, 80, 73, 73]
        x = self.Conv2d_4a_3x3(x)  # [B, 192, 71, 71]
        x = F.max_pool2d(x, kernel_size=3, stride=2)  # [B, 192, 35, 35]
        x = self.Mixed_5b(x)  # [B, 256, 35, 35]
        x = self.Mixed_5c(x)  # [B, 288, 35, 35]
        x = self.Mixed_5d(x)  # [B, 288, 35, 35]
        x = self.Mixed_6a(x)  # [B, 768, 17, 17]
        x = self.Mixed_6b(x)
        x = self.Mixed_6c(x)
        x = self.Mixed_6d(x)
        mixed_6e = self.Mixed_6e(x)  # [B, 768, 17, 17]: regions
        x = self.Mixed_7a(mixed_6e)  # [B, 1280, 8, 8]
        x = self.Mixed_7b(x)  # [B, 2048, 8, 8]
        mixed_7c = self.Mixed_7c(x)  # [B, 2048, 8, 8]: global code
        return mixed_6e, mixed_7c


class InceptionClassifier(InceptionTrunk):
    """The whole Inception-v3 for the evaluation metrics: trunk, average pool, classifier.

    forward(x [B, 3, H, W] in [-1, 1]) -> (pool3 features [B, 2048], logits [B, num_classes]).
    `logits_bias=False` leaves the classifier's bias out of the logits, as the Inception Score
    code of Salimans et al. (2016) does with the TensorFlow graph (it multiplies pool3 by the
    softmax layer's weights only); the parameter still exists so that the file loads whole.
    """

    def __init__(self, num_classes: int, tf_pools: bool = False, logits_bias: bool = True):
        super().__init__(tf_pools=tf_pools)
        self.fc = nn.Linear(2048, num_classes)
        self.logits_bias = logits_bias

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = super().forward(x)[1].mean(dim=(2, 3))  # [B, 2048]: pool3
        logits = F.linear(features, self.fc.weight, self.fc.bias if self.logits_bias else None)
        return features, logits


def read_inception_file(path: Union[str, Path], hint: str = WEIGHTS_HINT) -> dict:
    """The state dict in `path`; ConfigError naming the file and `hint` (how to fix it) when it
    is missing, unreadable, or not a mapping of parameter names to tensors."""
    return read_state_file(path, "Inception weights file", hint, ConfigError)


def load_inception_state(
    module: nn.Module, state: dict, path: Union[str, Path], hint: str = WEIGHTS_HINT
) -> list[str]:
    """Load `state` (read from `path` by read_inception_file) into `module`: every parameter
    and BatchNorm statistic with its exact shape (older torchvision files lack the
    `num_batches_tracked` counters); keys the module has no use for (for the trunk: AuxLogits.*,
    fc.*) are ignored and returned, sorted. ConfigError naming the file and `hint` otherwise."""
    return load_state_exactly(
        module,
        state,
        path,
        "Inception weights file",
        "an Inception-v3 state dict with torchvision's key names",
        hint,
        ConfigError,
        ignore_unexpected=True,
    )


def load_inception_weights(trunk: InceptionTrunk, path: Union[str, Path]) -> list[str]:
    """Load torchvision's `inception_v3_google-*.pth` into the DAMSM encoder's `trunk`; returns
    the keys it ignored (see load_inception_state; errors as there, with WEIGHTS_HINT)."""
    return load_inception_state(trunk, read_inception_file(path), path)
