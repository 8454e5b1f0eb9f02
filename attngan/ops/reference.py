"""Pure-PyTorch references of the hot ops: the oracles of the fused kernels and their fallback.

The math is in docs/DESIGN.md ("DAMSM word similarity", "Word attention"; paper eqs. 7-10 and
2). Differentiable by autograd, each in the form it is easiest to check in:
- DAMSM word-level similarity: the original code's per-caption loop
  (`damsm_word_similarity_loop`) and a vectorized all-pairs equivalent
  (`damsm_word_similarity_reference`).
- Word attention of the generator: `word_attention_reference`, masked per sample.

They compute in the dtype they are given; the public ops in `attngan.ops` apply the precision
policy before calling them. Tests use them in float64 as the ground truth.
"""

from __future__ import annotations

import torch

# ---------------------------------------------------------------------------------------------
# DAMSM word-level similarity (attngan.ops.damsm)
# ---------------------------------------------------------------------------------------------


def _cosine_over_dim1(x: torch.Tensor, y: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """cos(x, y) along dim 1, the norm product clamped at eps as in the original's losses.py."""
    dot = (x * y).sum(dim=1)
    norms = torch.linalg.vector_norm(x, dim=1) * torch.linalg.vector_norm(y, dim=1)
    return dot / norms.clamp(min=eps)


def damsm_word_similarity_loop(
    words: torch.Tensor,
    lengths: torch.Tensor,
    regions: torch.Tensor,
    gamma1: float = 4.0,
    gamma2: float = 5.0,
) -> torch.Tensor:
    """The word-level DAMSM similarity computed as the original code does: one caption at a time.

    The same sequence of tensor operations as the original `words_loss` and `func_attention`,
    copies included (the caption repeated over all B_img images, the transposes made contiguous,
    the softmaxes over 2-D views), and the log of a sum of exps without max subtraction (safe:
    |R_t| <= 1): the faithful baseline the fused kernels are measured against.

    Args:
        words: `[B_cap, D, L]` word features, padded after each caption's length.
        lengths: `[B_cap]` integer, 1..L.
        regions: `[B_img, D, R]` (or `[B_img, D, H, W]`) region features.
    Returns:
        S `[B_img, B_cap]` in the inputs' dtype; S[j, i] scores image j against caption i.
    """
    num_images, dim = regions.shape[0], regions.shape[1]
    context = regions.reshape(num_images, dim, -1)  # [Bi, D, R]
    num_regions = context.shape[2]
    columns = []
    for i, words_num in enumerate(lengths.tolist()):
        word = words[i, :, :words_num].unsqueeze(0).contiguous()
        word = word.repeat(num_images, 1, 1)  # [Bi, D, n]
        # func_attention(word, context, gamma1)
        context_t = torch.transpose(context, 1, 2).contiguous()  # [Bi, R, D]
        attn = torch.bmm(context_t, word)  # [Bi, R, n]
        attn = torch.softmax(attn.view(num_images * num_regions, words_num), dim=1)  # over words
        attn = attn.view(num_images, num_regions, words_num)
        attn = torch.transpose(attn, 1, 2).contiguous()  # [Bi, n, R]
        attn = attn.view(num_images * words_num, num_regions) * gamma1
        attn = torch.softmax(attn, dim=1).view(num_images, words_num, num_regions)  # over regions
        weighted = torch.bmm(context, torch.transpose(attn, 1, 2).contiguous())  # [Bi, D, n]
        # back in words_loss: cosine of every (word, weighted context) row
        word = word.transpose(1, 2).contiguous().view(num_images * words_num, -1)
        weighted = weighted.transpose(1, 2).contiguous().view(num_images * words_num, -1)
        row_sim = _cosine_over_dim1(word, weighted).view(num_images, words_num)
        row_sim = torch.exp(row_sim * gamma2).sum(dim=1, keepdim=True)
        columns.append(torch.log(row_sim))
    return torch.cat(columns, dim=1)  # [Bi, Bc]


def damsm_word_similarity_reference(
    words: torch.Tensor,
    lengths: torch.Tensor,
    regions: torch.Tensor,
    gamma1: float = 4.0,
    gamma2: float = 5.0,
) -> torch.Tensor:
    """The word-level DAMSM similarity of every (image, caption) pair at once, with length masks.

    Same arguments and result as `damsm_word_similarity_loop`, on the padded `[B_img, B_cap, R, L]`
    grid. Padded slots of `words` are replaced by zeros first, so garbage or NaN there reaches
    neither the output nor any gradient (theirs is exactly zero).
    """
    num_images, dim = regions.shape[0], regions.shape[1]
    num_words = words.shape[2]
    regions = regions.reshape(num_images, dim, -1)  # [Bi, D, R]
    valid = torch.arange(num_words, device=words.device)[None, :] < lengths[:, None]  # [Bc, L]
    words = torch.where(
        valid[:, None, :], words, torch.zeros((), dtype=words.dtype, device=words.device)
    )
    scores = torch.einsum("jdr,idl->jirl", regions, words)  # [Bi, Bc, R, L]
    scores = scores.masked_fill(~valid[None, :, None, :], float("-inf"))
    attn = torch.softmax(scores, dim=3)  # over words
    # Padded words have attn == 0 at every region, so their softmax over regions is uniform
    # and finite; they are dropped again below.
    attn = torch.softmax(gamma1 * attn, dim=2)  # over regions
    context = torch.einsum("jdr,jirl->jidl", regions, attn)  # [Bi, Bc, D, L]
    dot = torch.einsum("idl,jidl->jil", words, context)  # [Bi, Bc, L]
    norms = torch.linalg.vector_norm(words, dim=1)[None] * torch.linalg.vector_norm(
        context, dim=2
    )  # [Bi, Bc, L]
    # Padded words have zero norm; a norm of 1 there keeps 0/0 (1e-8 is 0 in float16) out of
    # the backward, where their zero gradient would otherwise be multiplied by NaN.
    norms = norms.clamp(min=1e-8).masked_fill(~valid[None], 1.0)
    row_sim = dot / norms
    row_sim = (gamma2 * row_sim).masked_fill(~valid[None], float("-inf"))
    return torch.logsumexp(row_sim, dim=2)  # [Bi, Bc]


# ---------------------------------------------------------------------------------------------
# Word attention of the generator (attngan.ops.word_attention)
# ---------------------------------------------------------------------------------------------


def word_attention_reference(
    query: torch.Tensor, words: torch.Tensor, lengths: torch.Tensor, return_attn: bool = False
):
    """Vectorized pure-PyTorch word attention: the oracle of the fused kernels.

    query h `[B, C, H, W]`, words e' `[B, C, L]`, lengths `[B]` (1..L). Returns context
    `[B, C, H, W]` and, with `return_attn`, attn `[B, L, H, W]` (exact zeros at padded words),
    both in the input dtype; the softmax runs in float32 (float64 for float64 inputs).
    """
    batch, channels, height, width = query.shape
    num_words = words.shape[2]
    padded = torch.arange(num_words, device=words.device)[None, :] >= lengths[:, None]  # [B, L]
    # Zero the padded words first: a NaN there would otherwise reach the context (NaN * 0) and
    # the gradient of the query through the scores.
    words = words.masked_fill(padded[:, None, :], 0)
    regions = query.reshape(batch, channels, height * width)  # [B, C, R]
    scores = torch.bmm(regions.transpose(1, 2), words)  # [B, R, L]
    scores = scores.masked_fill(padded[:, None, :], float("-inf"))
    accumulate = torch.float64 if query.dtype == torch.float64 else torch.float32
    attn = torch.softmax(scores.to(accumulate), dim=2).to(query.dtype)  # [B, R, L]
    context = torch.bmm(words, attn.transpose(1, 2))  # [B, C, R]
    context = context.reshape(batch, channels, height, width)
    if not return_attn:
        return context
    return context, attn.transpose(1, 2).reshape(batch, num_words, height, width)
