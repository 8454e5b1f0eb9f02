"""GAN losses of AttnGAN (paper Eq. 3-5 and 13; docs/DESIGN.md), on logits.

The original applies a sigmoid in the discriminator and `nn.BCELoss`; here the discriminators
return logits and the losses use `binary_cross_entropy_with_logits`, the same value computed
without overflow. Per stage i, with x real, x̂ the generator's image, s the sentence vector:

    L_D_i = [BCE(D_u(x), 1) + BCE(D_c(x, s), 1)] / 2
          + [BCE(D_u(x̂), 0) + BCE(D_c(x̂, s), 0) + BCE(D_c(x_{0..B-2}, s_{1..B-1}), 0)] / 3

the last term pairing each real image with the next sample's sentence (a mismatched pair).

    L_G = sum_i [BCE(D_u(x̂_i), 1) + BCE(D_c(x̂_i, s), 1)]
        + λ (L_w0 + L_w1 + L_s0 + L_s1)          (DAMSM, Eq. 13, on the final image only)
        + KL,  KL = -0.5 · mean(1 + logvar - mu² - exp(logvar))

The DAMSM terms run the final generated image through the frozen image encoder and match it
against the frozen, detached text features of its own caption, masking same-class pairs
(`attngan.ops.damsm`).
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from attngan.distributed import SINGLE, World, gather, gather_lengths, gather_with_grad
from attngan.ops.damsm import damsm_sentence_loss, damsm_word_loss

__all__ = [
    "discriminator_loss",
    "generator_adversarial_loss",
    "damsm_losses",
    "damsm_generator_loss",
    "kl_loss",
    "generator_loss",
]


def _bce(logits: torch.Tensor, target: float) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, target))


def discriminator_loss(
    discriminator, real: torch.Tensor, fake: torch.Tensor, sentence: torch.Tensor
) -> torch.Tensor:
    """L_D of one stage. real, fake `[B, 3, s, s]` (pass `fake` detached), sentence `[B, D]`.

    Needs B >= 2 for the mismatched-pair term.
    """
    if real.shape[0] < 2:
        raise ValueError(
            f"the discriminator loss needs a batch of at least 2 (its mismatched "
            f"pairs use the next sample's sentence), got {real.shape[0]}; raise "
            "gan.batch_size"
        )
    real_features = discriminator(real)
    fake_features = discriminator(fake)
    real_loss = (
        _bce(discriminator.uncond_logits(real_features), 1.0)
        + _bce(discriminator.cond_logits(real_features, sentence), 1.0)
    ) / 2
    mismatched = discriminator.cond_logits(real_features[:-1], sentence[1:])
    fake_loss = (
        _bce(discriminator.uncond_logits(fake_features), 0.0)
        + _bce(discriminator.cond_logits(fake_features, sentence), 0.0)
        + _bce(mismatched, 0.0)
    ) / 3
    return real_loss + fake_loss


def generator_adversarial_loss(
    discriminators: Sequence, fakes: Sequence[torch.Tensor], sentence: torch.Tensor
) -> torch.Tensor:
    """sum over stages of [BCE(D_u(x̂_i), 1) + BCE(D_c(x̂_i, s), 1)]."""
    total = fakes[0].new_zeros(())
    for discriminator, fake in zip(discriminators, fakes, strict=True):
        features = discriminator(fake)
        total = (
            total
            + _bce(discriminator.uncond_logits(features), 1.0)
            + _bce(discriminator.cond_logits(features, sentence), 1.0)
        )
    return total


def damsm_losses(
    words: torch.Tensor,
    sentence: torch.Tensor,
    lengths: torch.Tensor,
    regions: torch.Tensor,
    code: torch.Tensor,
    class_ids: Optional[torch.Tensor],
    *,
    gamma1: float,
    gamma2: float,
    gamma3: float,
    impl: str,
    world: World = SINGLE,
) -> dict[str, torch.Tensor]:
    """The four DAMSM losses (Eq. 10-13) of captions (words `[B, D, L]`, sentence `[B, D]`,
    lengths `[B]`) against images (regions `[B, D, h, w]`, code `[B, D]`), same-class pairs
    masked by class_ids `[B]` (or None). On several ranks every caption is matched against every
    image of the global batch: each rank's features are gathered first, those that need
    gradients with them (attngan.distributed.gather_with_grad). Returns dict(w0, w1, s0, s1)."""
    if world.distributed:
        words, sentence, regions, code = (
            gather_with_grad(x, world) if x.requires_grad else gather(x, world)
            for x in (words, sentence, regions, code)
        )
        lengths = gather_lengths(lengths, regions.device, world)
        class_ids = None if class_ids is None else gather(class_ids, world)
    w0, w1 = damsm_word_loss(
        words,
        lengths,
        regions,
        class_ids=class_ids,
        gamma1=gamma1,
        gamma2=gamma2,
        gamma3=gamma3,
        impl=impl,
    )
    s0, s1 = damsm_sentence_loss(code, sentence, class_ids=class_ids, gamma3=gamma3)
    return {"w0": w0, "w1": w1, "s0": s0, "s1": s1}


def damsm_generator_loss(
    image_encoder,
    image: torch.Tensor,
    words: torch.Tensor,
    sentence: torch.Tensor,
    lengths: torch.Tensor,
    class_ids: Optional[torch.Tensor] = None,
    *,
    gamma1: float = 4.0,
    gamma2: float = 5.0,
    gamma3: float = 10.0,
    impl: str = "auto",
    world: World = SINGLE,
) -> dict[str, torch.Tensor]:
    """The four DAMSM losses of generated images (unweighted; the caller multiplies by λ).

    image `[B, 3, s, s]` in [-1, 1] (the final stage), words `[B, D, L]`, sentence `[B, D]`,
    lengths `[B]`, class_ids `[B]` or None. The text features are detached here, so only the
    generator receives gradients (the encoders are frozen by the caller); on several ranks of
    `world`, against the whole global batch (`damsm_losses`).
    Returns dict(w0, w1, s0, s1) of scalars.
    """
    regions, code = image_encoder(image)  # [B, D, h, w], [B, D]
    return damsm_losses(
        words.detach(),
        sentence.detach(),
        lengths,
        regions,
        code,
        class_ids,
        gamma1=gamma1,
        gamma2=gamma2,
        gamma3=gamma3,
        impl=impl,
        world=world,
    )


def kl_loss(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)) as the original: a mean over batch and dimensions."""
    return -0.5 * torch.mean(1 + logvar - mu.pow(2) - logvar.exp())


def generator_loss(
    discriminators: Sequence,
    image_encoder,
    fakes: Sequence[torch.Tensor],
    mu: torch.Tensor,
    logvar: torch.Tensor,
    words: torch.Tensor,
    sentence: torch.Tensor,
    lengths: torch.Tensor,
    class_ids: Optional[torch.Tensor],
    *,
    lambda_damsm: float,
    gamma1: float,
    gamma2: float,
    gamma3: float,
    impl: str,
    world: World = SINGLE,
) -> dict[str, torch.Tensor]:
    """L_G of the generator step: the adversarial terms of all stages, λ times the DAMSM losses
    of the final image (arguments as damsm_generator_loss) and the KL term of (mu, logvar).
    Returns dict(g_adv, w0, w1, s0, s1, kl, g_total)."""
    adversarial = generator_adversarial_loss(discriminators, fakes, sentence)
    damsm = damsm_generator_loss(
        image_encoder,
        fakes[-1],
        words,
        sentence,
        lengths,
        class_ids,
        gamma1=gamma1,
        gamma2=gamma2,
        gamma3=gamma3,
        impl=impl,
        world=world,
    )
    kl = kl_loss(mu, logvar)
    total = adversarial + lambda_damsm * sum(damsm.values()) + kl
    return {"g_adv": adversarial, **damsm, "kl": kl, "g_total": total}
