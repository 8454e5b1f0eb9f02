"""Word attention of the generator (SPEC section 1, stages 2-3): reference, C++ and Triton kernels.

The chain of trust: a per-sample Python loop over the real words (fp64) -> the vectorized
reference -> every implementation (cpp; triton in the CPU interpreter at tiny sizes in
fp32/fp16, set up by conftest; cuda and compiled triton under the `gpu` marker), forward
context and map and both gradients. fp32 is held to ~1e-5 of an fp64 reference; fp16/bf16 to the
flash-attention rule: error(kernel vs fp64) <= 2 * error(same-dtype reference vs fp64) + floor.
Also: masking invariance (NaN in padded word slots changes nothing), gradcheck, opcheck,
torch.compile(fullgraph=True), autocast, every input error, and dispatch; and all of it for the
`concat=True` variant, whose output is torch.cat([query, context], 1).
"""
import importlib

import pytest
import torch

from attngan import backend
from attngan.ops._library import word_attention_ops
from attngan.ops.reference import word_attention_reference
from attngan.ops.word_attention import word_attention

# Unmarked tests: triton runs in the CPU interpreter without a GPU, compiled on CUDA tensors with one.
CPU_IMPLS = ["reference", "cpp", "triton"]
FUSED_CPU_IMPLS = ["cpp", "triton"]


def _device(impl):
    return "cuda" if impl == "triton" and torch.cuda.is_available() else "cpu"


# (B, C, L, H, W, lengths): odd sizes, L = 1 / 5 / 17 / 18 / 31 / 32, R = 289, B = 1, ragged
SHAPES = [
    (1, 3, 1, 2, 3, [1]),
    (3, 5, 5, 4, 5, [5, 2, 1]),
    (2, 8, 18, 17, 17, [18, 7]),
    (2, 6, 17, 3, 11, [3, 17]),
    (3, 16, 31, 5, 7, [31, 1, 12]),
    (2, 4, 32, 6, 6, [32, 20]),
]


def loop_attention(query, words, lengths):
    """Per sample, only its n real words: s = h^T e, softmax over words, context = e p^T."""
    contexts, maps = [], []
    for b in range(query.shape[0]):
        n = int(lengths[b])
        h = query[b].reshape(query.shape[1], -1)                            # [C, R]
        e = words[b, :, :n]                                                 # [C, n]
        p = torch.softmax(h.t() @ e, dim=1)                                 # [R, n]
        contexts.append((e @ p.t()).reshape(query.shape[1:]))
        full = torch.zeros(words.shape[2], h.shape[1], dtype=query.dtype)
        full[:n] = p.t()
        maps.append(full.reshape(words.shape[2], *query.shape[2:]))
    return torch.stack(contexts), torch.stack(maps)


def _inputs(B, C, L, H, W, lengths, dtype=torch.float64, device="cpu"):
    query = torch.randn(B, C, H, W, dtype=torch.float64).to(device, dtype)
    words = torch.randn(B, C, L, dtype=torch.float64).to(device, dtype)
    return query, words, torch.tensor(lengths, device=device)


def _run(impl, query, words, lengths, grad_out, grad_attn, concat=False):
    """Forward (out, attn) and the gradients of sum(out*go) + sum(attn*ga); out is the context,
    or with concat [query; context] [B, 2C, H, W]."""
    query = query.detach().requires_grad_()
    words = words.detach().requires_grad_()
    out, attn = word_attention(query, words, lengths, impl=impl, return_attn=True, concat=concat)
    loss = (out.double() * grad_out).sum() + (attn.double() * grad_attn).sum()
    grad_query, grad_words = torch.autograd.grad(loss, (query, words))
    return out, attn, grad_query, grad_words


def _error(value, truth):
    return ((value.double() - truth).abs().max() / truth.abs().max().clamp(min=1e-12)).item()


@pytest.mark.parametrize("shape", SHAPES)
def test_reference_matches_per_sample_loop(shape):
    query, words, lengths = _inputs(*shape)
    context, attn = word_attention_reference(query, words, lengths, return_attn=True)
    loop_context, loop_attn = loop_attention(query, words, lengths)
    torch.testing.assert_close(context, loop_context, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(attn, loop_attn, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("impl", CPU_IMPLS)
def test_attention_map_is_a_masked_softmax(impl):
    query, words, lengths = _inputs(3, 8, 9, 5, 6, [9, 4, 1], dtype=torch.float32, device=_device(impl))
    _, attn = word_attention(query, words, lengths, impl=impl, return_attn=True)
    assert attn.shape == (3, 9, 5, 6)
    torch.testing.assert_close(attn.sum(dim=1), torch.ones(3, 5, 6, device=attn.device))
    padded = torch.arange(9, device=attn.device)[None, :] >= lengths[:, None]  # [B, L]
    assert attn.permute(0, 2, 3, 1)[padded[:, None, None, :].expand(-1, 5, 6, -1)].abs().max() == 0
    assert (attn[2, 0] == 1).all()                                          # one word: all weight


@pytest.mark.parametrize("impl", FUSED_CPU_IMPLS)
@pytest.mark.parametrize("shape", SHAPES)
def test_fp32_matches_fp64_reference(impl, shape):
    query, words, lengths = _inputs(*shape, device=_device(impl))
    grad_context = torch.randn(query.shape, dtype=torch.float64, device=query.device)
    grad_attn = torch.randn(shape[0], shape[2], shape[3], shape[4], dtype=torch.float64, device=query.device)
    truth = _run("reference", query, words, lengths, grad_context, grad_attn)
    got = _run(impl, query.float(), words.float(), lengths, grad_context, grad_attn)
    for name, value, expected in zip(("context", "attn", "grad_query", "grad_words"), got, truth):
        assert value.dtype == torch.float32, name
        assert _error(value, expected) < 2e-5, (name, _error(value, expected))


@pytest.mark.parametrize("impl,dtype", [("cpp", torch.float16), ("cpp", torch.bfloat16),
                                        ("triton", torch.float16)])
def test_low_precision_within_twice_the_reference_error(impl, dtype):
    shape = (3, 16, 18, 9, 7, [18, 11, 4])
    query, words, lengths = _inputs(*shape, device=_device(impl))
    grad_context = torch.randn(query.shape, dtype=torch.float64, device=query.device)
    grad_attn = torch.randn(shape[0], shape[2], shape[3], shape[4], dtype=torch.float64, device=query.device)
    truth = _run("reference", query, words, lengths, grad_context, grad_attn)
    same_dtype = _run("reference", query.to(dtype), words.to(dtype), lengths, grad_context, grad_attn)
    got = _run(impl, query.to(dtype), words.to(dtype), lengths, grad_context, grad_attn)
    floor = 1e-3 if dtype == torch.float16 else 8e-3
    for name, value, baseline, expected in zip(("context", "attn", "grad_query", "grad_words"),
                                               got, same_dtype, truth):
        assert value.dtype == dtype, name
        assert _error(value, expected) <= 2 * _error(baseline, expected) + floor, name


@pytest.mark.parametrize("impl", CPU_IMPLS)
def test_padded_word_slots_change_nothing(impl):
    """NaN or garbage after each caption's length: same outputs, same gradients, zero there."""
    shape = (3, 8, 7, 4, 5, [7, 3, 1])
    query, words, lengths = _inputs(*shape, dtype=torch.float32, device=_device(impl))
    padded = (torch.arange(7, device=query.device)[None, :] >= lengths[:, None])[:, None, :].expand_as(words)
    grad_context = torch.randn(query.shape, dtype=torch.float64, device=query.device)
    grad_attn = torch.randn(3, 7, 4, 5, dtype=torch.float64, device=query.device)
    clean = _run(impl, query, words, lengths, grad_context, grad_attn)
    for junk in (float("nan"), 1e4):
        dirty = _run(impl, query, words.masked_fill(padded, junk), lengths, grad_context, grad_attn)
        for a, b in zip(clean, dirty):
            if query.is_cuda:   # GPU atomics add in any order
                torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
            else:
                assert torch.equal(a, b)
        assert dirty[3][padded].abs().max() == 0


@pytest.mark.parametrize("impl", FUSED_CPU_IMPLS)
@pytest.mark.parametrize("used", ["context", "attn"])
def test_gradient_through_one_output_only(impl, used):
    """The backward when the other output gets no gradient (it arrives as None, not zeros)."""
    query, words, lengths = _inputs(2, 6, 5, 3, 4, [5, 3], device=_device(impl))
    grads = []
    for which, dtype in (("reference", torch.float64), (impl, torch.float32)):
        q, w = query.detach().to(dtype).requires_grad_(), words.detach().to(dtype).requires_grad_()
        context, attn = word_attention(q, w, lengths, impl=which, return_attn=True)
        (context if used == "context" else attn).pow(2).sum().backward()
        grads.append((q.grad, w.grad))
    for expected, got in zip(grads[0], grads[1]):
        assert _error(got, expected) < 2e-5


@pytest.mark.parametrize("impl", ["reference", "cpp"])
def test_gradcheck_fp64(impl):
    query, words, lengths = _inputs(2, 3, 4, 3, 2, [4, 2])
    query.requires_grad_()
    words.requires_grad_()
    assert torch.autograd.gradcheck(
        lambda q, w: word_attention(q, w, lengths, impl=impl, return_attn=True), (query, words))
    assert torch.autograd.gradcheck(lambda q, w: word_attention(q, w, lengths, impl=impl), (query, words))


@pytest.mark.parametrize("impl", FUSED_CPU_IMPLS)
@pytest.mark.parametrize("return_attn,concat", [(True, False), (False, False), (False, True)])
def test_opcheck(impl, return_attn, concat):
    dtype = torch.float64 if impl == "cpp" else torch.float32
    query, words, lengths = _inputs(2, 4, 5, 3, 4, [5, 2], dtype=dtype, device=_device(impl))
    torch.library.opcheck(word_attention_ops[impl], (query.requires_grad_(), words.requires_grad_(),
                                                    lengths, return_attn, concat))


@pytest.mark.parametrize("impl", CPU_IMPLS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("shape", [SHAPES[1], SHAPES[2], SHAPES[4]])
def test_concat_is_query_then_context(impl, dtype, shape):
    """out = [query; context]: the query half is the query bit for bit, the context half and
    both gradients (the query's now has the direct path added) match the fp64 reference."""
    query, words, lengths = _inputs(*shape, device=_device(impl))
    B, C, L, H, W = shape[:5]
    grad_out = torch.randn(B, 2 * C, H, W, dtype=torch.float64, device=query.device)
    grad_attn = torch.randn(B, L, H, W, dtype=torch.float64, device=query.device)
    truth = _run("reference", query, words, lengths, grad_out[:, C:], grad_attn)
    truth = (truth[0], truth[1], truth[2] + grad_out[:, :C], truth[3])
    plain = _run(impl, query.to(dtype), words.to(dtype), lengths, grad_out[:, C:], grad_attn)
    out, attn, grad_query, grad_words = _run(impl, query.to(dtype), words.to(dtype), lengths,
                                             grad_out, grad_attn, concat=True)
    assert out.shape == (B, 2 * C, H, W) and out.dtype == dtype
    assert torch.equal(out[:, :C], query.to(dtype))
    # the same kernel computes the context with or without concat
    assert torch.equal(out[:, C:], plain[0]) and torch.equal(attn, plain[1])
    limit = 2e-5 if dtype == torch.float32 else 5e-3
    for name, value, expected in zip(("context", "attn", "grad_query", "grad_words"),
                                     (out[:, C:], attn, grad_query, grad_words), truth):
        assert value.dtype == dtype, name
        assert _error(value, expected) < limit, (name, _error(value, expected))


def test_gradcheck_concat_fp64():
    query, words, lengths = _inputs(2, 3, 4, 3, 2, [4, 2])
    query.requires_grad_()
    words.requires_grad_()
    assert torch.autograd.gradcheck(
        lambda q, w: word_attention(q, w, lengths, impl="cpp", return_attn=True, concat=True),
        (query, words))


def test_concat_backward_checks_the_gradient_shape():
    q, w, n = torch.randn(1, 4, 2, 2), torch.randn(1, 4, 3), torch.tensor([3])
    with pytest.raises(RuntimeError, match=r"must be \[B, 2C, H, W\]"):
        torch.ops.attngan_C.word_attention_bwd(torch.randn(1, 4, 2, 2), None, q, w, n, True)
    with pytest.raises(ValueError, match="output gradient must be"):
        from attngan.kernels.word_attention import word_attention_bwd
        word_attention_bwd(torch.randn(1, 4, 2, 2), None, q, w, n, True)


def test_triton_launchers_clamp_lengths():
    """The Triton launchers do not read the lengths (the custom op checks them, except while a
    CUDA graph is captured): the kernels clamp them into [1, L], so no value reaches memory past
    a caption's words."""
    from attngan.kernels.word_attention import word_attention_bwd, word_attention_fwd
    device = _device("triton")
    query, words, _ = _inputs(3, 5, 4, 3, 2, [4, 4, 4], dtype=torch.float32, device=device)
    grad_out = torch.randn(3, 10, 3, 2, device=device)
    grad_attn = torch.randn(3, 4, 3, 2, device=device)

    def outputs(lengths):
        lengths = torch.tensor(lengths, device=device)
        return (*word_attention_fwd(query, words, lengths, True, True),
                *word_attention_bwd(grad_out, grad_attn, query, words, lengths, True))

    for got, want in zip(outputs([0, 9, 2]), outputs([1, 4, 2])):
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize("impl", ["reference", "cpp"])
@pytest.mark.parametrize("concat", [False, True])
def test_torch_compile_fullgraph(impl, concat):
    query, words, lengths = _inputs(2, 4, 5, 3, 4, [5, 2], dtype=torch.float32)
    query.requires_grad_()
    compiled = torch.compile(
        lambda q, w, n: word_attention(q, w, n, impl=impl, return_attn=True, concat=concat),
        fullgraph=True, backend="aot_eager")
    out, attn = compiled(query, words, lengths)
    (out.sum() + attn[:, 0].sum()).backward()
    expected = word_attention_reference(query.detach(), words, lengths, return_attn=True)
    torch.testing.assert_close(out, torch.cat([query.detach(), expected[0]], 1) if concat
                               else expected[0])
    torch.testing.assert_close(attn, expected[1])
    assert query.grad is not None and torch.isfinite(query.grad).all()
    if impl != "reference":   # inside a graph the fused op checks the lengths itself
        with pytest.raises((ValueError, RuntimeError), match=r"1\.\.L"):
            compiled(query, words, torch.tensor([5, 0]))


@pytest.mark.parametrize("impl", ["reference", "cpp"])
def test_autocast_runs_in_the_autocast_dtype(impl):
    query, words, lengths = _inputs(2, 8, 6, 4, 4, [6, 3], dtype=torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        context, attn = word_attention(query, words, lengths, impl=impl, return_attn=True)
    assert context.dtype == attn.dtype == torch.bfloat16
    expected = word_attention_reference(query.double(), words.double(), lengths)
    assert _error(context, expected) < 3e-2


def _bad_inputs():
    q, w, n = torch.randn(2, 4, 3, 3), torch.randn(2, 4, 5), torch.tensor([5, 2])
    return [
        ("query 3d", (q[:, :, 0], w, n), ValueError, "query must be"),
        ("words 4d", (q, w[..., None], n), ValueError, "words must be"),
        ("lengths 2d", (q, w, n[:, None]), ValueError, "lengths must be"),
        ("batch", (q, w[:1], n), ValueError, "batch sizes differ"),
        ("channels", (q, torch.randn(2, 6, 5), n), ValueError, "channels"),
        ("zero length", (q, w, torch.tensor([5, 0])), ValueError, "at least one word"),
        ("too long", (q, w, torch.tensor([6, 2])), ValueError, "lengths must be <="),
        ("float lengths", (q, w, n.float()), TypeError, "integer tensor"),
        ("dtype mismatch", (q, w.double(), n), TypeError, "cast both"),
        ("integer query", (q.long(), w.long(), n), TypeError, "floating point"),
        ("lengths on meta", (q, w, n.to("meta")), ValueError, "put lengths on the CPU"),
        ("words on meta", (q, w.to("meta"), n), ValueError, "same device"),
        ("empty", (q[:, :, :0], w, n), ValueError, "empty input"),
    ]


@pytest.mark.parametrize("case", _bad_inputs(), ids=lambda case: case[0])
def test_bad_inputs_raise_one_clear_error(case):
    _, args, error, message = case
    with pytest.raises(error, match=message):
        word_attention(*args)


def test_cpp_kernel_checks_lengths_itself():
    q, w = torch.randn(1, 4, 2, 2), torch.randn(1, 4, 3)
    with pytest.raises(RuntimeError, match="outside 1..L"):
        torch.ops.attngan_C.word_attention_fwd(q, w, torch.tensor([4]), False, False)


def test_unsupported_shape_for_a_kernel():
    dev = _device("triton")
    q, w = torch.randn(1, 300, 2, 2, device=dev), torch.randn(1, 300, 3, device=dev)
    n = torch.tensor([3], device=dev)
    with pytest.raises(RuntimeError, match="exceed the triton kernel's limit"):
        word_attention(q, w, n, impl="triton")
    with pytest.raises(RuntimeError, match="float64"):
        word_attention(q[:, :8].double(), w[:, :8].double(), n, impl="triton")
    q, w = torch.randn(1, 8, 2, 2), torch.randn(1, 8, 70)
    with pytest.raises(RuntimeError, match="L=70 words exceed"):
        word_attention(q.to(dev), w.to(dev), torch.tensor([3], device=dev), impl="triton")
    # the C++ kernel has no size limit, and takes C = 300 / L = 70 under auto
    torch.testing.assert_close(word_attention(q, w, torch.tensor([3])),
                               word_attention_reference(q, w, torch.tensor([3])))


def test_dispatch(monkeypatch):
    q, w, n = torch.randn(2, 4, 3, 3), torch.randn(2, 4, 5), torch.tensor([5, 2])
    called = []

    class Spy(dict):
        def __getitem__(self, impl):
            called.append(impl)
            return word_attention_ops[impl]

    # The package re-exports the function under the module's name, so fetch the module itself.
    wa_module = importlib.import_module("attngan.ops.word_attention")
    monkeypatch.setattr(wa_module, "word_attention_ops", Spy())
    monkeypatch.delenv("ATTNGAN_IMPL", raising=False)
    word_attention(q, w, n)
    assert called == ["cpp"]                                 # auto on CPU: the C++ kernel
    monkeypatch.setenv("ATTNGAN_IMPL", "reference")
    word_attention(q, w, n)
    assert called == ["cpp"]                                 # the environment picked the reference
    word_attention(q, w, n, impl="cpp")                      # the argument beats the environment
    assert called == ["cpp", "cpp"]
    with pytest.raises(RuntimeError, match="cuda"):
        word_attention(q, w, n, impl="cuda")
    with pytest.raises(ValueError, match="not known"):
        word_attention(q, w, n, impl="fast")
    assert backend.choose("word_attention", torch.device("cpu"), "reference") == "reference"
    # "loop", the original's way (run.impl=loop): it computes word attention batched, as the
    # reference does
    word_attention(q, w, n, impl="loop")
    monkeypatch.setenv("ATTNGAN_IMPL", "loop")
    word_attention(q, w, n)
    assert called == ["cpp", "cpp"]
    assert backend.choose("word_attention", torch.device("cpu"), "loop") == "reference"
    assert backend.choose("damsm_word_similarity", torch.device("cpu"), "loop") == "loop"


# ----------------------------------------------------------------------------- GPU (real proof)
GPU_IMPLS = ["cuda", "triton"]
CUB_64 = (20, 32, 18, 64, 64)


@pytest.mark.gpu
@pytest.mark.parametrize("impl", GPU_IMPLS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("size", [CUB_64, (14, 48, 12, 17, 17), (3, 128, 32, 9, 13)],
                         ids=["cub64", "coco-r289", "c128-l32"])
def test_gpu_kernels_match_fp64_reference(impl, dtype, size):
    B, C, L, H, W = size
    lengths = torch.randint(1, L + 1, (B,))
    lengths[0] = L
    query, words, _ = _inputs(B, C, L, H, W, lengths.tolist())
    grad_context = torch.randn(query.shape, dtype=torch.float64)
    grad_attn = torch.randn(B, L, H, W, dtype=torch.float64)
    cuda = [t.cuda() for t in (query, words, lengths, grad_context, grad_attn)]
    truth = _run("reference", *cuda)
    same_dtype = _run("reference", cuda[0].to(dtype), cuda[1].to(dtype), *cuda[2:])
    got = _run(impl, cuda[0].to(dtype), cuda[1].to(dtype), *cuda[2:])
    floor = {torch.float32: 1e-5, torch.float16: 1e-3, torch.bfloat16: 8e-3}[dtype]
    for name, value, baseline, expected in zip(("context", "attn", "grad_query", "grad_words"),
                                               got, same_dtype, truth):
        assert value.dtype == dtype, name
        limit = 2e-5 if dtype == torch.float32 else 2 * _error(baseline, expected) + floor
        assert _error(value, expected) <= limit, (name, _error(value, expected), limit)


@pytest.mark.gpu
@pytest.mark.parametrize("impl", GPU_IMPLS)
def test_gpu_masking_and_opcheck(impl):
    query, words, lengths = _inputs(3, 8, 7, 5, 6, [7, 3, 1], dtype=torch.float32)
    query, words, lengths = query.cuda(), words.cuda(), lengths.cuda()
    padded = (torch.arange(7, device="cuda")[None, :] >= lengths[:, None])[:, None, :].expand_as(words)
    grad_context = torch.randn(query.shape, dtype=torch.float64, device="cuda")
    grad_attn = torch.randn(3, 7, 5, 6, dtype=torch.float64, device="cuda")
    clean = _run(impl, query, words, lengths, grad_context, grad_attn)
    dirty = _run(impl, query, words.masked_fill(padded, float("nan")), lengths, grad_context, grad_attn)
    for a, b in zip(clean, dirty):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)   # GPU atomics: order may differ
    assert dirty[3][padded].abs().max() == 0
    for return_attn, concat in ((True, False), (False, True)):
        torch.library.opcheck(word_attention_ops[impl], (query.requires_grad_(), words.requires_grad_(),
                                                        lengths, return_attn, concat))


@pytest.mark.gpu
@pytest.mark.parametrize("impl", GPU_IMPLS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gpu_concat_is_query_then_context(impl, dtype):
    B, C, L, H, W = CUB_64
    lengths = torch.randint(1, L + 1, (B,))
    lengths[0] = L
    query, words, _ = _inputs(B, C, L, H, W, lengths.tolist(), device="cuda")
    lengths = lengths.cuda()
    grad_out = torch.randn(B, 2 * C, H, W, dtype=torch.float64, device="cuda")
    grad_attn = torch.randn(B, L, H, W, dtype=torch.float64, device="cuda")
    plain = _run(impl, query.to(dtype), words.to(dtype), lengths, grad_out[:, C:], grad_attn)
    out, attn, grad_query, grad_words = _run(impl, query.to(dtype), words.to(dtype), lengths,
                                             grad_out, grad_attn, concat=True)
    assert torch.equal(out[:, :C], query.to(dtype))
    assert torch.equal(out[:, C:], plain[0]) and torch.equal(attn, plain[1])
    expected_grad_query = plain[2].double() + grad_out[:, :C]
    assert _error(grad_query, expected_grad_query) < (2e-5 if dtype == torch.float32 else 8e-3)
    assert _error(grad_words, plain[3].double()) < (2e-5 if dtype == torch.float32 else 8e-3)


@pytest.mark.parametrize("impl", CPU_IMPLS)
def test_int32_lengths_equal_int64(impl):
    """int32 lengths give what int64 ones give (the ops convert where a kernel needs int64)."""
    query, words, lengths = _inputs(3, 5, 5, 4, 5, [5, 2, 1], dtype=torch.float32,
                                    device=_device(impl))
    grad_out = torch.randn(3, 5, 4, 5, dtype=torch.float64, device=query.device)
    grad_attn = torch.randn(3, 5, 4, 5, dtype=torch.float64, device=query.device)
    want = _run(impl, query, words, lengths, grad_out, grad_attn)
    got = _run(impl, query, words, lengths.to(torch.int32), grad_out, grad_attn)
    for expected, value in zip(want, got):      # (on a GPU, atomic sums may add in another order)
        torch.testing.assert_close(value, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.gpu
@pytest.mark.parametrize("impl", [*GPU_IMPLS, "reference"])
def test_gpu_cpu_lengths_need_no_synchronisation(impl, no_gpu_synchronisation):
    """Lengths kept on the CPU with features on the GPU (as the GAN step passes them): forward
    and backward never wait for the GPU (torch's sync debug mode raises on any synchronisation),
    the results equal those with the lengths on the GPU, and a bad CPU length still raises."""
    query, words, lengths = _inputs(3, 8, 7, 5, 6, [7, 3, 1], dtype=torch.float32)
    query, words = query.cuda().requires_grad_(), words.cuda().requires_grad_()
    grad_out = torch.randn(3, 16, 5, 6, device="cuda")

    def run(lengths):
        out = word_attention(query, words, lengths, impl=impl, concat=True)
        return (out, *torch.autograd.grad(out, (query, words), grad_out))

    expected = run(lengths.cuda())         # also compiles the kernels, outside the debug mode
    with no_gpu_synchronisation():
        got = run(lengths)
    for want, value in zip(expected, got):      # (atomic sums may add in another order)
        torch.testing.assert_close(value, want, rtol=1e-5, atol=1e-5)
    lengths[2] = 8
    with pytest.raises(ValueError, match=r"1\.\.L"):
        run(lengths)


@pytest.mark.gpu
def test_gpu_auto_dispatch():
    """Auto on CUDA tensors measures its choice (tests/test_autotune.py); asked without a call's
    key it takes the reference, and whatever it measured gives the reference's result."""
    q, w, n = torch.randn(2, 4, 3, 3, device="cuda"), torch.randn(2, 4, 5, device="cuda"), \
        torch.tensor([5, 2], device="cuda")
    assert backend.choose("word_attention", q.device) == "reference"
    torch.testing.assert_close(word_attention(q, w, n), word_attention_reference(q, w, n))
