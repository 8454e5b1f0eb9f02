"""torch.library registration of the fused hot ops: one custom op per backend.

Each fused backend (C++ "cpp", "triton", CUDA "cuda") of an op becomes a
`torch.library.custom_op` named `attngan::<op>_<backend>` with
- a fake (meta) function, so torch.compile traces it without running it (no graph break),
- `register_autograd` whose backward calls the same backend's backward op (itself a custom op,
  `attngan::<op>_<backend>_backward`), so `torch.library.opcheck` covers both directions.
The launchers run only when an op is called: this module imports on a machine with neither
triton nor the compiled extension. `torch.library.triton_op` + `wrap_triton` is not used: on
CPU tensors under the Triton interpreter it fails opcheck and fullgraph compilation (fake
tracing reaches the kernel), while custom_op + register_fake passes both.
Launchers get contiguous inputs: gradients arriving from `.sum()` are stride-0 expanded views,
and the lengths on the features' device (`lengths_on`): callers may keep them on the CPU.
"""
from __future__ import annotations

import importlib
from typing import Callable, Optional

import torch
from torch import Tensor

from attngan import backend

FUSED_BACKENDS = ("cpp", "triton", "cuda")
# Backends whose custom op checks the caption lengths itself, in its forward (check_lengths),
# eagerly or inside a torch.compile graph, and its backward (same lengths) not again. The check
# reads the values: free for lengths kept on the CPU (the GPU ops accept them there and copy
# them over without waiting), one host synchronisation per call for lengths on the GPU. The
# kernels clamp lengths into [1, L] besides, so no value can make them read out of bounds. The
# C++ kernel checks lengths in C++ (CPU memory, no synchronisation); callers check the rest.
CHECKS_LENGTHS = ("triton", "cuda")


def check_lengths(op: str, lengths: Tensor, num_words: int) -> None:
    """Raise one ValueError unless every caption length is in 1..L = 1..num_words. Free for CPU
    lengths; one host synchronisation for GPU ones (both extremes come back in one copy), skipped
    while a CUDA graph is captured, which forbids synchronising: the kernels' clamp keeps a
    replay in bounds."""
    if lengths.is_cuda and torch.cuda.is_current_stream_capturing():
        return
    low, high = torch.stack(torch.aminmax(lengths)).tolist()
    if low < 1 or high > num_words:
        raise ValueError(f"{op}: every length must be in 1..L = 1..{num_words}, got min {low}, "
                         f"max {high}: a caption needs at least one word, and lengths must be "
                         f"<= L, the word slots of words.shape[2]")


def check_lengths_outside_op(op: str, impl: str, lengths: Tensor, num_words: int) -> None:
    """The public ops' check of the lengths for an implementation whose custom op does not check
    them itself (not in CHECKS_LENGTHS). Skipped inside a torch.compile graph, which a
    data-dependent check would break; there the C++ kernel's own check stands in."""
    if impl not in CHECKS_LENGTHS and not torch.compiler.is_compiling():
        check_lengths(op, lengths, num_words)


def check_lengths_device(op: str, lengths: Tensor, device: torch.device) -> None:
    """Raise one ValueError unless the lengths are on the CPU or on `device` (the features')."""
    if lengths.device not in (device, torch.device("cpu")):
        where = ("the CPU" if device.type == "cpu" else
                 f"the CPU (checked there without waiting for the GPU) or on {device}")
        raise ValueError(f"{op}: lengths are on {lengths.device} but the features on {device}; "
                         f"put lengths on {where}")


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
    kernels = (importlib.import_module(f"attngan.kernels.{module}") if impl == "triton"
               else _compiled_ops())
    return getattr(kernels, f"{op}_fwd"), getattr(kernels, f"{op}_bwd")


# ---------------------------------------------------------------------------------------------
# DAMSM word-level similarity (SPEC section 2; attngan.ops.damsm)
# C++ and CUDA: torch.ops.attngan_C.damsm_word_similarity_{fwd,bwd} (csrc/cpu/damsm.cpp defines
# the schemas, csrc/cuda adds the CUDA kernels); Triton: attngan.kernels.damsm, same signatures.
# ---------------------------------------------------------------------------------------------

def _register_damsm_word_similarity(impl: str):
    """Define attngan::damsm_word_similarity_<impl> (+ _backward) and return the forward op."""
    name = f"attngan::damsm_word_similarity_{impl}"

    @torch.library.custom_op(name, mutates_args=())
    def forward(words: Tensor, lengths: Tensor, regions: Tensor, gamma1: float,
                gamma2: float) -> Tensor:
        if impl in CHECKS_LENGTHS:
            check_lengths("damsm_word_similarity", lengths, words.shape[2])
        launch, _ = _launchers("damsm", "damsm_word_similarity", impl)
        return launch(words.contiguous(), lengths_on(words.device, lengths), regions.contiguous(),
                      gamma1, gamma2)

    @forward.register_fake
    def _(words, lengths, regions, gamma1, gamma2):
        dtype = torch.float64 if words.dtype == torch.float64 else torch.float32
        return words.new_empty((regions.shape[0], words.shape[0]), dtype=dtype)

    @torch.library.custom_op(name + "_backward", mutates_args=())
    def backward_op(grad_s: Tensor, words: Tensor, lengths: Tensor, regions: Tensor,
                    gamma1: float, gamma2: float, need_words_grad: bool) -> tuple[Tensor, Tensor]:
        _, launch = _launchers("damsm", "damsm_word_similarity", impl)
        return launch(grad_s.contiguous(), words.contiguous(), lengths_on(words.device, lengths),
                      regions.contiguous(), gamma1, gamma2, need_words_grad)

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
        grad_words, grad_regions = backward_op(grad_s, words, lengths, regions, *ctx.gammas,
                                               need_words)
        return (grad_words if need_words else None, None,
                grad_regions if ctx.needs_input_grad[2] else None, None, None)

    forward.register_autograd(backward, setup_context=setup_context)
    return forward


# impl name -> forward custom op: op(words [Bc, D, L], lengths [Bc] int64 (on the CPU or the
# device of words), regions [Bi, D, R],
# gamma1, gamma2) -> S [Bi, Bc] float32 (float64 for float64 inputs), differentiable.
damsm_word_similarity_ops = {impl: _register_damsm_word_similarity(impl)
                             for impl in FUSED_BACKENDS}


# ---------------------------------------------------------------------------------------------
# Word attention of the generator (SPEC section 1, stages 2-3; attngan.ops.word_attention)
# C++ and CUDA: torch.ops.attngan_C.word_attention_{fwd,bwd} (csrc/cpu/word_attention.cpp
# defines the schemas, csrc/cuda adds the CUDA kernels); Triton: attngan.kernels.word_attention,
# same signatures.
# ---------------------------------------------------------------------------------------------

def _register_word_attention(impl: str):
    """Define attngan::word_attention_<impl> (+ _backward) and return the forward op."""
    name = f"attngan::word_attention_{impl}"

    @torch.library.custom_op(name, mutates_args=())
    def forward(query: Tensor, words: Tensor, lengths: Tensor, return_attn: bool,
                concat: bool) -> tuple[Tensor, Tensor]:
        if impl in CHECKS_LENGTHS:
            check_lengths("word_attention", lengths, words.shape[2])
        launch, _ = _launchers("word_attention", "word_attention", impl)
        return launch(query.contiguous(), words.contiguous(), lengths_on(words.device, lengths),
                      return_attn, concat)

    @forward.register_fake
    def _(query, words, lengths, return_attn, concat):
        batch, channels, height, width = query.shape
        attn_shape = (batch, words.shape[2], height, width) if return_attn else (0,)
        out_shape = (batch, 2 * channels if concat else channels, height, width)
        return query.new_empty(out_shape), query.new_empty(attn_shape)

    @torch.library.custom_op(name + "_backward", mutates_args=())
    def backward_op(grad_out: Tensor, grad_attn: Optional[Tensor], query: Tensor,
                    words: Tensor, lengths: Tensor, concat: bool) -> tuple[Tensor, Tensor]:
        _, launch = _launchers("word_attention", "word_attention", impl)
        grad_attn = grad_attn.contiguous() if grad_attn is not None else None
        return launch(grad_out.contiguous(), grad_attn, query.contiguous(), words.contiguous(),
                      lengths_on(words.device, lengths), concat)

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
        grad_query, grad_words = backward_op(grad_out, grad_attn, query, words, lengths,
                                             ctx.concat)
        return grad_query, grad_words, None, None, None

    forward.register_autograd(backward, setup_context=setup_context)
    return forward


# impl name -> forward custom op: op(query [B, C, H, W], words [B, C, L], lengths [B] int64 (on
# the CPU or the device of words),
# return_attn, concat) -> (out, attn [B, L, H, W] or an empty tensor), differentiable; out is
# context [B, C, H, W], or with concat [query; context] [B, 2C, H, W].
word_attention_ops = {impl: _register_word_attention(impl) for impl in FUSED_BACKENDS}
