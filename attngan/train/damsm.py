"""DAMSM pretraining: teach the text and image encoders to match words to image regions.

docs/DESIGN.md, "DAMSM losses". Loss per batch: L_w0 + L_w1 (word level, Eq. 10-13 via the
`damsm_word_loss`) + L_s0 + L_s1 (sentence level, cosine of global codes), with same-class
pairs masked. Trains the text encoder and the image encoder's trainable parameters (the two
heads of Inception, or all of the small CNN) with one Adam for the whole run (the original
recreated Adam every epoch; that quirk is not kept), lr x0.98 per epoch until it falls below
lr/10, gradient norm clipped at 0.25 on the text encoder. The run.* switches of the training
step (`attngan.train.speed`) apply but for CUDA graphs; the test loss and the R-precision are
computed in IEEE float32 whatever they are.

A run folder holds config.yaml, metrics.jsonl, checkpoints/damsm_last.pt (written at epoch
ends by a background thread, resumable exactly with `resume=True`) and r_precision.json: the
encoders' R-precision on the test split, by cosine of global codes (the paper's protocol) and
by the word-level score S. The run's set-up and outputs are `attngan.train.run`'s: the losses
are read back from the device at log steps only, and a run whose losses or state become NaN or
infinite stops there, keeping its last good checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Optional

import torch
from tqdm import tqdm

from attngan.config import Config, config_from_dict, config_to_dict, with_absolute_paths
from attngan.data.loader import evaluation_batches, float_images, training_batches
from attngan.data.vocab import Vocabulary
from attngan.distributed import SINGLE, World, data_parallel
from attngan.files import file_sha256
from attngan.metrics.r_precision import check_protocol, r_precision, r_precision_from_blocks
from attngan.nn.image_encoder import InceptionEncoder, build_image_encoder
from attngan.nn.text_encoder import TextEncoder
from attngan.ops.damsm import damsm_word_similarity
from attngan.train.checkpoint import (
    CheckpointError,
    load_checkpoint,
    load_state,
    require_finite,
    resolve_run_checkpoint,
    rng_state,
)
from attngan.train.losses import damsm_losses
from attngan.train.run import TrainingRun
from attngan.train.speed import (
    EAGER_STEPS,
    FAITHFUL,
    StepSettings,
    adam,
    backend_flags,
    compiled,
    load_optimizer_state,
    step_settings,
)


def epoch_learning_rate(lr: float, decay: float, min_ratio: float, epoch: int) -> float:
    """The original's schedule in closed form: lr x decay each epoch while lr > lr * min_ratio."""
    decays = math.ceil(math.log(min_ratio) / math.log(decay)) if 0 < decay < 1 else 0
    return lr * decay ** min(epoch, decays)


# What an imported DAMSM run holds instead of a run to resume, and what to do with it.
_IMPORTED = (
    "encoders imported from the original (attngan import-damsm), without optimizer "
    "state to resume; use it with attngan train --damsm, or pretrain in a new --out "
    "folder"
)


def batch_losses(
    text_encoder,
    image_encoder,
    batch: dict,
    config: Config,
    device: torch.device,
    world: World = SINGLE,
) -> dict[str, torch.Tensor]:
    """The four DAMSM losses of one batch and their sum, "loss" (image encoder fed the largest
    pyramid level); on several ranks of `world`, of the global batch (`damsm_losses`)."""
    # Captions and lengths stay on the CPU, where the text encoder and the ops check them, and
    # the copies are queued (non_blocking), so that the step need not wait for the GPU.
    captions, lengths = batch["captions"], batch["lengths"]
    class_ids = batch["class_ids"].to(device, non_blocking=True)
    images = float_images(batch["images"][-1], device)
    words, sentence = text_encoder(captions, lengths)  # [B, D, L], [B, D]
    regions, code = image_encoder(images)  # [B, D, h, w], [B, D]
    gammas = config.damsm
    losses = damsm_losses(
        words,
        sentence,
        lengths,
        regions,
        code,
        class_ids,
        gamma1=gammas.gamma1,
        gamma2=gammas.gamma2,
        gamma3=gammas.gamma3,
        impl=config.run.impl,
        world=world,
    )
    return {**losses, "loss": sum(losses.values())}


class DAMSMTrainer:
    """The encoders of a new DAMSM run and their one Adam (over the text encoder and the image
    encoder's trainable parameters); `step(batch)` trains one batch.

    The step's switches (`settings`, default: `step_settings` of config.run on `device` for
    DAMSM pretraining) apply as in the GAN's step, but for cuda_graphs (the text encoder trains
    here) and bf16, which runs only the frozen Inception trunk in bfloat16: what trains stays
    in float32, as bfloat16's gradient errors slowed the encoders' training (docs/RESULTS.md);
    with compile the image encoder runs compiled after the first EAGER_STEPS steps. On
    several ranks of `world` both encoders run under DistributedDataParallel (SyncBatchNorm on
    GPUs) and the losses match every caption against every image of the global batch.
    """

    def __init__(
        self,
        config: Config,
        vocab_size: int,
        device: torch.device,
        settings: Optional[StepSettings] = None,
        world: World = SINGLE,
    ):
        self.config = config
        self.device = device
        self.world = world
        self.settings = settings = settings or step_settings(
            config.run, device, stage="damsm", processes=world.size
        )
        self.text_encoder = TextEncoder(vocab_size, config.text_encoder).to(device)
        self.image_encoder = build_image_encoder(
            config.image_encoder, config.text_encoder.hidden_dim
        ).to(device)
        if settings.channels_last:
            self.image_encoder.to(memory_format=torch.channels_last)
        if isinstance(self.image_encoder, InceptionEncoder):
            self.image_encoder.trunk_in_bfloat16 = settings.precision == "bf16"
        self._text_encoder = data_parallel(self.text_encoder, world, device)
        image_encoder = data_parallel(self.image_encoder, world, device)
        trainable = list(self.text_encoder.parameters()) + list(
            self.image_encoder.trainable_parameters()
        )
        self.optimizer = adam(trainable, config.damsm.lr, tuple(config.damsm.betas), settings)
        self.steps = 0  # steps this trainer has taken
        self._image_encoders = (
            image_encoder,
            compiled(image_encoder) if settings.compile else image_encoder,
        )

    def step(self, batch: dict) -> dict[str, torch.Tensor]:
        """One optimizer step on `batch`; returns the batch's losses (detached tensors)."""
        config, device, settings = self.config, self.device, self.settings
        image_encoder = self._image_encoders[self.steps >= EAGER_STEPS]
        with backend_flags(settings, device):
            losses = batch_losses(
                self._text_encoder, image_encoder, batch, config, device, self.world
            )
            self.optimizer.zero_grad(set_to_none=True)
            losses["loss"].backward()
            torch.nn.utils.clip_grad_norm_(self.text_encoder.parameters(), config.damsm.grad_clip)
            self.optimizer.step()
        self.steps += 1
        return {name: loss.detach() for name, loss in losses.items()}

    def state_dict(self) -> dict:
        return {
            "text_encoder": self.text_encoder.state_dict(),
            "image_encoder": self.image_encoder.state_dict(),
            "optimizer": self.optimizer.state_dict(),
        }

    def load_state_dict(self, state: dict, path: str | Path) -> None:
        """Restore what `state_dict` saved in the checkpoint `path` (named in errors)."""
        load_state(self.text_encoder, state["text_encoder"], "text_encoder", path)
        load_state(self.image_encoder, state["image_encoder"], "image_encoder", path)
        load_optimizer_state(self.optimizer, state["optimizer"])


@torch.no_grad()
def encode_split(
    text_encoder, image_encoder, dataset, device: torch.device, batch_size: int = 64
) -> dict[str, torch.Tensor]:
    """Encode every image of `dataset` with one of its captions (caption k % captions_per_image
    of image k, so all caption slots are used), in order, without augmentation."""
    text_encoder.eval()
    image_encoder.eval()
    per_image = dataset.captions_per_image
    out: dict[str, list] = {"words": [], "lengths": [], "sentences": [], "regions": [], "codes": []}
    for start in range(0, len(dataset.keys), batch_size):
        indices = range(start, min(start + batch_size, len(dataset.keys)))
        captions, lengths = zip(*(dataset.caption(k * per_image + k % per_image) for k in indices))
        captions, lengths = torch.stack(captions), torch.tensor(lengths)  # on the CPU
        images = torch.stack([dataset[k]["images"][-1] for k in indices])
        images = float_images(images, device)
        words, sentence = text_encoder(captions, lengths)
        regions, code = image_encoder(images)
        for name, value in (
            ("words", words),
            ("lengths", lengths),
            ("sentences", sentence),
            ("regions", regions),
            ("codes", code),
        ):
            out[name].append(value)
    result = {name: torch.cat(values) for name, values in out.items()}
    result["class_ids"] = torch.as_tensor(dataset.class_ids)
    return result


@torch.no_grad()
def evaluate_r_precision(
    text_encoder, image_encoder, dataset, config: Config, device: torch.device
) -> dict:
    """R-precision of the encoders on `dataset`: by global-code cosine and by word-level S."""
    encoded = encode_split(text_encoder, image_encoder, dataset, device)
    settings = dict(
        candidates=config.damsm.eval_candidates, folds=config.damsm.eval_folds, seed=config.run.seed
    )
    sentence = r_precision(encoded["codes"], encoded["sentences"], encoded["class_ids"], **settings)
    regions = encoded["regions"].flatten(2)  # [N, D, R]

    def word_scores(start: int, stop: int) -> torch.Tensor:  # [stop - start, N]
        return torch.cat(
            [
                damsm_word_similarity(
                    encoded["words"],
                    encoded["lengths"],
                    regions[i : min(i + 64, stop)],
                    gamma1=config.damsm.gamma1,
                    gamma2=config.damsm.gamma2,
                    impl=config.run.impl,
                )
                for i in range(start, stop, 64)
            ]
        )

    word = r_precision_from_blocks(word_scores, len(regions), encoded["class_ids"], **settings)
    encoder = config.image_encoder
    return {
        "sentence": sentence,
        "word": word,
        "protocol": {
            "split": "test",
            "data_root": config.data.root,
            "images": len(regions),
            "caption_per_image": "caption k % captions_per_image of image k",
            "words_per_caption": dataset.words_num,
            "image_size": dataset.image_sizes[-1],
            "image_encoder": f"{encoder.backbone}, input {encoder.input_size} px",
            "mismatched_from": "other classes",
            **settings,
        },
    }


@torch.no_grad()
def mean_test_loss(
    text_encoder, image_encoder, loader, config: Config, device: torch.device
) -> float:
    text_encoder.eval()
    image_encoder.eval()
    losses = [
        batch_losses(text_encoder, image_encoder, batch, config, device)["loss"] for batch in loader
    ]
    totals = torch.stack(losses).tolist() if losses else []  # read back in one copy
    return sum(totals) / max(len(totals), 1)


def _require_trainable(run: TrainingRun, train_set, test_set) -> None:
    """Refuse a batch larger than the training split, an R-precision the test split cannot
    give (the one that ends the run), and a resumed run longer than this config's."""
    settings = run.config.damsm
    if len(train_set) < settings.batch_size:
        raise ValueError(
            f"the training split has {len(train_set)} items, fewer than "
            f"damsm.batch_size={settings.batch_size}: lower the batch size"
        )
    check_protocol(
        test_set.class_ids,
        settings.eval_candidates,
        settings.eval_folds,
        candidates_name="damsm.eval_candidates",
        folds_name="damsm.eval_folds",
    )
    if run.payload is not None and run.payload["epoch"] > settings.epochs:
        # equal: a finished run, evaluated again
        raise CheckpointError(
            f"--resume: {run.checkpoint_path} has trained "
            f"{run.payload['epoch']} epochs, more than damsm.epochs="
            f"{settings.epochs}; set damsm.epochs to at least "
            f"{run.payload['epoch']}"
        )


def _restore(trainer: DAMSMTrainer, run: TrainingRun) -> tuple[int, int]:
    """The trainer as the resumed checkpoint left it; (epochs, steps) trained then."""
    if run.payload is None:
        return 0, 0
    trainer.load_state_dict(run.payload, run.checkpoint_path)
    return run.payload["epoch"], run.payload["step"]


def _checkpoint(
    run: TrainingRun, trainer: DAMSMTrainer, vocab: Vocabulary, epochs: int, step: int
) -> dict:
    """The checkpoint of the run after `epochs` epochs, `step` steps."""
    return {
        "kind": "damsm",
        "config": config_to_dict(run.config),
        "vocab": list(vocab.ixtoword),
        "vocab_fingerprint": vocab.fingerprint(),
        "data_fingerprint": run.fingerprints,
        **trainer.state_dict(),
        "epoch": epochs,
        "step": step,
        "rng": rng_state(),
    }


def _five_decimals(value: float) -> float:
    return round(value, 5)


def _train(
    run: TrainingRun, trainer: DAMSMTrainer, train_set, test_set, start_epoch: int, step: int
) -> int:
    """The epochs from `start_epoch`: their learning rate, a step per batch (metrics at log
    steps, where the losses are read back from the device in one copy, with the divergence
    watch), the test loss, a checkpoint every damsm.checkpoint_every epochs and at the end.
    Returns the steps taken in all."""
    config, device = run.config, trainer.device
    settings = config.damsm
    steps_per_epoch = len(train_set) // settings.batch_size
    with (
        run.outputs() as outputs,
        training_batches(
            train_set,
            config,
            device,
            settings.batch_size,
            epoch=start_epoch,
            batch=0,
            count=(settings.epochs - start_epoch) * steps_per_epoch,
            progress=run.progress,
            world=run.world,
        ) as batches,
        evaluation_batches(test_set, config, device, settings.batch_size) as test_loader,
    ):
        for epoch in range(start_epoch, settings.epochs):
            lr = epoch_learning_rate(settings.lr, settings.lr_decay, settings.min_lr_ratio, epoch)
            for group in trainer.optimizer.param_groups:
                group["lr"] = lr
            trainer.text_encoder.train()
            trainer.image_encoder.train()
            with run.progress_bar(
                batches.take(steps_per_epoch),
                total=steps_per_epoch,
                desc=f"DAMSM epoch {epoch + 1}/{settings.epochs}",
                leave=False,
            ) as bar:
                for batch in bar:
                    step += 1
                    outputs.track(step, trainer.step(batch))
                    if step % settings.log_every == 0:
                        losses = outputs.log_losses(
                            {
                                "step": step,
                                "epoch": epoch,
                                "lr": lr,
                                "seconds": round(run.seconds(), 2),
                            },
                            _five_decimals,
                        )
                        bar.set_postfix(loss=f"{losses['loss']:.3f}")
            with backend_flags(FAITHFUL, device):
                test_loss = mean_test_loss(
                    trainer.text_encoder, trainer.image_encoder, test_loader, config, device
                )
            outputs.log(
                {
                    "step": step,
                    "epoch": epoch,
                    "lr": lr,
                    "test_loss": round(test_loss, 5),
                    "seconds": round(run.seconds(), 2),
                }
            )
            if run.progress:
                tqdm.write(
                    f"DAMSM epoch {epoch + 1}/{settings.epochs}: "
                    f"test loss {test_loss:.3f} (step {step})"
                )
            if (epoch + 1) % settings.checkpoint_every == 0 or epoch + 1 == settings.epochs:
                outputs.save(step, _checkpoint(run, trainer, train_set.vocab, epoch + 1, step))
    return step


def _evaluate(run: TrainingRun, trainer: DAMSMTrainer, test_set, step: int) -> dict:
    """The run's R-precision on the test split (in IEEE float32), written to
    r_precision.json with the checkpoint it measured."""
    with backend_flags(FAITHFUL, trainer.device):
        results = evaluate_r_precision(
            trainer.text_encoder, trainer.image_encoder, test_set, run.config, trainer.device
        )
    results["checkpoint"] = str(run.checkpoint_path)
    results["checkpoint_sha256"] = file_sha256(run.checkpoint_path)
    results["epochs"] = run.config.damsm.epochs
    results["steps"] = step
    run.write_text("r_precision.json", json.dumps(results, indent=2))
    return results


def pretrain_damsm(
    config: Config,
    out_dir: str | Path,
    resume: bool = False,
    progress: bool = True,
    accept_changed_data: bool = False,
) -> Optional[dict]:
    """Pretrain the DAMSM encoders; returns the final R-precision results (also saved; under
    torchrun rank 0 measures them, and the other ranks return None). `accept_changed_data`
    resumes on data other than the run recorded."""
    config = with_absolute_paths(config)
    with TrainingRun(
        "damsm",
        "attngan pretrain-damsm",
        out_dir,
        resume=resume,
        accept_changed_data=accept_changed_data,
        progress=progress,
    ) as run:
        device, settings = run.prepare(config)
        train_set, test_set = run.read_data(config, with_test_set=True)
        run.open(config, train_set.vocab, imported=_IMPORTED)
        _require_trainable(run, train_set, test_set)
        trainer = DAMSMTrainer(run.config, len(train_set.vocab), device, settings, run.world)
        epoch, step = _restore(trainer, run)
        run.start()
        step = _train(run, trainer, train_set, test_set, epoch, step)
        return _evaluate(run, trainer, test_set, step) if run.writer else None


def resolve_damsm_checkpoint(path_or_run_dir: str | Path) -> Path:
    """A DAMSM checkpoint file, or the last checkpoint of a DAMSM run folder."""
    return resolve_run_checkpoint(path_or_run_dir, "damsm")


def load_damsm(
    path_or_run_dir: str | Path,
    device: str | torch.device = "cpu",
    expected_vocab: Optional[Vocabulary] = None,
):
    """Frozen encoders of a DAMSM run: (text_encoder, image_encoder, vocab, config).

    With `expected_vocab`, a checkpoint trained on another vocabulary is refused with an error
    naming both (its word ids would index the wrong embeddings).
    """
    path = resolve_damsm_checkpoint(path_or_run_dir)
    payload = load_checkpoint(path, kind="damsm", map_location=device)
    config = config_from_dict(payload["config"])
    vocab = Vocabulary(payload["vocab"])
    if expected_vocab is not None and expected_vocab.fingerprint() != payload["vocab_fingerprint"]:
        raise CheckpointError(
            f"the DAMSM checkpoint {path} was trained on a vocabulary of {len(vocab)} words "
            f"that differs from this data's ({len(expected_vocab)} words); pretrain DAMSM on "
            "this data set (attngan pretrain-damsm) or point data.root at the data it was "
            "trained on"
        )
    text_encoder = TextEncoder(len(vocab), config.text_encoder)
    load_state(text_encoder, payload["text_encoder"], "text_encoder", path)
    # The trunk's weights are inside the checkpoint, so no weights file is needed to rebuild.
    image_config = dataclasses.replace(config.image_encoder, weights=None, random_init=True)
    image_encoder = build_image_encoder(image_config, config.text_encoder.hidden_dim)
    load_state(image_encoder, payload["image_encoder"], "image_encoder", path)
    for name in ("text_encoder", "image_encoder"):
        require_finite(payload[name], name, path)
    for module in (text_encoder, image_encoder):
        module.to(device).eval().requires_grad_(False)
    return text_encoder, image_encoder, vocab, config
