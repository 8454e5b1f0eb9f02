"""DAMSM matching: the word-level similarity of all (image, caption) pairs and both losses.

The math, eqs. 7-13 of the paper as the original computes them, is in docs/DESIGN.md, "DAMSM
word similarity" and "DAMSM losses". `damsm_word_similarity` is the hot op and the one entry to
its implementations: it validates the inputs, fixes the precision policy, asks
`attngan.backend.choose` and calls exactly one of "loop" and "reference"
(`attngan.ops.reference`), "cpp", "triton" or "cuda" (custom ops of `attngan.ops._library`).
"""

from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F

from attngan import autotune, backend
from attngan.ops import reference
from attngan.ops._checks import (
    check_dims,
    check_floating,
    check_lengths_tensor,
    check_not_empty,
    check_same_device,
    check_tensors,
)
from attngan.ops._library import (
    check_lengths_outside_op,
    cuda_limits,
    damsm_word_similarity_ops,
    lengths_on,
    unsupported_dtype,
)

__all__ = ["damsm_word_similarity", "damsm_word_loss", "damsm_sentence_loss"]

_OP = "damsm_word_similarity"
_NORM_EPS = 1e-8
ClassIds = Union[torch.Tensor, Sequence[int], None]


def _check_inputs(words, lengths, regions) -> None:
    """Raise one clear error for the first problem found in the inputs."""
    check_tensors(_OP, words=words, lengths=lengths, regions=regions)
    check_dims(_OP, words=(words, "[B_cap, D, L]"))
    if regions.dim() not in (3, 4):
        raise ValueError(
            f"{_OP}: regions must be [B_img, D, H, W] or [B_img, D, R], got shape "
            f"{tuple(regions.shape)}"
        )
    check_floating(_OP, words=words, regions=regions)
    check_same_device(_OP, words=words, regions=regions)
    check_lengths_tensor(_OP, lengths, words.shape[0], words.device)
    if regions.shape[1] != words.shape[1]:
        raise ValueError(
            f"{_OP}: words have D = {words.shape[1]} but regions have D = "
            f"{regions.shape[1]}; both encoders must share the embedding width"
        )
    check_not_empty(_OP, words=words, regions=regions)


def _unsupported(
    impl: str, dtype: torch.dtype, device: torch.device, shape_reasons: tuple
) -> Optional[str]:
    """None if `impl` takes inputs of this dtype on `device`, else why not. shape_reasons: the
    Triton and CUDA kernels' verdicts on the shapes (None where they fit)."""
    reason = unsupported_dtype(impl, dtype, device)
    if reason is None and impl in ("triton", "cuda"):
        reason = shape_reasons[impl == "cuda"]
    return reason


# Both run once per traced graph: torch.compile bakes their results in as constants instead of
# tracing the environment and import probing of attngan.backend (which would break the graph).
@torch.compiler.assume_constant_result
def _triton_available(device: torch.device) -> bool:
    return backend.unavailable_reason(_OP, "triton", device) is None


@torch.compiler.assume_constant_result
def _choose_impl(
    device: torch.device, impl: str, dtype: torch.dtype, shape_reasons: tuple, key: Optional[tuple]
) -> str:
    return backend.choose(
        _OP, device, impl, lambda name: _unsupported(name, dtype, device, shape_reasons), key
    )


def _shape_reasons(words: torch.Tensor, regions: torch.Tensor) -> tuple:
    """(Triton's, CUDA's) reason not to take these shapes, None where they fit, by each backend's
    own limits. Plain Python on the shapes, so torch.compile traces it (guarding on the shapes)."""
    triton_reason = None
    if _triton_available(words.device):
        from attngan.kernels import damsm as kernels

        triton_reason = kernels.damsm_word_similarity_supported(words, regions)
    cuda_reason, limits = None, cuda_limits(_OP)
    if limits and (
        words.shape[1] > limits["max_dim"]
        or words.shape[2] > limits["max_words"]
        or regions.shape[0] > limits["max_images"]
    ):
        cuda_reason = (
            f"the CUDA kernel takes D <= {limits['max_dim']}, L <= "
            f"{limits['max_words']} and at most {limits['max_images']} images, got "
            f"D = {words.shape[1]}, L = {words.shape[2]}, {regions.shape[0]} images"
        )
    return triton_reason, cuda_reason


def damsm_word_similarity(
    words: torch.Tensor,
    lengths: torch.Tensor,
    regions: torch.Tensor,
    *,
    gamma1: float = 4.0,
    gamma2: float = 5.0,
    impl: str = "auto",
) -> torch.Tensor:
    """Word-level DAMSM similarity S of every image against every caption (eqs. 7-10).

    Args:
        words: `[B_cap, D, L]` word features; slots t >= lengths[i] are padding, never read.
        lengths: `[B_cap]` integer, each in 1..L, on the CPU (no GPU synchronisation to check
            them) or on the device of words.
        regions: `[B_img, D, H, W]` or `[B_img, D, R]`; B_img may differ from B_cap.
        gamma1, gamma2: sharpness of the softmax over regions (eq. 9) and of the log-sum-exp
            over words (eq. 10).
        impl: "auto", "loop", "reference", "cpp", "triton" or "cuda" (`attngan.backend`).
    Returns:
        S `[B_img, B_cap]`, float32 (float64 for float64 inputs), differentiable in words and
        regions. Precision: docs/DESIGN.md, "Precision".
    """
    _check_inputs(words, lengths, regions)
    if regions.dim() == 4:
        regions = regions.flatten(2)  # [Bi, D, R]
    dtype = torch.promote_types(words.dtype, regions.dtype)
    impl = _choose_impl(
        words.device,
        impl,
        dtype,
        _shape_reasons(words, regions),
        autotune.damsm_key(words, regions, dtype, impl),
    )
    check_lengths_outside_op(_OP, impl, lengths, words.shape[2])
    with torch.autocast(device_type=words.device.type, enabled=False):
        if impl in ("loop", "reference"):
            compute = torch.float64 if dtype == torch.float64 else torch.float32
            function = (
                reference.damsm_word_similarity_loop
                if impl == "loop"
                else reference.damsm_word_similarity_reference
            )
            return function(
                words.to(compute),
                lengths_on(words.device, lengths),
                regions.to(compute),
                gamma1,
                gamma2,
            )
        return damsm_word_similarity_ops[impl](
            words.to(dtype), lengths, regions.to(dtype), float(gamma1), float(gamma2)
        )


def _class_mask(class_ids: ClassIds, batch: int, device: torch.device) -> Optional[torch.Tensor]:
    """[B, B] bool: True at (j, i), j != i, of the same class (those pairs are not negatives)."""
    if class_ids is None:
        return None
    ids = torch.as_tensor(class_ids, device=device)
    if ids.shape != (batch,):
        raise ValueError(
            f"class_ids must hold one class per sample, [{batch}], got shape {tuple(ids.shape)}"
        )
    same = ids[:, None] == ids[None, :]
    return same & ~torch.eye(batch, dtype=torch.bool, device=device)


def _matching_losses(
    logits: torch.Tensor, class_ids: ClassIds
) -> tuple[torch.Tensor, torch.Tensor]:
    """CE over captions for each image and over images for each caption (matches on the
    diagonal)."""
    batch = logits.shape[0]
    mask = _class_mask(class_ids, batch, logits.device)
    if mask is not None:
        logits = logits.masked_fill(mask, float("-inf"))
    labels = torch.arange(batch, device=logits.device)
    return F.cross_entropy(logits, labels), F.cross_entropy(logits.t(), labels)


def damsm_word_loss(
    words: torch.Tensor,
    lengths: torch.Tensor,
    regions: torch.Tensor,
    *,
    class_ids: ClassIds = None,
    gamma1: float = 4.0,
    gamma2: float = 5.0,
    gamma3: float = 10.0,
    impl: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Word-level DAMSM loss of a batch of matching (image, caption) pairs.

    Args:
        words, lengths, regions, gamma1, gamma2, impl: as `damsm_word_similarity`, with as many
            images as captions: image b matches caption b.
        class_ids: optional `[B]` class of each sample (tensor, list or numpy array); captions
            of the same class as an image, other than its own, are not counted as negatives.
        gamma3: scale of the similarities before the cross entropies (eq. 11).
    Returns:
        (loss_i2c, loss_c2i): float32 scalars (float64 for float64 inputs), the cross entropy
        of each image over the captions and of each caption over the images.
    """
    similarity = damsm_word_similarity(
        words, lengths, regions, gamma1=gamma1, gamma2=gamma2, impl=impl
    )
    if similarity.shape[0] != similarity.shape[1]:
        raise ValueError(
            f"damsm_word_loss: needs as many images as captions (image b matches "
            f"caption b), got {similarity.shape[0]} images and "
            f"{similarity.shape[1]} captions"
        )
    return _matching_losses(gamma3 * similarity, class_ids)


def damsm_sentence_loss(
    image_codes: torch.Tensor,
    sentences: torch.Tensor,
    *,
    class_ids: ClassIds = None,
    gamma3: float = 10.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sentence-level DAMSM loss: cosine of global image codes and sentence vectors.

    Args:
        image_codes: `[B, D]` global image codes.
        sentences: `[B, D]` sentence vectors; sentence b matches image b.
        class_ids: optional `[B]` classes, as in `damsm_word_loss`.
        gamma3: scale of the cosines before the cross entropies.
    Returns:
        (loss_i2c, loss_c2i) as in `damsm_word_loss`, computed in float32 (float64 for float64).
    """
    op = "damsm_sentence_loss"
    check_tensors(op, image_codes=image_codes, sentences=sentences)
    check_dims(op, image_codes=(image_codes, "[B, D]"), sentences=(sentences, "[B, D]"))
    check_floating(op, image_codes=image_codes, sentences=sentences)
    check_same_device(op, image_codes=image_codes, sentences=sentences)
    if image_codes.shape != sentences.shape:
        raise ValueError(
            f"{op}: image_codes {tuple(image_codes.shape)} and sentences "
            f"{tuple(sentences.shape)} must have one shape [B, D]"
        )
    compute = (
        torch.float64 if torch.float64 in (image_codes.dtype, sentences.dtype) else torch.float32
    )
    with torch.autocast(device_type=image_codes.device.type, enabled=False):
        codes, sents = image_codes.to(compute), sentences.to(compute)
        norms = (
            torch.linalg.vector_norm(codes, dim=1)[:, None]
            * torch.linalg.vector_norm(sents, dim=1)[None, :]
        )  # [B, B]
        cosine = codes @ sents.t() / norms.clamp(min=_NORM_EPS)
        return _matching_losses(gamma3 * cosine, class_ids)
