"""AttnGAN training loop (docs/DESIGN.md): discriminator steps, then a generator step.

Per batch, as the original trainer: the frozen DAMSM text encoder (eval mode, no gradient)
encodes the captions; one generator forward with fresh noise z ~ N(0, I); for each stage's
discriminator: zero grad, L_D on the real image and the detached fake, backward, Adam step;
then the generator: L_G = adversarial terms of all stages (discriminator parameters frozen
for this backward) + λ·DAMSM losses of the final image + KL, backward, Adam step; then the
exponential moving average of the generator's weights (`ema.py`). Adam lr 2e-4, betas
(0.5, 0.999) for every network (config.gan). How the step computes (precision, compile, CUDA
graphs, ...) is set by the run.* switches (`attngan.train.speed`); the model is the same.

A run folder holds config.yaml (the resolved config), metrics.jsonl (one line per
gan.log_every steps: step, epoch, seconds, every loss), samples/ (fixed-noise grids of the
averaged generator for fixed training captions, every gan.sample_every steps and at the end,
with samples/captions.txt) and checkpoints/gan_last.pt: the generator, discriminators, EMA,
optimizers, step, epoch and position in the epoch, RNG state, config, vocabulary, the text
encoder (so sampling needs no DAMSM file) and the DAMSM checkpoint's path and SHA-256, written
by a background thread while training goes on. The run's set-up and outputs are
`attngan.train.run`'s: the losses are read back from the device at log steps only, and a run
whose losses or state become NaN or infinite stops there, keeping its last good checkpoint.
`resume=True` continues exactly where the checkpoint stopped, with any data.num_workers: the
batch order of an epoch is a permutation drawn from a generator seeded by (run.seed, epoch),
each item's augmentation draws from one seeded by (run.seed, epoch, index)
(`attngan.data.loader`), the noise from the restored global RNG.
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import Callable, NamedTuple, Optional

import torch

from attngan.config import Config, config_from_dict, config_to_dict, with_absolute_paths
from attngan.data.loader import float_images, training_batches
from attngan.data.vocab import Vocabulary
from attngan.distributed import SINGLE, World, data_parallel
from attngan.files import file_sha256
from attngan.nn.discriminator import build_discriminators
from attngan.nn.generator import Generator
from attngan.nn.text_encoder import TextEncoder
from attngan.train.checkpoint import (
    CheckpointError,
    load_checkpoint,
    load_state,
    require_finite,
    resolve_run_checkpoint,
    rng_state,
)
from attngan.train.damsm import load_damsm, resolve_damsm_checkpoint
from attngan.train.ema import EMA
from attngan.train.losses import discriminator_loss, generator_loss
from attngan.train.run import TrainingRun
from attngan.train.speed import (
    EAGER_STEPS,
    StepSettings,
    adam,
    backend_flags,
    compiled,
    frozen_network,
    load_optimizer_state,
    step_settings,
    training_autocast,
)
from attngan.viz import save_image_grid

__all__ = ["GANTrainer", "train_gan", "load_gan", "generate", "resolve_gan_checkpoint"]

FIXED_CAPTIONS = 8  # captions of the sample grids
FIXED_NOISES = 2  # noise vectors per caption in the sample grids
GRAPH_WARMUP_STEPS = 3  # cuda_graphs: eager steps, then compiled ones, before the capture
# What an imported GAN run holds instead of a run to resume, and what to do with it.
_IMPORTED = (
    "a generator imported from the original (attngan import-generator), without "
    "discriminators or optimizer state to resume; sample or evaluate it, or train in a "
    "new --out folder"
)


def resolve_gan_checkpoint(path_or_run_dir: str | Path) -> Path:
    """A GAN checkpoint file, or the last checkpoint of a GAN run folder."""
    return resolve_run_checkpoint(path_or_run_dir, "gan")


class _StepNetworks(NamedTuple):
    """What a step calls, eager or compiled: the generator, a discriminator's loss (of the
    discriminator passed), the generator step's loss (through the frozen image encoder)."""

    generate: Callable
    discriminator_loss: Callable
    generator_loss: Callable


class _DiscriminatorLoss(torch.nn.Module):
    """A discriminator's loss as a module (`discriminator_loss`), for DistributedDataParallel,
    which takes one forward per backward: the real and the fake images pass in one call."""

    def __init__(self, discriminator: torch.nn.Module):
        super().__init__()
        self.discriminator = discriminator

    def forward(
        self, real: torch.Tensor, fake: torch.Tensor, sentence: torch.Tensor
    ) -> torch.Tensor:
        return discriminator_loss(self.discriminator, real, fake, sentence)


class GANTrainer:
    """Generator, discriminators, their optimizers and the EMA; `step(batch)` trains one batch.

    Args:
        config: the run's Config (gan, data sizes, damsm gammas, run.impl).
        text_encoder, image_encoder: the frozen DAMSM encoders (eval mode), left as they are: the
            step runs copies where its switches change how they compute (`frozen_network`).
        device: where everything runs.
        settings: the step's switches (default: `step_settings` of config.run on `device`).
        world: this process's place among the ranks under torchrun: on several, the generator
            and each discriminator's loss run under DistributedDataParallel (SyncBatchNorm on
            GPUs), and the DAMSM term sees the global batch.

    The first EAGER_STEPS steps run eagerly (the ops choose their implementations then), later
    ones with compile on the compiled networks. With cuda_graphs the inputs go through static
    buffers (the lengths on the device); the first GRAPH_WARMUP_STEPS steps run on a side
    stream (the compiled code compiled, cuDNN's algorithms timed, Adam's state made), then the
    update is captured once and every step replays it.
    """

    def __init__(
        self,
        config: Config,
        text_encoder,
        image_encoder,
        device: torch.device,
        settings: Optional[StepSettings] = None,
        world: World = SINGLE,
    ):
        self.config = config
        self.device = device
        self.world = world
        self.settings = settings = settings or step_settings(
            config.run, device, processes=world.size
        )
        self.text_encoder = frozen_network(text_encoder, settings, device)
        self.image_encoder = frozen_network(image_encoder, settings, device, fold=True)
        text_dim = text_encoder.embed_dim
        gan = config.gan
        self.netG = Generator.from_config(config, text_dim).to(device)
        self.netsD = build_discriminators(config, text_dim).to(device)
        if settings.channels_last:
            self.netG.to(memory_format=torch.channels_last)
            self.netsD.to(memory_format=torch.channels_last)
        betas = tuple(gan.betas)
        self.optimizer_g = adam(self.netG.parameters(), gan.lr_g, betas, settings)
        self.optimizers_d = [
            adam(net.parameters(), gan.lr_d, betas, settings) for net in self.netsD
        ]
        self.ema = EMA(self.netG, gan.ema_decay)
        self.steps = 0  # steps this trainer has taken
        eager = (
            _StepNetworks(self.netG, discriminator_loss, generator_loss)
            if not world.distributed
            else self._data_parallel_networks()
        )
        self._networks = (
            eager,
            _StepNetworks(*map(compiled, eager)) if settings.compile else eager,
        )
        self._static: Optional[list[torch.Tensor]] = None  # cuda_graphs: input buffers,
        self._graph: Optional[torch.cuda.CUDAGraph] = None  # the captured update,
        self._graph_losses: Optional[torch.Tensor] = None  # its losses,
        self._loss_names: list[str] = []
        self._side_stream = None  # the warm-up's stream

    def _data_parallel_networks(self) -> _StepNetworks:
        """The step's networks on several ranks: the generator and each discriminator's loss
        under DistributedDataParallel (one forward and one backward each per step), the
        generator's loss matching the global batch's images and captions."""
        world, device = self.world, self.device
        losses = {
            id(net): data_parallel(_DiscriminatorLoss(net), world, device) for net in self.netsD
        }

        def distributed_discriminator_loss(net, real, fake, sentence):
            return losses[id(net)](real, fake, sentence)

        return _StepNetworks(
            data_parallel(self.netG, world, device),
            distributed_discriminator_loss,
            functools.partial(generator_loss, world=world),
        )

    def step(self, batch: dict) -> dict[str, torch.Tensor]:
        """One training step on a collated batch; returns the losses as detached scalar
        tensors (converting them to floats every step would wait for the device)."""
        device, settings = self.device, self.settings
        # The batch's images on the device, as floats: their one transfer (graphs copy them on).
        reals = [float_images(image, device) for image in batch["images"]]
        # Captions and lengths stay on the CPU, where the text encoder and the ops check them, and
        # the copies are queued (non_blocking), so that the step need not wait for the GPU.
        captions, lengths = batch["captions"], batch["lengths"]
        class_ids = batch["class_ids"].to(device, non_blocking=True)
        with backend_flags(settings, device):
            with torch.no_grad(), training_autocast(settings, device):
                words, sentence = self.text_encoder(captions, lengths)  # [B, D, L], [B, D]
            networks = self._networks[self.steps >= EAGER_STEPS]
            inputs = (reals, words, sentence, lengths, class_ids)
            losses = (
                self._graphed_update(networks, *inputs)
                if settings.cuda_graphs
                else self._update(networks, *inputs)
            )
        self.steps += 1
        return losses

    def _update(
        self,
        networks: _StepNetworks,
        reals: list[torch.Tensor],
        words: torch.Tensor,
        sentence: torch.Tensor,
        lengths: torch.Tensor,
        class_ids: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        """The discriminator updates and the generator update of one batch, from the frozen
        text encoder's features."""
        config, device, settings = self.config, self.device, self.settings
        self.netG.train()
        self.netsD.train()
        noise = torch.randn(words.shape[0], config.gan.z_dim, device=device)
        with training_autocast(settings, device):
            fakes, _, mu, logvar = networks.generate(
                noise, sentence, words, lengths, return_attention=False
            )

        losses: dict[str, torch.Tensor] = {}
        for i, (net, optimizer, real, fake) in enumerate(
            zip(self.netsD, self.optimizers_d, reals, fakes, strict=True)
        ):
            optimizer.zero_grad(set_to_none=True)
            with training_autocast(settings, device):
                loss = networks.discriminator_loss(net, real, fake.detach(), sentence)
            loss.backward()
            optimizer.step()
            losses[f"d{i}"] = loss.detach()

        self.netsD.requires_grad_(False)
        with training_autocast(settings, device):
            generator_losses = networks.generator_loss(
                self.netsD,
                self.image_encoder,
                fakes,
                mu,
                logvar,
                words,
                sentence,
                lengths,
                class_ids,
                lambda_damsm=config.gan.lambda_damsm,
                gamma1=config.damsm.gamma1,
                gamma2=config.damsm.gamma2,
                gamma3=config.damsm.gamma3,
                impl=config.run.impl,
            )
        self.optimizer_g.zero_grad(set_to_none=True)
        generator_losses["g_total"].backward()
        self.optimizer_g.step()
        self.netsD.requires_grad_(True)
        self.ema.update(self.netG)
        losses.update({name: loss.detach() for name, loss in generator_losses.items()})
        return losses

    def _graphed_update(
        self, networks: _StepNetworks, reals: list[torch.Tensor], *features: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """`_update` through static buffers: warm-up steps on a side stream, then one capture
        as a CUDA graph, replayed from then on (see the class docstring)."""
        words, sentence, lengths, class_ids = features
        lengths = lengths.to(self.device, torch.int64, non_blocking=True)
        current = [*reals, words, sentence, lengths, class_ids]
        if self._static is None:
            self._static = [tensor.clone() for tensor in current]
        else:
            for buffer, tensor in zip(self._static, current, strict=True):
                buffer.copy_(tensor, non_blocking=True)
        levels = len(reals)
        inputs = (self._static[:levels], *self._static[levels:])
        if self.steps < GRAPH_WARMUP_STEPS:
            return self._on_side_stream(lambda: self._update(networks, *inputs))
        if self._graph is None:
            self._graph = torch.cuda.CUDAGraph()
            # thread_local: the data loader's pinning thread may call CUDA meanwhile
            with torch.cuda.graph(self._graph, capture_error_mode="thread_local"):
                losses = self._update(networks, *inputs)
                self._loss_names = list(losses)
                self._graph_losses = torch.stack([loss.float() for loss in losses.values()])
        self._graph.replay()
        return dict(zip(self._loss_names, self._graph_losses.clone().unbind()))

    def _on_side_stream(self, update: Callable[[], dict]) -> dict[str, torch.Tensor]:
        """update() on a side stream (where CUDA graphs want their warm-up), ordered after the
        work queued so far and before the work queued next."""
        current = torch.cuda.current_stream(self.device)
        if self._side_stream is None:
            self._side_stream = torch.cuda.Stream(self.device)
        self._side_stream.wait_stream(current)
        with torch.cuda.stream(self._side_stream):
            losses = update()
        current.wait_stream(self._side_stream)
        for loss in losses.values():  # read on the current stream
            loss.record_stream(current)
        return losses

    def state_dict(self) -> dict:
        return {
            "generator": self.netG.state_dict(),
            "discriminators": [net.state_dict() for net in self.netsD],
            "ema": self.ema.state_dict(),
            "optimizer_g": self.optimizer_g.state_dict(),
            "optimizers_d": [opt.state_dict() for opt in self.optimizers_d],
        }

    def load_state_dict(self, state: dict, path: str | Path) -> None:
        """Restore what `state_dict` saved in the checkpoint `path` (named in errors), before
        the first step: a captured graph holds the tensors."""
        load_state(self.netG, state["generator"], "generator", path)
        if len(state["discriminators"]) != len(self.netsD):
            raise CheckpointError(
                f"{path} does not match its own config: it has "
                f"{len(state['discriminators'])} discriminators where its "
                f"config builds {len(self.netsD)}; use an unedited checkpoint"
            )
        for i, (net, net_state) in enumerate(zip(self.netsD, state["discriminators"])):
            load_state(net, net_state, f"discriminators.{i}", path)
        load_state(self.ema.module, state["ema"], "trainer.ema", path)
        load_optimizer_state(self.optimizer_g, state["optimizer_g"])
        for optimizer, opt_state in zip(self.optimizers_d, state["optimizers_d"], strict=True):
            load_optimizer_state(optimizer, opt_state)


@torch.no_grad()
def generate(
    netG: Generator,
    text_encoder,
    captions: torch.Tensor,
    lengths: torch.Tensor,
    noise: torch.Tensor,
    seed: int,
):
    """Run `netG` (eval mode) on captions `[B, L]` with `noise` `[B, z_dim]`, drawing the
    conditioning-augmentation noise from a generator seeded with `seed` without touching the
    caller's global RNG state. Returns what Generator.forward returns."""
    device = noise.device
    devices = [device] if device.type == "cuda" else []
    netG.eval()
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        words, sentence = text_encoder(captions, lengths)
        return netG(noise, sentence, words, lengths)


class _Position(NamedTuple):
    """Where a run is: steps taken, epochs finished, batches taken of the current epoch."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0

    def next(self, steps_per_epoch: int) -> "_Position":
        """The position one step later."""
        if self.batch_in_epoch + 1 == steps_per_epoch:
            return _Position(self.step + 1, self.epoch + 1, 0)
        return _Position(self.step + 1, self.epoch, self.batch_in_epoch + 1)


class _FrozenDAMSM(NamedTuple):
    """The DAMSM run a GAN run trains against: its checkpoint file and SHA-256, its frozen
    encoders and its config."""

    file: Path
    sha256: str
    text_encoder: TextEncoder
    image_encoder: torch.nn.Module
    config: Config

    @classmethod
    def load(cls, path: str | Path, device: torch.device, vocab: Vocabulary) -> "_FrozenDAMSM":
        file = resolve_damsm_checkpoint(path).resolve()
        # Refuses a DAMSM of another vocabulary with an error naming both and the fix.
        text_encoder, image_encoder, _, config = load_damsm(file, device, expected_vocab=vocab)
        return cls(file, file_sha256(file), text_encoder, image_encoder, config)

    def run_config(self, config: Config) -> Config:
        """`config` with the DAMSM run's encoders: the settings a GAN run uses and records."""
        return with_absolute_paths(
            dataclasses.replace(
                config,
                text_encoder=self.config.text_encoder,
                image_encoder=self.config.image_encoder,
            )
        )


def _schedule(gan, dataset) -> tuple[int, int]:
    """(steps per epoch, steps of the run) of the gan settings on `dataset`."""
    steps_per_epoch = len(dataset) // gan.batch_size
    if steps_per_epoch == 0:
        raise ValueError(
            f"gan.batch_size={gan.batch_size} is more than the {len(dataset)} "
            "training images; lower gan.batch_size"
        )
    total_steps = gan.epochs * steps_per_epoch
    if gan.max_steps > 0:
        total_steps = min(total_steps, gan.max_steps)
    return steps_per_epoch, total_steps


def _require_resumable(run: TrainingRun, total_steps: int, damsm: _FrozenDAMSM) -> None:
    """Refuse to resume a run longer than this config's or trained against another DAMSM."""
    payload, path, gan = run.payload, run.checkpoint_path, run.config.gan
    if payload is None:
        return
    if payload["step"] > total_steps:  # equal: a finished run, left as it is
        raise CheckpointError(
            f"--resume: {path} has trained {payload['step']} steps, more than "
            f"this config's {total_steps} (gan.epochs={gan.epochs}, "
            f"gan.max_steps={gan.max_steps}); raise them to at least "
            f"{payload['step']} steps"
        )
    if payload["damsm_sha256"] != damsm.sha256:
        raise CheckpointError(
            f"{path} was trained against the DAMSM checkpoint "
            f"{payload['damsm_checkpoint']} (sha256 "
            f"{payload['damsm_sha256'][:12]}...), but {damsm.file} differs "
            f"(sha256 {damsm.sha256[:12]}...); resume with the same DAMSM"
        )


def _restore(trainer: GANTrainer, run: TrainingRun) -> _Position:
    """The trainer as the resumed checkpoint left it, and the run's position then."""
    if run.payload is None:
        return _Position()
    trainer.load_state_dict(run.payload["trainer"], run.checkpoint_path)
    return _Position(run.payload["step"], run.payload["epoch"], run.payload["batch_in_epoch"])


def _fixed_captions(dataset) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """The first caption of FIXED_CAPTIONS images spread over the training set."""
    count = min(FIXED_CAPTIONS, len(dataset))
    images = [round(i * (len(dataset) - 1) / max(count - 1, 1)) for i in range(count)]
    pairs = [dataset.caption(k * dataset.captions_per_image) for k in images]
    captions = torch.stack([caption for caption, _ in pairs])
    lengths = torch.tensor([length for _, length in pairs])
    texts = [dataset.vocab.decode(caption[:length].tolist()) for caption, length in pairs]
    return captions, lengths, texts


class _SampleGrids:
    """The run's sample grids: the averaged generator on the same FIXED_NOISES noises for each
    of the fixed training captions (`_fixed_captions`, listed in samples/captions.txt, written
    here), through the DAMSM's `text_encoder` as sampling runs it; one grid per `save`."""

    def __init__(self, run: TrainingRun, trainer: GANTrainer, text_encoder: TextEncoder, dataset):
        config, z_dim = run.config, run.config.gan.z_dim
        self.run, self.trainer, self.text_encoder = run, trainer, text_encoder
        self.seed = config.run.seed
        self.captions, self.lengths, texts = _fixed_captions(dataset)
        noise = torch.randn(
            FIXED_NOISES, 1, z_dim, generator=torch.Generator().manual_seed(config.run.seed)
        )
        self.noise = noise.expand(-1, len(texts), -1).reshape(-1, z_dim).to(trainer.device)
        run.write_text(
            "samples/captions.txt", "".join(f"column {i}: {text}\n" for i, text in enumerate(texts))
        )

    def save(self, step: int) -> None:
        if not self.run.writer:
            return
        images, _, _, _ = generate(
            self.trainer.ema.module,
            self.text_encoder,
            self.captions.repeat(FIXED_NOISES, 1),
            self.lengths.repeat(FIXED_NOISES),
            self.noise,
            seed=self.seed,
        )
        save_image_grid(
            images[-1],
            self.run.out_dir / "samples" / f"step_{step:07d}.png",
            nrow=len(self.captions),
            scale=max(1, 128 // images[-1].shape[-1]),
        )


def _checkpoint(
    run: TrainingRun,
    trainer: GANTrainer,
    damsm: _FrozenDAMSM,
    vocab: Vocabulary,
    position: _Position,
) -> dict:
    """The checkpoint of the run at `position` (see the module docstring)."""
    return {
        "kind": "gan",
        "config": config_to_dict(run.config),
        "damsm_config": config_to_dict(damsm.config),
        "damsm_checkpoint": str(damsm.file),
        "damsm_sha256": damsm.sha256,
        "vocab": list(vocab.ixtoword),
        "vocab_fingerprint": vocab.fingerprint(),
        "data_fingerprint": run.fingerprints,
        "text_encoder": damsm.text_encoder.state_dict(),
        "trainer": trainer.state_dict(),
        "step": position.step,
        "epoch": position.epoch,
        "batch_in_epoch": position.batch_in_epoch,
        "seconds": run.seconds(),
        "rng": rng_state(),
    }


def _six_digits(value: float) -> float:
    return float(f"{value:.6g}")


def _train(
    run: TrainingRun,
    trainer: GANTrainer,
    dataset,
    damsm: _FrozenDAMSM,
    position: _Position,
    steps_per_epoch: int,
    total_steps: int,
) -> tuple[_Position, dict[str, float]]:
    """The training loop from `position` to `total_steps`: a step per batch; metrics at log
    steps, where the losses are read back from the device (in one copy, with the divergence
    watch); sample grids; checkpoints. Returns the final position and the last losses
    logged."""
    config, gan = run.config, run.config.gan
    grids = _SampleGrids(run, trainer, damsm.text_encoder, dataset)
    last: dict[str, float] = {}
    with (
        run.outputs() as outputs,
        run.progress_bar(total=total_steps, initial=position.step, desc="GAN") as bar,
        training_batches(
            dataset,
            config,
            trainer.device,
            gan.batch_size,
            epoch=position.epoch,
            batch=position.batch_in_epoch,
            count=total_steps - position.step,
            progress=run.progress,
            world=run.world,
        ) as loader,
    ):
        for batch in loader:
            position = position.next(steps_per_epoch)
            outputs.track(position.step, trainer.step(batch))
            bar.update(1)
            step, done = position.step, position.step >= total_steps
            if step % gan.log_every == 0 or done:
                last = outputs.log_losses(
                    {"step": step, "epoch": position.epoch, "seconds": round(run.seconds(), 2)},
                    _six_digits,
                )
                bar.set_postfix(
                    d=f"{sum(v for k, v in last.items() if k[0] == 'd'):.3f}",
                    g=f"{last['g_total']:.3f}",
                )
            if step % gan.sample_every == 0 or done:
                grids.save(step)
            if step % gan.checkpoint_every == 0 or done:
                outputs.save(step, _checkpoint(run, trainer, damsm, dataset.vocab, position))
            if done:
                break
    return position, last


def train_gan(
    config: Config,
    damsm_path: str | Path,
    out_dir: str | Path,
    resume: bool = False,
    progress: bool = True,
    accept_changed_data: bool = False,
) -> Optional[dict]:
    """Train the AttnGAN generator against frozen DAMSM encoders; returns a summary dict
    (steps, epochs, seconds, checkpoint, last losses; under torchrun on rank 0, None on the
    others). `accept_changed_data` resumes on data other than the run recorded."""
    with TrainingRun(
        "gan",
        "attngan train",
        out_dir,
        resume=resume,
        accept_changed_data=accept_changed_data,
        progress=progress,
    ) as run:
        device, settings = run.prepare(config)
        dataset, _ = run.read_data(config, with_test_set=False)
        damsm = _FrozenDAMSM.load(damsm_path, device, dataset.vocab)
        run.open(damsm.run_config(config), dataset.vocab, imported=_IMPORTED)
        steps_per_epoch, total_steps = _schedule(run.config.gan, dataset)
        _require_resumable(run, total_steps, damsm)
        trainer = GANTrainer(
            run.config, damsm.text_encoder, damsm.image_encoder, device, settings, run.world
        )
        position = _restore(trainer, run)
        run.start()
        position, last = _train(
            run, trainer, dataset, damsm, position, steps_per_epoch, total_steps
        )
        if not run.writer:
            return None
        return {
            "steps": position.step,
            "epochs": position.epoch,
            "seconds": round(run.seconds(), 2),
            "checkpoint": str(run.checkpoint_path),
            "losses": last,
            "samples": str(run.out_dir / "samples"),
            "training_step": settings.describe(),
        }


def load_gan(path_or_run_dir: str | Path, device: str | torch.device = "cpu"):
    """The averaged generator of a GAN checkpoint and what sampling needs.

    Returns (generator in eval mode, frozen text encoder, vocab, config, payload) where payload
    is the checkpoint dict (step, damsm_checkpoint, damsm_sha256, ...).
    """
    path = resolve_gan_checkpoint(path_or_run_dir)
    payload = load_checkpoint(path, kind="gan", map_location=device)
    config = config_from_dict(payload["config"])
    damsm_config = config_from_dict(payload["damsm_config"])
    vocab = Vocabulary(payload["vocab"])
    text_encoder = TextEncoder(len(vocab), damsm_config.text_encoder)
    load_state(text_encoder, payload["text_encoder"], "text_encoder", path)
    netG = Generator.from_config(config, damsm_config.text_encoder.hidden_dim)
    load_state(netG, payload["trainer"]["ema"], "trainer.ema", path)
    require_finite(payload["trainer"]["ema"], "trainer.ema", path)
    for module in (text_encoder, netG):
        module.to(device).eval().requires_grad_(False)
    payload["path"] = str(path)
    return netG, text_encoder, vocab, config, payload
