"""R-precision (AttnGAN paper, section 5; SPEC section 5): does an image pick its own caption?

For each image: 1 true caption + (candidates - 1) captions of other images (of other classes
when class ids are given, as on CUB), ranked by a similarity score; a hit is the true caption
ranked strictly first. Reported as mean and standard deviation of the hit rate over folds of
the images. The paper ranks by the cosine of DAMSM global codes (`r_precision`); ranking by the
word-level DAMSM score S is `r_precision_from_scores` over that matrix. The original repository
never published this code; this follows the protocol the paper describes.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def check_protocol(class_ids: torch.Tensor, candidates: int, folds: int, *,
                   candidates_name: str = "candidates", folds_name: str = "folds",
                   fix: str | None = None) -> None:
    """Raise one ValueError unless R-precision with these settings can score images of these
    classes (`[N]`): at most N folds, and for every image candidates - 1 captions of other
    classes. Callers that produce the scores first (training, generating) check before that
    work; the names are how their user sets the two numbers (damsm.eval_candidates, ...), and
    `fix`, if given, replaces the advice to change them."""
    n = len(class_ids)
    if not 1 <= folds <= n:
        raise ValueError(f"R-precision with {folds_name}={folds} needs between 1 and {n} folds "
                         f"(one per image at most): {fix or f'set {folds_name} in that range'}")
    _, per_class = torch.unique(torch.as_tensor(class_ids), return_counts=True)
    fewest = n - int(per_class.max())                 # captions of other classes, fewest
    if fewest < candidates - 1:
        raise ValueError(f"R-precision with {candidates_name}={candidates} needs "
                         f"{candidates - 1} mismatched captions per image, but one image has "
                         f"only {fewest} (too few test images or classes): "
                         f"{fix or f'lower {candidates_name} to at most {fewest + 1}'}")


def r_precision_from_scores(scores: torch.Tensor, class_ids: torch.Tensor | None = None, *,
                            candidates: int = 100, folds: int = 10, seed: int = 0) -> dict:
    """R-precision from a score matrix.

    Args:
        scores: [N, N] float, scores[k, m] = similarity of image k and the caption of image m
            (the diagonal holds the true pairs).
        class_ids: optional [N] ints; mismatched captions are then drawn from other classes.
        candidates: captions ranked per image (1 true + candidates - 1 mismatched).
        folds: the images are split into this many folds; the hit rate is averaged per fold.
        seed: seeds the draw of mismatched captions.
    Returns:
        dict with mean, std (over folds, population std as in the paper's code base), folds
        (the per-fold rates), and the protocol (n, candidates, folds, seed).
    """
    n = scores.shape[0]
    if scores.dim() != 2 or scores.shape[1] != n:
        raise ValueError(f"scores must be a square [N, N] matrix, got {tuple(scores.shape)}")
    if class_ids is None:
        class_ids = torch.arange(n)
    check_protocol(class_ids, candidates, folds)
    class_ids = class_ids.to(scores.device)
    eligible = class_ids[None, :] != class_ids[:, None]                   # [N, N]
    generator = torch.Generator().manual_seed(seed)
    noise = torch.rand(n, n, generator=generator).to(scores.device)
    noise = noise.masked_fill(~eligible, -1.0)
    mismatched = noise.topk(candidates - 1, dim=1).indices                # [N, candidates-1]
    true_scores = scores.diagonal()                                        # [N]
    other_scores = scores.gather(1, mismatched)                            # [N, candidates-1]
    hits = (other_scores < true_scores[:, None]).all(dim=1).float()        # [N]
    per_fold = torch.stack([part.mean() for part in hits.cpu().tensor_split(folds)])
    return {
        "mean": float(per_fold.mean()),
        "std": float(per_fold.std(unbiased=False)),
        "folds": [float(v) for v in per_fold],
        "n": n,
        "candidates": candidates,
        "num_folds": len(per_fold),
        "seed": seed,
    }


def r_precision(image_codes: torch.Tensor, caption_codes: torch.Tensor,
                class_ids: torch.Tensor | None = None, *, candidates: int = 100,
                folds: int = 10, seed: int = 0) -> dict:
    """R-precision by cosine of global codes: image_codes [N, D], caption_codes [N, D] where
    row k of caption_codes encodes the true caption of image k (see r_precision_from_scores)."""
    if image_codes.shape != caption_codes.shape or image_codes.dim() != 2:
        raise ValueError("image_codes and caption_codes must both be [N, D], got "
                         f"{tuple(image_codes.shape)} and {tuple(caption_codes.shape)}")
    scores = F.normalize(image_codes.float(), dim=1) @ F.normalize(caption_codes.float(), dim=1).T
    return r_precision_from_scores(scores, class_ids, candidates=candidates, folds=folds,
                                   seed=seed)
