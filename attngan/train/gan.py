"""AttnGAN training loop (docs/DESIGN.md): discriminator steps, then a generator step.

Per batch, as the original trainer: the frozen DAMSM text encoder (eval mode, no gradient)
encodes the captions; one generator forward with fresh noise z ~ N(0, I); for each stage's
discriminator: zero grad, L_D on the real image and the detached fake, backward, Adam step;
then the generator: L_G = adversarial terms of all stages (discriminator parameters frozen
for this backward) + λ·DAMSM losses of the final image + KL, backward, Adam step; then the
exponential moving average of the generator's weights (`ema.py`). Adam lr 2e-4, betas
(0.5, 0.999) for every network (config.gan).

A run folder holds config.yaml (the resolved config), metrics.jsonl (one line per
gan.log_every steps: step, epoch, seconds, every loss), samples/ (fixed-noise grids of the
averaged generator for fixed training captions, every gan.sample_every steps and at the end,
with samples/captions.txt) and checkpoints/gan_last.pt: the generator, discriminators, EMA,
optimizers, step, epoch and position in the epoch, RNG state, config, vocabulary, the text
encoder (so sampling needs no DAMSM file) and the DAMSM checkpoint's path and SHA-256.
`resume=True` continues exactly where the checkpoint stopped, with any data.num_workers: the
batch order of an epoch is a permutation drawn from a generator seeded by (run.seed, epoch),
each item's augmentation draws from one seeded by (run.seed, epoch, index)
(`attngan.data.loader`), the noise from the restored global RNG.
"""
from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import torch
from tqdm import tqdm

from attngan.config import (Config, config_from_dict, config_to_dict, save_config,
                            with_absolute_paths)
from attngan.data.dataset import build_dataset, read_split
from attngan.data.loader import float_images, training_batches
from attngan.data.vocab import Vocabulary
from attngan.files import file_sha256, write_text_atomically
from attngan.nn.discriminator import build_discriminators
from attngan.nn.generator import Generator
from attngan.nn.text_encoder import TextEncoder
from attngan.train.checkpoint import (CheckpointError, holds_run_folder, load_checkpoint,
                                      load_state, open_run, require_finite, require_same_data,
                                      require_same_vocabulary, resolve_run_checkpoint,
                                      rng_state, save_checkpoint, set_rng_state, trim_metrics)
from attngan.train.damsm import load_damsm, resolve_damsm_checkpoint
from attngan.train.ema import EMA
from attngan.train.losses import (damsm_generator_loss, discriminator_loss,
                                  generator_adversarial_loss, kl_loss)
from attngan.train.runtime import prepare_run, require_step_fits, training_autocast
from attngan.viz import save_image_grid

__all__ = ["GANTrainer", "train_gan", "load_gan", "generate", "resolve_gan_checkpoint"]

FIXED_CAPTIONS = 8            # captions of the sample grids
FIXED_NOISES = 2              # noise vectors per caption in the sample grids


def resolve_gan_checkpoint(path_or_run_dir: str | Path) -> Path:
    """A GAN checkpoint file, or the last checkpoint of a GAN run folder."""
    return resolve_run_checkpoint(path_or_run_dir, "gan")


class GANTrainer:
    """Generator, discriminators, their optimizers and the EMA; `step(batch)` trains one batch.

    Args:
        config: the run's Config (gan, data sizes, damsm gammas, run.impl).
        text_encoder, image_encoder: the frozen DAMSM encoders (eval mode).
        device: where everything runs.
    """

    def __init__(self, config: Config, text_encoder, image_encoder, device: torch.device):
        self.config = config
        self.device = device
        self.text_encoder = text_encoder
        self.image_encoder = image_encoder
        text_dim = text_encoder.embed_dim
        gan = config.gan
        self.netG = Generator.from_config(config, text_dim).to(device)
        self.netsD = build_discriminators(config, text_dim).to(device)
        betas = tuple(gan.betas)
        self.optimizer_g = torch.optim.Adam(self.netG.parameters(), lr=gan.lr_g, betas=betas)
        self.optimizers_d = [torch.optim.Adam(net.parameters(), lr=gan.lr_d, betas=betas)
                             for net in self.netsD]
        self.ema = EMA(self.netG, gan.ema_decay)

    def step(self, batch: dict) -> dict[str, torch.Tensor]:
        """One training step on a collated batch; returns the losses as detached scalar
        tensors (converting them to floats every step would wait for the device)."""
        config, device = self.config, self.device
        # Captions and lengths stay on the CPU, where the text encoder and the ops check them, and
        # the copies are queued (non_blocking), so that the step need not wait for the GPU.
        captions, lengths = batch["captions"], batch["lengths"]
        class_ids = batch["class_ids"].to(device, non_blocking=True)
        reals = [float_images(image, device) for image in batch["images"]]
        self.netG.train()
        self.netsD.train()
        with torch.no_grad(), training_autocast(config, device):
            words, sentence = self.text_encoder(captions, lengths)       # [B, D, L], [B, D]
        noise = torch.randn(captions.shape[0], config.gan.z_dim, device=device)
        with training_autocast(config, device):
            fakes, _, mu, logvar = self.netG(noise, sentence, words, lengths,
                                             return_attention=False)

        losses: dict[str, torch.Tensor] = {}
        for i, (net, optimizer, real, fake) in enumerate(
                zip(self.netsD, self.optimizers_d, reals, fakes, strict=True)):
            optimizer.zero_grad(set_to_none=True)
            with training_autocast(config, device):
                loss = discriminator_loss(net, real, fake.detach(), sentence)
            loss.backward()
            optimizer.step()
            losses[f"d{i}"] = loss.detach()

        self.netsD.requires_grad_(False)
        with training_autocast(config, device):
            adversarial = generator_adversarial_loss(self.netsD, fakes, sentence)
            damsm = damsm_generator_loss(
                self.image_encoder, fakes[-1], words, sentence, lengths, class_ids,
                gamma1=config.damsm.gamma1, gamma2=config.damsm.gamma2,
                gamma3=config.damsm.gamma3, impl=config.run.impl)
            kl = kl_loss(mu, logvar)
            total = adversarial + config.gan.lambda_damsm * sum(damsm.values()) + kl
        self.optimizer_g.zero_grad(set_to_none=True)
        total.backward()
        self.optimizer_g.step()
        self.netsD.requires_grad_(True)
        self.ema.update(self.netG)
        losses.update(g_adv=adversarial.detach(), **{k: v.detach() for k, v in damsm.items()},
                      kl=kl.detach(), g_total=total.detach())
        return losses

    def state_dict(self) -> dict:
        return {"generator": self.netG.state_dict(),
                "discriminators": [net.state_dict() for net in self.netsD],
                "ema": self.ema.state_dict(),
                "optimizer_g": self.optimizer_g.state_dict(),
                "optimizers_d": [opt.state_dict() for opt in self.optimizers_d]}

    def load_state_dict(self, state: dict, path: str | Path) -> None:
        """Restore what `state_dict` saved in the checkpoint `path` (named in errors)."""
        load_state(self.netG, state["generator"], "generator", path)
        if len(state["discriminators"]) != len(self.netsD):
            raise CheckpointError(f"{path} does not match its own config: it has "
                                  f"{len(state['discriminators'])} discriminators where its "
                                  f"config builds {len(self.netsD)}; use an unedited checkpoint")
        for i, (net, net_state) in enumerate(zip(self.netsD, state["discriminators"])):
            load_state(net, net_state, f"discriminators.{i}", path)
        load_state(self.ema.module, state["ema"], "trainer.ema", path)
        self.optimizer_g.load_state_dict(state["optimizer_g"])
        for optimizer, opt_state in zip(self.optimizers_d, state["optimizers_d"], strict=True):
            optimizer.load_state_dict(opt_state)


@torch.no_grad()
def generate(netG: Generator, text_encoder, captions: torch.Tensor, lengths: torch.Tensor,
             noise: torch.Tensor, seed: int):
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


def _fixed_captions(dataset) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """The first caption of FIXED_CAPTIONS images spread over the training set."""
    count = min(FIXED_CAPTIONS, len(dataset))
    images = [round(i * (len(dataset) - 1) / max(count - 1, 1)) for i in range(count)]
    pairs = [dataset.caption(k * dataset.captions_per_image) for k in images]
    captions = torch.stack([caption for caption, _ in pairs])
    lengths = torch.tensor([length for _, length in pairs])
    texts = [dataset.vocab.decode(caption[:length].tolist()) for caption, length in pairs]
    return captions, lengths, texts


@holds_run_folder("attngan train")
def train_gan(config: Config, damsm_path: str | Path, out_dir: str | Path, resume: bool = False,
              progress: bool = True, accept_changed_data: bool = False) -> dict:
    """Train the AttnGAN generator against frozen DAMSM encoders; returns a summary dict
    (steps, epochs, seconds, checkpoint, last losses). `accept_changed_data` resumes on data
    other than the run recorded."""
    out_dir = Path(out_dir)
    device = prepare_run(config)
    require_step_fits(config, "gan", device)
    gan = config.gan
    dataset = build_dataset(config.data, "train", augment=True)
    vocab = dataset.vocab
    damsm_file = resolve_damsm_checkpoint(damsm_path).resolve()
    # Refuses a DAMSM of another vocabulary with an error naming both and the fix.
    text_encoder, image_encoder, _, damsm_config = load_damsm(damsm_file, device,
                                                               expected_vocab=vocab)
    # The encoders are the DAMSM run's: its settings are the ones this run uses and records.
    config = with_absolute_paths(dataclasses.replace(
        config, text_encoder=damsm_config.text_encoder,
        image_encoder=damsm_config.image_encoder))
    checkpoint_path, payload = open_run(
        out_dir, "gan", resume, config_to_dict(config),
        imported="a generator imported from the original (attngan import-generator), without "
                 "discriminators or optimizer state to resume; sample or evaluate it, or train "
                 "in a new --out folder")
    fingerprints = {"train": dataset.records.fingerprint(),
                    "test": read_split(config.data, "test").fingerprint()}
    damsm_hash = file_sha256(damsm_file)
    steps_per_epoch = len(dataset) // gan.batch_size
    if steps_per_epoch == 0:
        raise ValueError(f"gan.batch_size={gan.batch_size} is more than the {len(dataset)} "
                         "training images; lower gan.batch_size")
    total_steps = gan.epochs * steps_per_epoch
    if gan.max_steps > 0:
        total_steps = min(total_steps, gan.max_steps)

    trainer = GANTrainer(config, text_encoder, image_encoder, device)
    step, epoch, batch_in_epoch, seconds_before = 0, 0, 0, 0.0
    if payload is not None:
        if payload["step"] > total_steps:               # equal: a finished run, left as it is
            raise CheckpointError(f"--resume: {checkpoint_path} has trained {payload['step']} "
                                  f"steps, more than this config's {total_steps} (gan.epochs="
                                  f"{gan.epochs}, gan.max_steps={gan.max_steps}); raise them to "
                                  f"at least {payload['step']} steps")
        require_same_vocabulary(payload, vocab.fingerprint(), checkpoint_path,
                                config.data.root)
        if not accept_changed_data:
            require_same_data(payload, fingerprints, checkpoint_path, config.data.root,
                              "--accept-changed-data")
        if payload["damsm_sha256"] != damsm_hash:
            raise CheckpointError(f"{checkpoint_path} was trained against the DAMSM checkpoint "
                                  f"{payload['damsm_checkpoint']} (sha256 "
                                  f"{payload['damsm_sha256'][:12]}...), but {damsm_file} differs "
                                  f"(sha256 {damsm_hash[:12]}...); resume with the same DAMSM")
        trainer.load_state_dict(payload["trainer"], checkpoint_path)
        step, epoch, batch_in_epoch = payload["step"], payload["epoch"], payload["batch_in_epoch"]
        seconds_before = payload["seconds"]
        set_rng_state(payload["rng"])
    # what a run killed before this checkpoint (or its first) logged is logged again
    trim_metrics(out_dir / "metrics.jsonl", step)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_config(config, out_dir / "config.yaml")

    fixed_captions, fixed_lengths, fixed_texts = _fixed_captions(dataset)
    fixed_noise = torch.randn(FIXED_NOISES, 1, gan.z_dim,
                              generator=torch.Generator().manual_seed(config.run.seed))
    fixed_noise = fixed_noise.expand(-1, len(fixed_texts), -1).reshape(-1, gan.z_dim).to(device)
    (out_dir / "samples").mkdir(exist_ok=True)
    write_text_atomically(out_dir / "samples" / "captions.txt",
                          "".join(f"column {i}: {text}\n" for i, text in enumerate(fixed_texts)))

    def sample_grid() -> Path:
        images, _, _, _ = generate(trainer.ema.module, text_encoder,
                                   fixed_captions.repeat(FIXED_NOISES, 1),
                                   fixed_lengths.repeat(FIXED_NOISES), fixed_noise,
                                   seed=config.run.seed)
        return save_image_grid(images[-1], out_dir / "samples" / f"step_{step:07d}.png",
                               nrow=len(fixed_texts), scale=max(1, 128 // images[-1].shape[-1]))

    def save() -> None:
        save_checkpoint(checkpoint_path, {
            "kind": "gan", "config": config_to_dict(config),
            "damsm_config": config_to_dict(damsm_config),
            "damsm_checkpoint": str(damsm_file), "damsm_sha256": damsm_hash,
            "vocab": list(vocab.ixtoword), "vocab_fingerprint": vocab.fingerprint(),
            "data_fingerprint": fingerprints,
            "text_encoder": text_encoder.state_dict(), "trainer": trainer.state_dict(),
            "step": step, "epoch": epoch, "batch_in_epoch": batch_in_epoch,
            "seconds": seconds_before + time.time() - started, "rng": rng_state()})

    started = time.time()
    last: dict[str, float] = {}
    bar = tqdm(total=total_steps, initial=step, desc="GAN", disable=not progress)
    with open(out_dir / "metrics.jsonl", "a") as metrics:
        with training_batches(dataset, config, device, gan.batch_size, epoch=epoch,
                              batch=batch_in_epoch, count=total_steps - step,
                              progress=progress) as loader:
            for batch in loader:
                losses = trainer.step(batch)
                step += 1
                batch_in_epoch += 1
                if batch_in_epoch == steps_per_epoch:
                    epoch, batch_in_epoch = epoch + 1, 0
                bar.update(1)
                done = step >= total_steps
                if step % gan.log_every == 0 or done:
                    last = {name: float(f"{float(value):.6g}") for name, value in losses.items()}
                    metrics.write(json.dumps({
                        "step": step, "epoch": epoch,
                        "seconds": round(seconds_before + time.time() - started, 2),
                        **last}) + "\n")
                    metrics.flush()
                    bar.set_postfix(d=f"{sum(v for k, v in last.items() if k[0] == 'd'):.3f}",
                                    g=f"{last['g_total']:.3f}")
                if step % gan.sample_every == 0 or done:
                    sample_grid()
                if step % gan.checkpoint_every == 0 or done:
                    save()
                if done:
                    break
    bar.close()
    return {"steps": step, "epochs": epoch,
            "seconds": round(seconds_before + time.time() - started, 2),
            "checkpoint": str(checkpoint_path), "losses": last,
            "samples": str(out_dir / "samples")}


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

