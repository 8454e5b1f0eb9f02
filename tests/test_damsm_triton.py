"""Fused DAMSM word similarity (SPEC 2, paper Eq. 7-10): Triton kernels and the CUDA extension.

On CPU the Triton kernels (kernels/damsm.py) run under the interpreter (TRITON_INTERPRET=1, set
by conftest) at tiny sizes in fp32 and fp16; on a GPU machine the same tests run compiled.
Checked: forward S and both gradients against fp64 autograd through the faithful loop
(attngan.ops.reference.damsm_word_similarity_loop), ragged lengths, L = 1, B_img != B_cap,
several region blocks, masking invariance and input errors. The hand-derived backward the
kernels implement is itself checked against autograd here. GPU-marked tests run the compiled
Triton kernels and the CUDA extension at the CUB size (B = 48, D = 256, L = 18, R = 289) in
fp32/fp16/bf16 with the flash-attention rule:
error(kernel vs fp64) <= 2 * error(same-dtype PyTorch reference vs fp64) + floor.
"""
import pytest
import torch
import torch.nn.functional as F

from attngan.kernels import damsm as tk
from attngan.ops.damsm import CUDA_MAX_WORDS
from attngan.ops.reference import damsm_word_similarity_loop

GAMMA1, GAMMA2 = 4.0, 5.0


@pytest.fixture
def device():
    """Where the unmarked tests run: the interpreter on CPU, compiled Triton when a GPU is present."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def vectorized_reference(words, lengths, regions, gamma1=GAMMA1, gamma2=GAMMA2):
    """S [Bi, Bc] for all pairs at once, matrix products in the inputs' dtype, cosines and S in fp32.

    The same-dtype PyTorch baseline of the flash-attention tolerance rule: it keeps the public
    ops' precision policy (fp32 cosines and log-sum-exp, fp32 S), so it is a stricter baseline
    than attngan.ops.reference run wholly in fp16/bf16.
    """
    mask = torch.arange(words.shape[2], device=words.device)[None, :] < lengths[:, None]   # [Bc, L]
    e = words.masked_fill(~mask[:, None, :], 0)
    s = torch.einsum("jdr,idl->jirl", regions, e)                       # [Bi, Bc, R, L]
    p = F.softmax(s.masked_fill(~mask[None, :, None, :], float("-inf")), dim=3)
    alpha = F.softmax(gamma1 * p, dim=2)
    c = torch.einsum("jdr,jirl->jidl", regions, alpha)                  # [Bi, Bc, D, L]
    # cosines and the log-sum-exp in at least fp32 (DESIGN precision policy; 1e-8 is 0 in fp16)
    acc = torch.promote_types(words.dtype, torch.float32)
    e, c = e.to(acc), c.to(acc)
    cos = (e[None] * c).sum(2) / (e.norm(dim=1)[None] * c.norm(dim=2)).clamp(min=1e-8)
    z = (gamma2 * cos).masked_fill(~mask[None], float("-inf"))
    return torch.logsumexp(z, dim=2)


def manual_backward(grad_s, words, lengths, regions, gamma1=GAMMA1, gamma2=GAMMA2, eps=1e-8):
    """The hand-derived backward of the module docstring of kernels/damsm.py, pair by pair."""
    grad_words, grad_regions = torch.zeros_like(words), torch.zeros_like(regions)
    for j in range(regions.shape[0]):
        v = regions[j]
        for i in range(words.shape[0]):
            n = int(lengths[i])
            e = words[i, :, :n]
            s = v.t() @ e
            p = F.softmax(s, dim=1)
            alpha = F.softmax(gamma1 * p, dim=0)                         # [R, n]
            c = v @ alpha
            ee, cc = (e * e).sum(0), (c * c).sum(0)
            norm = ee.sqrt() * cc.sqrt()
            cos = (e * c).sum(0) / norm.clamp(min=eps)
            g_r = grad_s[j, i] * gamma2 * F.softmax(gamma2 * cos, dim=0)
            clamped = norm < eps
            coef_a = g_r / norm.clamp(min=eps)
            coef_b = torch.where(clamped, 0.0, -g_r * cos / cc)
            coef_bw = torch.where(clamped, 0.0, -g_r * cos / ee)
            gc = coef_a * e + coef_b * c
            g_alpha = v.t() @ gc
            g_p = gamma1 * alpha * (g_alpha - (gc * c).sum(0))
            gs = p * (g_p - (p * g_p).sum(1, keepdim=True))
            grad_regions[j] += gc @ alpha.t() + e @ gs.t()
            grad_words[i, :, :n] += coef_a * c + coef_bw * e + v @ gs
    return grad_words, grad_regions


def _inputs(num_imgs, num_caps, dim, max_len, num_regions, dtype=torch.float64, lengths=None, device="cpu"):
    words = torch.randn(num_caps, dim, max_len, dtype=dtype, device=device)
    regions = torch.randn(num_imgs, dim, num_regions, dtype=dtype, device=device)
    if lengths is None:
        lengths = torch.randint(1, max_len + 1, (num_caps,))
        lengths[0] = max_len
    lengths = torch.as_tensor(lengths, dtype=torch.int64, device=device)
    return words, lengths, regions


def _fp64_oracle(words, lengths, regions, grad_s):
    w = words.detach().double().requires_grad_(True)
    r = regions.detach().double().requires_grad_(True)
    sim = damsm_word_similarity_loop(w, lengths, r, GAMMA1, GAMMA2)
    gw, gr = torch.autograd.grad(sim, (w, r), grad_s.double())
    return sim.detach(), gw, gr


def _rel_err(x, ref):
    return ((x.double() - ref).abs().max() / ref.abs().max()).item()


# Shapes (Bi, Bc, D, L, R, lengths): ragged, L = 1, B = 1, B_img != B_cap, D not a power of two,
# R = 1 and R spanning several BLOCK_R = 32 blocks (online softmax rescaling), L = 33 (word tile
# of 64), D = 256 with CUB's L = 18.
SHAPES = [
    (2, 3, 20, 5, 7, [5, 1, 3]),
    (3, 2, 16, 1, 5, [1, 1]),
    (1, 1, 8, 4, 1, [3]),
    (2, 4, 24, 6, 70, [6, 2, 5, 1]),
    (2, 2, 40, 33, 20, [33, 17]),
    (1, 2, 256, 18, 33, [18, 5]),
    (2, 3, 32, 16, 48, [16, 9, 1]),   # L = BLOCK_L and R a multiple of 16: inputs used unpadded
]


def test_manual_backward_matches_autograd():
    words, lengths, regions = _inputs(2, 3, 6, 5, 7, lengths=[5, 1, 3])
    grad_s = torch.randn(2, 3, dtype=torch.float64)
    _, gw, gr = _fp64_oracle(words, lengths, regions, grad_s)
    mw, mr = manual_backward(grad_s, words, lengths, regions)
    torch.testing.assert_close(mw, gw, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(mr, gr, rtol=1e-10, atol=1e-12)


def test_vectorized_baseline_matches_loop():
    words, lengths, regions = _inputs(3, 4, 10, 6, 9)
    torch.testing.assert_close(vectorized_reference(words, lengths, regions),
                               damsm_word_similarity_loop(words, lengths, regions, GAMMA1, GAMMA2),
                               rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s[:5])))
def test_triton_fp32_matches_fp64(shape, device):
    num_imgs, num_caps, dim, max_len, num_regions, lengths = shape
    words, lengths, regions = _inputs(num_imgs, num_caps, dim, max_len, num_regions, lengths=lengths,
                                      device=device)
    grad_s = torch.randn(num_imgs, num_caps, dtype=torch.float64, device=device)
    ref_s, ref_gw, ref_gr = _fp64_oracle(words, lengths, regions, grad_s)
    w32, r32 = words.float(), regions.float()
    sim = tk.damsm_word_similarity_fwd(w32, lengths, r32, GAMMA1, GAMMA2)
    assert sim.dtype == torch.float32 and sim.shape == (num_imgs, num_caps)
    torch.testing.assert_close(sim.double(), ref_s, rtol=1e-5, atol=1e-5)
    gw, gr = tk.damsm_word_similarity_bwd(grad_s.float(), w32, lengths, r32, GAMMA1, GAMMA2, True)
    assert gw.dtype == gr.dtype == torch.float32
    scale_w, scale_r = ref_gw.abs().max(), ref_gr.abs().max()
    torch.testing.assert_close(gw.double(), ref_gw, rtol=1e-4, atol=1e-5 * scale_w)
    torch.testing.assert_close(gr.double(), ref_gr, rtol=1e-4, atol=1e-5 * scale_r)
    for i, n in enumerate(lengths.tolist()):   # padded word slots get exactly zero gradient
        assert torch.all(gw[i, :, n:] == 0)


def test_triton_fp16_within_twice_torch_error(device):
    words, lengths, regions = _inputs(2, 3, 32, 5, 40, lengths=[5, 2, 4], device=device)
    words, regions = words * 0.3, regions * 0.3
    grad_s = torch.randn(2, 3, dtype=torch.float64, device=device)
    ref_s, ref_gw, ref_gr = _fp64_oracle(words, lengths, regions, grad_s)
    w16 = words.half().requires_grad_(True)
    r16 = regions.half().requires_grad_(True)
    torch_s = vectorized_reference(w16, lengths, r16)
    torch_gw, torch_gr = torch.autograd.grad(torch_s, (w16, r16), grad_s.half())
    sim = tk.damsm_word_similarity_fwd(w16.detach(), lengths, r16.detach(), GAMMA1, GAMMA2)
    gw, gr = tk.damsm_word_similarity_bwd(grad_s.half(), w16.detach(), lengths, r16.detach(),
                                          GAMMA1, GAMMA2, True)
    assert gw.dtype == gr.dtype == torch.float16 and sim.dtype == torch.float32
    for ours, theirs, ref in ((sim, torch_s, ref_s), (gw, torch_gw, ref_gw), (gr, torch_gr, ref_gr)):
        assert _rel_err(ours, ref) <= 2 * _rel_err(theirs, ref) + 1e-3


def test_words_grad_optional_and_stride0_grad(device):
    words, lengths, regions = _inputs(2, 3, 16, 4, 6, dtype=torch.float32, lengths=[4, 2, 3], device=device)
    grad_s = torch.ones(1, 1, device=device).expand(2, 3)              # what .sum().backward() delivers
    gw, gr = tk.damsm_word_similarity_bwd(grad_s, words, lengths, regions, GAMMA1, GAMMA2, False)
    assert gw.numel() == 0
    _, _, ref_gr = _fp64_oracle(words, lengths, regions, torch.ones(2, 3, dtype=torch.float64, device=device))
    torch.testing.assert_close(gr.double(), ref_gr, rtol=1e-4, atol=1e-5 * ref_gr.abs().max())


def test_masking_invariance(device):
    words, lengths, regions = _inputs(2, 3, 16, 6, 9, dtype=torch.float32, lengths=[6, 2, 4], device=device)
    grad_s = torch.randn(2, 3, device=device)
    dirty = words.clone()
    for i, n in enumerate(lengths.tolist()):
        dirty[i, :, n:] = float("nan") if i % 2 else 1e4
    outs = [(tk.damsm_word_similarity_fwd(w, lengths, regions, GAMMA1, GAMMA2),
             *tk.damsm_word_similarity_bwd(grad_s, w, lengths, regions, GAMMA1, GAMMA2, True))
            for w in (words, dirty)]
    for clean, garbage in zip(*outs):
        assert torch.equal(clean, garbage)


def test_non_contiguous_inputs(device):
    words, lengths, regions = _inputs(2, 3, 16, 5, 6, dtype=torch.float32, lengths=[5, 1, 3], device=device)
    words_t = words.transpose(1, 2).contiguous().transpose(1, 2)          # same values, other strides
    regions_t = regions.transpose(1, 2).contiguous().transpose(1, 2)
    assert not words_t.is_contiguous()
    torch.testing.assert_close(tk.damsm_word_similarity_fwd(words_t, lengths, regions_t, GAMMA1, GAMMA2),
                               tk.damsm_word_similarity_fwd(words, lengths, regions, GAMMA1, GAMMA2))


@pytest.mark.parametrize("case, error, match", [
    ("words_2d", ValueError, r"words \[Bc, D, L\]"),
    ("dtype_mismatch", TypeError, "share one dtype"),
    ("float64", TypeError, "share one dtype"),
    ("dim_mismatch", ValueError, "embedding width"),
    ("lengths_count", ValueError, "one length per caption"),
    ("lengths_float", TypeError, "lengths must be int64"),
    ("too_wide", ValueError, "D <= 256"),
])
def test_bad_inputs(case, error, match, device):
    words, lengths, regions = _inputs(2, 3, 16, 4, 5, dtype=torch.float32, lengths=[4, 2, 3], device=device)
    if case == "words_2d":
        words = words[0]
    elif case == "dtype_mismatch":
        regions = regions.half()
    elif case == "float64":
        words, regions = words.double(), regions.double()
    elif case == "dim_mismatch":
        regions = regions[:, :8]
    elif case == "lengths_count":
        lengths = lengths[:2]
    elif case == "lengths_float":
        lengths = lengths.float()
    elif case == "too_wide":
        words, regions = torch.zeros(3, 300, 4, device=device), torch.zeros(2, 300, 5, device=device)
    with pytest.raises(error, match=match):
        tk.damsm_word_similarity_fwd(words, lengths, regions, GAMMA1, GAMMA2)
    with pytest.raises(error, match=match):
        tk.damsm_word_similarity_bwd(torch.ones(2, 3, device=device), words, lengths, regions,
                                     GAMMA1, GAMMA2, True)


def test_launchers_clamp_lengths(device):
    """The launchers do not read the lengths (that would wait for the device; the custom op
    checks them): the kernels clamp them into [1, L], so no value reads out of bounds."""
    words, _, regions = _inputs(2, 3, 16, 4, 5, dtype=torch.float32, device=device)
    bad, clamped = (torch.tensor(n, device=device) for n in ([0, 9, 2], [1, 4, 2]))
    grad_s = torch.randn(2, 3, device=device)

    def outputs(lengths):
        return (tk.damsm_word_similarity_fwd(words, lengths, regions, GAMMA1, GAMMA2),
                *tk.damsm_word_similarity_bwd(grad_s, words, lengths, regions, GAMMA1, GAMMA2, True))

    for got, want in zip(outputs(bad), outputs(clamped)):
        torch.testing.assert_close(got, want)


def test_bad_grad_shape(device):
    words, lengths, regions = _inputs(2, 3, 16, 4, 5, dtype=torch.float32, device=device)
    with pytest.raises(ValueError, match=r"grad_s must be \[Bi, Bc\] = \[2, 3\]"):
        tk.damsm_word_similarity_bwd(torch.ones(3, 2, device=device), words, lengths, regions,
                                     GAMMA1, GAMMA2, True)


# ---------------------------------------------------------------------------------------------
# GPU: compiled Triton and the CUDA extension at the CUB size against fp64.

CUB = dict(num_imgs=48, num_caps=48, dim=256, max_len=18, num_regions=289)
_FLOORS = {torch.float32: 1e-5, torch.float16: 1e-3, torch.bfloat16: 1e-3}


def _cuda_extension_ops():
    from attngan import backend
    extension = backend.compiled_extension()
    if extension is None or not extension.with_cuda or not hasattr(torch.ops.attngan_C,
                                                                     "damsm_word_similarity_fwd"):
        pytest.skip("attngan._C was not built with the CUDA DAMSM kernel (bench/gpu_check.sh builds it)")
    return torch.ops.attngan_C.damsm_word_similarity_fwd, torch.ops.attngan_C.damsm_word_similarity_bwd


def _gpu_ops(backend_name):
    """(fwd, bwd) launchers of the compiled Triton kernels or of the CUDA extension."""
    if backend_name == "triton":
        return tk.damsm_word_similarity_fwd, tk.damsm_word_similarity_bwd
    return _cuda_extension_ops()


def _check_against_fp64(fwd, bwd, dtype):
    words, lengths, regions = _inputs(CUB["num_imgs"], CUB["num_caps"], CUB["dim"], CUB["max_len"],
                                      CUB["num_regions"], dtype=torch.float64, device="cuda")
    words, regions = words * 0.1, regions * 0.1     # typical encoder scale: softmaxes not saturated
    grad_s = torch.randn(CUB["num_imgs"], CUB["num_caps"], dtype=torch.float64, device="cuda")
    w64, r64 = words.clone().requires_grad_(True), regions.clone().requires_grad_(True)
    ref_s = vectorized_reference(w64, lengths, r64)
    ref_gw, ref_gr = torch.autograd.grad(ref_s, (w64, r64), grad_s)
    wl, rl = words.to(dtype).requires_grad_(True), regions.to(dtype).requires_grad_(True)
    torch_s = vectorized_reference(wl, lengths, rl)
    torch_gw, torch_gr = torch.autograd.grad(torch_s, (wl, rl), grad_s.to(dtype))
    sim = fwd(wl.detach(), lengths, rl.detach(), GAMMA1, GAMMA2)
    gw, gr = bwd(grad_s.to(dtype), wl.detach(), lengths, rl.detach(), GAMMA1, GAMMA2, True)
    assert sim.dtype == torch.float32 and gw.dtype == gr.dtype == dtype
    for name, ours, theirs, ref in (("S", sim, torch_s, ref_s), ("grad words", gw, torch_gw, ref_gw),
                                    ("grad regions", gr, torch_gr, ref_gr)):
        ours_err, torch_err = _rel_err(ours, ref.detach()), _rel_err(theirs, ref.detach())
        assert ours_err <= 2 * torch_err + _FLOORS[dtype], (name, dtype, ours_err, torch_err)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_triton_compiled_cub_size(dtype):
    _check_against_fp64(tk.damsm_word_similarity_fwd, tk.damsm_word_similarity_bwd, dtype)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_cuda_extension_cub_size(dtype):
    fwd, bwd = _cuda_extension_ops()
    _check_against_fp64(fwd, bwd, dtype)


@pytest.mark.gpu
@pytest.mark.parametrize("backend_name", ["triton", "cuda"])
def test_gpu_small_shapes_and_masking(backend_name):
    fwd, bwd = _gpu_ops(backend_name)
    for num_imgs, num_caps, dim, max_len, num_regions, lengths in SHAPES + [(5, 3, 256, 32, 64, [32, 17, 1])]:
        words, lengths, regions = _inputs(num_imgs, num_caps, dim, max_len, num_regions, lengths=lengths,
                                          device="cuda")
        if backend_name == "cuda" and max_len > CUDA_MAX_WORDS:   # one lane per word: a clear error
            with pytest.raises(RuntimeError, match=f"takes L <= {CUDA_MAX_WORDS} words"):
                fwd(words.float(), lengths, regions.float(), GAMMA1, GAMMA2)
            continue
        grad_s = torch.randn(num_imgs, num_caps, dtype=torch.float64, device="cuda")
        ref_s, ref_gw, ref_gr = _fp64_oracle(words, lengths, regions, grad_s)
        dirty = words.float().clone()
        for i, n in enumerate(lengths.tolist()):
            dirty[i, :, n:] = float("nan")
        sim = fwd(dirty, lengths, regions.float(), GAMMA1, GAMMA2)
        gw, gr = bwd(grad_s.float(), dirty, lengths, regions.float(), GAMMA1, GAMMA2, True)
        torch.testing.assert_close(sim.double(), ref_s, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(gw.double(), ref_gw, rtol=1e-3, atol=1e-4 * ref_gw.abs().max())
        torch.testing.assert_close(gr.double(), ref_gr, rtol=1e-3, atol=1e-4 * ref_gr.abs().max())


@pytest.mark.gpu
@pytest.mark.parametrize("backend_name", ["triton", "cuda"])
def test_gpu_cuda_graph_capture(backend_name):
    """Forward and backward replay inside a CUDA graph (no host sync in the launchers)."""
    fwd, bwd = _gpu_ops(backend_name)
    words, lengths, regions = _inputs(3, 4, 64, 9, 50, dtype=torch.bfloat16, lengths=[9, 3, 1, 6],
                                      device="cuda")
    grad_s = torch.randn(3, 4, device="cuda")
    expected = (fwd(words, lengths, regions, GAMMA1, GAMMA2),
                *bwd(grad_s, words, lengths, regions, GAMMA1, GAMMA2, True))   # also compiles Triton
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = (fwd(words, lengths, regions, GAMMA1, GAMMA2),
                    *bwd(grad_s, words, lengths, regions, GAMMA1, GAMMA2, True))
    graph.replay()
    torch.cuda.synchronize()
    for want, got in zip(expected, captured):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
