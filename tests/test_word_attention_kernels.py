"""Every fused word-attention backend against the float64 reference (attngan.ops.reference).

"cpp" on the CPU; "triton" in the CPU interpreter at tiny sizes (TRITON_INTERPRET=1, set by
conftest) in fp32/fp16, or compiled where a GPU is present; "cuda" and compiled "triton" at the
CUB and COCO sizes under the `gpu` marker. Context, map and both gradients by the tolerance rule
(tests/helpers.py), for `concat=False` and the `concat=True` variant ([query; context] in one
pass); the map's softmax, padded slots, gradcheck, opcheck, torch.compile(fullgraph=True), a
gradient through one output only, and the launchers' and kernels' own preconditions.
"""

import pytest
import torch
from helpers import (
    WORD_ATTENTION_SHAPES,
    assert_cpu_lengths_cost_no_synchronisation,
    assert_within_tolerance,
    device_for,
    relative_error,
    require,
    triton_device,
    word_attention_inputs,
)

from attngan.ops._library import word_attention_ops
from attngan.ops.reference import word_attention_reference
from attngan.ops.word_attention import word_attention

OP = "word_attention"
FUSED = ["cpp", "triton"]
NAMES = ("context", "attn", "grad_query", "grad_words")
FLOORS = {torch.float16: 1e-3, torch.bfloat16: 8e-3}
SHAPES = WORD_ATTENTION_SHAPES


def _inputs(shape, **kwargs):
    *sizes, lengths = shape
    return word_attention_inputs(*sizes, lengths=lengths, **kwargs)


def _run(impl, query, words, lengths, grad_out, grad_attn, concat=False):
    """Forward (out, attn) and the gradients of sum(out * grad_out) + sum(attn * grad_attn); out
    is the context, or with concat [query; context] [B, 2C, H, W]."""
    query = query.detach().requires_grad_()
    words = words.detach().requires_grad_()
    out, attn = word_attention(query, words, lengths, impl=impl, return_attn=True, concat=concat)
    loss = (out.double() * grad_out).sum() + (attn.double() * grad_attn).sum()
    grad_query, grad_words = torch.autograd.grad(loss, (query, words))
    return out, attn, grad_query, grad_words


def _output_grads(query, num_words, concat=False):
    """Random float64 gradients of out (`[B, 2C, H, W]` with concat) and of attn."""
    batch, channels, height, width = query.shape
    grad_out = torch.randn(
        batch,
        2 * channels if concat else channels,
        height,
        width,
        dtype=torch.float64,
        device=query.device,
    )
    grad_attn = torch.randn(
        batch, num_words, height, width, dtype=torch.float64, device=query.device
    )
    return grad_out, grad_attn


@pytest.mark.parametrize("impl", ["reference", *FUSED])
def test_attention_map_is_a_masked_softmax(impl):
    device = require(OP, impl) if impl != "reference" else device_for(impl)
    query, words, lengths = word_attention_inputs(
        3, 8, 9, 5, 6, lengths=[9, 4, 1], dtype=torch.float32, device=device
    )
    _, attn = word_attention(query, words, lengths, impl=impl, return_attn=True)
    assert attn.shape == (3, 9, 5, 6)
    torch.testing.assert_close(attn.sum(dim=1), torch.ones(3, 5, 6, device=device))
    padded = torch.arange(9, device=device)[None, :] >= lengths[:, None]  # [B, L]
    assert attn.permute(0, 2, 3, 1)[padded[:, None, None, :].expand(-1, 5, 6, -1)].abs().max() == 0
    assert (attn[2, 0] == 1).all()  # one word: all weight


@pytest.mark.parametrize("impl", FUSED)
@pytest.mark.parametrize("shape", SHAPES)
def test_fp32_matches_fp64_reference(impl, shape):
    device = require(OP, impl)
    query, words, lengths = _inputs(shape, device=device)
    grads = _output_grads(query, shape[2])
    truth = _run("reference", query, words, lengths, *grads)
    got = _run(impl, query.float(), words.float(), lengths, *grads)
    for name, value, expected in zip(NAMES, got, truth):
        assert value.dtype == torch.float32, name
        assert_within_tolerance(f"{impl} {name}", value, expected)


@pytest.mark.parametrize(
    "impl,dtype", [("cpp", torch.float16), ("cpp", torch.bfloat16), ("triton", torch.float16)]
)
def test_low_precision_flash_attention_rule(impl, dtype):
    device = require(OP, impl)
    query, words, lengths = word_attention_inputs(
        3, 16, 18, 9, 7, lengths=[18, 11, 4], device=device
    )
    grads = _output_grads(query, 18)
    truth = _run("reference", query, words, lengths, *grads)
    baseline = _run("reference", query.to(dtype), words.to(dtype), lengths, *grads)
    got = _run(impl, query.to(dtype), words.to(dtype), lengths, *grads)
    for name, value, base, expected in zip(NAMES, got, baseline, truth):
        assert value.dtype == dtype, name
        assert_within_tolerance(f"{impl} {dtype} {name}", value, expected, base, FLOORS[dtype])


@pytest.mark.parametrize("impl", ["reference", *FUSED])
def test_padded_word_slots_change_nothing(impl):
    """NaN or garbage after each caption's length: same outputs, same gradients, zero there."""
    device = require(OP, impl) if impl != "reference" else device_for(impl)
    query, words, lengths = word_attention_inputs(
        3, 8, 7, 4, 5, lengths=[7, 3, 1], dtype=torch.float32, device=device
    )
    padded = (torch.arange(7, device=device)[None, :] >= lengths[:, None])[:, None, :]
    padded = padded.expand_as(words)
    grads = _output_grads(query, 7)
    clean = _run(impl, query, words, lengths, *grads)
    for junk in (float("nan"), 1e4):
        dirty = _run(impl, query, words.masked_fill(padded, junk), lengths, *grads)
        for a, b in zip(clean, dirty):
            if query.is_cuda:  # GPU atomics add in any order
                torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
            else:
                assert torch.equal(a, b)
        assert dirty[3][padded].abs().max() == 0


@pytest.mark.parametrize("impl", FUSED)
@pytest.mark.parametrize("used", ["context", "attn"])
def test_gradient_through_one_output_only(impl, used):
    """The backward when the other output gets no gradient (it arrives as None, not zeros)."""
    device = require(OP, impl)
    query, words, lengths = word_attention_inputs(2, 6, 5, 3, 4, lengths=[5, 3], device=device)
    grads = []
    for which, dtype in (("reference", torch.float64), (impl, torch.float32)):
        q, w = query.detach().to(dtype).requires_grad_(), words.detach().to(dtype).requires_grad_()
        context, attn = word_attention(q, w, lengths, impl=which, return_attn=True)
        (context if used == "context" else attn).pow(2).sum().backward()
        grads.append((q.grad, w.grad))
    for expected, got in zip(grads[0], grads[1]):
        assert_within_tolerance(used, got, expected)


@pytest.mark.parametrize("concat", [False, True])
def test_cpp_gradcheck_fp64(concat):
    require(OP, "cpp")
    query, words, lengths = word_attention_inputs(2, 3, 4, 3, 2, lengths=[4, 2])
    query.requires_grad_()
    words.requires_grad_()
    assert torch.autograd.gradcheck(
        lambda q, w: word_attention(q, w, lengths, impl="cpp", return_attn=True, concat=concat),
        (query, words),
    )
    assert torch.autograd.gradcheck(
        lambda q, w: word_attention(q, w, lengths, impl="cpp", concat=concat), (query, words)
    )


@pytest.mark.parametrize("impl", FUSED)
@pytest.mark.parametrize("return_attn,concat", [(True, False), (False, False), (False, True)])
def test_opcheck(impl, return_attn, concat):
    device = require(OP, impl)
    dtype = torch.float64 if impl == "cpp" else torch.float32
    query, words, lengths = word_attention_inputs(
        2, 4, 5, 3, 4, lengths=[5, 2], dtype=dtype, device=device
    )
    torch.library.opcheck(
        word_attention_ops[impl],
        (query.requires_grad_(), words.requires_grad_(), lengths, return_attn, concat),
    )


@pytest.mark.parametrize("impl", ["reference", *FUSED])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("shape", [SHAPES[1], SHAPES[2], SHAPES[4]])
def test_concat_is_query_then_context(impl, dtype, shape):
    """out = [query; context]: the query half is the query bit for bit, the context half and
    both gradients (the query's now has the direct path added) match the fp64 reference."""
    device = require(OP, impl) if impl != "reference" else device_for(impl)
    query, words, lengths = _inputs(shape, device=device)
    channels = shape[1]
    grad_out, grad_attn = _output_grads(query, shape[2], concat=True)
    truth = _run("reference", query, words, lengths, grad_out[:, channels:], grad_attn)
    truth = (truth[0], truth[1], truth[2] + grad_out[:, :channels], truth[3])
    plain = _run(impl, query.to(dtype), words.to(dtype), lengths, grad_out[:, channels:], grad_attn)
    out, attn, grad_query, grad_words = _run(
        impl, query.to(dtype), words.to(dtype), lengths, grad_out, grad_attn, concat=True
    )
    assert out.shape == (shape[0], 2 * channels, *shape[3:5]) and out.dtype == dtype
    assert torch.equal(out[:, :channels], query.to(dtype))
    # the same kernel computes the context with or without concat
    assert torch.equal(out[:, channels:], plain[0]) and torch.equal(attn, plain[1])
    limit = 2e-5 if dtype == torch.float32 else 5e-3
    for name, value, expected in zip(
        NAMES, (out[:, channels:], attn, grad_query, grad_words), truth
    ):
        assert value.dtype == dtype, name
        assert_within_tolerance(name, value, expected, limit=limit)


@pytest.mark.parametrize("impl", ["reference", "cpp"])
@pytest.mark.parametrize("concat", [False, True])
def test_torch_compile_fullgraph(impl, concat):
    if impl != "reference":
        require(OP, impl)
    query, words, lengths = word_attention_inputs(
        2, 4, 5, 3, 4, lengths=[5, 2], dtype=torch.float32
    )
    query.requires_grad_()
    compiled = torch.compile(
        lambda q, w, n: word_attention(q, w, n, impl=impl, return_attn=True, concat=concat),
        fullgraph=True,
        backend="aot_eager",
    )
    out, attn = compiled(query, words, lengths)
    (out.sum() + attn[:, 0].sum()).backward()
    expected = word_attention_reference(query.detach(), words, lengths, return_attn=True)
    torch.testing.assert_close(
        out, torch.cat([query.detach(), expected[0]], 1) if concat else expected[0]
    )
    torch.testing.assert_close(attn, expected[1])
    assert query.grad is not None and torch.isfinite(query.grad).all()
    if impl != "reference":  # inside a graph the fused op checks the lengths itself
        with pytest.raises((ValueError, RuntimeError), match=r"every length must be in 1\.\.L"):
            compiled(query, words, torch.tensor([5, 0]))


# ------------------------------------------------------------- the kernels' own preconditions


def test_cpp_kernel_checks_its_inputs_itself():
    """The compiled op is reachable directly (and under torch.compile no Python check runs)."""
    require(OP, "cpp")
    q, w = torch.randn(1, 4, 2, 2), torch.randn(1, 4, 3)
    forward = torch.ops.attngan_C.word_attention_fwd
    backward = torch.ops.attngan_C.word_attention_bwd
    with pytest.raises(RuntimeError, match=r"every length must be in 1\.\.L = 1\.\.3"):
        forward(q, w, torch.tensor([4]), False, False)
    with pytest.raises(RuntimeError, match=r"expected query \[B, C, H, W\]"):
        forward(q, torch.randn(1, 5, 3), torch.tensor([3]), False, False)
    with pytest.raises(RuntimeError, match="one floating dtype"):
        forward(q, w.double(), torch.tensor([3]), False, False)
    with pytest.raises(RuntimeError, match=r"must be \[B, 2C, H, W\]"):
        backward(torch.randn(1, 4, 2, 2), None, q, w, torch.tensor([3]), True)


def test_triton_launchers_check_their_preconditions():
    from attngan.kernels.word_attention import MAX_CHANNELS, word_attention_bwd, word_attention_fwd

    device = triton_device()
    q, w, n = (
        torch.randn(1, 4, 2, 2, device=device),
        torch.randn(1, 4, 3, device=device),
        torch.tensor([3], device=device),
    )
    with pytest.raises(ValueError, match="output gradient must be"):
        word_attention_bwd(torch.randn(1, 4, 2, 2, device=device), None, q, w, n, True)
    with pytest.raises(ValueError, match=r"expected query \[B, C, H, W\]"):
        word_attention_fwd(q, w[:, :3], n, False, False)
    with pytest.raises(TypeError, match="share one of float32"):
        word_attention_fwd(q, w.double(), n, False, False)
    wide = MAX_CHANNELS + 1
    with pytest.raises(ValueError, match=f"the Triton kernel takes C <= {MAX_CHANNELS}"):
        word_attention_fwd(
            torch.randn(1, wide, 2, 2, device=device),
            torch.randn(1, wide, 3, device=device),
            n,
            False,
            False,
        )


def test_triton_launchers_clamp_lengths():
    """The Triton launchers do not read the lengths (the custom op checks them, except while a
    CUDA graph is captured): the kernels clamp them into [1, L], so no value reaches memory past
    a caption's words."""
    from attngan.kernels.word_attention import word_attention_bwd, word_attention_fwd

    device = triton_device()
    query, words, _ = word_attention_inputs(3, 5, 4, 3, 2, dtype=torch.float32, device=device)
    grad_out = torch.randn(3, 10, 3, 2, device=device)
    grad_attn = torch.randn(3, 4, 3, 2, device=device)

    def outputs(lengths):
        lengths = torch.tensor(lengths, device=device)
        return (
            *word_attention_fwd(query, words, lengths, True, True),
            *word_attention_bwd(grad_out, grad_attn, query, words, lengths, True),
        )

    for got, want in zip(outputs([0, 9, 2]), outputs([1, 4, 2])):
        torch.testing.assert_close(got, want)


# ----------------------------------------------------------------------------- GPU (real proof)
GPU_IMPLS = ["cuda", "triton"]
CUB_64 = (20, 32, 18, 64, 64)


@pytest.mark.gpu
@pytest.mark.parametrize("impl", GPU_IMPLS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize(
    "size",
    [CUB_64, (14, 48, 12, 17, 17), (3, 128, 32, 9, 13)],
    ids=["cub64", "coco-r289", "c128-l32"],
)
def test_gpu_kernels_match_fp64_reference(impl, dtype, size):
    device = require(OP, impl, "cuda")
    query, words, lengths = word_attention_inputs(*size, device=device)
    grads = _output_grads(query, size[2])
    truth = _run("reference", query, words, lengths, *grads)
    baseline = _run("reference", query.to(dtype), words.to(dtype), lengths, *grads)
    got = _run(impl, query.to(dtype), words.to(dtype), lengths, *grads)
    for name, value, base, expected in zip(NAMES, got, baseline, truth):
        assert value.dtype == dtype, name
        assert_within_tolerance(
            f"{impl} {dtype} {name}",
            value,
            expected,
            None if dtype == torch.float32 else base,
            FLOORS.get(dtype, 0.0),
        )


@pytest.mark.gpu
@pytest.mark.parametrize("impl", GPU_IMPLS)
def test_gpu_masking_and_opcheck(impl):
    device = require(OP, impl, "cuda")
    query, words, lengths = word_attention_inputs(
        3, 8, 7, 5, 6, lengths=[7, 3, 1], dtype=torch.float32, device=device
    )
    padded = (torch.arange(7, device=device)[None, :] >= lengths[:, None])[:, None, :]
    padded = padded.expand_as(words)
    grads = _output_grads(query, 7)
    clean = _run(impl, query, words, lengths, *grads)
    dirty = _run(impl, query, words.masked_fill(padded, float("nan")), lengths, *grads)
    for a, b in zip(clean, dirty):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)  # GPU atomics: order may differ
    assert dirty[3][padded].abs().max() == 0
    for return_attn, concat in ((True, False), (False, True)):
        torch.library.opcheck(
            word_attention_ops[impl],
            (query.requires_grad_(), words.requires_grad_(), lengths, return_attn, concat),
        )


@pytest.mark.gpu
@pytest.mark.parametrize("impl", GPU_IMPLS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gpu_concat_is_query_then_context(impl, dtype):
    device = require(OP, impl, "cuda")
    query, words, lengths = word_attention_inputs(*CUB_64, device=device)
    channels = CUB_64[1]
    grad_out, grad_attn = _output_grads(query, CUB_64[2], concat=True)
    plain = _run(impl, query.to(dtype), words.to(dtype), lengths, grad_out[:, channels:], grad_attn)
    out, attn, grad_query, grad_words = _run(
        impl, query.to(dtype), words.to(dtype), lengths, grad_out, grad_attn, concat=True
    )
    assert torch.equal(out[:, :channels], query.to(dtype))
    assert torch.equal(out[:, channels:], plain[0]) and torch.equal(attn, plain[1])
    limit = 2e-5 if dtype == torch.float32 else 8e-3
    assert relative_error(grad_query, plain[2].double() + grad_out[:, :channels]) < limit
    assert relative_error(grad_words, plain[3].double()) < limit


@pytest.mark.gpu
@pytest.mark.parametrize("impl", [*GPU_IMPLS, "reference"])
def test_gpu_cpu_lengths_need_no_synchronisation(impl, no_gpu_synchronisation):
    """Lengths kept on the CPU with features on the GPU (as the GAN step passes them): forward
    and backward never wait for the GPU (torch's sync debug mode raises on any synchronisation),
    the results equal those with the lengths on the GPU, and a bad CPU length still raises."""
    device = require(OP, impl, "cuda")
    query, words, lengths = word_attention_inputs(
        3, 8, 7, 5, 6, lengths=[7, 3, 1], dtype=torch.float32
    )
    query, words = query.to(device).requires_grad_(), words.to(device).requires_grad_()
    grad_out = torch.randn(3, 16, 5, 6, device=device)

    def run(lengths):
        out = word_attention(query, words, lengths, impl=impl, concat=True)
        return (out, *torch.autograd.grad(out, (query, words), grad_out))

    assert_cpu_lengths_cost_no_synchronisation(run, lengths, no_gpu_synchronisation)
    lengths[2] = 8
    with pytest.raises(ValueError, match=r"1\.\.L"):
        run(lengths)
