"""torch.library registration of the fused hot ops: one custom op per backend (docs/DESIGN.md,
"Registration").

Each fused backend ("cpp", "triton", "cuda") of an op becomes a `torch.library.custom_op`
`attngan::<op>_<backend>` with a fake function (torch.compile traces it without a graph break)
and `register_autograd`, whose backward calls the same backend's backward op (itself a custom
op), so `torch.library.opcheck` covers both directions. The launchers are imported only when an
op runs: this module imports without triton and without the compiled extension.
"""

from __future__ import annotations

import importlib
from typing import Callable, Optional

import torch
from torch import Tensor

from attngan import backend
from attngan.ops._checks import check_lengths

FUSED_BACKENDS = ("cpp", "triton", "cuda")
# Backends whose custom op checks the caption lengths' values itself, in its forward (eagerly or
# inside a torch.compile graph; the backward, with the same lengths, does not again): free for
# lengths kept on the CPU (the GPU ops accept them there and copy them over without waiting), one
# host synchronisation for lengths on the GPU. The C++ kernel checks them in C++ (CPU memory).
CHECKS_LENGTHS = ("triton", "cuda")


def check_lengths_outside_op(op: str, impl: str, lengths: Tensor, num_words: int) -> None:
    """The public ops' check of the lengths for an implementation whose custom op does not check
    them itself (not in CHECKS_LENGTHS). Skipped inside a torch.compile graph, which a
    data-dependent check would break; there the C++ kernel's own check stands in."""
    if impl not in CHECKS_LENGTHS and not torch.compiler.is_compiling():
        check_lengths(op, lengths, num_words)


def unsupported_dtype(impl: str, dtype: torch.dtype, device: torch.device) -> Optional[str]:
    """Why `impl` cannot take inputs of `dtype` on `device`, or None: the GPU kernels take
    float32, float16 and bfloat16; the Triton interpreter no bfloat16."""
    if impl in ("triton", "cuda") and dtype == torch.float64:
        return f"the {impl} kernel takes float32, float16 or bfloat16, not float64"
    return backend.interpreter_dtype_reason(impl, dtype, device)


def cuda_limits(op: str) -> dict[str, int]:
    """The size limits of the CUDA kernel of `op` as attngan._C exports them (csrc/cuda/limits.h),
    {} without the extension. A constant to torch.compile, which compares shapes against it."""
    return dict(_cuda_limit_items(op))


@torch.compiler.assume_constant_result
def _cuda_limit_items(op: str) -> tuple[tuple[str, int], ...]:
    extension = backend.compiled_extension()  # (a tuple: Dynamo takes no dict constant)
    return () if extension is None else tuple(extension.cuda_limits[op].items())


def lengths_on(device: torch.device, lengths: Tensor) -> Tensor:
    """The lengths as contiguous int64 on `device`. A copy from the CPU is queued without waiting
    for the device (the source is staged at once, so the caller may reuse it): lengths kept on
    the CPU cost the GPU ops no synchronisation."""
    return lengths.to(device, torch.int64, non_blocking=True).contiguous()


def _compiled_ops():
    """torch.ops.attngan_C, after loading attngan._C (which registers the C++/CUDA kernels)."""
    backend.compiled_extension()
    return torch.ops.attngan_C


def _launchers(module: str, op: str, impl: str) -> tuple[Callable, Callable]:
    """(<op>_fwd, <op>_bwd) of one backend: the Triton launchers in attngan.kernels.<module>, or
    the compiled ops torch.ops.attngan_C.<op>_{fwd,bwd} (C++ on CPU tensors, CUDA on CUDA ones)."""
    kernels = (
        importlib.import_module(f"attngan.kernels.{module}")
        if impl == "triton"
        else _compiled_ops()
    )
    return getattr(kernels, f"{op}_fwd"), getattr(kernels, f"{op}_bwd")


# ---------------------------------------------------------------------------------------------
# DAMSM word-level similarity (attngan.ops.damsm)
# C++ and CUDA: torch.ops.attngan_C.damsm_word_similarity_{fwd,bwd} (schemas in
# csrc/registration.cpp); Triton: attngan.kernels.damsm, same signatures.
# ---------------------------------------------------------------------------------------------


def _register_damsm_word_similarity(impl: str):
    """Define attngan::damsm_word_similarity_<impl> (+ _backward) and return the forward op."""
    name = f"attngan::damsm_word_similarity_{impl}"

    @torch.library.custom_op(name, mutates_args=())
    def forward(
        words: Tensor, lengths: Tensor, regions: Tensor, gamma1: float, gamma2: float
    ) -> Tensor:
        if impl in CHECKS_LENGTHS:
            check_lengths("damsm_word_similarity", lengths, words.shape[2])
        launch, _ = _launchers("damsm", "damsm_word_similarity", impl)
        return launch(
            words.contiguous(),
            lengths_on(words.device, lengths),
            regions.contiguous(),
            gamma1,
            gamma2,
        )

    @forward.register_fake
    def _(words, lengths, regions, gamma1, gamma2):
        dtype = torch.float64 if words.dtype == torch.float64 else torch.float32
        return words.new_empty((regions.shape[0], words.shape[0]), dtype=dtype)

    @torch.library.custom_op(name + "_backward", mutates_args=())
    def backward_op(
        grad_s: Tensor,
        words: Tensor,
        lengths: Tensor,
        regions: Tensor,
        gamma1: float,
        gamma2: float,
        need_words_grad: bool,
    ) -> tuple[Tensor, Tensor]:
        _, launch = _launchers("damsm", "damsm_word_similarity", impl)
        return launch(
            grad_s.contiguous(),
            words.contiguous(),
            lengths_on(words.device, lengths),
            regions.contiguous(),
            gamma1,
            gamma2,
            need_words_grad,
        )

    @backward_op.register_fake
    def _(grad_s, words, lengths, regions, gamma1, gamma2, need_words_grad):
        grad_words = words.new_empty(words.shape if need_words_grad else (0,))
        return grad_words, regions.new_empty(regions.shape)

    def setup_context(ctx, inputs, output):
        words, lengths, regions, gamma1, gamma2 = inputs
        ctx.save_for_backward(words, lengths, regions)
        ctx.gammas = (gamma1, gamma2)

    def backward(ctx, grad_s):
        words, lengths, regions = ctx.saved_tensors
        # A frozen text encoder (the GAN step) needs only the regions' gradient: skip the words'.
        need_words = ctx.needs_input_grad[0]
        grad_words, grad_regions = backward_op(
            grad_s, words, lengths, regions, *ctx.gammas, need_words
        )
        return (
            grad_words if need_words else None,
            None,
            grad_regions if ctx.needs_input_grad[2] else None,
            None,
            None,
        )

    forward.register_autograd(backward, setup_context=setup_context)
    return forward


# impl name -> forward custom op: op(words [Bc, D, L], lengths [Bc] int64 (on the CPU or the
# device of words), regions [Bi, D, R],
# gamma1, gamma2) -> S [Bi, Bc] float32 (float64 for float64 inputs), differentiable.
damsm_word_similarity_ops = {impl: _register_damsm_word_similarity(impl) for impl in FUSED_BACKENDS}


# ---------------------------------------------------------------------------------------------
# Word attention of the generator (attngan.ops.word_attention)
# C++ and CUDA: torch.ops.attngan_C.word_attention_{fwd,bwd} (schemas in
# csrc/registration.cpp); Triton: attngan.kernels.word_attention, same signatures.
# ---------------------------------------------------------------------------------------------


def _register_word_attention(impl: str):
    """Define attngan::word_attention_<impl> (+ _backward) and return the forward op."""
    name = f"attngan::word_attention_{impl}"

    @torch.library.custom_op(name, mutates_args=())
    def forward(
        query: Tensor, words: Tensor, lengths: Tensor, return_attn: bool, concat: bool
    ) -> tuple[Tensor, Tensor]:
        if impl in CHECKS_LENGTHS:
            check_lengths("word_attention", lengths, words.shape[2])
        launch, _ = _launchers("word_attention", "word_attention", impl)
        return launch(
            query.contiguous(),
            words.contiguous(),
            lengths_on(words.device, lengths),
            return_attn,
            concat,
        )

    @forward.register_fake
    def _(query, words, lengths, return_attn, concat):
        batch, channels, height, width = query.shape
        attn_shape = (batch, words.shape[2], height, width) if return_attn else (0,)
        out_shape = (batch, 2 * channels if concat else channels, height, width)
        return query.new_empty(out_shape), query.new_empty(attn_shape)

    @torch.library.custom_op(name + "_backward", mutates_args=())
    def backward_op(
        grad_out: Tensor,
        grad_attn: Optional[Tensor],
        query: Tensor,
        words: Tensor,
        lengths: Tensor,
        concat: bool,
    ) -> tuple[Tensor, Tensor]:
        _, launch = _launchers("word_attention", "word_attention", impl)
        grad_attn = grad_attn.contiguous() if grad_attn is not None else None
        return launch(
            grad_out.contiguous(),
            grad_attn,
            query.contiguous(),
            words.contiguous(),
            lengths_on(words.device, lengths),
            concat,
        )

    @backward_op.register_fake
    def _(grad_out, grad_attn, query, words, lengths, concat):
        return query.new_empty(query.shape), words.new_empty(words.shape)

    def setup_context(ctx, inputs, output):
        query, words, lengths, return_attn, concat = inputs
        ctx.save_for_backward(query, words, lengths)
        ctx.return_attn, ctx.concat = return_attn, concat
        ctx.out_shape = output[0].shape
        # An unused map (the usual case: it is only looked at) then arrives as None rather than
        # a [B, L, H, W] tensor of zeros the kernel would have to read.
        ctx.set_materialize_grads(False)

    def backward(ctx, grad_out, grad_attn):
        query, words, lengths = ctx.saved_tensors
        if grad_out is None:
            grad_out = query.new_zeros(ctx.out_shape)
        if not ctx.return_attn or grad_attn is None or grad_attn.numel() == 0:
            grad_attn = None
        grad_query, grad_words = backward_op(grad_out, grad_attn, query, words, lengths, ctx.concat)
        return grad_query, grad_words, None, None, None

    forward.register_autograd(backward, setup_context=setup_context)
    return forward


# impl name -> forward custom op: op(query [B, C, H, W], words [B, C, L], lengths [B] int64 (on
# the CPU or the device of words),
# return_attn, concat) -> (out, attn [B, L, H, W] or an empty tensor), differentiable; out is
# context [B, C, H, W], or with concat [query; context] [B, 2C, H, W].
word_attention_ops = {impl: _register_word_attention(impl) for impl in FUSED_BACKENDS}
