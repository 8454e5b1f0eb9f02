"""The DAMSM math and its references (attngan.ops.reference), in float64.

The vectorized all-pairs reference against the faithful per-caption loop, forward and gradients,
on odd shapes and ragged lengths; both against the equations and the hand-derived backward of
docs/DESIGN.md, "DAMSM word similarity"; the losses against a transcription of the original's
mask building and cross entropies; gradcheck; padded word slots never matter.
"""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import damsm_inputs
from torch import nn

from attngan.ops.damsm import damsm_sentence_loss, damsm_word_loss
from attngan.ops.reference import damsm_word_similarity_loop, damsm_word_similarity_reference

# (B_img, B_cap, D, L, R): L in {1, 5, 17, 18}, R = 289 once, B_img != B_cap, B = 1.
SHAPES = [
    (3, 4, 8, 5, 6),
    (4, 2, 16, 18, 289),
    (1, 5, 6, 1, 4),
    (5, 1, 7, 17, 9),
    (2, 3, 12, 18, 16),
]
EPS = 1e-8


def _forward_and_grads(function, words, lengths, regions, grad_s=None, **gammas):
    words = words.detach().clone().requires_grad_()
    regions = regions.detach().clone().requires_grad_()
    similarity = function(words, lengths, regions, **gammas)
    if grad_s is None:
        grad_s = torch.randn_like(similarity)
    similarity.backward(grad_s)
    return similarity.detach(), words.grad, regions.grad, grad_s


@pytest.mark.parametrize("shape", SHAPES)
def test_loop_matches_reference_fp64(shape):
    words, lengths, regions = damsm_inputs(*shape)
    s_loop, gw_loop, gr_loop, grad_s = _forward_and_grads(
        damsm_word_similarity_loop, words, lengths, regions
    )
    s_ref, gw_ref, gr_ref, _ = _forward_and_grads(
        damsm_word_similarity_reference, words, lengths, regions, grad_s
    )
    assert s_ref.shape == (shape[0], shape[1])
    assert s_loop.abs().max() > 0.1
    torch.testing.assert_close(s_ref, s_loop, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(gw_ref, gw_loop, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(gr_ref, gr_loop, rtol=1e-10, atol=1e-12)


def _design_pair(v, e, g, gamma1, gamma2):
    """S of image regions v `[D, R]` and caption words e `[D, n]`, and the gradients of g * S
    with respect to e and v, term by term as docs/DESIGN.md derives them."""
    s = v.t() @ e  # [R, n]     eq. 7
    p = F.softmax(s, dim=1)  # over words eq. 8
    alpha = F.softmax(gamma1 * p, dim=0)  # over regions eq. 9
    c = v @ alpha  # [D, n]
    ee, cc = (e * e).sum(0), (c * c).sum(0)
    norm = ee.sqrt() * cc.sqrt()
    cosine = (e * c).sum(0) / norm.clamp(min=EPS)
    similarity = torch.logsumexp(gamma2 * cosine, dim=0)  # eq. 10, no 1 / gamma2
    g_r = g * gamma2 * F.softmax(gamma2 * cosine, dim=0)
    clamped = norm < EPS
    coef_a = g_r / norm.clamp(min=EPS)
    coef_b = torch.where(clamped, 0.0, -g_r * cosine / cc)
    coef_bw = torch.where(clamped, 0.0, -g_r * cosine / ee)
    gc = coef_a * e + coef_b * c  # [D, n]
    delta = (gc * c).sum(0)
    g_p = gamma1 * alpha * (v.t() @ gc - delta)  # [R, n]
    gs = p * (g_p - (p * g_p).sum(1, keepdim=True))
    grad_v = gc @ alpha.t() + e @ gs.t()
    grad_e = coef_a * c + coef_bw * e + v @ gs
    return similarity, grad_e, grad_v


def test_reference_is_the_design_equations_forward_and_backward():
    """S and both gradients pair by pair from the equations and the hand-derived backward,
    against the reference and its autograd; one word is zero, so its norm product is clamped."""
    gamma1, gamma2 = 3.0, 2.0
    words, lengths, regions = damsm_inputs(2, 3, 6, 5, 7, lengths=[5, 1, 3])
    words[2, :, 1] = 0.0
    similarity, grad_words, grad_regions, grad_s = _forward_and_grads(
        damsm_word_similarity_reference, words, lengths, regions, gamma1=gamma1, gamma2=gamma2
    )
    expected_words, expected_regions = torch.zeros_like(words), torch.zeros_like(regions)
    for j in range(regions.shape[0]):
        for i, n in enumerate(lengths.tolist()):
            s, grad_e, grad_v = _design_pair(
                regions[j], words[i, :, :n], grad_s[j, i], gamma1, gamma2
            )
            torch.testing.assert_close(similarity[j, i], s, rtol=1e-12, atol=0)
            expected_words[i, :, :n] += grad_e
            expected_regions[j] += grad_v
    torch.testing.assert_close(grad_words, expected_words, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(grad_regions, expected_regions, rtol=1e-10, atol=1e-12)


def _original_style_losses(similarity, class_ids, gamma3):
    """Transcription of the original's words_loss / sent_loss tail: a numpy mask per row, then
    masked_fill and nn.CrossEntropyLoss on rows and on the transpose."""
    batch = similarity.shape[0]
    scores = similarity * gamma3
    if class_ids is not None:
        masks = []
        for i in range(batch):
            mask = (class_ids == class_ids[i]).astype(np.uint8)
            mask[i] = 0
            masks.append(mask.reshape((1, -1)))
        masks = torch.from_numpy(np.concatenate(masks, 0)).to(torch.bool)
        scores = scores.masked_fill(masks, -float("inf"))
    labels = torch.arange(batch)
    return nn.CrossEntropyLoss()(scores, labels), nn.CrossEntropyLoss()(scores.t(), labels)


@pytest.mark.parametrize("class_ids", [None, np.array([3, 1, 3, 2, 1, 3])])
def test_word_loss_loop_reference_and_original(class_ids):
    words, lengths, regions = damsm_inputs(6, 6, 10, 18, 16)
    losses = {
        impl: damsm_word_loss(words, lengths, regions, class_ids=class_ids, impl=impl)
        for impl in ("loop", "reference")
    }
    expected = _original_style_losses(
        damsm_word_similarity_loop(words, lengths, regions), class_ids, 10.0
    )
    for impl, (loss_i2c, loss_c2i) in losses.items():
        torch.testing.assert_close(loss_i2c, expected[0], rtol=1e-12, atol=0, msg=impl)
        torch.testing.assert_close(loss_c2i, expected[1], rtol=1e-12, atol=0, msg=impl)
    assert expected[0] != expected[1]


def test_class_mask_changes_the_loss_and_keeps_the_diagonal():
    words, lengths, regions = damsm_inputs(4, 4, 8, 5, 9)
    free = damsm_word_loss(words, lengths, regions, impl="reference")
    one_class = damsm_word_loss(words, lengths, regions, class_ids=[7, 7, 7, 7], impl="reference")
    # Every negative masked: each row keeps only its diagonal, so both losses are exactly 0.
    assert float(one_class[0]) == 0.0 and float(one_class[1]) == 0.0
    assert float(free[0]) > 0.0
    as_tensor = damsm_word_loss(
        words, lengths, regions, class_ids=torch.tensor([1, 2, 1, 3]), impl="reference"
    )
    as_list = damsm_word_loss(words, lengths, regions, class_ids=[1, 2, 1, 3], impl="reference")
    torch.testing.assert_close(as_tensor, as_list)


@pytest.mark.parametrize("class_ids", [None, np.array([0, 1, 0, 2, 1])])
def test_sentence_loss_matches_original(class_ids):
    codes = torch.randn(5, 12, dtype=torch.float64)
    sentences = torch.randn(5, 12, dtype=torch.float64)
    loss = damsm_sentence_loss(codes, sentences, class_ids=class_ids, gamma3=10.0)
    # The original: [1, B, D] bmm, norms bmm, clamp, * gamma3, then the shared tail.
    cnn, rnn = codes.unsqueeze(0), sentences.unsqueeze(0)
    scores = torch.bmm(cnn, rnn.transpose(1, 2))
    norms = torch.bmm(cnn.norm(dim=2, keepdim=True), rnn.norm(dim=2, keepdim=True).transpose(1, 2))
    cosine = (scores / norms.clamp(min=1e-8)).squeeze(0)
    expected = _original_style_losses(cosine, class_ids, 10.0)
    torch.testing.assert_close(loss[0], expected[0], rtol=1e-12, atol=0)
    torch.testing.assert_close(loss[1], expected[1], rtol=1e-12, atol=0)


def test_reference_gradcheck():
    words, lengths, regions = damsm_inputs(2, 3, 4, 3, 5)
    words.requires_grad_()
    regions.requires_grad_()
    assert torch.autograd.gradcheck(
        lambda w, r: damsm_word_similarity_reference(w, lengths, r, gamma1=4.0, gamma2=5.0),
        (words, regions),
    )


@pytest.mark.parametrize("function", [damsm_word_similarity_reference, damsm_word_similarity_loop])
def test_padded_slots_change_nothing(function):
    words, lengths, regions = damsm_inputs(3, 4, 8, 6, 10)
    s_clean, gw_clean, gr_clean, grad_s = _forward_and_grads(function, words, lengths, regions)
    dirty = words.clone()
    for i, n in enumerate(lengths.tolist()):
        dirty[i, :, n:] = float("nan") if i % 2 else float("inf")
    s_dirty, gw_dirty, gr_dirty, _ = _forward_and_grads(function, dirty, lengths, regions, grad_s)
    assert torch.equal(s_dirty, s_clean)
    assert torch.equal(gr_dirty, gr_clean)
    assert torch.equal(gw_dirty, gw_clean)
    for i, n in enumerate(lengths.tolist()):
        assert torch.all(gw_dirty[i, :, n:] == 0)
