"""The public DAMSM functions (attngan.ops.damsm): dispatch, input validation (one clear error per
problem, TypeError for types and dtypes, ValueError for shapes, devices and values), and the
precision policy (low-precision inputs, autocast, mixed dtypes, integer lengths)."""

import pytest
import torch
from helpers import CPU, damsm_inputs, require

from attngan import backend
from attngan.backend import ImplementationUnavailable
from attngan.ops import damsm as damsm_module
from attngan.ops._library import cuda_limits, damsm_word_similarity_ops
from attngan.ops.damsm import damsm_sentence_loss, damsm_word_loss, damsm_word_similarity
from attngan.ops.reference import damsm_word_similarity_reference

OP = "damsm_word_similarity"
FUSED = ["cpp", "triton"]


def _small(dtype=torch.float32):
    return damsm_inputs(2, 3, 8, 5, 6, dtype=dtype)


# ------------------------------------------------------------------------------ dispatch


def _spy(monkeypatch):
    """Record which implementation damsm_word_similarity runs."""
    calls = []
    for name in ("damsm_word_similarity_loop", "damsm_word_similarity_reference"):
        original = getattr(damsm_module.reference, name)
        impl = name.rsplit("_", 1)[1]
        monkeypatch.setattr(
            damsm_module.reference,
            name,
            lambda *a, _f=original, _i=impl: calls.append(_i) or _f(*a),
        )
    for impl, op in list(damsm_word_similarity_ops.items()):
        monkeypatch.setitem(
            damsm_word_similarity_ops, impl, lambda *a, _f=op, _i=impl: calls.append(_i) or _f(*a)
        )
    return calls


def test_dispatch_auto_env_and_explicit(monkeypatch):
    words, lengths, regions = _small()
    calls = _spy(monkeypatch)
    monkeypatch.delenv("ATTNGAN_IMPL", raising=False)
    damsm_word_similarity(words, lengths, regions)
    cpp_reason = backend.unavailable_reason(OP, "cpp", CPU)
    assert calls[-1] == ("cpp" if cpp_reason is None else "reference")
    monkeypatch.setenv("ATTNGAN_IMPL", "loop")
    damsm_word_similarity(words, lengths, regions)
    assert calls[-1] == "loop"
    damsm_word_similarity(words, lengths, regions, impl="reference")  # argument beats env
    assert calls[-1] == "reference"


def test_dispatch_unavailable_impl_raises_with_reason():
    words, lengths, regions = _small()
    assert backend.unavailable_reason(OP, "cuda", CPU) is not None
    with pytest.raises(ImplementationUnavailable, match="impl='cuda'"):
        damsm_word_similarity(words, lengths, regions, impl="cuda")
    with pytest.raises(ValueError, match="impl='fastest' is not known"):
        damsm_word_similarity(words, lengths, regions, impl="fastest")


def test_dispatch_errors_name_the_environment_variable_that_chose(monkeypatch):
    """A user who never passed `impl` is told where the implementation came from."""
    words, lengths, regions = _small()
    monkeypatch.setenv("ATTNGAN_IMPL", "fastest")
    with pytest.raises(
        ValueError,
        match="the environment variable ATTNGAN_IMPL='fastest' is not "
        "known; choose from auto, loop",
    ):
        damsm_word_similarity(words, lengths, regions)
    monkeypatch.setenv("ATTNGAN_IMPL", "cuda")
    with pytest.raises(
        ImplementationUnavailable,
        match="the environment variable ATTNGAN_IMPL='cuda' cannot run here",
    ):
        damsm_word_similarity(words, lengths, regions)


def test_each_backends_limits_steer_dispatch():
    """The Triton and CUDA kernels' own limits (kernels.damsm, attngan._C.cuda_limits) decide
    which shapes they are offered."""
    require(OP, "cpp")
    limits = cuda_limits(OP)
    cuda = torch.device("cuda")
    too_long = torch.empty(2, 8, limits["max_words"] + 1), torch.empty(3, 8, 6)
    fits = torch.empty(2, 8, limits["max_words"]), torch.empty(3, 8, 6)
    reason = damsm_module._unsupported(
        "cuda", torch.float32, cuda, damsm_module._shape_reasons(*too_long)
    )
    assert f"L <= {limits['max_words']} and" in reason
    assert (
        damsm_module._unsupported("cpp", torch.float32, CPU, damsm_module._shape_reasons(*too_long))
        is None
    )
    assert (
        damsm_module._unsupported("cuda", torch.float32, cuda, damsm_module._shape_reasons(*fits))
        is None
    )
    from attngan.kernels import damsm as triton_damsm

    wide = torch.empty(2, triton_damsm.MAX_DIM + 1, 5), torch.empty(3, triton_damsm.MAX_DIM + 1, 6)
    assert f"D <= {triton_damsm.MAX_DIM}" in triton_damsm.damsm_word_similarity_supported(*wide)


def test_dispatch_triton_refuses_float64():
    words, lengths, regions = _small(torch.float64)
    with pytest.raises(ImplementationUnavailable, match="triton kernel takes float32"):
        damsm_word_similarity(words, lengths, regions, impl="triton")


@pytest.mark.skipif(torch.cuda.is_available(), reason="the interpreter runs where there is no GPU")
def test_the_triton_interpreter_refuses_bfloat16():
    """Its bfloat16 products are wrong (Triton 3.8: results off by 1e8 and more), which would be
    a silent wrong result; float16 and float32 stay open to it."""
    words, lengths, regions = _small(torch.bfloat16)
    with pytest.raises(
        ImplementationUnavailable,
        match="the Triton interpreter .* computes bfloat16 products wrongly",
    ):
        damsm_word_similarity(words, lengths, regions, impl="triton")


# ------------------------------------------------------------------------------ bad inputs


@pytest.mark.parametrize("impl", ["reference", *FUSED])
@pytest.mark.parametrize(
    "case, error, match",
    [
        ("length zero", ValueError, "every length must be in 1..L"),
        ("length above L", ValueError, "every length must be in 1..L"),
        ("float lengths", TypeError, "lengths must be an integer tensor"),
        (
            "lengths elsewhere",
            ValueError,
            "lengths are on meta but the features on cpu; put lengths on the CPU",
        ),
        ("lengths shape", ValueError, r"lengths must be \[B\] = \[3\]"),
        ("regions elsewhere", ValueError, "regions is on meta but words on cpu"),
        ("mismatched D", ValueError, "words have D = 8 but regions have D = 7"),
        ("words 2-D", ValueError, r"words must be \[B_cap, D, L\]"),
        ("regions 2-D", ValueError, r"regions must be \[B_img, D, H, W\]"),
        ("integer words", TypeError, "words must be floating point"),
        ("empty", ValueError, "empty input"),
        ("not a tensor", TypeError, "lengths must be a torch.Tensor"),
    ],
)
def test_bad_inputs_raise_one_clear_error(impl, case, error, match):
    if impl != "reference":
        require(OP, impl, CPU)
    words, lengths, regions = _small()
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
    elif case == "regions elsewhere":
        regions = regions.to("meta")
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
    with pytest.raises(error, match=match):
        damsm_word_similarity(words, lengths, regions, impl=impl)


def test_word_loss_needs_matching_batches():
    words, lengths, regions = _small()
    with pytest.raises(ValueError, match="as many images as captions"):
        damsm_word_loss(words, lengths, regions, impl="reference")
    regions = torch.randn(3, 8, 6)
    with pytest.raises(ValueError, match="class_ids"):
        damsm_word_loss(words, lengths, regions, class_ids=[1, 2], impl="reference")


def test_sentence_loss_dtype_and_bad_inputs():
    loss = damsm_sentence_loss(torch.randn(3, 4, dtype=torch.bfloat16), torch.randn(3, 4))
    assert loss[0].dtype == torch.float32
    with pytest.raises(ValueError, match="one shape"):
        damsm_sentence_loss(torch.randn(3, 4), torch.randn(2, 4))
    with pytest.raises(ValueError, match=r"image_codes must be \[B, D\]"):
        damsm_sentence_loss(torch.randn(3, 4, 1), torch.randn(3, 4))
    with pytest.raises(TypeError, match="sentences must be floating point"):
        damsm_sentence_loss(torch.randn(3, 4), torch.ones(3, 4, dtype=torch.long))
    with pytest.raises(TypeError, match="image_codes must be a torch.Tensor"):
        damsm_sentence_loss([[1.0]], torch.randn(3, 4))
    with pytest.raises(ValueError, match="class_ids"):
        damsm_sentence_loss(torch.randn(3, 4), torch.randn(3, 4), class_ids=[1, 2])


# ------------------------------------------------------------------------- precision policy


def test_reference_low_precision_and_autocast():
    """16-bit inputs are computed in float32 by the references; S is float32, gradients come
    back in the inputs' dtype; autocast changes nothing."""
    words, lengths, regions = _small()
    bf_words = words.bfloat16().requires_grad_()
    similarity = damsm_word_similarity(bf_words, lengths, regions.bfloat16(), impl="reference")
    assert similarity.dtype == torch.float32
    expected = damsm_word_similarity_reference(
        bf_words.detach().float(), lengths, regions.bfloat16().float()
    )
    torch.testing.assert_close(similarity, expected)
    similarity.sum().backward()
    assert bf_words.grad.dtype == torch.bfloat16
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under_autocast = damsm_word_similarity(words, lengths, regions, impl="reference")
    assert under_autocast.dtype == torch.float32
    torch.testing.assert_close(
        under_autocast, damsm_word_similarity(words, lengths, regions, impl="reference")
    )


def test_cpp_autocast_and_mixed_dtypes():
    require(OP, "cpp")
    words, lengths, regions = _small()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under_autocast = damsm_word_similarity(words, lengths, regions, impl="cpp")
    assert under_autocast.dtype == torch.float32
    torch.testing.assert_close(
        under_autocast, damsm_word_similarity(words, lengths, regions, impl="cpp")
    )
    # bfloat16 words with float32 regions: promoted to float32.
    mixed = damsm_word_similarity(words.bfloat16(), lengths, regions, impl="cpp")
    torch.testing.assert_close(
        mixed, damsm_word_similarity(words.bfloat16().float(), lengths, regions, impl="cpp")
    )


@pytest.mark.parametrize("impl", ["reference", *FUSED])
def test_integer_lengths_of_any_width_are_equal(impl):
    """Any integer lengths tensor: the ops convert it where a kernel needs int64."""
    if impl != "reference":
        require(OP, impl, CPU)
    words, lengths, regions = damsm_inputs(3, 4, 8, 6, 10, dtype=torch.float32)
    words, regions = words.requires_grad_(), regions.requires_grad_()
    grad_s = torch.randn(3, 4)
    results = []
    for dtype in (torch.int64, torch.int32, torch.uint8):
        similarity = damsm_word_similarity(words, lengths.to(dtype), regions, impl=impl)
        results.append((similarity, *torch.autograd.grad(similarity, (words, regions), grad_s)))
    for other in results[1:]:
        for want, got in zip(results[0], other):
            torch.testing.assert_close(got, want, rtol=0, atol=0)
