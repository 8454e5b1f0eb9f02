"""Word attention of the generator as Triton kernels, forward and backward: the math of
docs/DESIGN.md, "Word attention" (no 1/sqrt(d) scaling, per-sample mask).

Mapping: one program per (block of BLOCK_R regions, sample b). A program loads its caption e
`[BLOCK_C, BLOCK_L]` once and its query tile `[BLOCK_C, BLOCK_R]` straight from the
channel-first layout (consecutive regions, consecutive addresses), forms the scores with one
tl.dot, the softmax in fp32 in registers and the context with a second tl.dot; the map is
written only when asked. The backward recomputes the softmax (nothing of size [B, R, L] is
stored), writes grad_query for its regions and adds its partial grad_words into an fp32 buffer
with atomics. With CONCAT the forward writes [h; context] `[B, 2C, H, W]` from the query tile it
holds, and the backward adds the first C channels of the output gradient to grad_query.
"""

from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

__all__ = [
    "word_attention_fwd",
    "word_attention_bwd",
    "word_attention_supported",
    "MAX_CHANNELS",
    "MAX_WORDS",
]

# Largest C and L the kernels take: the caption tile [C, L] and the query tile live in registers.
MAX_CHANNELS = 256
MAX_WORDS = 64
_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def word_attention_supported(channels: int, num_words: int) -> Optional[str]:
    """None if the kernels take C channels and L words, else a sentence saying why not."""
    if channels > MAX_CHANNELS or num_words > MAX_WORDS:
        return (
            f"the Triton kernel takes C <= {MAX_CHANNELS} and L <= {MAX_WORDS}, got "
            f"C = {channels}, L = {num_words}"
        )
    return None


@triton.jit
def _softmax_over_words(q, e, n, offs_l, DOT_PRECISION: tl.constexpr):
    """p [BLOCK_R, BLOCK_L] fp32: softmax over the n real words of s = q^T e."""
    s = tl.dot(tl.trans(q), e, input_precision=DOT_PRECISION)  # [BR, BL]
    s = tl.where((offs_l < n)[None, :], s, float("-inf"))
    p = tl.exp(s - tl.max(s, axis=1)[:, None])
    return p / tl.sum(p, axis=1)[:, None]


@triton.jit
def _program_tile(
    lengths_ptr, C, L, R, BLOCK_C: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_R: tl.constexpr
):
    """This program's caption b (program 1, int64 so that offsets of large batches fit), its length
    n clamped into [1, L] (the launchers do not read the lengths; the custom op checks them, but
    not while a CUDA graph is captured: no value may make a kernel touch memory past its caption),
    the channel, word and region offsets of its block of regions (program 0), their masks, and
    the offsets of its `[BC, BR]` tile of a `[B, C, R]` tensor."""
    block, b = tl.program_id(0), tl.program_id(1).to(tl.int64)
    n = tl.minimum(tl.maximum(tl.load(lengths_ptr + b), 1), L)
    offs_c = tl.arange(0, BLOCK_C)
    offs_l = tl.arange(0, BLOCK_L)
    offs_r = block * BLOCK_R + tl.arange(0, BLOCK_R)
    c_ok, r_ok = offs_c < C, offs_r < R
    tile = b * C * R + offs_c[:, None] * R + offs_r[None, :]
    return b, n, offs_c, offs_l, offs_r, c_ok, r_ok, tile


@triton.jit
def _word_attention_fwd_kernel(
    query_ptr,
    words_ptr,
    lengths_ptr,
    out_ptr,
    attn_ptr,
    C,
    L,
    R,
    RETURN_ATTN: tl.constexpr,
    CONCAT: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_L: tl.constexpr,
    BLOCK_R: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    b, n, offs_c, offs_l, offs_r, c_ok, r_ok, tile = _program_tile(
        lengths_ptr, C, L, R, BLOCK_C, BLOCK_L, BLOCK_R
    )
    q = tl.load(query_ptr + tile, mask=c_ok[:, None] & r_ok[None, :], other=0.0)
    e = tl.load(
        words_ptr + b * C * L + offs_c[:, None] * L + offs_l[None, :],
        mask=c_ok[:, None] & (offs_l < n)[None, :],
        other=0.0,
    )  # [BC, BL]
    p = _softmax_over_words(q, e, n, offs_l, DOT_PRECISION)  # [BR, BL]
    context = tl.dot(e, tl.trans(p.to(e.dtype)), input_precision=DOT_PRECISION)  # [BC, BR]
    tile_ok = c_ok[:, None] & r_ok[None, :]
    if CONCAT:  # out [B, 2C, R]: the query, then the context
        out_tile = b * 2 * C * R + offs_c[:, None] * R + offs_r[None, :]  # [BC, BR]
        tl.store(out_ptr + out_tile, q, mask=tile_ok)
        tl.store(out_ptr + out_tile + C * R, context.to(out_ptr.dtype.element_ty), mask=tile_ok)
    else:
        tl.store(out_ptr + tile, context.to(out_ptr.dtype.element_ty), mask=tile_ok)
    if RETURN_ATTN:
        attn_tile = b * L * R + offs_l[None, :] * R + offs_r[:, None]  # [BR, BL]
        tl.store(
            attn_ptr + attn_tile,
            p.to(attn_ptr.dtype.element_ty),
            mask=r_ok[:, None] & (offs_l < L)[None, :],
        )


@triton.jit
def _word_attention_bwd_kernel(
    query_ptr,
    words_ptr,
    lengths_ptr,
    grad_out_ptr,
    grad_attn_ptr,
    grad_query_ptr,
    grad_words_ptr,
    C,
    L,
    R,
    HAS_GRAD_ATTN: tl.constexpr,
    CONCAT: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_L: tl.constexpr,
    BLOCK_R: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    b, n, offs_c, offs_l, offs_r, c_ok, r_ok, tile = _program_tile(
        lengths_ptr, C, L, R, BLOCK_C, BLOCK_L, BLOCK_R
    )
    tile_ok = c_ok[:, None] & r_ok[None, :]
    q = tl.load(query_ptr + tile, mask=tile_ok, other=0.0)
    if CONCAT:  # grad_out [B, 2C, R]: the query's direct gradient, then gc
        direct_tile = b * 2 * C * R + offs_c[:, None] * R + offs_r[None, :]  # [BC, BR]
        gc_tile = direct_tile + C * R
    else:  # grad_out [B, C, R]: gc
        direct_tile = tile
        gc_tile = tile
    gc = tl.load(grad_out_ptr + gc_tile, mask=tile_ok, other=0.0)
    words_tile = b * C * L + offs_c[:, None] * L + offs_l[None, :]  # [BC, BL]
    e = tl.load(words_ptr + words_tile, mask=c_ok[:, None] & (offs_l < n)[None, :], other=0.0)
    p = _softmax_over_words(q, e, n, offs_l, DOT_PRECISION)  # [BR, BL]
    dp = tl.dot(tl.trans(gc), e, input_precision=DOT_PRECISION)  # [BR, BL]
    if HAS_GRAD_ATTN:
        dp += tl.load(
            grad_attn_ptr + b * L * R + offs_l[None, :] * R + offs_r[:, None],
            mask=r_ok[:, None] & (offs_l < n)[None, :],
            other=0.0,
        ).to(tl.float32)
    ds = p * (dp - tl.sum(p * dp, axis=1)[:, None])  # 0 at padded words
    ds_lp = ds.to(e.dtype)
    grad_query = tl.dot(e, tl.trans(ds_lp), input_precision=DOT_PRECISION)  # [BC, BR]
    if CONCAT:
        grad_query += tl.load(grad_out_ptr + direct_tile, mask=tile_ok, other=0.0).to(tl.float32)
    tl.store(grad_query_ptr + tile, grad_query.to(grad_query_ptr.dtype.element_ty), mask=tile_ok)
    grad_words = tl.dot(gc, p.to(e.dtype), input_precision=DOT_PRECISION)  # [BC, BL]
    grad_words += tl.dot(q, ds_lp, input_precision=DOT_PRECISION)
    # relaxed: the sums need no ordering, and the default acq_rel makes every add a fence
    tl.atomic_add(
        grad_words_ptr + words_tile,
        grad_words,
        mask=c_ok[:, None] & (offs_l < n)[None, :],
        sem="relaxed",
    )


def _check(query: torch.Tensor, words: torch.Tensor, lengths: torch.Tensor) -> None:
    """The kernels' preconditions (attngan.ops.word_attention validates the inputs with clear
    messages before any backend runs). The lengths' values are not read (that would wait for the
    device): the kernels clamp them into [1, L]."""
    if (
        query.dim() != 4
        or words.dim() != 3
        or lengths.dim() != 1
        or words.shape[:2] != query.shape[:2]
        or lengths.shape[0] != query.shape[0]
    ):
        raise ValueError(
            f"word_attention (triton): expected query [B, C, H, W], words [B, C, L], "
            f"lengths [B]; got {tuple(query.shape)}, {tuple(words.shape)}, "
            f"{tuple(lengths.shape)}"
        )
    if query.dtype not in _DTYPES or words.dtype != query.dtype:
        raise TypeError(
            f"word_attention (triton): query and words must share one of float32, "
            f"float16, bfloat16; got {query.dtype} and {words.dtype}"
        )
    if lengths.device != query.device or words.device != query.device:
        raise ValueError(
            f"word_attention (triton): query, words and lengths must be on one "
            f"device, got {query.device}, {words.device} and {lengths.device}"
        )
    reason = word_attention_supported(words.shape[1], words.shape[2])
    if reason is not None:
        raise ValueError(f"word_attention (triton): {reason}")


def _launch_options(query: torch.Tensor, words: torch.Tensor) -> dict:
    channels, num_words = words.shape[1], words.shape[2]
    block_c = max(16, triton.next_power_of_2(channels))
    fp32 = query.dtype == torch.float32
    # [BLOCK_C, BLOCK_R] tiles of about 4096 elements for 16-bit inputs and 2048 for fp32, whose
    # IEEE dots run on the FMA units and need more registers: with 4096 the fp32 kernels spilled
    # kilobytes per thread on sm_90; with these, ptxas reports no spills at the CUB and COCO
    # sizes in any dtype (tests/triton_sm90.py prints the counts, its test checks them).
    tile = 2048 if fp32 else 4096
    return dict(
        BLOCK_C=block_c,
        BLOCK_L=max(16, triton.next_power_of_2(num_words)),
        BLOCK_R=max(16, min(128, tile // block_c)),
        DOT_PRECISION="ieee" if fp32 else "tf32",
        num_warps=8 if fp32 or block_c > 64 else 4,
    )


def word_attention_fwd(
    query: torch.Tensor, words: torch.Tensor, lengths: torch.Tensor, return_attn: bool, concat: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """out and attn [B, L, H, W] (an empty tensor unless return_attn); out is context
    [B, C, H, W], or with concat [query; context] [B, 2C, H, W]."""
    _check(query, words, lengths)
    query, words, lengths = query.contiguous(), words.contiguous(), lengths.long().contiguous()
    batch, channels, height, width = query.shape
    num_words, regions = words.shape[2], height * width
    out = query.new_empty((batch, 2 * channels if concat else channels, height, width))
    attn = (
        query.new_empty((batch, num_words, height, width)) if return_attn else query.new_empty((0,))
    )
    options = _launch_options(query, words)
    grid = (triton.cdiv(regions, options["BLOCK_R"]), batch)
    _word_attention_fwd_kernel[grid](
        query,
        words,
        lengths,
        out,
        attn if return_attn else out,
        channels,
        num_words,
        regions,
        RETURN_ATTN=return_attn,
        CONCAT=concat,
        **options,
    )
    return out, attn


def word_attention_bwd(
    grad_out: torch.Tensor,
    grad_attn: Optional[torch.Tensor],
    query: torch.Tensor,
    words: torch.Tensor,
    lengths: torch.Tensor,
    concat: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(grad_query [B, C, H, W], grad_words [B, C, L]) from the gradient of the forward's out
    ([B, 2C, H, W] with concat); grad_attn may be None (map unused)."""
    _check(query, words, lengths)
    query, words, lengths = query.contiguous(), words.contiguous(), lengths.long().contiguous()
    batch, channels, height, width = query.shape
    expected = (batch, 2 * channels if concat else channels, height, width)
    if tuple(grad_out.shape) != expected:
        raise ValueError(
            f"word_attention (triton): the output gradient must be {expected}, got "
            f"{tuple(grad_out.shape)}"
        )
    grad_out = grad_out.to(query.dtype).contiguous()
    num_words, regions = words.shape[2], height * width
    has_grad_attn = grad_attn is not None and grad_attn.numel() > 0
    if has_grad_attn:
        grad_attn = grad_attn.to(query.dtype).contiguous()
    grad_query = torch.empty_like(query)
    grad_words = torch.zeros((batch, channels, num_words), dtype=torch.float32, device=query.device)
    options = _launch_options(query, words)
    options["num_warps"] = 8  # the backward holds twice the tiles of the forward
    grid = (triton.cdiv(regions, options["BLOCK_R"]), batch)
    _word_attention_bwd_kernel[grid](
        query,
        words,
        lengths,
        grad_out,
        grad_attn if has_grad_attn else grad_out,
        grad_query,
        grad_words,
        channels,
        num_words,
        regions,
        HAS_GRAD_ATTN=has_grad_attn,
        CONCAT=concat,
        **options,
    )
    return grad_query, grad_words.to(query.dtype)
