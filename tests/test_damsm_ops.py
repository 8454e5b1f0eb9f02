"""The fused DAMSM word-similarity backends against the float64 reference, and the public API.

Every available fused implementation ("cpp" here; "triton" under TRITON_INTERPRET=1 at tiny
sizes) is checked forward and for both gradients: float32 tightly against float64, float16 /
bfloat16 by the flash-attention rule (error vs float64 <= 2 x the error of the PyTorch
reference run in that dtype + a small floor). Then gradcheck, masking invariance, opcheck,
torch.compile(fullgraph=True), dispatch and every bad-input error; opcheck and torch.compile of
the Triton and CUDA ops on CUDA tensors where a GPU is present (GPU-marked).
"""
import pytest
import torch

from attngan import backend
from attngan.backend import ImplementationUnavailable
from attngan.ops import damsm as damsm_module
from attngan.ops._library import damsm_word_similarity_ops
from attngan.ops.damsm import damsm_word_loss, damsm_word_similarity
from attngan.ops.reference import damsm_word_similarity_reference
from attngan.ops.word_attention import word_attention

CPU = torch.device("cpu")
FUSED = ["cpp", "triton"]
# Triton runs in the interpreter on CPU: tiny shapes (16-bit tl.dot inner sizes are >= 16 on GPU;
# the interpreter does not check them, the kernels pad to 16 themselves).
SHAPES = {
    "cpp": [(3, 4, 8, 5, 6), (4, 3, 32, 18, 289), (1, 6, 16, 17, 9), (5, 1, 7, 1, 4),
            (6, 6, 24, 18, 49)],
    "triton": [(2, 3, 8, 5, 6), (3, 2, 16, 18, 9)],
}
LOW_PRECISION = {"cpp": [torch.float16, torch.bfloat16], "triton": [torch.float16]}


def _require(impl):
    reason = backend.unavailable_reason("damsm_word_similarity", impl, CPU)
    if reason is not None:
        pytest.skip(reason)


def _inputs(num_images, num_captions, dim, num_words, num_regions, dtype=torch.float64,
            scale=None):
    """s = v^T e of unit spread by default (softmaxes not one-hot); ragged lengths with 1 and L."""
    scale = dim ** -0.25 if scale is None else scale
    words = torch.randn(num_captions, dim, num_words, dtype=dtype) * scale
    regions = torch.randn(num_images, dim, num_regions, dtype=dtype) * scale
    lengths = torch.randint(1, num_words + 1, (num_captions,))
    lengths[0] = num_words
    if num_captions > 1:
        lengths[-1] = 1
    return words, lengths, regions


def _run(impl, words, lengths, regions, grad_s, **kwargs):
    """S, dL/dwords, dL/dregions for L = sum(grad_s * S); impl None is the float64 reference."""
    words = words.detach().clone().requires_grad_()
    regions = regions.detach().clone().requires_grad_()
    if impl is None:
        similarity = damsm_word_similarity_reference(words, lengths, regions, **kwargs)
    else:
        similarity = damsm_word_similarity(words, lengths, regions, impl=impl, **kwargs)
    similarity.backward(grad_s.to(similarity.dtype))
    return similarity.detach(), words.grad, regions.grad


def _relative_error(actual, expected):
    scale = expected.abs().max()
    assert scale > 0, "never compare on zeros"
    return float((actual.double() - expected).abs().max() / scale)


@pytest.mark.parametrize("impl", FUSED)
def test_fp32_matches_fp64_reference(impl):
    _require(impl)
    for shape in SHAPES[impl]:
        words, lengths, regions = _inputs(*shape)
        grad_s = torch.randn(shape[0], shape[1], dtype=torch.float64)
        expected = _run(None, words, lengths, regions, grad_s, gamma1=4.0, gamma2=5.0)
        actual = _run(impl, words.float(), lengths, regions.float(), grad_s)
        assert actual[0].dtype == torch.float32
        for name, a, e in zip(("S", "grad words", "grad regions"), actual, expected):
            assert a.dtype == torch.float32 and a.shape == e.shape
            assert _relative_error(a, e) < 2e-5, (impl, shape, name)


def test_cpp_peaked_softmax_matches_fp64_reference():
    """Unscaled features (s spread ~ sqrt(D)): one-hot word softmaxes, underflowing exps."""
    _require("cpp")
    words, lengths, regions = _inputs(4, 5, 64, 18, 49, scale=1.0)
    grad_s = torch.randn(4, 5, dtype=torch.float64)
    expected = _run(None, words, lengths, regions, grad_s)
    actual = _run("cpp", words.float(), lengths, regions.float(), grad_s)
    for a, e in zip(actual, expected):
        assert _relative_error(a, e) < 5e-5


@pytest.mark.parametrize("impl", FUSED)
def test_low_precision_flash_attention_rule(impl):
    _require(impl)
    shape = SHAPES[impl][1]
    for dtype in LOW_PRECISION[impl]:
        words, lengths, regions = _inputs(*shape, dtype=torch.float32)
        words, regions = words.to(dtype), regions.to(dtype)
        grad_s = torch.randn(shape[0], shape[1], dtype=torch.float64)
        # Ground truth on the same rounded inputs.
        expected = _run(None, words.double(), lengths, regions.double(), grad_s)
        same_dtype_reference = _run(None, words, lengths, regions, grad_s)
        actual = _run(impl, words, lengths, regions, grad_s)
        assert actual[0].dtype == torch.float32
        assert actual[1].dtype == dtype and actual[2].dtype == dtype
        for name, a, r, e in zip(("S", "grad words", "grad regions"), actual,
                                 same_dtype_reference, expected):
            bound = 2 * _relative_error(r, e) + 1e-4
            assert _relative_error(a, e) <= bound, (impl, dtype, name)


@pytest.mark.parametrize("shape", SHAPES["cpp"])
def test_cpp_bfloat16_products_on_amx_and_as_float(shape, monkeypatch):
    """bfloat16 inputs: products on the AMX tiles where the CPU has them (operands rounded to
    bfloat16 as the GPU kernels round them; D, R, lengths padded to the tile sizes), or in
    float with ATTNGAN_CPU_AMX=0. Both by the flash-attention rule at every odd shape."""
    _require("cpp")
    words, lengths, regions = _inputs(*shape, dtype=torch.float32)
    words, regions = words.bfloat16(), regions.bfloat16()
    grad_s = torch.randn(shape[0], shape[1], dtype=torch.float64)
    expected = _run(None, words.double(), lengths, regions.double(), grad_s)
    same_dtype_reference = _run(None, words, lengths, regions, grad_s)
    results = {}
    for flag in ("1", "0"):
        monkeypatch.setenv("ATTNGAN_CPU_AMX", flag)
        uses_amx = torch.ops.attngan_C.damsm_cpu_amx()
        assert not (flag == "0" and uses_amx)
        results[uses_amx] = _run("cpp", words, lengths, regions, grad_s)
        for name, a, r, e in zip(("S", "grad words", "grad regions"), results[uses_amx],
                                 same_dtype_reference, expected):
            bound = 2 * _relative_error(r, e) + 1e-4
            assert _relative_error(a, e) <= bound, (shape, uses_amx, name)
    if True in results:  # an AMX machine: the two engines really are different computations
        assert any(not torch.equal(a, f) for a, f in zip(results[True], results[False]))


def test_cpp_gradcheck_fp64():
    _require("cpp")
    words, lengths, regions = _inputs(2, 3, 5, 4, 6)
    op = damsm_word_similarity_ops["cpp"]
    assert torch.autograd.gradcheck(lambda w, r: op(w, lengths, r, 4.0, 5.0),
                                    (words.requires_grad_(), regions.requires_grad_()))
    # Regions only (the GAN step: frozen text encoder) takes the need_words_grad=False path.
    assert torch.autograd.gradcheck(lambda r: op(words.detach(), lengths, r, 3.0, 2.0),
                                    (regions,))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cpp_regions_only_backward_equals_full(dtype):
    _require("cpp")
    words, lengths, regions = _inputs(3, 4, 16, 18, 49, dtype=torch.float32)
    words, regions = words.to(dtype), regions.to(dtype)
    grad_s = torch.randn(3, 4)
    full = torch.ops.attngan_C.damsm_word_similarity_bwd(grad_s, words, lengths, regions, 4.0,
                                                         5.0, True)
    regions_only = torch.ops.attngan_C.damsm_word_similarity_bwd(grad_s, words, lengths, regions,
                                                                 4.0, 5.0, False)
    assert regions_only[0].numel() == 0
    torch.testing.assert_close(regions_only[1], full[1], rtol=0, atol=0)
    frozen = regions.clone().requires_grad_()
    damsm_word_similarity(words, lengths, frozen, impl="cpp").backward(grad_s)
    torch.testing.assert_close(frozen.grad, full[1], rtol=0, atol=0)


@pytest.mark.parametrize("impl", FUSED)
def test_padded_slots_change_nothing(impl):
    _require(impl)
    words, lengths, regions = _inputs(*SHAPES[impl][0], dtype=torch.float32)
    grad_s = torch.randn(regions.shape[0], words.shape[0])
    clean = _run(impl, words, lengths, regions, grad_s)
    dirty = words.clone()
    for i, n in enumerate(lengths.tolist()):
        dirty[i, :, n:] = float("nan") if i % 2 else 1e30
    assert torch.isnan(dirty).any()
    result = _run(impl, dirty, lengths, regions, grad_s)
    for a, b in zip(result, clean):
        assert torch.equal(a, b)
    for i, n in enumerate(lengths.tolist()):
        assert torch.all(result[1][i, :, n:] == 0)


@pytest.mark.parametrize("impl", FUSED)
def test_opcheck(impl):
    _require(impl)
    dtypes = [torch.float32, torch.float64, torch.bfloat16] if impl == "cpp" else [torch.float32]
    for dtype in dtypes:
        words, lengths, regions = _inputs(*SHAPES[impl][0], dtype=dtype)
        torch.library.opcheck(damsm_word_similarity_ops[impl],
                              (words.requires_grad_(), lengths, regions.requires_grad_(), 4.0, 5.0))
        # Words frozen: the backward op runs with need_words_grad=False.
        torch.library.opcheck(damsm_word_similarity_ops[impl],
                              (words.detach(), lengths, regions.requires_grad_(), 4.0, 5.0))


def _compiled_matches_eager(impl, words, lengths, regions):
    """torch.compile(fullgraph=True) of a loss over the op with `impl`: its value and both
    gradients equal eager mode's on these inputs. Returns (loss, compiled loss)."""
    torch._dynamo.reset()

    def loss(w, n, r):
        return damsm_word_similarity(w, n, r, impl=impl).logsumexp(dim=1).sum()

    compiled = torch.compile(loss, fullgraph=True)
    w1, r1 = words.clone().requires_grad_(), regions.clone().requires_grad_()
    w2, r2 = words.clone().requires_grad_(), regions.clone().requires_grad_()
    eager_value, compiled_value = loss(w1, lengths, r1), compiled(w2, lengths, r2)
    eager_value.backward()
    compiled_value.backward()
    torch.testing.assert_close(compiled_value, eager_value)
    torch.testing.assert_close(w2.grad, w1.grad)
    torch.testing.assert_close(r2.grad, r1.grad)
    return loss, compiled


@pytest.mark.parametrize("impl", FUSED)
def test_torch_compile_fullgraph(impl):
    _require(impl)
    words, lengths, regions = _inputs(*SHAPES[impl][0], dtype=torch.float32)
    regions = regions.reshape(regions.shape[0], regions.shape[1], 2, 3)   # [Bi, D, H, W]
    loss, compiled = _compiled_matches_eager(impl, words, lengths, regions)
    # New B and L: the recompilation (dynamic shapes) must stay one graph as well.
    words, lengths, regions = _inputs(3, 5, words.shape[1], 7, 6, dtype=torch.float32)
    regions = regions.reshape(3, regions.shape[1], 2, 3)
    torch.testing.assert_close(compiled(words, lengths, regions), loss(words, lengths, regions))
    # Inside a graph the Python check of the lengths does not run: the op's own check does.
    lengths[1] = 0
    with pytest.raises((ValueError, RuntimeError), match=r"1\.\.L"):
        compiled(words, lengths, regions)


@pytest.mark.gpu
@pytest.mark.parametrize("impl", ["triton", "cuda"])
def test_gpu_opcheck_and_compile_fullgraph(impl):
    """The GPU ops as registered custom ops on CUDA tensors: opcheck (schema, fake function,
    autograd registration, in fp32 and bf16) and one torch.compile(fullgraph=True) graph whose
    value and gradients equal eager mode's."""
    cuda = torch.device("cuda")
    reason = backend.unavailable_reason("damsm_word_similarity", impl, cuda)
    if reason is not None:
        pytest.skip(reason)
    for dtype in (torch.float32, torch.bfloat16):
        words, lengths, regions = (t.to(cuda) for t in _inputs(3, 4, 32, 9, 20, dtype=torch.float32))
        words, regions = words.to(dtype), regions.to(dtype)
        torch.library.opcheck(damsm_word_similarity_ops[impl],
                              (words.requires_grad_(), lengths, regions.requires_grad_(), 4.0, 5.0))
    words, lengths, regions = (t.to(cuda) for t in _inputs(3, 4, 32, 9, 20, dtype=torch.float32))
    _compiled_matches_eager(impl, words, lengths, regions)


@pytest.mark.parametrize("impl", ["reference", *FUSED])
def test_int32_lengths_equal_int64(impl):
    """Any integer lengths tensor: the ops convert it where they need int64 (the C++ kernel)."""
    _require(impl)
    words, lengths, regions = _inputs(3, 4, 8, 6, 10, dtype=torch.float32)
    words, regions = words.requires_grad_(), regions.requires_grad_()
    grad_s = torch.randn(3, 4)
    results = []
    for dtype in (torch.int64, torch.int32):
        similarity = damsm_word_similarity(words, lengths.to(dtype), regions, impl=impl)
        results.append((similarity,
                        *torch.autograd.grad(similarity, (words, regions), grad_s)))
    for want, got in zip(*results):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


@pytest.mark.gpu
@pytest.mark.parametrize("impl", ["triton", "cuda", "reference"])
def test_gpu_cpu_lengths_need_no_synchronisation(impl, no_gpu_synchronisation):
    """Lengths kept on the CPU with features on the GPU: the forward and backward never wait
    for the GPU (torch's sync debug mode raises on any synchronisation), the results equal those
    with the lengths on the GPU, and a bad CPU length still raises the clear error."""
    cuda = torch.device("cuda")
    reason = backend.unavailable_reason("damsm_word_similarity", impl, cuda)
    if reason is not None:
        pytest.skip(reason)
    words, lengths, regions = _inputs(3, 4, 32, 9, 20, dtype=torch.float32)
    words, regions = words.to(cuda).requires_grad_(), regions.to(cuda).requires_grad_()
    grad_s = torch.randn(3, 4, device=cuda)

    def run(lengths):
        similarity = damsm_word_similarity(words, lengths, regions, impl=impl)
        return (similarity, *torch.autograd.grad(similarity, (words, regions), grad_s))

    expected = run(lengths.to(cuda))       # also compiles the kernels, outside the debug mode
    with no_gpu_synchronisation():
        got = run(lengths)
    for want, value in zip(expected, got):      # (cuBLAS need not repeat its summation order)
        torch.testing.assert_close(value, want, rtol=1e-5, atol=1e-5)
    lengths[1] = 0
    with pytest.raises(ValueError, match=r"1\.\.L"):
        run(lengths)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cpp_backward_is_deterministic(dtype):
    """Threads take work dynamically; the word gradient still sums in a fixed order."""
    _require("cpp")
    words, lengths, regions = _inputs(9, 7, 16, 18, 25, dtype=torch.float32)
    words, regions = words.to(dtype), regions.to(dtype)
    grad_s = torch.randn(9, 7)
    first = torch.ops.attngan_C.damsm_word_similarity_bwd(grad_s, words, lengths, regions, 4.0,
                                                          5.0, True)
    for _ in range(3):
        again = torch.ops.attngan_C.damsm_word_similarity_bwd(grad_s, words, lengths, regions,
                                                              4.0, 5.0, True)
        assert torch.equal(again[0], first[0]) and torch.equal(again[1], first[1])


def test_cpp_word_loss_matches_reference():
    _require("cpp")
    words, lengths, regions = _inputs(6, 6, 16, 18, 49, dtype=torch.float32)
    class_ids = [0, 1, 0, 2, 2, 3]
    fused = damsm_word_loss(words, lengths, regions, class_ids=class_ids, impl="cpp")
    expected = damsm_word_loss(words.double(), lengths, regions.double(), class_ids=class_ids,
                               impl="reference")
    for a, e in zip(fused, expected):
        assert _relative_error(a, e) < 1e-5


def test_cpp_autocast_and_mixed_dtypes():
    _require("cpp")
    words, lengths, regions = _inputs(2, 3, 8, 5, 9, dtype=torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under_autocast = damsm_word_similarity(words, lengths, regions, impl="cpp")
    assert under_autocast.dtype == torch.float32
    torch.testing.assert_close(under_autocast, damsm_word_similarity(words, lengths, regions,
                                                                     impl="cpp"))
    # bfloat16 words with float32 regions: promoted to float32.
    mixed = damsm_word_similarity(words.bfloat16(), lengths, regions, impl="cpp")
    torch.testing.assert_close(mixed, damsm_word_similarity(words.bfloat16().float(), lengths,
                                                            regions, impl="cpp"))


def test_cpp_uses_every_thread_for_one_image():
    """R-precision shape: one image against many captions is split into caption blocks."""
    _require("cpp")
    words, lengths, regions = _inputs(1, 9, 16, 18, 25)
    grad_s = torch.randn(1, 9, dtype=torch.float64)
    expected = _run(None, words, lengths, regions, grad_s)
    actual = _run("cpp", words, lengths, regions, grad_s)
    for a, e in zip(actual, expected):
        torch.testing.assert_close(a, e, rtol=1e-10, atol=1e-12)


# ------------------------------------------------------------------------------ dispatch


def _spy(monkeypatch):
    """Record which implementation damsm_word_similarity runs."""
    calls = []
    for name in ("damsm_word_similarity_loop", "damsm_word_similarity_reference"):
        original = getattr(damsm_module.reference, name)
        impl = name.rsplit("_", 1)[1]
        monkeypatch.setattr(damsm_module.reference, name,
                            lambda *a, _f=original, _i=impl: calls.append(_i) or _f(*a))
    for impl, op in list(damsm_word_similarity_ops.items()):
        monkeypatch.setitem(damsm_word_similarity_ops, impl,
                            lambda *a, _f=op, _i=impl: calls.append(_i) or _f(*a))
    return calls


def test_dispatch_auto_env_and_explicit(monkeypatch):
    words, lengths, regions = _inputs(2, 3, 8, 5, 6, dtype=torch.float32)
    calls = _spy(monkeypatch)
    monkeypatch.delenv("ATTNGAN_IMPL", raising=False)
    damsm_word_similarity(words, lengths, regions)
    cpp_reason = backend.unavailable_reason("damsm_word_similarity", "cpp", CPU)
    assert calls[-1] == ("cpp" if cpp_reason is None else "reference")
    monkeypatch.setenv("ATTNGAN_IMPL", "loop")
    damsm_word_similarity(words, lengths, regions)
    assert calls[-1] == "loop"
    damsm_word_similarity(words, lengths, regions, impl="reference")   # argument beats env
    assert calls[-1] == "reference"


def test_dispatch_unavailable_impl_raises_with_reason():
    words, lengths, regions = _inputs(2, 3, 8, 5, 6, dtype=torch.float32)
    reason = backend.unavailable_reason("damsm_word_similarity", "cuda", CPU)
    assert reason is not None
    with pytest.raises(ImplementationUnavailable, match="impl='cuda'"):
        damsm_word_similarity(words, lengths, regions, impl="cuda")
    with pytest.raises(ValueError, match="impl='fastest' is not known"):
        damsm_word_similarity(words, lengths, regions, impl="fastest")


def test_dispatch_errors_name_the_environment_variable_that_chose(monkeypatch):
    """A user who never passed `impl` is told where the implementation came from."""
    words, lengths, regions = _inputs(2, 3, 8, 5, 6, dtype=torch.float32)
    monkeypatch.setenv("ATTNGAN_IMPL", "fastest")
    with pytest.raises(ValueError, match="the environment variable ATTNGAN_IMPL='fastest' is not "
                                         "known; choose from auto, loop"):
        damsm_word_similarity(words, lengths, regions)
    monkeypatch.setenv("ATTNGAN_IMPL", "cuda")
    with pytest.raises(ImplementationUnavailable, match="the environment variable "
                                                        "ATTNGAN_IMPL='cuda' cannot run here"):
        damsm_word_similarity(words, lengths, regions)


def test_shape_limits_of_the_gpu_kernels_steer_dispatch():
    words, regions = torch.empty(2, 8, 40), torch.empty(3, 8, 6)
    reasons = damsm_module._shape_reasons(words, regions)
    cuda = torch.device("cuda")
    assert "L <= 32" in damsm_module._unsupported("cuda", torch.float32, cuda, reasons)
    assert damsm_module._unsupported("cpp", torch.float32, CPU, reasons) is None
    assert damsm_module._unsupported("cuda", torch.float32, cuda,
                                     damsm_module._shape_reasons(words[:, :, :32], regions)) is None


def test_dispatch_triton_refuses_float64():
    words, lengths, regions = _inputs(2, 3, 8, 5, 6)
    with pytest.raises(ImplementationUnavailable, match="triton"):
        damsm_word_similarity(words, lengths, regions, impl="triton")


# ------------------------------------------------------------------------------ bad inputs


def _good():
    return _inputs(2, 3, 8, 5, 6, dtype=torch.float32)


@pytest.mark.parametrize("impl", ["reference", *FUSED])
@pytest.mark.parametrize("case, match", [
    ("length zero", "every length must be in 1..L"),
    ("length above L", "every length must be in 1..L"),
    ("float lengths", "lengths must be an integer tensor"),
    ("lengths elsewhere", "lengths are on meta but the features on cpu; put lengths on the CPU"),
    ("lengths shape", r"lengths must be \[B_cap\]"),
    ("mismatched D", "words have D = 8 but regions have D = 7"),
    ("words 2-D", r"words must be \[B_cap, D, L\]"),
    ("regions 2-D", r"regions must be \[B_img, D, H, W\]"),
    ("integer words", "words has dtype torch.int64"),
    ("empty", "empty input"),
    ("not a tensor", "lengths must be a torch.Tensor"),
])
def test_bad_inputs_raise_one_clear_error(impl, case, match):
    if impl != "reference":
        _require(impl)
    words, lengths, regions = _good()
    if case == "length zero":
        lengths[1] = 0
    elif case == "length above L":
        lengths[0] = words.shape[2] + 1
    elif case == "float lengths":
        lengths = lengths.float()
    elif case == "lengths elsewhere":
        lengths = lengths.to("meta")
    elif case == "lengths shape":
        lengths = lengths[:2]
    elif case == "mismatched D":
        regions = regions[:, :7]
    elif case == "words 2-D":
        words = words[0]
    elif case == "regions 2-D":
        regions = regions[0]
    elif case == "integer words":
        words = words.long()
    elif case == "empty":
        regions = regions[:0]
    elif case == "not a tensor":
        lengths = lengths.tolist()
    with pytest.raises(ValueError, match=match):
        damsm_word_similarity(words, lengths, regions, impl=impl)


def test_cpp_kernel_checks_its_inputs_itself():
    """The compiled op is reachable directly (and under torch.compile no Python check runs)."""
    _require("cpp")
    words, lengths, regions = _good()
    op = torch.ops.attngan_C.damsm_word_similarity_fwd
    with pytest.raises(RuntimeError, match="outside 1..L"):
        op(words, torch.tensor([1, 0, 2]), regions, 4.0, 5.0)
    with pytest.raises(RuntimeError, match="int64"):
        op(words, lengths.int(), regions, 4.0, 5.0)
    with pytest.raises(RuntimeError, match="share a dtype"):
        op(words, lengths, regions.double(), 4.0, 5.0)
    with pytest.raises(RuntimeError, match="grad_s must be"):
        torch.ops.attngan_C.damsm_word_similarity_bwd(torch.ones(3, 3), words, lengths, regions,
                                                      4.0, 5.0, True)


def test_word_loss_needs_matching_batches():
    words, lengths, regions = _good()
    with pytest.raises(ValueError, match="as many images as captions"):
        damsm_word_loss(words, lengths, regions, impl="reference")
    regions = torch.randn(3, 8, 6)
    with pytest.raises(ValueError, match="class_ids"):
        damsm_word_loss(words, lengths, regions, class_ids=[1, 2], impl="reference")


@pytest.mark.skipif(torch.cuda.is_available(), reason="the interpreter runs where there is no GPU")
def test_the_triton_interpreter_refuses_bfloat16():
    """Its bfloat16 products are wrong (Triton 3.8: results off by 1e8 and more), which would be
    a silent wrong result; float16 and float32 stay open to it."""
    words, lengths, regions = _inputs(2, 3, 8, 5, 6, dtype=torch.bfloat16)
    with pytest.raises(ImplementationUnavailable, match="the Triton interpreter .* computes "
                                                        "bfloat16 products wrongly"):
        damsm_word_similarity(words, lengths, regions, impl="triton")
    query, words = torch.randn(2, 16, 4, 4, dtype=torch.bfloat16), torch.randn(2, 16, 5).bfloat16()
    with pytest.raises(ImplementationUnavailable, match="computes bfloat16 products wrongly"):
        word_attention(query, words, torch.tensor([5, 2]), impl="triton")
