"""Word-region attention of the AttnGAN generator (SPEC section 1, stages 2 and 3; paper eq. 2).

Each image region (pixel) r of the hidden features h attends over the words of its own caption:

    s[b, r, l]   = sum_c h[b, c, r] * e'[b, c, l]              (no 1/sqrt(d) scaling)
    s[b, r, l]   = -inf                  for l >= lengths[b]   (padded words)
    attn[b, :, r] = softmax_l(s[b, r, :])
    context[b, c, r] = sum_l e'[b, c, l] * attn[b, l, r]

with e' = U e the words already projected to the image channels. The mask is per sample; the
original code's `mask.repeat(R, 1)` gave region r of sample b the mask of another sample (its
issue #93), which this op does not reproduce.

With `concat=True` the op returns torch.cat([h, context], 1) `[B, 2C, H, W]`, the input of the
generator's next layer, written by the fused kernels in the same pass that computes the context
(and, in the backward, the gradient of h's copy added in the same pass), which saves the copy
torch.cat makes in each direction.

`word_attention` is the one public entry point: it checks the inputs, applies the precision
policy, asks `attngan.backend.choose` for an implementation and calls exactly one of them:
"reference" (pure PyTorch, `attngan.ops.reference.word_attention_reference`), "cpp"
(csrc/cpu/word_attention.cpp), "triton" (kernels/word_attention.py) or "cuda"
(csrc/cuda/word_attention_kernel.cu). The fused ones are torch.library custom ops with their
own backward (attngan/ops/_library.py), so autograd, opcheck and torch.compile see them.
"""
from __future__ import annotations

from typing import Optional, Union

import torch

from attngan import autotune, backend
from attngan.ops._library import (check_lengths_device, check_lengths_outside_op, lengths_on,
                                  word_attention_ops)
from attngan.ops.reference import word_attention_reference

__all__ = ["word_attention", "word_attention_reference", "MAX_CHANNELS", "MAX_WORDS"]

# Largest C and L each fused kernel handles (its tiles live in registers / shared memory; the
# CUDA kernel also needs C * (L rounded up to 8, or to 48 / 64) <= 4096); "cpp" and "reference"
# take any size and dtype. Auto falls back to another implementation beyond these.
MAX_CHANNELS = {"triton": 256, "cuda": 128}
MAX_WORDS = {"triton": 64, "cuda": 64}
_CUDA_MAX_TILE = 4096
_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _check_inputs(query: torch.Tensor, words: torch.Tensor, lengths: torch.Tensor) -> None:
    """Raise one clear error for the first problem found in the inputs."""
    for name, tensor in (("query", query), ("words", words), ("lengths", lengths)):
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"word_attention: {name} must be a torch.Tensor, got {type(tensor).__name__}")
    if query.dim() != 4:
        raise ValueError(f"word_attention: query must be [B, C, H, W] (4 dims), got shape "
                         f"{tuple(query.shape)}; reshape region features [B, C, R] to [B, C, H, W]")
    if words.dim() != 3:
        raise ValueError(f"word_attention: words must be [B, C, L] (3 dims), got shape {tuple(words.shape)}")
    if lengths.dim() != 1:
        raise ValueError(f"word_attention: lengths must be [B] (1 dim), got shape {tuple(lengths.shape)}")
    batch, channels, height, width = query.shape
    if words.shape[0] != batch or lengths.shape[0] != batch:
        raise ValueError(f"word_attention: batch sizes differ: query {batch}, words {words.shape[0]}, "
                         f"lengths {lengths.shape[0]}; pass one caption per image")
    if words.shape[1] != channels:
        raise ValueError(f"word_attention: words have {words.shape[1]} channels but query has {channels}; "
                         f"project the words to the image channels first (1x1 conv D -> C)")
    if min(batch, channels, height, width, words.shape[2]) == 0:
        raise ValueError(f"word_attention: empty input (query {tuple(query.shape)}, words "
                         f"{tuple(words.shape)}); every size must be at least 1")
    if query.dtype not in _FLOAT_DTYPES or words.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"word_attention: query and words must be floating point (float16, bfloat16, "
                        f"float32 or float64), got {query.dtype} and {words.dtype}")
    if query.device != words.device:
        raise ValueError(f"word_attention: query is on {query.device} but words on {words.device}; "
                         f"move both to the same device")
    if lengths.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"word_attention: lengths must be an integer tensor (int64 or int32), got "
                        f"{lengths.dtype}; pass the caption lengths as a LongTensor")
    check_lengths_device("word_attention", lengths, query.device)


def _cuda_padded_words(num_words: int) -> int:
    return next(padded for padded in (8, 16, 24, 32, 48, 64) if num_words <= padded)


def _unsupported(impl: str, channels: int, num_words: int, dtype: torch.dtype,
                 device: str) -> Optional[str]:
    if impl in ("triton", "cuda") and dtype == torch.float64:
        return f"the {impl} kernel takes float32, float16 or bfloat16 (got float64)"
    if impl in MAX_CHANNELS and channels > MAX_CHANNELS[impl]:
        return f"C={channels} channels exceed the {impl} kernel's limit of {MAX_CHANNELS[impl]}"
    if impl in MAX_WORDS and num_words > MAX_WORDS[impl]:
        return f"L={num_words} words exceed the {impl} kernel's limit of {MAX_WORDS[impl]}"
    if impl == "cuda" and channels * _cuda_padded_words(num_words) > _CUDA_MAX_TILE:
        return (f"C={channels} x L={num_words} exceeds the cuda kernel's shared-memory tile "
                f"(C x L rounded up <= {_CUDA_MAX_TILE})")
    return backend.interpreter_dtype_reason(impl, dtype, device)


@torch.compiler.assume_constant_result
def _choose(device: str, impl: str, channels: int, num_words: int, dtype: torch.dtype,
            key: Optional[tuple]) -> str:
    """backend.choose for these sizes; torch.compile runs it once at trace time (it imports
    modules and reads the environment, which Dynamo cannot trace) and keeps the answer."""
    return backend.choose("word_attention", torch.device(device), impl,
                          supported=lambda candidate: _unsupported(candidate, channels,
                                                                   num_words, dtype, device),
                          key=key)


def _precision(query: torch.Tensor, words: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Under autocast the op acts like a matmul: both inputs in the autocast dtype. Otherwise the
    dtypes must already match (mixing would silently change precision)."""
    device_type = query.device.type
    if torch.is_autocast_enabled(device_type):
        dtype = torch.get_autocast_dtype(device_type)
        return query.to(dtype), words.to(dtype)
    if query.dtype != words.dtype:
        raise TypeError(f"word_attention: query is {query.dtype} but words are {words.dtype}; "
                        f"cast both to one dtype (or run under torch.autocast)")
    return query, words


def word_attention(query: torch.Tensor, words: torch.Tensor, lengths: torch.Tensor, *,
                   impl: str = "auto", return_attn: bool = False, concat: bool = False
                   ) -> Union[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """Attend from every image region to the words of its caption (SPEC section 1, paper eq. 2).

    Args:
        query: image features h `[B, C, H, W]`, float16/bfloat16/float32/float64, channel-first
            (any strides; made contiguous where a kernel needs it).
        words: projected word features e' `[B, C, L]`, same dtype and device as `query`.
        lengths: caption lengths `[B]`, int64 or int32, each in 1..L, on the CPU or the device
            of query. On the CPU their check costs a GPU op no host synchronisation (on the
            GPU: one per call).
            Words at positions l >= lengths[b] are padding: their scores are -inf, so whatever
            they hold (even NaN) changes no output and receives a zero gradient.
        impl: "auto", "reference", "cpp", "triton" or "cuda" (see attngan.backend; "auto" also
            honours ATTNGAN_IMPL).
        return_attn: also return the attention map.
        concat: return torch.cat([query, context], 1) `[B, 2C, H, W]` instead of the context
            alone (written in one pass by the fused kernels).

    Returns:
        context `[B, C, H, W]` (with `concat`, [query; context] `[B, 2C, H, W]`) in the input
        dtype, and with `return_attn` also attn `[B, L, H, W]` (softmax over L for each region;
        exactly 0 at padded words).

    Precision: scores and softmax accumulate in float32 (float64 for float64 inputs); outputs come
    back in the input dtype. Under torch.autocast both inputs are first cast to the autocast dtype.
    Raises ValueError/TypeError naming the problem for bad shapes, dtypes, devices or lengths, and
    RuntimeError when an explicitly requested `impl` cannot run here.
    """
    _check_inputs(query, words, lengths)
    query, words = _precision(query, words)
    chosen = _choose(str(query.device), impl, words.shape[1], words.shape[2], query.dtype,
                     autotune.word_attention_key(query, words, impl, return_attn, concat))
    check_lengths_outside_op("word_attention", chosen, lengths, words.shape[2])
    if chosen == "reference":
        with torch.autocast(query.device.type, enabled=False):
            result = word_attention_reference(query, words, lengths_on(query.device, lengths),
                                              return_attn=return_attn)
        context, attn = result if return_attn else (result, None)
        out = torch.cat([query, context], dim=1) if concat else context
    else:
        out, attn = word_attention_ops[chosen](query, words, lengths, return_attn, concat)
    return (out, attn) if return_attn else out
