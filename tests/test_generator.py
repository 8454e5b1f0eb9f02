"""Generator (attngan/nn/generator.py): shapes at 1, 2 and 3 stages, per-sample masking,
the original's initialisation, gradients, that `impl` reaches the word attention op, that the fused
kernel (its concat variant) gives the reference's images and gradients, and that training
without attention maps changes nothing else."""

import pytest
import torch

from attngan.config import ConfigError, GANConfig
from attngan.nn import generator as generator_module
from attngan.nn.generator import ConditioningAugmentation, Generator

D, B, L = 16, 4, 7
GAN = GANConfig(ngf=8, z_dim=12, cond_dim=10, r_num=1)


def _inputs(lengths=(7, 3, 1, 5)):
    lengths = torch.tensor(lengths)
    words = torch.randn(B, D, L)
    words = words * (torch.arange(L)[None, None, :] < lengths[:, None, None])  # padded slots 0
    return torch.randn(B, GAN.z_dim), torch.randn(B, D), words, lengths


@pytest.mark.parametrize("branch_num,base_size", [(1, 16), (2, 16), (3, 16), (2, 32), (1, 64)])
def test_shapes_per_stage(branch_num, base_size):
    netG = Generator(GAN, D, branch_num, base_size, impl="reference")
    z, sentence, words, lengths = _inputs()
    images, maps, mu, logvar = netG(z, sentence, words, lengths)
    assert [tuple(x.shape) for x in images] == [
        (B, 3, base_size * 2**i, base_size * 2**i) for i in range(branch_num)
    ]
    assert [tuple(a.shape) for a in maps] == [
        (B, L, base_size * 2**i, base_size * 2**i) for i in range(branch_num - 1)
    ]
    assert mu.shape == logvar.shape == (B, GAN.cond_dim)
    for image in images:
        assert image.abs().max() <= 1.0
    for attn in maps:
        torch.testing.assert_close(attn.sum(dim=1), torch.ones(B, *attn.shape[2:]))
        padded = torch.arange(L)[None, :] >= lengths[:, None]  # [B, L]
        assert (
            attn.permute(0, 2, 3, 1)[padded[:, None, None, :].expand(-1, *attn.shape[2:], -1)]
            .abs()
            .max()
            == 0
        )


def test_first_stage_channels_follow_spec_at_64():
    netG = Generator(GANConfig(ngf=4, z_dim=8, cond_dim=8), D, 1, 64)
    assert netG.first.channels == 16 * 4  # [16ngf, 4, 4]
    assert len(netG.first.up) == 4


def test_padded_word_slots_change_nothing():
    netG = Generator(GAN, D, 3, 16, impl="reference")
    z, sentence, words, lengths = _inputs()
    garbage = words.clone()
    garbage[torch.arange(L)[None, None, :].expand(B, D, L) >= lengths[:, None, None]] = 1e3
    torch.manual_seed(1)
    out1 = netG(z, sentence, words, lengths)
    torch.manual_seed(1)
    out2 = netG(z, sentence, garbage, lengths)
    for a, b in zip(out1[0] + out1[1], out2[0] + out2[1]):
        torch.testing.assert_close(a, b)


def test_each_sample_uses_its_own_mask():
    """Every sample attends alone as it does inside a batch of other lengths (the original's
    mask.repeat defect gave region r of sample b the mask of another sample)."""
    netG = Generator(GAN, D, 2, 16, impl="reference").eval()  # eval: BN per sample
    netG.ca.forward = lambda s: (s[:, : GAN.cond_dim],) * 3  # no noise: comparable runs
    z, sentence, words, lengths = _inputs()
    _, batch_maps, _, _ = netG(z, sentence, words, lengths)
    for b in range(B):
        _, alone, _, _ = netG(
            z[b : b + 1], sentence[b : b + 1], words[b : b + 1, :, : lengths[b]], lengths[b : b + 1]
        )
        torch.testing.assert_close(batch_maps[0][b : b + 1, : lengths[b]], alone[0])


def test_conditioning_augmentation_samples_around_mu():
    ca = ConditioningAugmentation(D, 10)
    sentence = torch.randn(3, D)
    c1, mu, logvar = ca(sentence)
    c2, _, _ = ca(sentence)
    assert not torch.equal(c1, c2)  # fresh eps each call
    with torch.no_grad():
        ca.fc.weight.zero_()
        ca.fc.bias.copy_(
            torch.cat([torch.full((10,), 2.0), torch.full((10,), -50.0), torch.full((20,), 50.0)])
        )
    c, mu, logvar = ca(sentence)  # GLU: a * sigmoid(b)
    torch.testing.assert_close(mu, torch.full((3, 10), 2.0))
    torch.testing.assert_close(c, mu, atol=1e-6, rtol=0)  # exp(-25) noise


def test_init_follows_spec():
    torch.manual_seed(0)
    netG = Generator(GANConfig(ngf=16), D, 2, 16)
    bn_weights = torch.cat(
        [
            m.weight.detach()
            for m in netG.modules()
            if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d))
        ]
    )
    assert abs(bn_weights.mean().item() - 1.0) < 0.01
    assert 0.01 < bn_weights.std().item() < 0.03
    conv = netG.stages[0].up[1].weight.detach().flatten(1)  # [out, in·9], out < in·9
    torch.testing.assert_close(conv @ conv.T, torch.eye(conv.shape[0]), atol=1e-4, rtol=0)
    assert torch.count_nonzero(netG.ca.fc.bias) == 0


def test_gradients_reach_every_parameter():
    netG = Generator(GAN, D, 3, 16, impl="reference")
    z, sentence, words, lengths = _inputs()
    images, _, mu, logvar = netG(z, sentence, words, lengths)
    (sum(x.square().mean() for x in images) + mu.mean() + logvar.mean()).backward()
    for name, p in netG.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_impl_is_passed_to_word_attention(monkeypatch):
    seen = []
    real = generator_module.word_attention

    def recording(*args, impl, return_attn, concat):
        seen.append(impl)
        return real(*args, impl="reference", return_attn=return_attn, concat=concat)

    monkeypatch.setattr(generator_module, "word_attention", recording)
    monkeypatch.setenv("ATTNGAN_IMPL", "cpp")  # a module never reads the environment
    netG = Generator(GAN, D, 3, 16, impl="reference")
    netG(*_inputs())
    assert seen == ["reference", "reference"]


def _images_and_grads(netG, inputs, return_attention=True):
    netG.zero_grad(set_to_none=True)
    images, maps, mu, logvar = netG(*inputs, return_attention=return_attention)
    (sum(x.square().mean() for x in images) + mu.mean()).backward()
    return images, maps, {name: p.grad.clone() for name, p in netG.named_parameters()}


def test_fused_kernel_gives_the_reference_images_and_gradients():
    torch.manual_seed(0)
    netG = Generator(GAN, D, 3, 16, impl="reference").double()
    inputs = [t.double() if t.is_floating_point() else t for t in _inputs()]
    torch.manual_seed(1)  # same conditioning-augmentation noise
    expected = _images_and_grads(netG, inputs)
    for stage in netG.stages:
        stage.impl = "cpp"
    torch.manual_seed(1)
    got = _images_and_grads(netG, inputs)
    for a, b in zip(expected[0] + expected[1], got[0] + got[1]):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    for name in expected[2]:
        torch.testing.assert_close(expected[2][name], got[2][name], rtol=1e-9, atol=1e-12)


def test_training_without_attention_maps_changes_nothing_else():
    netG = Generator(GAN, D, 3, 16, impl="cpp")
    inputs = _inputs()
    torch.manual_seed(1)
    images, maps, grads = _images_and_grads(netG, inputs)
    torch.manual_seed(1)
    images_only, no_maps, grads_only = _images_and_grads(netG, inputs, return_attention=False)
    assert len(maps) == 2 and no_maps == []
    for a, b in zip(images, images_only):
        assert torch.equal(a, b)
    for name in grads:
        assert torch.equal(grads[name], grads_only[name]), name


@pytest.mark.parametrize("base_size", [4, 12, 48])
def test_bad_base_size_is_a_clear_error(base_size):
    with pytest.raises(ConfigError, match="base_size"):
        Generator(GAN, D, 2, base_size)
