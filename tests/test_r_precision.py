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
    class_ids = torch.tensor([0] * 30 + [1] * 10 + [2] * 10)          # 20 others for class 0
    check_protocol(class_ids, candidates=21, folds=50)
    with pytest.raises(ValueError, match=r"damsm.eval_candidates=22 needs 21 mismatched .* only "
                                         r"20 .* lower damsm.eval_candidates to at most 21"):
        check_protocol(class_ids, 22, 5, candidates_name="damsm.eval_candidates")
    with pytest.raises(ValueError, match=r"damsm.eval_folds=0 needs between 1 and 50 folds"):
        check_protocol(class_ids, 2, 0, folds_name="damsm.eval_folds")
