"""Evaluate a trained generator on the test split: shapes checker, R-precision, Inception Score
and FID.

The protocol (docs/DESIGN.md, "Evaluation"), recorded in the output: `samples` images from the
averaged (EMA) generator with noise seeded by `seed`, captions drawn from the test split in
rounds (`evaluation_captions`) in the data set's deterministic evaluation form, at most
data.eval_words_num words (default data.words_num); R-precision by the cosine of the DAMSM
global codes (the training run's DAMSM, or `damsm_path`); the shapes checker on synthetic data;
Inception Score and FID only with `inception_weights`, against the real test images or the
statistics in `fid_stats` (written there when the file does not exist yet). Every metric reads
the generated images as `pixels` says: by default as the PNG files of the original's sampler
hold them (docs/DEVIATIONS.md). Under torchrun the ranks share the images, chunk by chunk, and
rank 0 scores them all: each chunk's noise and captions depend on its place only, so the
numbers are one process's.
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
from pathlib import Path
from typing import Optional

import torch

from attngan.config import with_absolute_paths
from attngan.data.dataset import build_dataset
from attngan.data.errors import DataError
from attngan.data.loader import float_images
from attngan.distributed import World, gather_to_main, join_world
from attngan.files import OutputError, file_sha256, require_writable, write_text_atomically
from attngan.metrics import INCEPTION_SPLITS, INCEPTION_VARIANT, PAPER_SAMPLES, PIXELS
from attngan.metrics.inception_metrics import GeneratedImageScores
from attngan.metrics.r_precision import check_protocol, r_precision
from attngan.metrics.shapes_checker import check_against_shuffled, parse_caption
from attngan.train.checkpoint import CheckpointError, require_same_data, require_same_vocabulary
from attngan.train.damsm import load_damsm, resolve_damsm_checkpoint
from attngan.train.gan import generate, load_gan
from attngan.train.runtime import resolve_device_argument
from attngan.viz import quantize

__all__ = ["evaluate_generator", "evaluation_captions"]


def _check_readable(texts: list[str], words: int) -> None:
    """Every caption must name a colour or a shape for the shapes checker to score it."""
    unreadable = [text for text in texts if not parse_caption(text)]
    if unreadable:
        raise DataError(
            f"{len(unreadable)} of {len(texts)} test captions name no colour or shape "
            f"once cut to {words} words (e.g. {unreadable[0]!r}), so the shapes "
            f"checker cannot score them; raise data.eval_words_num (unset, it is "
            f"data.words_num)"
        )


def _is_evaluation(path: Path) -> bool:
    """Whether `path` holds what evaluate_generator writes (a JSON object with a protocol)."""
    try:
        content = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(content, dict) and "protocol" in content


def _test_images(dataset, batch_size: int):
    """The test images in batches, one per image, at the data set's top size, in [-1, 1]."""
    for start in range(0, len(dataset.keys), batch_size):
        stop = min(start + batch_size, len(dataset.keys))
        yield float_images(
            torch.stack([dataset.images(i)[-1] for i in range(start, stop)]), torch.device("cpu")
        )


def evaluation_captions(
    num_images: int, per_image: int, samples: int, seed: int
) -> list[tuple[int, int]]:
    """The (test image, caption slot) of each of `samples` evaluation images: rounds that take
    every image once in a random order, image i with caption slots[i][r mod per_image] in round
    r (slots[i] a random order of its captions), the last round cut at `samples`."""
    if samples < 2:
        raise ValueError(f"samples={samples}: evaluation needs at least 2 images")
    # its own stream (the noise and the R-precision draws are seeded with `seed` itself)
    draw = random.Random(f"attngan evaluation captions, seed {seed}")
    slots = [draw.sample(range(per_image), per_image) for _ in range(num_images)]
    pairs: list[tuple[int, int]] = []
    for round_ in range(math.ceil(samples / num_images)):
        images = draw.sample(range(num_images), num_images)[: samples - len(pairs)]
        pairs += [(image, slots[image][round_ % per_image]) for image in images]
    return pairs


class UnsavedResults(OutputError):
    """An evaluation whose results could not be written; they are in `results`."""

    def __init__(self, message: str, results: dict):
        super().__init__(message)
        self.results = results


@dataclasses.dataclass
class _Setup:
    """What an evaluation reads before generating: the run, its test split, the DAMSM."""

    netG: torch.nn.Module
    gan_text_encoder: torch.nn.Module
    vocab: object
    config: object
    payload: dict
    dataset: object
    words: int  # words per caption
    text_encoder: torch.nn.Module  # the evaluating DAMSM's
    image_encoder: torch.nn.Module
    damsm_file: Path
    damsm_hash: str


def _check_options(out_path: Optional[str | Path], inception_weights, settings) -> Optional[Path]:
    """The Inception options need the weights; --out must be a writable file path that is new
    or an earlier evaluation's. Checked before the work its results are of."""
    if inception_weights is None:
        given = [
            f"{name} (--{name.replace('_', '-')})" for name, value in settings if value is not None
        ]
        if given:
            raise ValueError(
                f"{', '.join(given)} configure the Inception Score and FID, which "
                "need the Inception network: pass inception_weights "
                "(--inception-weights) too, or leave them out"
            )
    if out_path is None:
        return None
    out_path = Path(out_path)
    if out_path.is_dir():
        raise ValueError(f"--out {out_path} is a folder; pass the path of a .json file")
    if out_path.exists() and not _is_evaluation(out_path):
        raise ValueError(
            f"--out {out_path} exists and is not the result of an evaluation; "
            "pass a new path (an earlier evaluation's file is replaced)"
        )
    require_writable(out_path.parent, "--out path")
    return out_path


def _load(
    ckpt_path, device: torch.device, data_root, damsm_path, accept_changed_data: bool
) -> _Setup:
    """The generator, the test split it is scored on and the DAMSM that scores it."""
    netG, gan_text_encoder, vocab, config, payload = load_gan(ckpt_path, device)
    if data_root is not None:
        config = with_absolute_paths(
            dataclasses.replace(config, data=dataclasses.replace(config.data, root=str(data_root)))
        )
    elif not Path(config.data.root).is_dir():
        raise DataError(
            f"the run's test data, data.root={config.data.root} in its config, is "
            f"not there (a relative path is taken from the current folder); pass "
            f"--data-root with where that data set is now"
        )
    words = config.data.test_words_num
    dataset = build_dataset(config.data, "test", augment=False, words_num=words)
    require_same_vocabulary(
        payload,
        dataset.vocab.fingerprint(),
        payload["path"],
        config.data.root,
        fix="evaluate it on the data it was trained on",
    )
    if not accept_changed_data:
        require_same_data(
            payload,
            {"test": dataset.records.fingerprint()},
            payload["path"],
            config.data.root,
            "--accept-changed-data",
        )
    if damsm_path is None and not Path(payload["damsm_checkpoint"]).exists():
        raise CheckpointError(
            f"the DAMSM checkpoint {payload['path']} was trained with, "
            f"{payload['damsm_checkpoint']}, is not there any more; pass "
            f"--damsm with its run folder or .pt file where it is now (sha256 "
            f"{payload['damsm_sha256'][:12]}...)"
        )
    damsm_file = resolve_damsm_checkpoint(damsm_path or payload["damsm_checkpoint"])
    text_encoder, image_encoder, _, _ = load_damsm(damsm_file, device, expected_vocab=vocab)
    return _Setup(
        netG,
        gan_text_encoder,
        vocab,
        config,
        payload,
        dataset,
        words,
        text_encoder,
        image_encoder,
        damsm_file,
        file_sha256(damsm_file),
    )


def as_written(images: torch.Tensor) -> torch.Tensor:
    """`images` in [-1, 1] as PNG files of the original's sampler hold them (`quantize`), read
    back into [-1, 1]: what the reference score tools read."""
    return quantize(images).float() / 127.5 - 1


def _generate_chunks(
    setup: _Setup,
    encoded: list,
    samples: int,
    seed: int,
    batch_size: int,
    pixels: str,
    inception: Optional[GeneratedImageScores],
    keep_images: bool,
    world: World,
) -> dict[int, dict]:
    """Generate and encode this rank's chunks of `batch_size` evaluation images (chunk k on
    rank k mod world size), read as `pixels` says; returns chunk -> CPU tensors (codes,
    sentences, and images or Inception outputs when asked). Each chunk's noise and captions
    depend on its place among all the images only, so the images are those one process
    makes."""
    device = next(setup.netG.parameters()).device
    noise_source = torch.Generator().manual_seed(seed)
    chunks: dict[int, dict] = {}
    for chunk, start in enumerate(range(0, samples, batch_size)):
        part = encoded[start : start + batch_size]
        noise = torch.randn(len(part), setup.netG.z_dim, generator=noise_source)
        if chunk % world.size != world.rank:
            continue  # the draw above keeps the noise stream aligned
        captions = torch.stack([caption for caption, _ in part])  # on the CPU
        lengths = torch.tensor([length for _, length in part])
        generated = generate(
            setup.netG,
            setup.gan_text_encoder,
            captions,
            lengths,
            noise.to(device),
            seed=seed + start,
        )[0][-1]  # [b, 3, s, s]
        if pixels == "uint8":
            generated = as_written(generated)
        _, sentence = setup.text_encoder(captions, lengths)  # the evaluating DAMSM's
        _, code = setup.image_encoder(generated)
        result = {"sentences": sentence.cpu(), "codes": code.cpu()}
        if keep_images:  # the shapes checker reads the pixels
            result["images"] = generated.cpu()
        if inception is not None:
            features, probabilities = inception.outputs(generated)
            result.update(features=features.cpu(), probabilities=probabilities.cpu())
        chunks[chunk] = result
    return chunks


@torch.no_grad()
def evaluate_generator(
    ckpt_path: str | Path,
    *,
    out_path: Optional[str | Path] = None,
    device: str | torch.device = "auto",
    samples: int = PAPER_SAMPLES,
    seed: int = 0,
    damsm_path: Optional[str | Path] = None,
    batch_size: int = 64,
    inception_weights: Optional[str | Path] = None,
    inception_variant: Optional[str] = None,
    fid_stats: Optional[str | Path] = None,
    inception_splits: Optional[int] = None,
    data_root: Optional[str | Path] = None,
    accept_changed_data: bool = False,
    pixels: str = PIXELS[0],
) -> Optional[dict]:
    """Score the generator of `ckpt_path` (file or run folder); returns (and with `out_path`
    writes as JSON) dict(protocol, checker (shapes data only, else None), r_precision,
    inception_score and fid (None without `inception_weights`)). The test split is the run's
    data (its config's data.root, or `data_root` where the data set is now); a test split
    other than the run recorded is refused unless `accept_changed_data`. The metrics read the
    images as `pixels` says (attngan.metrics.PIXELS). Results that cannot be
    written come back in the UnsavedResults error. Under torchrun the ranks share the images
    and rank 0 scores them all (the others return None): the same numbers as one process."""
    if pixels not in PIXELS:
        raise ValueError(f"pixels={pixels!r} (--pixels): choose {' or '.join(PIXELS)}")
    world, device = join_world(resolve_device_argument(device))
    out_path = _check_options(
        out_path,
        inception_weights,
        (
            ("fid_stats", fid_stats),
            ("inception_variant", inception_variant),
            ("inception_splits", inception_splits),
        ),
    )
    setup = _load(ckpt_path, device, data_root, damsm_path, accept_changed_data)
    dataset, config = setup.dataset, setup.config
    per_image = dataset.captions_per_image
    pairs = evaluation_captions(len(dataset.keys), per_image, samples, seed)
    encoded = [dataset.caption(image * per_image + slot) for image, slot in pairs]
    texts = [setup.vocab.decode(caption[:length].tolist()) for caption, length in encoded]
    shapes = config.data.dataset == "shapes"
    if shapes:
        _check_readable(texts, setup.words)  # before any image is generated
    resolution = dataset.image_sizes[-1]
    inception = (
        None
        if inception_weights is None
        else GeneratedImageScores(
            inception_weights,
            inception_variant or INCEPTION_VARIANT,
            device,
            INCEPTION_SPLITS if inception_splits is None else inception_splits,
            samples,
            resolution,
            fid_stats if world.is_main else None,
        )
    )  # its files checked before generating
    class_ids = torch.tensor([dataset.class_ids[image] for image, _ in pairs])
    # the R-precision of the generated images, checked before they are generated
    check_protocol(
        class_ids,
        config.damsm.eval_candidates,
        config.damsm.eval_folds,
        candidates_name="damsm.eval_candidates",
        folds_name="damsm.eval_folds",
        fix=f"raise samples (--samples; {samples} now)"
        if len(set(dataset.class_ids)) > 1
        else "the test split's images are all of one class, and R-precision needs "
        "captions of other classes: evaluate on a test split of several",
    )
    mine = _generate_chunks(
        setup, encoded, samples, seed, batch_size, pixels, inception, shapes, world
    )
    chunks = gather_to_main(mine, world)
    if not world.is_main:
        return None
    ordered = [chunks[chunk] for chunk in sorted(chunks)]

    def joined(name: str) -> torch.Tensor:
        return torch.cat([chunk[name] for chunk in ordered])

    checker = None
    if shapes:
        scores = check_against_shuffled(joined("images"), texts, seed=seed)
        # Float entries are rates (counts are ints); NaN marks a rate with nothing to count.
        scores["gap"] = {
            name: value - scores["shuffled"][name]
            for name, value in scores["true"].items()
            if isinstance(value, float) and not math.isnan(value)
        }
        checker = scores
    precision = r_precision(
        joined("codes"),
        joined("sentences"),
        class_ids,
        candidates=config.damsm.eval_candidates,
        folds=config.damsm.eval_folds,
        seed=seed,
    )
    score, fid, inception_protocol = None, None, "not computed (no Inception weights given)"
    if inception is not None:
        for chunk in ordered:
            inception.add_outputs(chunk["features"], chunk["probabilities"])
        score, fid, inception_protocol = inception.results(
            lambda: _test_images(dataset, batch_size)
        )
    payload = setup.payload
    result = {
        "protocol": {
            "split": "test",
            "data_root": config.data.root,
            "samples": samples,
            "test_images": len(dataset.keys),
            "captions": "in rounds: every test image once per round in a random order, with "
            "a caption of it not taken in an earlier round",
            "words_per_caption": setup.words,
            "resolution": resolution,
            "generator": "EMA weights",
            "pixels": "uint8, as the PNG files of the original's sampler ((x + 1) * 127.5, "
            "truncated)"
            if pixels == "uint8"
            else "float, the generator's output",
            "checkpoint": payload["path"],
            "checkpoint_step": payload["step"],
            "damsm_checkpoint": str(setup.damsm_file),
            "damsm_sha256": setup.damsm_hash,
            "damsm_is_training_damsm": setup.damsm_hash == payload["damsm_sha256"],
            "r_precision": f"cosine of DAMSM global codes, 1 true + "
            f"{config.damsm.eval_candidates - 1} captions of other classes, "
            f"{config.damsm.eval_folds} folds",
            "checker": "attngan.metrics.shapes_checker, true vs shuffled captions"
            if checker is not None
            else "not applicable (not the shapes data set)",
            "inception": inception_protocol,
            "seed": seed,
            "processes": world.size,
        },
        "checker": checker,
        "r_precision": precision,
        "inception_score": score,
        "fid": fid,
    }
    if out_path is not None:
        try:
            write_text_atomically(out_path, json.dumps(result, indent=2))
        except OutputError as error:
            raise UnsavedResults(str(error), result) from None
    return result
