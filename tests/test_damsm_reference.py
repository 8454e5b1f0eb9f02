"""The DAMSM references against each other and against the original's loss code (SPEC section 2).

Chain: the faithful per-caption loop (attngan.ops.reference) -> the vectorized all-pairs
reference, in float64, forward and gradients, on odd shapes and ragged lengths; the losses
against a transcription of the original's mask building and cross entropies; gradcheck; and
masking invariance (padded word slots never matter).
"""
import numpy as np
import pytest
import torch
from torch import nn

from attngan.ops.damsm import damsm_sentence_loss, damsm_word_loss, damsm_word_similarity
from attngan.ops.reference import damsm_word_similarity_loop, damsm_word_similarity_reference

# (B_img, B_cap, D, L, R): L in {1, 5, 17, 18}, R = 289 once, B_img != B_cap, B = 1.
SHAPES = [(3, 4, 8, 5, 6), (4, 2, 16, 18, 289), (1, 5, 6, 1, 4), (5, 1, 7, 17, 9),
          (2, 3, 12, 18, 16)]


def _inputs(num_images, num_captions, dim, num_words, num_regions, dtype=torch.float64):
    """Random features scaled so s = v^T e has unit spread (softmaxes not one-hot), ragged lengths
    that include 1 and L."""
    scale = dim ** -0.25
    words = torch.randn(num_captions, dim, num_words, dtype=dtype) * scale
    regions = torch.randn(num_images, dim, num_regions, dtype=dtype) * scale
    lengths = torch.randint(1, num_words + 1, (num_captions,))
    lengths[0] = num_words
    if num_captions > 1:
        lengths[1] = 1
    return words, lengths, regions


def _forward_and_grads(function, words, lengths, regions, grad_s=None):
    words = words.detach().clone().requires_grad_()
    regions = regions.detach().clone().requires_grad_()
    similarity = function(words, lengths, regions)
    if grad_s is None:
        grad_s = torch.randn_like(similarity)
    similarity.backward(grad_s)
    return similarity.detach(), words.grad, regions.grad, grad_s


@pytest.mark.parametrize("shape", SHAPES)
def test_loop_matches_reference_fp64(shape):
    words, lengths, regions = _inputs(*shape)
    s_loop, gw_loop, gr_loop, grad_s = _forward_and_grads(damsm_word_similarity_loop, words,
                                                          lengths, regions)
    s_ref, gw_ref, gr_ref, _ = _forward_and_grads(damsm_word_similarity_reference, words, lengths,
                                                  regions, grad_s)
    assert s_ref.shape == (shape[0], shape[1])
    assert s_loop.abs().max() > 0.1
    torch.testing.assert_close(s_ref, s_loop, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(gw_ref, gw_loop, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(gr_ref, gr_loop, rtol=1e-10, atol=1e-12)


def test_similarity_is_the_equations_for_one_pair():
    """One (image, caption) pair written out step by step from SPEC section 2."""
    words, lengths, regions = _inputs(2, 3, 6, 5, 7)
    similarity = damsm_word_similarity_reference(words, lengths, regions, gamma1=3.0, gamma2=2.0)
    j, i = 1, 2
    e = words[i, :, :lengths[i]]                                      # [D, n]
    v = regions[j]                                                    # [D, R]
    s = v.t() @ e                                                     # [R, n]
    p = torch.exp(s) / torch.exp(s).sum(dim=1, keepdim=True)          # over words
    alpha = torch.exp(3.0 * p) / torch.exp(3.0 * p).sum(dim=0, keepdim=True)  # over regions
    c = v @ alpha                                                     # [D, n]
    cos = (c * e).sum(0) / (c.norm(dim=0) * e.norm(dim=0))
    expected = torch.log(torch.exp(2.0 * cos).sum())
    torch.testing.assert_close(similarity[j, i], expected, rtol=1e-12, atol=0)


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
    words, lengths, regions = _inputs(6, 6, 10, 18, 16)
    losses = {impl: damsm_word_loss(words, lengths, regions, class_ids=class_ids, impl=impl)
              for impl in ("loop", "reference")}
    expected = _original_style_losses(damsm_word_similarity_loop(words, lengths, regions),
                                      class_ids, 10.0)
    for impl, (loss_i2c, loss_c2i) in losses.items():
        torch.testing.assert_close(loss_i2c, expected[0], rtol=1e-12, atol=0, msg=impl)
        torch.testing.assert_close(loss_c2i, expected[1], rtol=1e-12, atol=0, msg=impl)
    assert expected[0] != expected[1]


def test_class_mask_changes_the_loss_and_keeps_the_diagonal():
    words, lengths, regions = _inputs(4, 4, 8, 5, 9)
    free = damsm_word_loss(words, lengths, regions, impl="reference")
    one_class = damsm_word_loss(words, lengths, regions, class_ids=[7, 7, 7, 7], impl="reference")
    # Every negative masked: each row keeps only its diagonal, so both losses are exactly 0.
    assert float(one_class[0]) == 0.0 and float(one_class[1]) == 0.0
    assert float(free[0]) > 0.0
    as_tensor = damsm_word_loss(words, lengths, regions, class_ids=torch.tensor([1, 2, 1, 3]),
                                impl="reference")
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


def test_sentence_loss_dtype_and_bad_inputs():
    loss = damsm_sentence_loss(torch.randn(3, 4, dtype=torch.bfloat16), torch.randn(3, 4))
    assert loss[0].dtype == torch.float32
    with pytest.raises(ValueError, match="one shape"):
        damsm_sentence_loss(torch.randn(3, 4), torch.randn(2, 4))
    with pytest.raises(ValueError, match=r"floating \[B, D\]"):
        damsm_sentence_loss(torch.randn(3, 4, 1), torch.randn(3, 4))
    with pytest.raises(ValueError, match="class_ids"):
        damsm_sentence_loss(torch.randn(3, 4), torch.randn(3, 4), class_ids=[1, 2])


def test_reference_gradcheck():
    words, lengths, regions = _inputs(2, 3, 4, 3, 5)
    words.requires_grad_()
    regions.requires_grad_()
    assert torch.autograd.gradcheck(
        lambda w, r: damsm_word_similarity_reference(w, lengths, r, gamma1=4.0, gamma2=5.0),
        (words, regions))


@pytest.mark.parametrize("function", [damsm_word_similarity_reference, damsm_word_similarity_loop])
def test_padded_slots_change_nothing(function):
    words, lengths, regions = _inputs(3, 4, 8, 6, 10)
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


def test_public_reference_policy_low_precision_and_autocast():
    words, lengths, regions = _inputs(2, 3, 8, 5, 9, dtype=torch.float32)
    bf_words = words.bfloat16().requires_grad_()
    similarity = damsm_word_similarity(bf_words, lengths, regions.bfloat16(), impl="reference")
    assert similarity.dtype == torch.float32
    expected = damsm_word_similarity_reference(bf_words.detach().float(), lengths,
                                               regions.bfloat16().float())
    torch.testing.assert_close(similarity, expected)
    similarity.sum().backward()
    assert bf_words.grad.dtype == torch.bfloat16
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under_autocast = damsm_word_similarity(words, lengths, regions, impl="reference")
    assert under_autocast.dtype == torch.float32
    torch.testing.assert_close(under_autocast,
                               damsm_word_similarity(words, lengths, regions, impl="reference"))
