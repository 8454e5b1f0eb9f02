"""GAN losses (attngan/train/losses.py) on hand-checkable inputs."""

import math

import pytest
import torch
import torch.nn as nn

from attngan.ops.damsm import damsm_sentence_loss, damsm_word_loss
from attngan.train.losses import (
    damsm_generator_loss,
    discriminator_loss,
    generator_adversarial_loss,
    kl_loss,
)


def softplus(x: float) -> float:
    return math.log1p(math.exp(x))


class ScalarD(nn.Module):
    """A discriminator whose 'image' is one number per sample: unconditional logit = that
    number, conditional logit = that number + the sentence's first entry."""

    def forward(self, images):
        return images.view(-1)

    def uncond_logits(self, features):
        return features

    def cond_logits(self, features, sentence):
        return features + sentence[:, 0]


def test_discriminator_loss_by_hand():
    real = torch.tensor([1.0, -2.0, 0.5])
    fake = torch.tensor([0.3, 2.0, -1.0])
    s = torch.tensor([[0.2], [-0.7], [1.5]])
    loss = discriminator_loss(ScalarD(), real, fake, s)
    # BCE(x, 1) = softplus(-x), BCE(x, 0) = softplus(x); means over the batch.
    mean = lambda values: sum(values) / len(values)  # noqa: E731
    real_u = mean([softplus(-x) for x in [1.0, -2.0, 0.5]])
    real_c = mean([softplus(-(x + y)) for x, y in zip([1.0, -2.0, 0.5], [0.2, -0.7, 1.5])])
    fake_u = mean([softplus(x) for x in [0.3, 2.0, -1.0]])
    fake_c = mean([softplus(x + y) for x, y in zip([0.3, 2.0, -1.0], [0.2, -0.7, 1.5])])
    wrong = mean([softplus(1.0 + -0.7), softplus(-2.0 + 1.5)])  # real b with sentence b+1
    expected = (real_u + real_c) / 2 + (fake_u + fake_c + wrong) / 3
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_zero_logits_give_log2_terms():
    zeros = torch.zeros(4)
    s = torch.zeros(4, 1)
    assert discriminator_loss(ScalarD(), zeros, zeros, s).item() == pytest.approx(2 * math.log(2))
    g = generator_adversarial_loss([ScalarD(), ScalarD()], [zeros, zeros], s)
    assert g.item() == pytest.approx(4 * math.log(2))


def test_generator_adversarial_loss_by_hand():
    fake = torch.tensor([0.3, -1.0])
    s = torch.tensor([[1.0], [0.5]])
    expected = (softplus(-0.3) + softplus(1.0)) / 2 + (softplus(-1.3) + softplus(0.5)) / 2
    got = generator_adversarial_loss([ScalarD()], [fake], s)
    assert got.item() == pytest.approx(expected, rel=1e-6)


def test_large_logits_stay_finite():
    big = torch.tensor([200.0, -200.0])
    s = torch.zeros(2, 1)
    assert torch.isfinite(discriminator_loss(ScalarD(), big, -big, s))
    assert torch.isfinite(generator_adversarial_loss([ScalarD()], [-big], s))


def test_discriminator_loss_needs_two_samples():
    with pytest.raises(ValueError, match="batch_size"):
        discriminator_loss(ScalarD(), torch.zeros(1), torch.zeros(1), torch.zeros(1, 1))


def test_kl_by_hand():
    zeros = torch.zeros(2, 3)
    assert kl_loss(zeros, zeros).item() == 0.0
    assert kl_loss(torch.ones(2, 3), zeros).item() == pytest.approx(0.5)
    assert kl_loss(zeros, torch.full((2, 3), math.log(2))).item() == pytest.approx(
        0.5 * (1 - math.log(2))
    )


class PoolEncoder(nn.Module):
    """An 'image encoder': regions = a fixed linear map of 4x4 pooled pixels, code = their mean."""

    def __init__(self, dim):
        super().__init__()
        self.proj = nn.Conv2d(3, dim, 1)
        self.requires_grad_(False)

    def forward(self, images):
        regions = self.proj(nn.functional.adaptive_avg_pool2d(images, 4))
        return regions, regions.mean(dim=(2, 3))


def test_damsm_generator_loss_matches_the_ops_and_detaches_text():
    torch.manual_seed(0)
    dim, batch, words_num = 6, 4, 5
    encoder = PoolEncoder(dim)
    images = torch.randn(batch, 3, 16, 16, requires_grad=True)
    words = torch.randn(batch, dim, words_num, requires_grad=True)
    sentence = torch.randn(batch, dim, requires_grad=True)
    lengths = torch.tensor([5, 2, 3, 1])
    class_ids = torch.tensor([0, 1, 0, 2])
    got = damsm_generator_loss(
        encoder, images, words, sentence, lengths, class_ids, impl="reference"
    )
    regions, code = encoder(images)
    w0, w1 = damsm_word_loss(
        words.detach(), lengths, regions, class_ids=class_ids, impl="reference"
    )
    s0, s1 = damsm_sentence_loss(code, sentence.detach(), class_ids=class_ids)
    for name, value in zip(("w0", "w1", "s0", "s1"), (w0, w1, s0, s1)):
        torch.testing.assert_close(got[name], value)
    sum(got.values()).backward()
    assert images.grad.abs().sum() > 0
    assert words.grad is None and sentence.grad is None
