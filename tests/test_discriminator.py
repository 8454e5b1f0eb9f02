"""Discriminators (attngan/nn/discriminator.py): trunk ends at [8ndf, 4, 4] for every size,
layer structure as docs/DESIGN.md at 64/128/256, heads' logits, and which inputs each head reads."""

import pytest
import torch
import torch.nn as nn

from attngan.config import Config, ConfigError, DataConfig, GANConfig
from attngan.nn.discriminator import Discriminator, build_discriminators

NDF, D = 8, 16


@pytest.mark.parametrize("size", [8, 16, 32, 64, 128, 256])
def test_every_size_ends_at_8ndf_4x4(size):
    netD = Discriminator(size, NDF, D)
    features = netD(torch.randn(2, 3, size, size))
    assert features.shape == (2, 8 * NDF, 4, 4)
    assert netD.uncond_logits(features).shape == (2,)
    assert netD.cond_logits(features, torch.randn(2, D)).shape == (2,)


def _convs(netD):
    return [
        (m.in_channels, m.out_channels, m.kernel_size[0], m.stride[0])
        for m in netD.trunk
        if isinstance(m, nn.Conv2d)
    ]


def test_trunk_layout_matches_spec():
    n = NDF
    assert _convs(Discriminator(64, n, D)) == [
        (3, n, 4, 2),
        (n, 2 * n, 4, 2),
        (2 * n, 4 * n, 4, 2),
        (4 * n, 8 * n, 4, 2),
    ]
    assert _convs(Discriminator(128, n, D))[4:] == [(8 * n, 16 * n, 4, 2), (16 * n, 8 * n, 3, 1)]
    assert _convs(Discriminator(256, n, D))[4:] == [
        (8 * n, 16 * n, 4, 2),
        (16 * n, 32 * n, 4, 2),
        (32 * n, 16 * n, 3, 1),
        (16 * n, 8 * n, 3, 1),
    ]
    assert _convs(Discriminator(32, n, D)) == [
        (3, 2 * n, 4, 2),
        (2 * n, 4 * n, 4, 2),
        (4 * n, 8 * n, 4, 2),
    ]
    trunk64 = list(Discriminator(64, n, D).trunk)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in trunk64) == 3  # none after the first
    assert not isinstance(trunk64[1], nn.BatchNorm2d)


def test_init_as_the_original():
    """weights_init of the original: orthogonal convs; conv biases (the logit heads') keep
    PyTorch's default U(-1/sqrt(fan_in), 1/sqrt(fan_in)); BatchNorm N(1, 0.02), bias 0."""
    torch.manual_seed(0)
    netD = Discriminator(64, NDF, D)
    for head in (netD.uncond_head, netD.cond_head):
        bound = 1 / (head.in_channels * 16) ** 0.5
        assert 0 < head.bias.abs().max() <= bound
        w = head.weight.flatten(1)  # [1, fan_in]: one orthogonal row, unit norm
        assert torch.allclose(w.norm(), torch.tensor(1.0), atol=1e-5)
    norms = [m for m in netD.modules() if isinstance(m, nn.BatchNorm2d)]
    assert norms and all(torch.count_nonzero(m.bias) == 0 for m in norms)
    weights = torch.cat([m.weight.detach() for m in norms])
    assert abs(float(weights.mean()) - 1) < 0.02 and 0.01 < float(weights.std()) < 0.03


def test_heads_read_the_right_inputs():
    netD = Discriminator(32, NDF, D).eval()
    features = netD(torch.randn(3, 3, 32, 32))
    s1, s2 = torch.randn(3, D), torch.randn(3, D)
    assert not torch.allclose(netD.cond_logits(features, s1), netD.cond_logits(features, s2))
    # Logit b depends on sample b only (eval-mode BN): swapping sentences swaps logits.
    swapped = netD.cond_logits(features[[1, 0, 2]], s1[[1, 0, 2]])
    torch.testing.assert_close(swapped, netD.cond_logits(features, s1)[[1, 0, 2]])
    assert netD.uncond_head is not netD.cond_head


def test_gradients_reach_the_image():
    netD = Discriminator(16, NDF, D)
    images = torch.randn(2, 3, 16, 16, requires_grad=True)
    features = netD(images)
    (
        netD.uncond_logits(features).sum() + netD.cond_logits(features, torch.randn(2, D)).sum()
    ).backward()
    assert images.grad.abs().sum() > 0


def test_build_discriminators_per_level():
    config = Config(data=DataConfig(base_size=16, branch_num=3), gan=GANConfig(ndf=NDF))
    nets = build_discriminators(config, D)
    assert [net.image_size for net in nets] == [16, 32, 64]


@pytest.mark.parametrize("size", [4, 24, 100])
def test_bad_size_is_a_clear_error(size):
    with pytest.raises(ConfigError, match="4·2\\^k"):
        Discriminator(size, NDF, D)
