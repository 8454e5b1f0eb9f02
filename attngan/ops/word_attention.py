"""Word-region attention of the AttnGAN generator (paper eq. 2; docs/DESIGN.md, "Word attention").

Each region of the image features attends over the words of its own caption; the mask is per
sample (the original's `mask.repeat(R, 1)` defect is not reproduced: docs/DEVIATIONS.md).
`word_attention` is the one public entry point: it validates the inputs, applies the precision
policy, asks `attngan.backend.choose` and calls exactly one of "reference"
(`attngan.ops.reference`), "cpp", "triton" or "cuda" (custom ops of `attngan.ops._library`).
"""

from __future__ import annotations

from typing import Optional, Union

import torch

from attngan import autotune, backend
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
    lengths_on,
    unsupported_dtype,
    word_attention_ops,
)
from attngan.ops.reference import word_attention_reference

__all__ = ["word_attention", "word_attention_reference"]
_OP = "word_attention"


def _check_inputs(query: torch.Tensor, words: torch.Tensor, lengths: torch.Tensor) -> None:
    """Raise one clear error for the first problem found in the inputs."""
    check_tensors(_OP, query=query, words=words, lengths=lengths)
    check_dims(_OP, query=(query, "[B, C, H, W]"), words=(words, "[B, C, L]"))
    check_floating(_OP, query=query, words=words)
    check_same_device(_OP, query=query, words=words)
    check_lengths_tensor(_OP, lengths, query.shape[0], query.device)
    if words.shape[0] != query.shape[0]:
        raise ValueError(
            f"{_OP}: batch sizes differ: query {query.shape[0]}, words "
            f"{words.shape[0]}; pass one caption per image"
        )
    if words.shape[1] != query.shape[1]:
        raise ValueError(
            f"{_OP}: words have {words.shape[1]} channels but query has "
            f"{query.shape[1]}; project the words to the image channels first "
            f"(1x1 conv D -> C)"
        )
    check_not_empty(_OP, query=query, words=words)


def _unsupported(
    impl: str, channels: int, num_words: int, dtype: torch.dtype, device: str
) -> Optional[str]:
    """None if `impl` takes C channels, L words and this dtype on `device`, else why not, by the
    backend's own limits ("reference" and "cpp" take any size)."""
    reason = unsupported_dtype(impl, dtype, torch.device(device))
    if reason is None and impl == "triton":
        from attngan.kernels import word_attention as kernels

        reason = kernels.word_attention_supported(channels, num_words)
    if reason is None and impl == "cuda":
        reason = (
            backend.compiled_extension().word_attention_cuda_unsupported(channels, num_words)
            or None
        )
    return reason


@torch.compiler.assume_constant_result
def _choose(
    device: str, impl: str, channels: int, num_words: int, dtype: torch.dtype, key: Optional[tuple]
) -> str:
    """backend.choose for these sizes; torch.compile runs it once at trace time (it imports
    modules and reads the environment, which Dynamo cannot trace) and keeps the answer."""
    return backend.choose(
        "word_attention",
        torch.device(device),
        impl,
        supported=lambda candidate: _unsupported(candidate, channels, num_words, dtype, device),
        key=key,
    )


def _precision(query: torch.Tensor, words: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Under autocast the op acts like a matmul: both inputs in the autocast dtype. Otherwise the
    dtypes must already match (mixing would silently change precision)."""
    device_type = query.device.type
    if torch.is_autocast_enabled(device_type):
        dtype = torch.get_autocast_dtype(device_type)
        return query.to(dtype), words.to(dtype)
    if query.dtype != words.dtype:
        raise TypeError(
            f"{_OP}: query is {query.dtype} but words are {words.dtype}; "
            f"cast both to one dtype (or run under torch.autocast)"
        )
    return query, words


def word_attention(
    query: torch.Tensor,
    words: torch.Tensor,
    lengths: torch.Tensor,
    *,
    impl: str = "auto",
    return_attn: bool = False,
    concat: bool = False,
) -> Union[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """Attend from every image region to the words of its caption (eq. 2).

    Args:
        query: image features h `[B, C, H, W]`, floating point, any strides.
        words: projected word features e' `[B, C, L]`, same dtype and device as `query` (under
            torch.autocast both are cast to the autocast dtype).
        lengths: `[B]` integer, each in 1..L, on the CPU (no GPU synchronisation to check them)
            or on the device of query; words l >= lengths[b] are padding, never read.
        impl: "auto", "reference", "cpp", "triton" or "cuda" (`attngan.backend`).
        return_attn: also return the map attn `[B, L, H, W]` (0 at padded words).
        concat: return torch.cat([query, context], 1) `[B, 2C, H, W]`, written in one pass.
    Returns:
        context `[B, C, H, W]` (or the concatenation) in the input dtype, and attn with
        `return_attn`. Precision: docs/DESIGN.md, "Precision".
    """
    _check_inputs(query, words, lengths)
    query, words = _precision(query, words)
    chosen = _choose(
        str(query.device),
        impl,
        words.shape[1],
        words.shape[2],
        query.dtype,
        autotune.word_attention_key(query, words, impl, return_attn, concat),
    )
    check_lengths_outside_op(_OP, chosen, lengths, words.shape[2])
    if chosen == "reference":
        with torch.autocast(query.device.type, enabled=False):
            result = word_attention_reference(
                query, words, lengths_on(query.device, lengths), return_attn=return_attn
            )
        context, attn = result if return_attn else (result, None)
        out = torch.cat([query, context], dim=1) if concat else context
    else:
        out, attn = word_attention_ops[chosen](query, words, lengths, return_attn, concat)
    return (out, attn) if return_attn else out
