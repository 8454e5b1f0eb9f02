"""R-precision: the protocol on constructed scores where the answer is known."""

import pytest
import torch

from attngan.metrics.r_precision import check_protocol, r_precision, r_precision_from_scores


def test_perfect_and_hopeless_scores():
    n = 200
    perfect = torch.eye(n) + 0.01 * torch.rand(n, n)
    assert r_precision_from_scores(perfect, candidates=100, folds=10)["mean"] == 1.0
    hopeless = perfect - 2 * torch.eye(n)
    result = r_precision_from_scores(hopeless, candidates=100, folds=10)
    assert result["mean"] == 0.0 and result["num_folds"] == 10 and result["candidates"] == 100


def test_random_scores_hit_about_one_in_candidates():
    n = 2000
    scores = torch.rand(n, n, generator=torch.Generator().manual_seed(1))
    result = r_precision_from_scores(scores, candidates=10, folds=10)
    assert 0.07 < result["mean"] < 0.13
    assert len(result["folds"]) == 10 and result["std"] > 0


def test_mismatches_come_from_other_classes():
    # Same-class captions score higher than the true one: they must never be candidates.
    n = 120
    class_ids = torch.arange(n) // 2
    scores = torch.eye(n)
    same_class = class_ids[:, None] == class_ids[None, :]
    scores = scores + 5.0 * (same_class & ~torch.eye(n, dtype=torch.bool))
    assert r_precision_from_scores(scores, class_ids, candidates=50, folds=4)["mean"] == 1.0
    assert r_precision_from_scores(scores, None, candidates=119, folds=4)["mean"] == 0.0


def test_cosine_of_codes():
    codes = torch.randn(150, 16)
    result = r_precision(codes, codes + 0.01 * torch.randn(150, 16), candidates=100, folds=5)
    assert result["mean"] == 1.0


def test_too_few_mismatches_is_a_clear_error():
    with pytest.raises(ValueError, match="lower candidates to at most 50"):
        r_precision_from_scores(torch.rand(50, 50), candidates=100, folds=5)
    with pytest.raises(ValueError, match="between 1 and 50 folds"):
        r_precision_from_scores(torch.rand(50, 50), candidates=10, folds=51)
    with pytest.raises(ValueError, match="must both be"):
        r_precision(torch.rand(5, 3), torch.rand(4, 3))


def test_protocol_checked_before_the_scores_exist():
    """What training and evaluation check before their work: the largest class bounds the
    mismatched captions of its images; the message names the setting to change."""
    class_ids = torch.tensor([0] * 30 + [1] * 10 + [2] * 10)  # 20 others for class 0
    check_protocol(class_ids, candidates=21, folds=50)
    with pytest.raises(
        ValueError,
        match=r"damsm.eval_candidates=22 needs 21 mismatched .* only "
        r"20 .* lower damsm.eval_candidates to at most 21",
    ):
        check_protocol(class_ids, 22, 5, candidates_name="damsm.eval_candidates")
    with pytest.raises(ValueError, match=r"damsm.eval_folds=0 needs between 1 and 50 folds"):
        check_protocol(class_ids, 2, 0, folds_name="damsm.eval_folds")


def _naive(scores, class_ids, candidates, folds, seed):
    """The protocol written out on whole [N, N] matrices: the draws r_precision makes."""
    n = len(scores)
    generator = torch.Generator().manual_seed(seed)
    noise = torch.rand(n, n, generator=generator)
    noise = noise.masked_fill(class_ids[None, :] == class_ids[:, None], -1.0)
    mismatched = noise.topk(candidates - 1, dim=1).indices
    hits = (scores.gather(1, mismatched) < scores.diagonal()[:, None]).all(dim=1).float()
    order = torch.randperm(n, generator=generator)
    return [float(part.mean()) for part in hits[order].tensor_split(folds)]


@pytest.mark.parametrize("rows", [7, 1024])
def test_blocks_of_images_give_the_whole_matrix_result(monkeypatch, rows):
    """Scored a block of images at a time (no [N, N] matrix at the paper's 30,000), with the
    same draws as on the whole matrix, whatever the block size."""
    from attngan.metrics import r_precision as module

    monkeypatch.setattr(module, "ROWS", rows)
    n, generator = 300, torch.Generator().manual_seed(3)
    images = torch.randn(n, 8, generator=generator)
    captions = images + 1.5 * torch.randn(n, 8, generator=generator)  # hits sometimes
    class_ids = torch.arange(n) // 3
    scores = (
        torch.nn.functional.normalize(images, dim=1)
        @ torch.nn.functional.normalize(captions, dim=1).T
    )
    expected = _naive(scores, class_ids, 20, 6, seed=5)
    assert 0.1 < sum(expected) / 6 < 0.9
    for result in (
        r_precision(images, captions, class_ids, candidates=20, folds=6, seed=5),
        r_precision_from_scores(scores, class_ids, candidates=20, folds=6, seed=5),
    ):
        assert result["folds"] == pytest.approx(expected, abs=1e-6)
        assert result["n"] == n and result["num_folds"] == 6 and result["seed"] == 5


def test_folds_are_random_subsets_of_the_images():
    """The reference shuffles the images before cutting folds: hits grouped by position (the
    evaluation orders images caption slot by caption slot) must not become folds."""
    n = 400
    scores = torch.eye(n) + 0.01 * torch.rand(n, n)
    scores[n // 2 :] -= 2 * torch.eye(n)[n // 2 :]  # first half always hit, second never
    result = r_precision_from_scores(scores, candidates=10, folds=2)
    assert result["mean"] == pytest.approx(0.5)
    assert result["std"] < 0.1  # consecutive folds: 1.0 and 0.0
