"""Every fused DAMSM word-similarity backend against the float64 reference (attngan.ops.reference).

"cpp" on the CPU; "triton" in the CPU interpreter at small sizes (TRITON_INTERPRET=1, set by
conftest) or compiled where a GPU is present; "triton" and "cuda" at the CUB size under the `gpu`
marker. Forward S and both gradients by the tolerance rule (tests/helpers.py), peaked softmaxes,
padded slots, gradcheck, opcheck, torch.compile(fullgraph=True), the regions-only backward, the
launchers' and kernels' own preconditions, determinism and CUDA-graph capture.
"""

import pytest
import torch
from helpers import (
    CPU,
    assert_cpu_lengths_cost_no_synchronisation,
    assert_within_tolerance,
    damsm_inputs,
    relative_error,
    require,
    triton_device,
)

from attngan.kernels import damsm as triton_damsm
from attngan.ops._library import cuda_limits, damsm_word_similarity_ops
from attngan.ops.damsm import damsm_word_loss, damsm_word_similarity
from attngan.ops.reference import damsm_word_similarity_reference

OP = "damsm_word_similarity"
FUSED = ["cpp", "triton"]
# (B_img, B_cap, D, L, R, lengths): odd sizes, B = 1, B_img != B_cap, L = 1 / 17 / 18 / 33, R = 1
# and R = 289, D = 256; for Triton also region blocks past BLOCK_R (online softmax rescaling),
# L = BLOCK_L and R a multiple of 16 (inputs used unpadded). The interpreter keeps them small.
SHAPES = {
    "cpp": [
        (3, 4, 8, 5, 6, None),
        (4, 3, 32, 18, 289, None),
        (1, 6, 16, 17, 9, None),
        (5, 1, 7, 1, 4, None),
        (6, 6, 24, 18, 49, None),
    ],
    "triton": [
        (2, 3, 20, 5, 7, [5, 1, 3]),
        (3, 2, 16, 1, 5, [1, 1]),
        (1, 1, 8, 4, 1, [3]),
        (2, 4, 24, 6, 70, [6, 2, 5, 1]),
        (2, 2, 40, 33, 20, [33, 17]),
        (1, 2, 256, 18, 33, [18, 5]),
        (2, 3, 32, 16, 48, [16, 9, 1]),
    ],
}
LOW_PRECISION = {"cpp": [torch.float16, torch.bfloat16], "triton": [torch.float16]}
CPU_FLOOR = 1e-4  # the floor of the flash-attention rule for these sizes
GPU_FLOOR = 1e-3  # at the CUB size
NAMES = ("S", "grad words", "grad regions")


def _inputs(shape, **kwargs):
    *sizes, lengths = shape
    return damsm_inputs(*sizes, lengths=lengths, **kwargs)


def _run(impl, words, lengths, regions, grad_s):
    """S, dL/dwords, dL/dregions for L = sum(grad_s * S); impl None is the reference, run in the
    inputs' dtype."""
    words = words.detach().clone().requires_grad_()
    regions = regions.detach().clone().requires_grad_()
    if impl is None:
        similarity = damsm_word_similarity_reference(words, lengths, regions)
    else:
        similarity = damsm_word_similarity(words, lengths, regions, impl=impl)
    similarity.backward(grad_s.to(similarity.dtype))
    return similarity.detach(), words.grad, regions.grad


def _backward_op(impl):
    """The backward launcher of a backend: (grad_s, words, lengths, regions, gamma1, gamma2,
    need_words_grad) -> (grad_words, grad_regions)."""
    if impl == "triton":
        return triton_damsm.damsm_word_similarity_bwd
    return torch.ops.attngan_C.damsm_word_similarity_bwd


@pytest.mark.parametrize("impl", FUSED)
def test_fp32_matches_fp64_reference(impl):
    device = require(OP, impl)
    for shape in SHAPES[impl]:
        words, lengths, regions = _inputs(shape, device=device)
        grad_s = torch.randn(regions.shape[0], words.shape[0], dtype=torch.float64, device=device)
        expected = _run(None, words, lengths, regions, grad_s)
        actual = _run(impl, words.float(), lengths, regions.float(), grad_s)
        for name, value, truth in zip(NAMES, actual, expected):
            assert value.dtype == torch.float32 and value.shape == truth.shape, (shape, name)
            assert_within_tolerance(f"{impl} {shape} {name}", value, truth)
        for i, n in enumerate(lengths.tolist()):  # padded word slots: exactly zero gradient
            assert torch.all(actual[1][i, :, n:] == 0)


@pytest.mark.parametrize("impl", FUSED)
def test_peaked_softmax_matches_fp64_reference(impl):
    """Unscaled features (s spread ~ sqrt(D)): one-hot word softmaxes, underflowing exps."""
    device = require(OP, impl)
    words, lengths, regions = damsm_inputs(4, 5, 64, 18, 49, scale=1.0, device=device)
    grad_s = torch.randn(4, 5, dtype=torch.float64, device=device)
    expected = _run(None, words, lengths, regions, grad_s)
    actual = _run(impl, words.float(), lengths, regions.float(), grad_s)
    for name, value, truth in zip(NAMES, actual, expected):
        assert_within_tolerance(name, value, truth, limit=5e-5)


@pytest.mark.parametrize("impl", FUSED)
def test_low_precision_flash_attention_rule(impl):
    device = require(OP, impl)
    for dtype in LOW_PRECISION[impl]:
        words, lengths, regions = damsm_inputs(3, 2, 32, 18, 40, dtype=dtype, device=device)
        grad_s = torch.randn(3, 2, dtype=torch.float64, device=device)
        # the truth on the same rounded inputs
        truth = _run(None, words.double(), lengths, regions.double(), grad_s)
        baseline = _run(None, words, lengths, regions, grad_s)
        actual = _run(impl, words, lengths, regions, grad_s)
        assert actual[0].dtype == torch.float32
        assert actual[1].dtype == dtype and actual[2].dtype == dtype
        for name, value, base, expected in zip(NAMES, actual, baseline, truth):
            assert_within_tolerance(f"{impl} {dtype} {name}", value, expected, base, CPU_FLOOR)


@pytest.mark.parametrize("shape", SHAPES["cpp"])
def test_cpp_bfloat16_products_on_amx_and_as_float(shape, monkeypatch):
    """bfloat16 inputs: products on the AMX tiles where the CPU has them (operands rounded to
    bfloat16 as the GPU kernels round them; D, R, lengths padded to the tile sizes), or in
    float with ATTNGAN_CPU_AMX=0. Both by the flash-attention rule at every odd shape."""
    require(OP, "cpp")
    words, lengths, regions = _inputs(shape, dtype=torch.bfloat16)
    grad_s = torch.randn(shape[0], shape[1], dtype=torch.float64)
    truth = _run(None, words.double(), lengths, regions.double(), grad_s)
    baseline = _run(None, words, lengths, regions, grad_s)
    results = {}
    for flag in ("1", "0"):
        monkeypatch.setenv("ATTNGAN_CPU_AMX", flag)
        uses_amx = torch.ops.attngan_C.damsm_cpu_amx()
        assert not (flag == "0" and uses_amx)
        results[uses_amx] = _run("cpp", words, lengths, regions, grad_s)
        for name, value, base, expected in zip(NAMES, results[uses_amx], baseline, truth):
            assert_within_tolerance(
                f"{shape} amx={uses_amx} {name}", value, expected, base, CPU_FLOOR
            )
    if True in results:  # an AMX machine: the two engines really are different computations
        assert any(not torch.equal(a, f) for a, f in zip(results[True], results[False]))


def test_cpp_gradcheck_fp64():
    require(OP, "cpp")
    words, lengths, regions = damsm_inputs(2, 3, 5, 4, 6)
    op = damsm_word_similarity_ops["cpp"]
    assert torch.autograd.gradcheck(
        lambda w, r: op(w, lengths, r, 4.0, 5.0), (words.requires_grad_(), regions.requires_grad_())
    )
    # Regions only (the GAN step: frozen text encoder) takes the need_words_grad=False path.
    assert torch.autograd.gradcheck(lambda r: op(words.detach(), lengths, r, 3.0, 2.0), (regions,))


@pytest.mark.parametrize(
    "impl, dtype", [("cpp", torch.float32), ("cpp", torch.bfloat16), ("triton", torch.float32)]
)
def test_regions_only_backward_equals_full(impl, dtype):
    """need_words_grad=False (the GAN step) gives the full backward's region gradient, also from
    the stride-0 gradient that .sum().backward() delivers, and no word gradient."""
    device = require(OP, impl)
    words, lengths, regions = damsm_inputs(3, 4, 16, 18, 49, dtype=dtype, device=device)
    backward = _backward_op(impl)
    grad_s = torch.ones(1, 1, device=device).expand(3, 4)
    full = backward(grad_s.contiguous(), words, lengths, regions, 4.0, 5.0, True)
    regions_only = backward(grad_s, words, lengths, regions, 4.0, 5.0, False)
    assert regions_only[0].numel() == 0
    torch.testing.assert_close(regions_only[1], full[1], rtol=0, atol=0)
    frozen = regions.clone().requires_grad_()
    damsm_word_similarity(words, lengths, frozen, impl=impl).sum().backward()
    torch.testing.assert_close(frozen.grad, full[1], rtol=0, atol=0)


@pytest.mark.parametrize("impl", FUSED)
def test_padded_slots_change_nothing(impl):
    device = require(OP, impl)
    words, lengths, regions = _inputs(SHAPES[impl][0], dtype=torch.float32, device=device)
    grad_s = torch.randn(regions.shape[0], words.shape[0], device=device)
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
def test_non_contiguous_inputs(impl):
    device = require(OP, impl)
    words, lengths, regions = damsm_inputs(2, 3, 16, 5, 6, dtype=torch.float32, device=device)
    words_t = words.transpose(1, 2).contiguous().transpose(1, 2)  # same values, other strides
    regions_t = regions.transpose(1, 2).contiguous().transpose(1, 2)
    assert not words_t.is_contiguous()
    torch.testing.assert_close(
        damsm_word_similarity(words_t, lengths, regions_t, impl=impl),
        damsm_word_similarity(words, lengths, regions, impl=impl),
    )


@pytest.mark.parametrize("impl", FUSED)
def test_opcheck(impl):
    device = require(OP, impl)
    dtypes = [torch.float32, torch.float64, torch.bfloat16] if impl == "cpp" else [torch.float32]
    for dtype in dtypes:
        words, lengths, regions = _inputs(SHAPES[impl][0], dtype=dtype, device=device)
        torch.library.opcheck(
            damsm_word_similarity_ops[impl],
            (words.requires_grad_(), lengths, regions.requires_grad_(), 4.0, 5.0),
        )
        # Words frozen: the backward op runs with need_words_grad=False.
        torch.library.opcheck(
            damsm_word_similarity_ops[impl],
            (words.detach(), lengths, regions.requires_grad_(), 4.0, 5.0),
        )


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
    require(OP, impl, CPU)
    words, lengths, regions = damsm_inputs(2, 3, 8, 5, 6, dtype=torch.float32)
    regions = regions.reshape(regions.shape[0], regions.shape[1], 2, 3)  # [Bi, D, H, W]
    loss, compiled = _compiled_matches_eager(impl, words, lengths, regions)
    # New B and L: the recompilation (dynamic shapes) must stay one graph as well.
    words, lengths, regions = damsm_inputs(3, 5, words.shape[1], 7, 6, dtype=torch.float32)
    regions = regions.reshape(3, regions.shape[1], 2, 3)
    torch.testing.assert_close(compiled(words, lengths, regions), loss(words, lengths, regions))
    # Inside a graph the Python check of the lengths does not run: the op's own check does.
    lengths[1] = 0
    with pytest.raises((ValueError, RuntimeError), match=r"every length must be in 1\.\.L"):
        compiled(words, lengths, regions)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cpp_backward_is_deterministic(dtype):
    """Threads take work dynamically; the word gradient still sums in a fixed order."""
    require(OP, "cpp")
    words, lengths, regions = damsm_inputs(9, 7, 16, 18, 25, dtype=dtype)
    grad_s = torch.randn(9, 7)
    backward = torch.ops.attngan_C.damsm_word_similarity_bwd
    first = backward(grad_s, words, lengths, regions, 4.0, 5.0, True)
    for _ in range(3):
        again = backward(grad_s, words, lengths, regions, 4.0, 5.0, True)
        assert torch.equal(again[0], first[0]) and torch.equal(again[1], first[1])


def test_cpp_word_loss_matches_reference():
    require(OP, "cpp")
    words, lengths, regions = damsm_inputs(6, 6, 16, 18, 49, dtype=torch.float32)
    class_ids = [0, 1, 0, 2, 2, 3]
    fused = damsm_word_loss(words, lengths, regions, class_ids=class_ids, impl="cpp")
    expected = damsm_word_loss(
        words.double(), lengths, regions.double(), class_ids=class_ids, impl="reference"
    )
    for value, truth in zip(fused, expected):
        assert relative_error(value, truth) < 1e-5


def test_cpp_uses_every_thread_for_one_image():
    """R-precision shape: one image against many captions is split into caption blocks."""
    require(OP, "cpp")
    words, lengths, regions = damsm_inputs(1, 9, 16, 18, 25)
    grad_s = torch.randn(1, 9, dtype=torch.float64)
    expected = _run(None, words, lengths, regions, grad_s)
    actual = _run("cpp", words, lengths, regions, grad_s)
    for value, truth in zip(actual, expected):
        torch.testing.assert_close(value, truth, rtol=1e-10, atol=1e-12)


# ------------------------------------------------------------- the kernels' own preconditions


def test_cpp_kernel_checks_its_inputs_itself():
    """The compiled op is reachable directly (and under torch.compile no Python check runs)."""
    require(OP, "cpp")
    words, lengths, regions = damsm_inputs(2, 3, 8, 5, 6, dtype=torch.float32)
    op = torch.ops.attngan_C.damsm_word_similarity_fwd
    with pytest.raises(RuntimeError, match=r"every length must be in 1\.\.L = 1\.\.5"):
        op(words, torch.tensor([1, 0, 2]), regions, 4.0, 5.0)
    with pytest.raises(RuntimeError, match="integer lengths expected"):
        op(words, lengths.float(), regions, 4.0, 5.0)
    with pytest.raises(RuntimeError, match="one floating dtype"):
        op(words, lengths, regions.double(), 4.0, 5.0)
    with pytest.raises(RuntimeError, match=r"expected words \[Bc, D, L\]"):
        op(words, lengths[:2], regions, 4.0, 5.0)
    with pytest.raises(RuntimeError, match="grad_s must be"):
        torch.ops.attngan_C.damsm_word_similarity_bwd(
            torch.ones(3, 3), words, lengths, regions, 4.0, 5.0, True
        )


@pytest.mark.parametrize(
    "case, error, match",
    [
        ("words 2-D", ValueError, r"expected words \[Bc, D, L\]"),
        ("mismatched D", ValueError, r"expected words \[Bc, D, L\]"),
        ("dtype mismatch", TypeError, "share one dtype"),
        ("float64", TypeError, "share one dtype"),
        ("float lengths", TypeError, "lengths be int64 or int32"),
        ("too wide", ValueError, "the Triton kernel takes D <= 256"),
        ("grad shape", ValueError, r"grad_s must be \[Bi, Bc\] = \[2, 3\]"),
    ],
)
def test_triton_launchers_check_their_preconditions(case, error, match):
    device = triton_device()
    words, lengths, regions = damsm_inputs(2, 3, 16, 4, 5, dtype=torch.float32, device=device)
    grad_s = torch.ones(2, 3, device=device)
    if case == "words 2-D":
        words = words[0]
    elif case == "mismatched D":
        regions = regions[:, :8]
    elif case == "dtype mismatch":
        regions = regions.half()
    elif case == "float64":
        words, regions = words.double(), regions.double()
    elif case == "float lengths":
        lengths = lengths.float()
    elif case == "too wide":
        words = torch.zeros(3, 300, 4, device=device)
        regions = torch.zeros(2, 300, 5, device=device)
    elif case == "grad shape":
        grad_s = torch.ones(3, 2, device=device)
    if case != "grad shape":
        with pytest.raises(error, match=match):
            triton_damsm.damsm_word_similarity_fwd(words, lengths, regions, 4.0, 5.0)
    with pytest.raises(error, match=match):
        triton_damsm.damsm_word_similarity_bwd(grad_s, words, lengths, regions, 4.0, 5.0, True)


def test_triton_launchers_clamp_lengths():
    """The launchers do not read the lengths (that would wait for the device; the custom op
    checks them): the kernels clamp them into [1, L], so no value reads out of bounds."""
    device = triton_device()
    words, _, regions = damsm_inputs(2, 3, 16, 4, 5, dtype=torch.float32, device=device)
    bad, clamped = (torch.tensor(n, device=device) for n in ([0, 9, 2], [1, 4, 2]))
    grad_s = torch.randn(2, 3, device=device)

    def outputs(lengths):
        return (
            triton_damsm.damsm_word_similarity_fwd(words, lengths, regions, 4.0, 5.0),
            *triton_damsm.damsm_word_similarity_bwd(
                grad_s, words, lengths, regions, 4.0, 5.0, True
            ),
        )

    for got, want in zip(outputs(bad), outputs(clamped)):
        torch.testing.assert_close(got, want)


# ------------------------------------------------------------------------- GPU (the real proof)
GPU_IMPLS = ["triton", "cuda"]
CUB = (48, 48, 256, 18, 289)


@pytest.mark.gpu
@pytest.mark.parametrize("impl", GPU_IMPLS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_gpu_cub_size_matches_fp64_reference(impl, dtype):
    """At the CUB size, features at a typical encoder scale (softmaxes not saturated)."""
    device = require(OP, impl, "cuda")
    words, lengths, regions = damsm_inputs(*CUB, dtype=dtype, device=device, scale=0.1)
    grad_s = torch.randn(CUB[0], CUB[1], dtype=torch.float64, device=device)
    truth = _run(None, words.double(), lengths, regions.double(), grad_s)
    baseline = None if dtype == torch.float32 else _run(None, words, lengths, regions, grad_s)
    actual = _run(impl, words, lengths, regions, grad_s)
    assert actual[0].dtype == torch.float32 and actual[1].dtype == actual[2].dtype == dtype
    for k, name in enumerate(NAMES):
        assert_within_tolerance(
            f"{impl} {dtype} {name}",
            actual[k],
            truth[k],
            None if baseline is None else baseline[k],
            GPU_FLOOR,
        )


@pytest.mark.gpu
@pytest.mark.parametrize("impl", GPU_IMPLS)
def test_gpu_small_shapes_and_masking(impl):
    """The Triton shapes (and D = 256, L = 32) within each kernel's limits, unscaled features
    (peaked softmaxes), NaN in the padding."""
    device = require(OP, impl, "cuda")
    for shape in SHAPES["triton"] + [(5, 3, 256, 32, 64, [32, 17, 1])]:
        words, lengths, regions = _inputs(shape, device=device, scale=1.0)
        if impl == "cuda" and words.shape[2] > cuda_limits(OP)["max_words"]:
            continue  # beyond the kernel: test_gpu_cuda_kernel_refuses_...
        grad_s = torch.randn(regions.shape[0], words.shape[0], dtype=torch.float64, device=device)
        truth = _run(None, words.float().double(), lengths, regions.float().double(), grad_s)
        dirty = words.float().clone()
        for i, n in enumerate(lengths.tolist()):
            dirty[i, :, n:] = float("nan")
        actual = _run(impl, dirty, lengths, regions.float(), grad_s)
        for name, value, expected in zip(NAMES, actual, truth):
            assert_within_tolerance(f"{impl} {shape} {name}", value, expected, limit=1e-3)


@pytest.mark.gpu
def test_gpu_cuda_kernel_refuses_long_captions():
    """The CUDA glue's own check (one warp lane per word), reached directly."""
    require(OP, "cuda", "cuda")
    max_words = cuda_limits(OP)["max_words"]
    words, lengths, regions = damsm_inputs(
        2, 2, 16, max_words + 1, 20, dtype=torch.float32, device="cuda"
    )
    with pytest.raises(RuntimeError, match=f"the CUDA kernel takes D <= 256, L <= {max_words}"):
        torch.ops.attngan_C.damsm_word_similarity_fwd(words, lengths, regions, 4.0, 5.0)


@pytest.mark.gpu
@pytest.mark.parametrize("impl", GPU_IMPLS)
def test_gpu_opcheck_and_compile_fullgraph(impl):
    """The GPU ops as registered custom ops on CUDA tensors: opcheck (schema, fake function,
    autograd registration, in fp32 and bf16) and one torch.compile(fullgraph=True) graph whose
    value and gradients equal eager mode's."""
    device = require(OP, impl, "cuda")
    for dtype in (torch.float32, torch.bfloat16):
        words, lengths, regions = damsm_inputs(3, 4, 32, 9, 20, dtype=dtype, device=device)
        torch.library.opcheck(
            damsm_word_similarity_ops[impl],
            (words.requires_grad_(), lengths, regions.requires_grad_(), 4.0, 5.0),
        )
    words, lengths, regions = damsm_inputs(3, 4, 32, 9, 20, dtype=torch.float32, device=device)
    _compiled_matches_eager(impl, words, lengths, regions)


@pytest.mark.gpu
@pytest.mark.parametrize("impl", [*GPU_IMPLS, "reference"])
def test_gpu_cpu_lengths_need_no_synchronisation(impl, no_gpu_synchronisation):
    """Lengths kept on the CPU with features on the GPU: the forward and backward never wait
    for the GPU (torch's sync debug mode raises on any synchronisation), the results equal those
    with the lengths on the GPU, and a bad CPU length still raises the clear error."""
    device = require(OP, impl, "cuda")
    words, lengths, regions = damsm_inputs(3, 4, 32, 9, 20, dtype=torch.float32)
    words, regions = words.to(device).requires_grad_(), regions.to(device).requires_grad_()
    grad_s = torch.randn(3, 4, device=device)

    def run(lengths):
        similarity = damsm_word_similarity(words, lengths, regions, impl=impl)
        return (similarity, *torch.autograd.grad(similarity, (words, regions), grad_s))

    assert_cpu_lengths_cost_no_synchronisation(run, lengths, no_gpu_synchronisation)
    lengths[1] = 0
    with pytest.raises(ValueError, match=r"1\.\.L"):
        run(lengths)


@pytest.mark.gpu
@pytest.mark.parametrize("impl", GPU_IMPLS)
def test_gpu_cuda_graph_capture(impl):
    """Forward and backward replay inside a CUDA graph (no host sync in the launchers)."""
    device = require(OP, impl, "cuda")
    forward = (
        triton_damsm.damsm_word_similarity_fwd
        if impl == "triton"
        else torch.ops.attngan_C.damsm_word_similarity_fwd
    )
    backward = _backward_op(impl)
    words, lengths, regions = damsm_inputs(
        3, 4, 64, 9, 50, lengths=[9, 3, 1, 6], dtype=torch.bfloat16, device=device
    )
    grad_s = torch.randn(3, 4, device=device)

    def outputs():
        return (
            forward(words, lengths, regions, 4.0, 5.0),
            *backward(grad_s, words, lengths, regions, 4.0, 5.0, True),
        )

    expected = outputs()  # also compiles Triton
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = outputs()
    graph.replay()
    torch.cuda.synchronize()
    for want, got in zip(expected, captured):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
