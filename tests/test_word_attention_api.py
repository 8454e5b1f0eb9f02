"""The public word attention (attngan.ops.word_attention): dispatch, input validation (one clear
error per problem, TypeError for types and dtypes, ValueError for shapes, devices and values),
and the precision policy (autocast, integer lengths)."""

import importlib

import pytest
import torch
from helpers import device_for, relative_error, require, triton_device, word_attention_inputs

from attngan import backend
from attngan.backend import ImplementationUnavailable
from attngan.ops._library import word_attention_ops
from attngan.ops.reference import word_attention_reference
from attngan.ops.word_attention import word_attention

OP = "word_attention"


def _bad_inputs():
    q, w, n = torch.randn(2, 4, 3, 3), torch.randn(2, 4, 5), torch.tensor([5, 2])
    return [
        ("query 3d", (q[:, :, 0], w, n), ValueError, r"query must be \[B, C, H, W\]"),
        ("words 4d", (q, w[..., None], n), ValueError, r"words must be \[B, C, L\]"),
        ("lengths 2d", (q, w, n[:, None]), ValueError, r"lengths must be \[B\] = \[2\]"),
        ("batch", (q, w[:1], n), ValueError, "batch sizes differ"),
        ("channels", (q, torch.randn(2, 6, 5), n), ValueError, "channels"),
        ("zero length", (q, w, torch.tensor([5, 0])), ValueError, "at least one word"),
        ("too long", (q, w, torch.tensor([6, 2])), ValueError, "lengths must be <="),
        ("float lengths", (q, w, n.float()), TypeError, "integer tensor"),
        ("dtype mismatch", (q, w.double(), n), TypeError, "cast both"),
        ("integer query", (q.long(), w.long(), n), TypeError, "query must be floating point"),
        ("lengths on meta", (q, w, n.to("meta")), ValueError, "put lengths on the CPU"),
        ("words on meta", (q, w.to("meta"), n), ValueError, "move both to one device"),
        ("empty", (q[:, :, :0], w, n), ValueError, "empty input"),
        ("not a tensor", (q, w.tolist(), n), TypeError, "words must be a torch.Tensor"),
    ]


@pytest.mark.parametrize("case", _bad_inputs(), ids=lambda case: case[0])
def test_bad_inputs_raise_one_clear_error(case):
    _, args, error, message = case
    with pytest.raises(error, match=message):
        word_attention(*args)


def test_each_backends_limits_steer_dispatch():
    """A kernel is offered only the sizes its own limits (kernels.word_attention,
    attngan._C.word_attention_cuda_unsupported) admit; "cpp" and "reference" take any size."""
    device = triton_device()
    require(OP, "triton", device)
    from attngan.kernels.word_attention import MAX_CHANNELS, MAX_WORDS

    wide = MAX_CHANNELS + 1
    q, w = torch.randn(1, wide, 2, 2, device=device), torch.randn(1, wide, 3, device=device)
    n = torch.tensor([3], device=device)
    with pytest.raises(ImplementationUnavailable, match=f"C <= {MAX_CHANNELS}"):
        word_attention(q, w, n, impl="triton")
    with pytest.raises(ImplementationUnavailable, match="float64"):
        word_attention(q[:, :8].double(), w[:, :8].double(), n, impl="triton")
    q, w = torch.randn(1, 8, 2, 2), torch.randn(1, 8, MAX_WORDS + 6)
    with pytest.raises(ImplementationUnavailable, match=f"L = {MAX_WORDS + 6}"):
        word_attention(q.to(device), w.to(device), n, impl="triton")
    # the C++ kernel has no size limit, and takes C = 300 / L = 70 under auto
    torch.testing.assert_close(
        word_attention(q, w, torch.tensor([3])), word_attention_reference(q, w, torch.tensor([3]))
    )
    if backend.compiled_extension() is not None:  # the CUDA kernel's tile rule, from C++
        wa = importlib.import_module("attngan.ops.word_attention")
        assert wa._unsupported("cuda", 32, 18, torch.float32, "cuda") is None
        assert "C x L" in wa._unsupported("cuda", 128, 40, torch.float32, "cuda")


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
    assert called == ["cpp"]  # auto on CPU: the C++ kernel
    monkeypatch.setenv("ATTNGAN_IMPL", "reference")
    word_attention(q, w, n)
    assert called == ["cpp"]  # the environment picked the reference
    word_attention(q, w, n, impl="cpp")  # the argument beats the environment
    assert called == ["cpp", "cpp"]
    with pytest.raises(ImplementationUnavailable, match="cuda"):
        word_attention(q, w, n, impl="cuda")
    with pytest.raises(ValueError, match="not known"):
        word_attention(q, w, n, impl="fast")
    assert backend.choose(OP, torch.device("cpu"), "reference") == "reference"
    # "loop", the original's way (run.impl=loop): it computes word attention batched, as the
    # reference does
    word_attention(q, w, n, impl="loop")
    monkeypatch.setenv("ATTNGAN_IMPL", "loop")
    word_attention(q, w, n)
    assert called == ["cpp", "cpp"]
    assert backend.choose(OP, torch.device("cpu"), "loop") == "reference"
    assert backend.choose("damsm_word_similarity", torch.device("cpu"), "loop") == "loop"


@pytest.mark.skipif(torch.cuda.is_available(), reason="the interpreter runs where there is no GPU")
def test_the_triton_interpreter_refuses_bfloat16():
    """Its bfloat16 products are wrong (a silent wrong result); float16 and float32 stay open."""
    query, words = torch.randn(2, 16, 4, 4, dtype=torch.bfloat16), torch.randn(2, 16, 5).bfloat16()
    with pytest.raises(ImplementationUnavailable, match="computes bfloat16 products wrongly"):
        word_attention(query, words, torch.tensor([5, 2]), impl="triton")


@pytest.mark.parametrize("impl", ["reference", "cpp"])
def test_autocast_runs_in_the_autocast_dtype(impl):
    if impl != "reference":
        require(OP, impl)
    query, words, lengths = word_attention_inputs(
        2, 8, 6, 4, 4, lengths=[6, 3], dtype=torch.float32
    )
    with torch.autocast("cpu", dtype=torch.bfloat16):
        context, attn = word_attention(query, words, lengths, impl=impl, return_attn=True)
    assert context.dtype == attn.dtype == torch.bfloat16
    expected = word_attention_reference(query.double(), words.double(), lengths)
    assert relative_error(context, expected) < 3e-2


@pytest.mark.parametrize("impl", ["reference", "cpp", "triton"])
def test_integer_lengths_of_any_width_are_equal(impl):
    """Any integer lengths give what int64 ones give (the ops convert where a kernel needs
    int64)."""
    device = require(OP, impl) if impl != "reference" else device_for(impl)
    query, words, lengths = word_attention_inputs(
        3, 5, 5, 4, 5, lengths=[5, 2, 1], dtype=torch.float32, device=device
    )
    query.requires_grad_()
    words.requires_grad_()
    grad_out = torch.randn(3, 5, 4, 5, device=device)
    results = []
    for dtype in (torch.int64, torch.int32, torch.uint8):
        out = word_attention(query, words, lengths.to(dtype), impl=impl)
        results.append((out, *torch.autograd.grad(out, (query, words), grad_out)))
    for other in results[1:]:
        for want, got in zip(results[0], other):  # (on a GPU, atomic sums add in any order)
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.gpu
def test_gpu_auto_dispatch():
    """Auto on CUDA tensors measures its choice (tests/test_autotune.py); asked without a call's
    key it takes the reference, and whatever it measured gives the reference's result."""
    q, w, n = (
        torch.randn(2, 4, 3, 3, device="cuda"),
        torch.randn(2, 4, 5, device="cuda"),
        torch.tensor([5, 2], device="cuda"),
    )
    assert backend.choose(OP, q.device) == "reference"
    torch.testing.assert_close(word_attention(q, w, n), word_attention_reference(q, w, n))
