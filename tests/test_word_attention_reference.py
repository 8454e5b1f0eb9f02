"""The generator's word attention and its reference (attngan.ops.reference), in float64.

The vectorized reference against the equations of docs/DESIGN.md, "Word attention", written out
sample by sample over the real words only (forward, and the hand-derived backward against the
reference's autograd), on odd sizes and ragged lengths; gradcheck.
"""

import pytest
import torch
from helpers import WORD_ATTENTION_SHAPES, word_attention_inputs

from attngan.ops.reference import word_attention_reference

SHAPES = WORD_ATTENTION_SHAPES


def _design_sample(h, e, grad_context, grad_attn):
    """One sample from the equations, over its n real words only: context `[C, R]` and the map
    `[n, R]` of query h `[C, R]` and words e `[C, n]`, and the gradients of
    sum(context * grad_context) + sum(map * grad_attn) as docs/DESIGN.md derives them."""
    p = torch.softmax(h.t() @ e, dim=1)  # [R, n]
    context = e @ p.t()  # [C, R]
    dp = grad_context.t() @ e + grad_attn.t()  # [R, n]
    ds = p * (dp - (p * dp).sum(dim=1, keepdim=True))
    grad_h = e @ ds.t()  # [C, R]
    grad_e = grad_context @ p + h @ ds  # [C, n]
    return context, p.t(), grad_h, grad_e


@pytest.mark.parametrize("shape", SHAPES)
def test_reference_is_the_design_equations_forward_and_backward(shape):
    batch, channels, num_words, height, width, lengths = shape
    query, words, lengths = word_attention_inputs(*shape[:5], lengths=lengths)
    grad_context = torch.randn(query.shape, dtype=torch.float64)
    grad_attn = torch.randn(batch, num_words, height, width, dtype=torch.float64)
    q, w = query.clone().requires_grad_(), words.clone().requires_grad_()
    context, attn = word_attention_reference(q, w, lengths, return_attn=True)
    ((context * grad_context).sum() + (attn * grad_attn).sum()).backward()
    for b, n in enumerate(lengths.tolist()):
        h = query[b].reshape(channels, -1)  # [C, R]
        expected = _design_sample(
            h,
            words[b, :, :n],
            grad_context[b].reshape(channels, -1),
            grad_attn[b, :n].reshape(n, -1),
        )
        got = (
            context[b].reshape(channels, -1),
            attn[b, :n].reshape(n, -1),
            q.grad[b].reshape(channels, -1),
            w.grad[b, :, :n],
        )
        for value, want in zip(got, expected):
            torch.testing.assert_close(value.detach(), want, rtol=1e-12, atol=1e-12)
        assert torch.all(attn[b, n:] == 0) and torch.all(w.grad[b, :, n:] == 0)


def test_reference_gradcheck():
    query, words, lengths = word_attention_inputs(2, 3, 4, 3, 2, lengths=[4, 2])
    query.requires_grad_()
    words.requires_grad_()
    assert torch.autograd.gradcheck(
        lambda q, w: word_attention_reference(q, w, lengths, return_attn=True), (query, words)
    )
