"""DAMSM matching scores and losses (SPEC section 2; paper eqs. 7-13).

Word level, for image j (regions v_j `[D, R]`) and caption i (its n_i words e_i `[D, n_i]`):
    s = v_j^T e_i                                    `[R, n_i]`          (eq. 7)
    p = softmax over words of s, per region                                (eq. 8)
    alpha = softmax over regions of gamma1 * p, per word                   (eq. 9)
    c_t = sum_r alpha[t, r] v_r;  R_t = cos(e_t, c_t), norm product clamped at 1e-8
    S[j, i] = log sum_t exp(gamma2 * R_t)            (eq. 10 as the original codes it: no 1/gamma2)
Padded words take part in no step. Sentence level: S'[j, i] = cos(code of image j, sentence
vector of caption i). Both losses: logits = gamma3 * S (rows images, columns captions); entries
(j, i) with j != i of the same class are set to -inf; loss = CE(logits, arange) (image to
caption) and CE(logits^T, arange) (caption to image) (eqs. 11-13).

`damsm_word_similarity` is the hot op and the one entry point to its implementations: it checks
the inputs, fixes the precision policy, asks `attngan.backend.choose` and calls exactly one of
"loop" (the original's per-caption loop), "reference" (vectorized PyTorch, both in
`attngan.ops.reference`), "cpp" (csrc/cpu/damsm.cpp), "triton" (kernels/damsm.py) or "cuda"
(csrc/cuda). The fused ones are torch.library custom ops with their own backward
(attngan/ops/_library.py). All pairs are scored at once, for any numbers of images and captions.
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F

from attngan import autotune, backend
from attngan.ops import reference
from attngan.ops._library import (check_lengths_device, check_lengths_outside_op,
                                  damsm_word_similarity_ops, lengths_on)

__all__ = ["damsm_word_similarity", "damsm_word_loss", "damsm_sentence_loss"]

_OP = "damsm_word_similarity"
_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_INT_DTYPES = (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)
_NORM_EPS = 1e-8
ClassIds = Union[torch.Tensor, Sequence[int], None]


def _check_inputs(words, lengths, regions) -> None:
    """Raise one clear ValueError for the first problem found in the inputs."""
    for arg, value in (("words", words), ("lengths", lengths), ("regions", regions)):
        if not isinstance(value, torch.Tensor):
            raise ValueError(f"damsm_word_similarity: {arg} must be a torch.Tensor, "
                             f"got {type(value).__name__}")
    if words.dim() != 3:
        raise ValueError(f"damsm_word_similarity: words must be [B_cap, D, L], got shape "
                         f"{tuple(words.shape)}")
    if regions.dim() not in (3, 4):
        raise ValueError(f"damsm_word_similarity: regions must be [B_img, D, H, W] or "
                         f"[B_img, D, R], got shape {tuple(regions.shape)}")
    for arg, value in (("words", words), ("regions", regions)):
        if value.dtype not in _FLOAT_DTYPES:
            raise ValueError(f"damsm_word_similarity: {arg} has dtype {value.dtype}; use float32, "
                             f"float16, bfloat16 or float64")
    if lengths.dtype not in _INT_DTYPES:
        raise ValueError(f"damsm_word_similarity: lengths must be an integer tensor (torch.long), "
                         f"got dtype {lengths.dtype}")
    if lengths.dim() != 1 or lengths.shape[0] != words.shape[0]:
        raise ValueError(f"damsm_word_similarity: lengths must be [B_cap] = [{words.shape[0]}] "
                         f"(one length per caption), got shape {tuple(lengths.shape)}")
    if regions.device != words.device:
        raise ValueError(f"damsm_word_similarity: regions are on {regions.device} but words are "
                         f"on {words.device}; move both to one device")
    check_lengths_device("damsm_word_similarity", lengths, words.device)
    if regions.shape[1] != words.shape[1]:
        raise ValueError(f"damsm_word_similarity: words have D = {words.shape[1]} but regions "
                         f"have D = {regions.shape[1]}; both encoders must share the embedding "
                         f"width")
    if words.numel() == 0 or regions.numel() == 0:
        raise ValueError(f"damsm_word_similarity: empty input (words {tuple(words.shape)}, "
                         f"regions {tuple(regions.shape)}); every size must be at least 1")


# Largest D and L of the CUDA kernel (kDamsmMaxDim, kDamsmMaxWords in csrc/cuda/damsm_kernel.h:
# its word tiles live in shared memory). The Triton kernels state theirs themselves.
CUDA_MAX_DIM = 256
CUDA_MAX_WORDS = 32


def _unsupported(impl: str, dtype: torch.dtype, device: torch.device,
                 shape_reasons: tuple) -> Optional[str]:
    """None if `impl` takes inputs of this dtype on `device`, else why not. shape_reasons: the
    Triton and CUDA kernels' verdicts on the shapes (None where they fit)."""
    if impl in ("triton", "cuda") and dtype == torch.float64:
        return f"the {impl} kernel takes float32, float16 or bfloat16, not float64"
    if impl in ("triton", "cuda") and shape_reasons[impl == "cuda"]:
        return shape_reasons[impl == "cuda"]
    return backend.interpreter_dtype_reason(impl, dtype, device)


# Both run once per traced graph: torch.compile bakes their results in as constants instead of
# tracing the environment and import probing of attngan.backend (which would break the graph).
@torch.compiler.assume_constant_result
def _triton_available(device: torch.device) -> bool:
    return backend.unavailable_reason(_OP, "triton", device) is None


@torch.compiler.assume_constant_result
def _choose_impl(device: torch.device, impl: str, dtype: torch.dtype,
                 shape_reasons: tuple, key: Optional[tuple]) -> str:
    return backend.choose(_OP, device, impl,
                          lambda name: _unsupported(name, dtype, device, shape_reasons), key)


def _shape_reasons(words: torch.Tensor, regions: torch.Tensor) -> tuple:
    """(Triton's, CUDA's) reason not to take these shapes, None where they fit. Plain Python on
    the shapes, so torch.compile traces it (guarding on the shapes)."""
    triton_reason = None
    if _triton_available(words.device):
        from attngan.kernels import damsm as kernels
        triton_reason = kernels.damsm_word_similarity_supported(words, regions)
    cuda_reason = None
    if words.shape[1] > CUDA_MAX_DIM or words.shape[2] > CUDA_MAX_WORDS:
        cuda_reason = (f"the CUDA kernel takes D <= {CUDA_MAX_DIM} and L <= {CUDA_MAX_WORDS} "
                       f"words")
    return triton_reason, cuda_reason


def damsm_word_similarity(words: torch.Tensor, lengths: torch.Tensor, regions: torch.Tensor, *,
                          gamma1: float = 4.0, gamma2: float = 5.0,
                          impl: str = "auto") -> torch.Tensor:
    """Word-level DAMSM similarity of every image against every caption (eqs. 7-10).

    Args:
        words: `[B_cap, D, L]` word features; slots t >= lengths[i] are padding and never read
            (garbage or NaN there changes no output and no gradient; their gradient is 0).
        lengths: `[B_cap]` integer tensor, each in 1..L, on the CPU or the device of words. On
            the CPU their check costs a GPU op no host synchronisation (on the GPU: one per
            call).
        regions: `[B_img, D, H, W]` or `[B_img, D, R]` region features. B_img may differ from
            B_cap (R-precision scores one image against 100 captions).
        gamma1: sharpness of the softmax over regions (eq. 9).
        gamma2: sharpness of the log-sum-exp over words (eq. 10).
        impl: "auto", "loop", "reference", "cpp", "triton" or "cuda" (see attngan.backend).
    Returns:
        S `[B_img, B_cap]`: S[j, i] scores image j against caption i. float32 for float32,
        float16 and bfloat16 inputs (float64 for float64), differentiable in words and regions.

    Precision: float16/bfloat16 inputs are read as they are and every product, softmax, cosine
    and log-sum-exp accumulates in float32; gradients come back in the inputs' dtypes. Words
    and regions of different dtypes are promoted to a common one. Autocast is switched off
    inside (the op fixes its own policy).
    """
    _check_inputs(words, lengths, regions)
    if regions.dim() == 4:
        regions = regions.flatten(2)                                              # [Bi, D, R]
    dtype = torch.promote_types(words.dtype, regions.dtype)
    impl = _choose_impl(words.device, impl, dtype, _shape_reasons(words, regions),
                        autotune.damsm_key(words, regions, dtype, impl))
    check_lengths_outside_op("damsm_word_similarity", impl, lengths, words.shape[2])
    with torch.autocast(device_type=words.device.type, enabled=False):
        if impl in ("loop", "reference"):
            compute = torch.float64 if dtype == torch.float64 else torch.float32
            function = (reference.damsm_word_similarity_loop if impl == "loop"
                        else reference.damsm_word_similarity_reference)
            return function(words.to(compute), lengths_on(words.device, lengths),
                            regions.to(compute), gamma1, gamma2)
        return damsm_word_similarity_ops[impl](words.to(dtype), lengths, regions.to(dtype),
                                               float(gamma1), float(gamma2))


def _class_mask(class_ids: ClassIds, batch: int, device: torch.device) -> Optional[torch.Tensor]:
    """[B, B] bool: True at (j, i), j != i, of the same class (those pairs are not negatives)."""
    if class_ids is None:
        return None
    ids = torch.as_tensor(class_ids, device=device)
    if ids.shape != (batch,):
        raise ValueError(f"class_ids must hold one class per sample, [{batch}], got shape "
                         f"{tuple(ids.shape)}")
    same = ids[:, None] == ids[None, :]
    return same & ~torch.eye(batch, dtype=torch.bool, device=device)


def _matching_losses(logits: torch.Tensor, class_ids: ClassIds) -> tuple[torch.Tensor, torch.Tensor]:
    """CE over captions for each image and over images for each caption (matches on the diagonal)."""
    batch = logits.shape[0]
    mask = _class_mask(class_ids, batch, logits.device)
    if mask is not None:
        logits = logits.masked_fill(mask, float("-inf"))
    labels = torch.arange(batch, device=logits.device)
    return F.cross_entropy(logits, labels), F.cross_entropy(logits.t(), labels)


def damsm_word_loss(words: torch.Tensor, lengths: torch.Tensor, regions: torch.Tensor, *,
                    class_ids: ClassIds = None, gamma1: float = 4.0, gamma2: float = 5.0,
                    gamma3: float = 10.0, impl: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
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
    similarity = damsm_word_similarity(words, lengths, regions, gamma1=gamma1, gamma2=gamma2,
                                       impl=impl)
    if similarity.shape[0] != similarity.shape[1]:
        raise ValueError(f"damsm_word_loss: needs as many images as captions (image b matches "
                         f"caption b), got {similarity.shape[0]} images and "
                         f"{similarity.shape[1]} captions")
    return _matching_losses(gamma3 * similarity, class_ids)


def damsm_sentence_loss(image_codes: torch.Tensor, sentences: torch.Tensor, *,
                        class_ids: ClassIds = None,
                        gamma3: float = 10.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Sentence-level DAMSM loss: cosine of global image codes and sentence vectors.

    Args:
        image_codes: `[B, D]` global image codes.
        sentences: `[B, D]` sentence vectors; sentence b matches image b.
        class_ids: optional `[B]` classes, as in `damsm_word_loss`.
        gamma3: scale of the cosines before the cross entropies.
    Returns:
        (loss_i2c, loss_c2i) as in `damsm_word_loss`, computed in float32 (float64 for float64).
    """
    for arg, value in (("image_codes", image_codes), ("sentences", sentences)):
        if not isinstance(value, torch.Tensor) or value.dim() != 2 \
                or value.dtype not in _FLOAT_DTYPES:
            raise ValueError(f"damsm_sentence_loss: {arg} must be a floating [B, D] tensor, got "
                             f"{tuple(value.shape) if isinstance(value, torch.Tensor) else value!r}")
    if image_codes.shape != sentences.shape or image_codes.device != sentences.device:
        raise ValueError(f"damsm_sentence_loss: image_codes {tuple(image_codes.shape)} on "
                         f"{image_codes.device} and sentences {tuple(sentences.shape)} on "
                         f"{sentences.device} must have one shape [B, D] and one device")
    compute = torch.float64 if torch.float64 in (image_codes.dtype, sentences.dtype) \
        else torch.float32
    with torch.autocast(device_type=image_codes.device.type, enabled=False):
        codes, sents = image_codes.to(compute), sentences.to(compute)
        norms = torch.linalg.vector_norm(codes, dim=1)[:, None] \
            * torch.linalg.vector_norm(sents, dim=1)[None, :]                     # [B, B]
        cosine = codes @ sents.t() / norms.clamp(min=_NORM_EPS)
        return _matching_losses(gamma3 * cosine, class_ids)
