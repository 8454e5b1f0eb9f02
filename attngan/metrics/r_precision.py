"""R-precision (paper section 5; docs/DESIGN.md, "Evaluation"): does an image pick its caption?

For each image: 1 true caption + (candidates - 1) captions of other images (of other classes
when class ids are given, as on CUB), ranked by a similarity score; a hit is the true caption
ranked strictly first. Reported as mean and standard deviation of the hit rate over random
folds of the images (the paper's 10 folds of 3,000). The paper ranks by the cosine of DAMSM
global codes (`r_precision`); ranking by the word-level DAMSM score S is
`r_precision_from_blocks` over blocks of that matrix (`r_precision_from_scores` over a whole
one). The original repository never published this code; this follows the protocol the paper
describes.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F


def check_protocol(
    class_ids: torch.Tensor,
    candidates: int,
    folds: int,
    *,
    candidates_name: str = "candidates",
    folds_name: str = "folds",
    fix: str | None = None,
) -> None:
    """Raise one ValueError unless R-precision with these settings can score images of these
    classes (`[N]`): at most N folds, and for every image candidates - 1 captions of other
    classes. Callers that produce the scores first (training, generating) check before that
    work; the names are how their user sets the two numbers (damsm.eval_candidates, ...), and
    `fix`, if given, replaces the advice to change them."""
    n = len(class_ids)
    if not 1 <= folds <= n:
        raise ValueError(
            f"R-precision with {folds_name}={folds} needs between 1 and {n} folds "
            f"(one per image at most): {fix or f'set {folds_name} in that range'}"
        )
    _, per_class = torch.unique(torch.as_tensor(class_ids), return_counts=True)
    fewest = n - int(per_class.max())  # captions of other classes, fewest
    if fewest < candidates - 1:
        raise ValueError(
            f"R-precision with {candidates_name}={candidates} needs "
            f"{candidates - 1} mismatched captions per image, but one image has "
            f"only {fewest} (too few test images or classes): "
            f"{fix or f'lower {candidates_name} to at most {fewest + 1}'}"
        )


# Images scored at a time: the draw of mismatched captions and the scores take [rows, N]
# temporaries (noise, mask and scores: about 280 MB for 1,024 rows at N = 30,000), never
# [N, N].
ROWS = 1024


def _summary(
    hits: torch.Tensor, folds: int, generator: torch.Generator, candidates: int, seed: int
) -> dict:
    """Hit rate per fold (the images in random folds, as the reference code shuffles before
    splitting), mean and population std over folds, and the protocol."""
    order = torch.randperm(len(hits), generator=generator)
    per_fold = torch.stack([part.mean() for part in hits.float().cpu()[order].tensor_split(folds)])
    return {
        "mean": float(per_fold.mean()),
        "std": float(per_fold.std(unbiased=False)),
        "folds": [float(v) for v in per_fold],
        "n": len(hits),
        "candidates": candidates,
        "num_folds": len(per_fold),
        "seed": seed,
    }


def r_precision_from_blocks(
    score_rows: Callable[[int, int], torch.Tensor],
    n: int,
    class_ids: torch.Tensor | None,
    *,
    candidates: int = 100,
    folds: int = 10,
    seed: int = 0,
) -> dict:
    """R-precision of n images where score_rows(start, stop) gives the `[stop - start, n]`
    scores (on any device) of images start..stop-1 against every caption, the true caption of
    image k in column k; called for blocks of `ROWS` images, so no [n, n] matrix exists.
    Arguments and result as r_precision_from_scores."""
    class_ids = torch.arange(n) if class_ids is None else torch.as_tensor(class_ids).cpu()
    check_protocol(class_ids, candidates, folds)
    generator = torch.Generator().manual_seed(seed)
    hits = []
    for start in range(0, n, ROWS):
        stop = min(n, start + ROWS)
        # candidates - 1 mismatched captions per image, uniformly among the other classes'
        noise = torch.rand(stop - start, n, generator=generator)
        noise.masked_fill_(class_ids[None, :] == class_ids[start:stop, None], -1.0)
        scores = score_rows(start, stop)  # [rows, N]
        mismatched = noise.topk(candidates - 1, dim=1).indices.to(scores.device)
        rows = torch.arange(stop - start, device=scores.device)
        true_scores = scores[rows, rows + start]  # [rows]
        other_scores = scores.gather(1, mismatched)  # [rows, candidates-1]
        hits.append((other_scores < true_scores[:, None]).all(dim=1))  # true caption first
    return _summary(torch.cat(hits), folds, generator, candidates, seed)


def r_precision_from_scores(
    scores: torch.Tensor,
    class_ids: torch.Tensor | None = None,
    *,
    candidates: int = 100,
    folds: int = 10,
    seed: int = 0,
) -> dict:
    """R-precision from a score matrix.

    Args:
        scores: [N, N] float, scores[k, m] = similarity of image k and the caption of image m
            (the diagonal holds the true pairs).
        class_ids: optional [N] ints; mismatched captions are then drawn from other classes.
        candidates: captions ranked per image (1 true + candidates - 1 mismatched).
        folds: the images are split at random into this many folds; the hit rate is averaged
            per fold.
        seed: seeds the draw of mismatched captions and of the folds.
    Returns:
        dict with mean, std (over folds, population std as in the paper's code base), folds
        (the per-fold rates), and the protocol (n, candidates, num_folds, seed).
    """
    n = scores.shape[0]
    if scores.dim() != 2 or scores.shape[1] != n:
        raise ValueError(f"scores must be a square [N, N] matrix, got {tuple(scores.shape)}")
    return r_precision_from_blocks(
        lambda start, stop: scores[start:stop],
        n,
        class_ids,
        candidates=candidates,
        folds=folds,
        seed=seed,
    )


def r_precision(
    image_codes: torch.Tensor,
    caption_codes: torch.Tensor,
    class_ids: torch.Tensor | None = None,
    *,
    candidates: int = 100,
    folds: int = 10,
    seed: int = 0,
) -> dict:
    """R-precision by cosine of global codes: image_codes [N, D], caption_codes [N, D] where
    row k of caption_codes encodes the true caption of image k (see r_precision_from_scores,
    the same draws; the cosines are computed a block of images at a time, no [N, N] matrix)."""
    if image_codes.shape != caption_codes.shape or image_codes.dim() != 2:
        raise ValueError(
            "image_codes and caption_codes must both be [N, D], got "
            f"{tuple(image_codes.shape)} and {tuple(caption_codes.shape)}"
        )
    images = F.normalize(image_codes.float(), dim=1)
    captions_t = F.normalize(caption_codes.float(), dim=1).T
    return r_precision_from_blocks(
        lambda start, stop: images[start:stop] @ captions_t,
        len(images),
        class_ids,
        candidates=candidates,
        folds=folds,
        seed=seed,
    )
