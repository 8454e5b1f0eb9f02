"""DAMSM word-level similarity as Triton kernels, forward and backward: the math and the backward
terms (A, B, Bw, delta) of docs/DESIGN.md, "DAMSM word similarity".

Mapping (one launch per kernel, all pairs at once; nothing of size [Bi, Bc, R, L] in memory): a
caption's words sit on chip padded to BLOCK_L, regions stream in blocks of BLOCK_R, the whole
width D is one BLOCK_D tile, and captions go GROUP at a time as one `[D, GROUP * BLOCK_L]` tile
(TILES). The launchers pad words to `[Bc, D, BLOCK_L]` and regions to `[Bi, D, R_STRIDE]`
(`_aligned`) so that every row is loaded whole in 16-byte vectors, the padding masked after the
load.
- forward: one program per (caption group, image j), caption groups fastest (concurrent programs
  share an image's regions in L2); online softmax over region blocks. With SAVE_STATS it is the
  backward's first pass and also writes per pair gc = A e + B c and the direct word gradient
  A c + Bw e `[Bi, Bc, D, BLOCK_L]` (input dtype) and the fp32 scalars (lse, delta).
- region gradient: one program per (region block, image j) loops over all caption groups,
  recomputing s, P and alpha, and sums in registers (no atomics, deterministic).
- word gradient: one program per (caption group, block of images) writes an fp32 partial sum;
  the launcher sums the partials (deterministic).
"""

from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

__all__ = [
    "damsm_word_similarity_fwd",
    "damsm_word_similarity_bwd",
    "damsm_word_similarity_supported",
    "MAX_DIM",
    "MAX_WORDS",
    "MAX_IMAGES",
    "TILES",
    "tile_slot",
]

# Largest D and L the kernels take (the [D, L] word and context tiles live in registers), and
# the most images per call (the grid's second axis).
MAX_DIM = 256
MAX_WORDS = 64
MAX_IMAGES = 65535
_EPS = tl.constexpr(1e-8)  # clamp of the norm product in the cosine
_N_STATS = 2  # per-word scalars saved by the first backward pass: lse, delta
_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


@triton.jit
def _load_tiles(
    ptr,
    index,
    mask,
    offs_d,
    offs_t,
    D,
    GROUP: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_L: tl.constexpr,
):
    """The `[D, BL]` tiles number index[0..GROUP) of a `[.., D, BL]` tensor side by side, as one
    `[BD, GROUP * BL]` tile (tile g in columns g * BL ..); 0 where mask `[GROUP, BD, 1]` is off.
    Rows BL apart (a power of two) and masked whole: the compiler vectorizes the loads."""
    x = tl.load(
        ptr
        + tl.cast(index, tl.int64)[:, None, None] * D * BLOCK_L
        + offs_d[None, :, None] * BLOCK_L
        + offs_t[None, None, :],
        mask=mask,
        other=0.0,
    )
    return tl.reshape(tl.permute(x, (1, 0, 2)), (BLOCK_D, GROUP * BLOCK_L))


@triton.jit
def _store_tiles(
    ptr,
    x,
    index,
    mask,
    offs_d,
    offs_t,
    D,
    GROUP: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_L: tl.constexpr,
):
    """Store x `[BD, GROUP * BL]` as the `[D, BL]` tiles number index[0..GROUP) of a `[.., D, BL]`
    tensor, in its dtype, where mask `[GROUP, BD, 1]` is on (the inverse of _load_tiles)."""
    x = tl.permute(tl.reshape(x, (BLOCK_D, GROUP, BLOCK_L)), (1, 0, 2))
    tl.store(
        ptr
        + tl.cast(index, tl.int64)[:, None, None] * D * BLOCK_L
        + offs_d[None, :, None] * BLOCK_L
        + offs_t[None, None, :],
        x.to(ptr.dtype.element_ty),
        mask=mask,
    )


@triton.jit
def _load_caption_group(
    words_ptr,
    lengths_ptr,
    cap0,
    Bc,
    D,
    L,
    offs_d,
    offs_t,
    d_ok,
    GROUP: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_L: tl.constexpr,
):
    """Words of captions cap0 .. cap0 + GROUP - 1 side by side, `[BD, GROUP * BL]` (caption g in
    columns g * BL ..), with their caption indices `[GROUP]`, which exist `[GROUP]`, and which
    word slots are real `[GROUP, BL]` (none of a caption past Bc)."""
    caps = cap0 + tl.arange(0, GROUP)
    cap_ok = caps < Bc
    n = tl.load(lengths_ptr + caps, mask=cap_ok, other=1).to(tl.int32)
    n = tl.minimum(tl.maximum(n, 1), L)
    t_ok = (offs_t[None, :] < n[:, None]) & cap_ok[:, None]  # [G, BL]
    e = _load_tiles(
        words_ptr, caps, _rows_mask(cap_ok, d_ok), offs_d, offs_t, D, GROUP, BLOCK_D, BLOCK_L
    )
    # padded word slots are read whole but zeroed: garbage or NaN there cannot reach any output
    e = tl.where(tl.reshape(t_ok, (GROUP * BLOCK_L,))[None, :], e, 0.0)
    return e, caps, cap_ok, t_ok


@triton.jit
def _rows_mask(cap_ok, d_ok):
    """Mask `[GROUP, BD, 1]` of the D-long rows of the captions that exist."""
    return cap_ok[:, None, None] & d_ok[None, :, None]


@triton.jit
def _stats_rows(stats_ptr, pair, offs_t, BLOCK_L: tl.constexpr):
    """Pointers `[GROUP, BL]` to the first saved per-word scalar (lse) of each pair in `pair`; the
    second (delta) is BLOCK_L further: the layout `[Bi, Bc, _N_STATS = 2, BLOCK_L]`."""
    return stats_ptr + pair[:, None] * 2 * BLOCK_L + offs_t[None, :]


@triton.jit
def _per_caption_sum(x, GROUP: tl.constexpr, BLOCK_L: tl.constexpr):
    """Row sums of `x` `[rows, GROUP * BL]` over each caption's columns, broadcast back to them."""
    x3 = tl.reshape(x, (x.shape[0], GROUP, BLOCK_L))
    return tl.reshape(
        tl.broadcast_to(tl.sum(x3, axis=2)[:, :, None], (x.shape[0], GROUP, BLOCK_L)),
        (x.shape[0], GROUP * BLOCK_L),
    )


@triton.jit
def _word_softmax(s, t_ok, GROUP: tl.constexpr, BLOCK_L: tl.constexpr):
    """Softmax over each caption's words (Eq. 8) of scores `[BR, GROUP * BL]`; padded words get
    exactly 0, and a caption past Bc (no real word) gets 0 everywhere, never NaN."""
    s3 = tl.where(
        tl.reshape(t_ok, (GROUP, BLOCK_L))[None, :, :],
        tl.reshape(s, (s.shape[0], GROUP, BLOCK_L)),
        float("-inf"),
    )
    row_max = tl.max(s3, axis=2)
    row_max = tl.where(row_max == float("-inf"), 0.0, row_max)
    p = tl.exp(s3 - row_max[:, :, None])
    total = tl.sum(p, axis=2)
    p = p / tl.where(total == 0.0, 1.0, total)[:, :, None]
    return tl.reshape(p, (s.shape[0], GROUP * BLOCK_L))


@triton.jit
def _damsm_word_similarity_fwd_kernel(
    words_ptr,
    lengths_ptr,
    regions_ptr,
    sim_ptr,
    grad_s_ptr,
    grad_ctx_ptr,
    direct_ptr,
    stats_ptr,
    Bc,
    D,
    L,
    R,
    R_STRIDE,
    gamma1,
    gamma2,
    SAVE_STATS: tl.constexpr,
    GROUP: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_L: tl.constexpr,
    BLOCK_R: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    """S[j, i] for GROUP captions i (program 0) and one image j (program 1)."""
    img = tl.program_id(1)
    offs_d = tl.arange(0, BLOCK_D)
    offs_t = tl.arange(0, BLOCK_L)
    offs_r = tl.arange(0, BLOCK_R)
    d_ok = offs_d < D
    e, caps, cap_ok, t_ok2 = _load_caption_group(
        words_ptr,
        lengths_ptr,
        tl.program_id(0) * GROUP,
        Bc,
        D,
        L,
        offs_d,
        offs_t,
        d_ok,
        GROUP,
        BLOCK_D,
        BLOCK_L,
    )
    t_ok = tl.reshape(t_ok2, (GROUP * BLOCK_L,))
    v_base = regions_ptr + tl.cast(img, tl.int64) * D * R_STRIDE

    m = tl.full(
        [GROUP * BLOCK_L], float("-inf"), tl.float32
    )  # running max of gamma1 * P over regions
    exp_sum = tl.zeros([GROUP * BLOCK_L], dtype=tl.float32)  # running sum of exp(gamma1 * P - m)
    acc = tl.zeros([BLOCK_D, GROUP * BLOCK_L], dtype=tl.float32)  # running unnormalised context
    for r0 in range(0, R, BLOCK_R):
        r_ok = (r0 + offs_r) < R
        # masked up to the aligned row end (zeros past R), so that whole vectors load
        vt = tl.load(
            v_base + offs_d[None, :] * R_STRIDE + (r0 + offs_r)[:, None],
            mask=((r0 + offs_r) < R_STRIDE)[:, None] & d_ok[None, :],
            other=0.0,
        )  # [BR, BD]
        s = tl.dot(vt, e, input_precision=DOT_PRECISION)  # [BR, G*BL]
        # padded regions drop out of the softmax over regions; padded words have P = 0, a
        # finite value, so their (unused) columns never produce NaN
        a = tl.where(r_ok[:, None], gamma1 * _word_softmax(s, t_ok, GROUP, BLOCK_L), float("-inf"))
        m_new = tl.maximum(m, tl.max(a, axis=0))
        scale = tl.exp(m - m_new)
        pe = tl.exp(a - m_new[None, :])
        exp_sum = exp_sum * scale + tl.sum(pe, axis=0)
        acc = acc * scale[None, :] + tl.dot(
            tl.trans(vt), pe.to(vt.dtype), input_precision=DOT_PRECISION
        )
        m = m_new

    c = acc / exp_sum[None, :]  # [BD, G*BL]
    ef = e.to(tl.float32)
    ec = tl.sum(ef * c, axis=0)
    ee = tl.sum(ef * ef, axis=0)
    cc = tl.sum(c * c, axis=0)
    norm = tl.sqrt(ee) * tl.sqrt(cc)
    clamped = norm < _EPS
    norm_c = tl.maximum(norm, _EPS)
    rt = ec / norm_c
    z = tl.reshape(tl.where(t_ok, gamma2 * rt, float("-inf")), (GROUP, BLOCK_L))
    # a caption past Bc has no word (all of z is -inf): S = 0 there keeps its lanes free of NaN
    z_max = tl.where(cap_ok, tl.max(z, axis=1), 0.0)
    total = tl.sum(tl.exp(z - z_max[:, None]), axis=1)
    sim = z_max + tl.log(tl.where(cap_ok, total, 1.0))  # [G]
    pair = tl.cast(img, tl.int64) * Bc + caps
    tl.store(sim_ptr + pair, sim, mask=cap_ok)

    if SAVE_STATS:
        g = tl.load(grad_s_ptr + pair, mask=cap_ok, other=0.0).to(tl.float32)
        g_r = tl.reshape(
            g[:, None] * gamma2 * tl.exp(z - sim[:, None]), (GROUP * BLOCK_L,)
        )  # 0 on padding
        coef_a = g_r / norm_c
        coef_b = tl.where(clamped, 0.0, -g_r * rt / tl.where(clamped, 1.0, cc))
        coef_bw = tl.where(clamped, 0.0, -g_r * rt / tl.where(clamped, 1.0, ee))
        delta = coef_a * ec + coef_b * cc  # gc . c with gc = A e + B c, from the sums at hand
        # whole rows, 0 at padded word slots (A = B = Bw = 0 there), so the loads need no word mask
        real = _rows_mask(cap_ok, d_ok)
        _store_tiles(
            grad_ctx_ptr,
            coef_a[None, :] * ef + coef_b[None, :] * c,
            pair,
            real,
            offs_d,
            offs_t,
            D,
            GROUP,
            BLOCK_D,
            BLOCK_L,
        )  # gc
        _store_tiles(
            direct_ptr,
            coef_a[None, :] * c + coef_bw[None, :] * ef,
            pair,
            real,
            offs_d,
            offs_t,
            D,
            GROUP,
            BLOCK_D,
            BLOCK_L,
        )  # ge(direct)
        stats = _stats_rows(stats_ptr, pair, offs_t, BLOCK_L)  # [G, BL]
        tl.store(stats, tl.reshape(m + tl.log(exp_sum), (GROUP, BLOCK_L)), mask=cap_ok[:, None])
        tl.store(stats + BLOCK_L, tl.reshape(delta, (GROUP, BLOCK_L)), mask=cap_ok[:, None])


@triton.jit
def _pair_backward_tile(
    vt,
    e,
    gc_lp,
    r_ok,
    t_ok,
    lse,
    delta,
    gamma1,
    GROUP: tl.constexpr,
    BLOCK_L: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    """For one region block and GROUP pairs of an image: region attention a `[BR, G*BL]` and
    score gradient gs."""
    s = tl.dot(vt, e, input_precision=DOT_PRECISION)
    p = _word_softmax(s, t_ok, GROUP, BLOCK_L)
    alpha = tl.where(r_ok[:, None] & t_ok[None, :], tl.exp(gamma1 * p - lse[None, :]), 0.0)
    g_alpha = tl.dot(vt, gc_lp, input_precision=DOT_PRECISION)
    g_p = gamma1 * alpha * (g_alpha - delta[None, :])
    gs = p * (g_p - _per_caption_sum(p * g_p, GROUP, BLOCK_L))
    return alpha, gs


@triton.jit
def _load_pair_stats(stats_ptr, pair, cap_ok, offs_t, GROUP: tl.constexpr, BLOCK_L: tl.constexpr):
    """The log-normaliser of the region softmax and delta of GROUP pairs, each `[GROUP * BL]`
    (0 for a caption past Bc)."""
    stats = _stats_rows(stats_ptr, pair, offs_t, BLOCK_L)  # [G, BL]
    lse = tl.reshape(tl.load(stats, mask=cap_ok[:, None], other=0.0), (GROUP * BLOCK_L,))
    delta = tl.reshape(
        tl.load(stats + BLOCK_L, mask=cap_ok[:, None], other=0.0), (GROUP * BLOCK_L,)
    )
    return lse, delta


@triton.jit
def _damsm_word_similarity_bwd_kernel(
    words_ptr,
    lengths_ptr,
    regions_ptr,
    grad_ctx_ptr,
    stats_ptr,
    grad_regions_ptr,
    Bc,
    D,
    L,
    R,
    R_STRIDE,
    gamma1,
    GROUP: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_L: tl.constexpr,
    BLOCK_R: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    """grad regions[j][:, block] for one (region block = program 0, image j = program 1)."""
    rblk = tl.program_id(0)
    img = tl.program_id(1)
    offs_d = tl.arange(0, BLOCK_D)
    offs_t = tl.arange(0, BLOCK_L)
    offs_r = rblk * BLOCK_R + tl.arange(0, BLOCK_R)
    d_ok = offs_d < D
    r_ok = offs_r < R
    v_mask = r_ok[:, None] & d_ok[None, :]
    vt = tl.load(
        regions_ptr
        + tl.cast(img, tl.int64) * D * R_STRIDE
        + offs_d[None, :] * R_STRIDE
        + offs_r[:, None],
        mask=(offs_r < R_STRIDE)[:, None] & d_ok[None, :],
        other=0.0,
    )  # [BR, BD]
    acc = tl.zeros([BLOCK_R, BLOCK_D], dtype=tl.float32)
    for cap0 in range(0, Bc, GROUP):
        e, caps, cap_ok, t_ok = _load_caption_group(
            words_ptr, lengths_ptr, cap0, Bc, D, L, offs_d, offs_t, d_ok, GROUP, BLOCK_D, BLOCK_L
        )
        pair = tl.cast(img, tl.int64) * Bc + caps
        gc = _load_tiles(
            grad_ctx_ptr, pair, _rows_mask(cap_ok, d_ok), offs_d, offs_t, D, GROUP, BLOCK_D, BLOCK_L
        )
        lse, delta = _load_pair_stats(stats_ptr, pair, cap_ok, offs_t, GROUP, BLOCK_L)
        alpha, gs = _pair_backward_tile(
            vt,
            e,
            gc,
            r_ok,
            tl.reshape(t_ok, (GROUP * BLOCK_L,)),
            lse,
            delta,
            gamma1,
            GROUP,
            BLOCK_L,
            DOT_PRECISION,
        )
        # grad v_r = sum_t a[t, r] gc_t + gs[r, t] e_t, as [BR, BD]
        acc += tl.dot(alpha.to(vt.dtype), tl.trans(gc), input_precision=DOT_PRECISION)
        acc += tl.dot(gs.to(vt.dtype), tl.trans(e), input_precision=DOT_PRECISION)
    tl.store(
        grad_regions_ptr + tl.cast(img, tl.int64) * D * R + offs_d[None, :] * R + offs_r[:, None],
        acc.to(grad_regions_ptr.dtype.element_ty),
        mask=v_mask,
    )


@triton.jit
def _damsm_word_similarity_bwd_words_kernel(
    words_ptr,
    lengths_ptr,
    regions_ptr,
    grad_ctx_ptr,
    direct_ptr,
    stats_ptr,
    partial_ptr,
    Bi,
    Bc,
    D,
    L,
    R,
    R_STRIDE,
    gamma1,
    IMAGES_PER_PROGRAM,
    GROUP: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_L: tl.constexpr,
    BLOCK_R: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    """fp32 partial grad words of GROUP captions (program 0) over one block of images
    (program 1)."""
    cap0 = tl.program_id(0) * GROUP
    blk = tl.program_id(1)
    offs_d = tl.arange(0, BLOCK_D)
    offs_t = tl.arange(0, BLOCK_L)
    offs_r = tl.arange(0, BLOCK_R)
    d_ok = offs_d < D
    e, caps, cap_ok, t_ok2 = _load_caption_group(
        words_ptr, lengths_ptr, cap0, Bc, D, L, offs_d, offs_t, d_ok, GROUP, BLOCK_D, BLOCK_L
    )
    t_ok = tl.reshape(t_ok2, (GROUP * BLOCK_L,))
    rows = _rows_mask(cap_ok, d_ok)
    acc = tl.zeros([BLOCK_D, GROUP * BLOCK_L], dtype=tl.float32)
    img_start = blk * IMAGES_PER_PROGRAM
    img_stop = tl.minimum(img_start + IMAGES_PER_PROGRAM, Bi)
    for img in range(img_start, img_stop):
        pair = tl.cast(img, tl.int64) * Bc + caps
        acc += _load_tiles(direct_ptr, pair, rows, offs_d, offs_t, D, GROUP, BLOCK_D, BLOCK_L)
        gc = _load_tiles(grad_ctx_ptr, pair, rows, offs_d, offs_t, D, GROUP, BLOCK_D, BLOCK_L)
        lse, delta = _load_pair_stats(stats_ptr, pair, cap_ok, offs_t, GROUP, BLOCK_L)
        v_base = regions_ptr + tl.cast(img, tl.int64) * D * R_STRIDE
        for r0 in range(0, R, BLOCK_R):
            r_ok = (r0 + offs_r) < R
            vt = tl.load(
                v_base + offs_d[None, :] * R_STRIDE + (r0 + offs_r)[:, None],
                mask=((r0 + offs_r) < R_STRIDE)[:, None] & d_ok[None, :],
                other=0.0,
            )
            alpha, gs = _pair_backward_tile(
                vt, e, gc, r_ok, t_ok, lse, delta, gamma1, GROUP, BLOCK_L, DOT_PRECISION
            )
            acc += tl.dot(
                tl.trans(vt), gs.to(vt.dtype), input_precision=DOT_PRECISION
            )  # [BD, G*BL]
    _store_tiles(
        partial_ptr,
        acc,
        tl.cast(blk, tl.int64) * Bc + caps,
        rows,
        offs_d,
        offs_t,
        D,
        GROUP,
        BLOCK_D,
        BLOCK_L,
    )


def damsm_word_similarity_supported(words: torch.Tensor, regions: torch.Tensor) -> Optional[str]:
    """None if the kernels take these shapes (words `[Bc, D, L]`, regions `[Bi, D, R]`), else a
    sentence saying why not."""
    dim, max_len, num_imgs = words.shape[1], words.shape[2], regions.shape[0]
    if dim > MAX_DIM or max_len > MAX_WORDS or num_imgs > MAX_IMAGES:
        return (
            f"the Triton kernel takes D <= {MAX_DIM}, L <= {MAX_WORDS} and at most "
            f"{MAX_IMAGES} images, got D = {dim}, L = {max_len}, {num_imgs} images"
        )
    return None


def _check(name: str, words: torch.Tensor, lengths: torch.Tensor, regions: torch.Tensor) -> None:
    """The kernels' preconditions (attngan.ops.damsm validates the inputs with clear messages
    before any backend runs). The lengths' values are not read (that would wait for the
    device): the kernels clamp them into [1, L]."""
    if (
        words.dim() != 3
        or regions.dim() != 3
        or lengths.dim() != 1
        or lengths.shape[0] != words.shape[0]
        or regions.shape[1] != words.shape[1]
        or words.numel() == 0
        or regions.numel() == 0
    ):
        raise ValueError(
            f"{name}: expected words [Bc, D, L], lengths [Bc], regions [Bi, D, R], "
            f"none empty; got {tuple(words.shape)}, {tuple(lengths.shape)}, "
            f"{tuple(regions.shape)}"
        )
    if (
        words.dtype not in _DTYPES
        or regions.dtype != words.dtype
        or lengths.dtype not in (torch.int64, torch.int32)
    ):
        raise TypeError(
            f"{name}: words and regions must share one dtype of float32/float16/"
            f"bfloat16 and lengths be int64 or int32, got {words.dtype}, "
            f"{regions.dtype} and {lengths.dtype}"
        )
    if lengths.device != words.device or regions.device != words.device:
        raise ValueError(
            f"{name}: words, lengths and regions must be on one device, got "
            f"{words.device}, {lengths.device} and {regions.device}"
        )
    reason = damsm_word_similarity_supported(words, regions)
    if reason is not None:
        raise ValueError(f"{name}: {reason}")


# Per kernel: (largest BLOCK_R, captions per program, num_warps, num_stages) for 16-bit inputs
# and for fp32, whose IEEE dots run on the FMA units and need more registers. Chosen from ptxas's
# register reports for sm_90 at the CUB size (tests/triton_sm90.py prints them; the reports and
# the timings behind these entries are in docs/RESULTS.md, "Triton DAMSM tiles");
# bench/tune_damsm_tiles.py times candidates on a GPU and prints the entries to put here.
TILES = {
    "forward": ((32, 1, 8, 2), (16, 1, 8, 1)),
    "regions": ((16, 1, 8, 3), (16, 1, 16, 1)),
    "words": ((16, 1, 8, 2), (16, 1, 8, 1)),
}


def tile_slot(dtype: torch.dtype) -> int:
    """Which entry of a TILES pair serves inputs of `dtype`: 0 for 16-bit, 1 for fp32."""
    return int(dtype == torch.float32)


def _blocks(words: torch.Tensor, num_regions: int, kernel: str) -> dict:
    """Tile sizes (each >= 16 for tl.dot on 16-bit types) and launch options of one kernel."""
    _, dim, max_len = words.shape
    block_r, group, num_warps, num_stages = TILES[kernel][tile_slot(words.dtype)]
    return dict(
        GROUP=group,
        BLOCK_D=max(16, triton.next_power_of_2(dim)),
        BLOCK_L=_block_words(max_len),
        BLOCK_R=max(16, min(block_r, triton.next_power_of_2(num_regions))),
        DOT_PRECISION="ieee" if words.dtype == torch.float32 else "tf32",
        num_warps=num_warps if dim > 64 else 4,
        num_stages=num_stages,
    )


def _block_words(max_len: int) -> int:
    """BLOCK_L: the word slots of a caption on chip, L rounded up to a power of two >= 16."""
    return max(16, triton.next_power_of_2(max_len))


def _aligned(words: torch.Tensor, regions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The inputs as the kernels read them: words `[Bc, D, BLOCK_L]` and regions
    `[Bi, D, R_STRIDE]`, R_STRIDE = R rounded up to a multiple of 16 (zero-padded copies where
    needed). Every row then starts 16-byte aligned, which the JIT knows (it specializes strides
    divisible by 16), so rows load in 16-byte vectors instead of one element per instruction
    (docs/RESULTS.md, "Triton DAMSM tiles"). The padding is never read as data."""
    max_len, num_regions = words.shape[2], regions.shape[2]
    block_l, r_stride = _block_words(max_len), triton.cdiv(num_regions, 16) * 16
    if block_l != max_len:
        words = torch.nn.functional.pad(words, (0, block_l - max_len))
    if r_stride != num_regions:
        regions = torch.nn.functional.pad(regions, (0, r_stride - num_regions))
    return words.contiguous(), regions.contiguous()


def _first_pass(words, lengths, regions, max_len, num_regions, gamma1, gamma2, grad_s):
    """Launch the forward kernel on _aligned inputs of L = max_len words and R = num_regions
    regions: (S, None, None, None), or with grad_s (S, the context gradients gc and the direct
    word gradients, each `[Bi, Bc, D, BLOCK_L]` in the input dtype, the per-word scalars
    `[Bi, Bc, 2, BLOCK_L]` fp32)."""
    num_caps, dim, block_l = words.shape
    num_imgs = regions.shape[0]
    blocks = _blocks(words, num_regions, "forward")
    sim = torch.empty(num_imgs, num_caps, device=words.device, dtype=torch.float32)
    save = grad_s is not None
    if save:
        grad_ctx, direct = (
            torch.empty(num_imgs, num_caps, dim, block_l, device=words.device, dtype=words.dtype)
            for _ in range(2)
        )
        stats = torch.empty(
            num_imgs, num_caps, _N_STATS, block_l, device=words.device, dtype=torch.float32
        )
    else:  # never touched when SAVE_STATS is off
        grad_s = grad_ctx = direct = stats = sim
    _damsm_word_similarity_fwd_kernel[(triton.cdiv(num_caps, blocks["GROUP"]), num_imgs)](
        words,
        lengths,
        regions,
        sim,
        grad_s,
        grad_ctx,
        direct,
        stats,
        num_caps,
        dim,
        max_len,
        num_regions,
        regions.shape[2],
        float(gamma1),
        float(gamma2),
        SAVE_STATS=save,
        **blocks,
    )
    return (sim, grad_ctx, direct, stats) if save else (sim, None, None, None)


def damsm_word_similarity_fwd(
    words: torch.Tensor, lengths: torch.Tensor, regions: torch.Tensor, gamma1: float, gamma2: float
) -> torch.Tensor:
    """S[j, i] = word-level similarity of image j and caption i.

    Args:
        words: `[Bc, D, L]` fp32/fp16/bf16 word features (slots at t >= lengths[i] are never read).
        lengths: `[Bc]` int64 caption lengths, each in [1, L].
        regions: `[Bi, D, R]` region features, same dtype and device as words.
        gamma1, gamma2: the softmax sharpness of Eq. 9 and Eq. 10.
    Returns:
        S `[Bi, Bc]` float32 (rows images, columns captions).
    """
    _check("damsm_word_similarity_fwd", words, lengths, regions)
    aligned_words, aligned_regions = _aligned(words, regions)
    sim, _, _, _ = _first_pass(
        aligned_words,
        lengths.contiguous(),
        aligned_regions,
        words.shape[2],
        regions.shape[2],
        gamma1,
        gamma2,
        None,
    )
    return sim


def damsm_word_similarity_bwd(
    grad_s: torch.Tensor,
    words: torch.Tensor,
    lengths: torch.Tensor,
    regions: torch.Tensor,
    gamma1: float,
    gamma2: float,
    need_words_grad: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradients of sum(grad_s * S) with respect to words and regions (recomputes the forward).

    Args:
        grad_s: `[Bi, Bc]` gradient of S (any float dtype, any strides, e.g. expanded views).
        words, lengths, regions, gamma1, gamma2: as for damsm_word_similarity_fwd.
        need_words_grad: False skips the words-gradient kernel.
    Returns:
        (grad_words `[Bc, D, L]` in the input dtype with zeros at padded slots, or an empty tensor
        when need_words_grad is False; grad_regions `[Bi, D, R]` in the input dtype).
    """
    name = "damsm_word_similarity_bwd"
    _check(name, words, lengths, regions)
    if grad_s.shape != (regions.shape[0], words.shape[0]) or grad_s.device != words.device:
        raise ValueError(
            f"{name}: grad_s must be [Bi, Bc] = [{regions.shape[0]}, "
            f"{words.shape[0]}] on {words.device}, got {tuple(grad_s.shape)} on "
            f"{grad_s.device}"
        )
    num_caps, dim, max_len = words.shape
    num_imgs, _, num_regions = regions.shape
    lengths, grad_s = lengths.contiguous(), grad_s.to(torch.float32).contiguous()
    words, regions = _aligned(words, regions)
    r_stride = regions.shape[2]
    _, grad_ctx, direct, stats = _first_pass(
        words, lengths, regions, max_len, num_regions, gamma1, gamma2, grad_s
    )

    grad_regions = torch.empty(num_imgs, dim, num_regions, device=words.device, dtype=words.dtype)
    blocks = _blocks(words, num_regions, "regions")
    _damsm_word_similarity_bwd_kernel[(triton.cdiv(num_regions, blocks["BLOCK_R"]), num_imgs)](
        words,
        lengths,
        regions,
        grad_ctx,
        stats,
        grad_regions,
        num_caps,
        dim,
        max_len,
        num_regions,
        r_stride,
        float(gamma1),
        **blocks,
    )

    if not need_words_grad:
        return words.new_empty(0), grad_regions
    blocks = _blocks(words, num_regions, "words")
    caption_groups = triton.cdiv(num_caps, blocks["GROUP"])
    # enough programs to fill the GPU (about 2 per SM of an H100), few partials to sum
    n_blocks = max(1, min(num_imgs, triton.cdiv(264, caption_groups)))
    images_per_program = triton.cdiv(num_imgs, n_blocks)
    n_blocks = triton.cdiv(num_imgs, images_per_program)
    partial = torch.empty(
        n_blocks, num_caps, dim, words.shape[2], device=words.device, dtype=torch.float32
    )
    _damsm_word_similarity_bwd_words_kernel[(caption_groups, n_blocks)](
        words,
        lengths,
        regions,
        grad_ctx,
        direct,
        stats,
        partial,
        num_imgs,
        num_caps,
        dim,
        max_len,
        num_regions,
        r_stride,
        float(gamma1),
        images_per_program,
        **blocks,
    )
    return partial[..., :max_len].sum(dim=0).to(words.dtype), grad_regions
