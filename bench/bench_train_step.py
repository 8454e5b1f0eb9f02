"""One training step end to end: the pure-PyTorch references against the fused kernels.

What a user of the project feels, for the two trainings:
- stage "gan": `GANTrainer.step` (the discriminator updates, the generator forward and backward
  with word attention at every attention stage, and the DAMSM loss of the final image through
  the frozen encoders);
- stage "damsm": one step of DAMSM pretraining (`damsm_training_step`: both encoders forward,
  the word-level loss of every image against every caption and the sentence-level loss, the
  backward into both encoders, clipping, Adam), where the original computed the word-level
  loss with a loop over captions ("loop" here).
Each with `run.impl` set to each implementation named, on one random batch (random encoders,
random images and captions of the preset's sizes; timing does not depend on the values), in
float32 and, with --precisions, under bfloat16 autocast (`run.precision`). Reported: median ms
per step, images per second, and the speed-up over the first row (the first impl in the first
precision), measured in the same run.

Presets: "shapes" (configs/shapes.yaml, the CPU demo) and "cub" (a GPU size: for the GAN
configs/birds.yaml, 64/128/256 images, batch 20; for DAMSM configs/birds_damsm.yaml, 299 px
images, batch 48; both with an Inception-v3 image encoder of random weights).

    python bench/bench_train_step.py [--stage gan|damsm] [--preset shapes|cub]
                                     [--device cpu|cuda] [--impls reference,auto]
                                     [--precisions fp32,bf16] [--record]
    pytest bench/bench_train_step.py   (pytest-benchmark, the shapes preset)
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, machine_lines, median_seconds, publish  # noqa: E402

from attngan.config import Config, load_config  # noqa: E402
from attngan.nn.image_encoder import build_image_encoder  # noqa: E402
from attngan.nn.text_encoder import TextEncoder  # noqa: E402
from attngan.train.damsm import build_damsm_training, damsm_training_step  # noqa: E402
from attngan.train.gan import GANTrainer  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
RANDOM_INCEPTION = ["image_encoder.random_init=true"]
PRESETS = {   # (stage, preset) -> (config file, overrides)
    ("gan", "shapes"): ("configs/shapes.yaml", []),
    ("gan", "cub"): ("configs/birds.yaml", RANDOM_INCEPTION),
    ("damsm", "shapes"): ("configs/shapes.yaml", []),
    ("damsm", "cub"): ("configs/birds_damsm.yaml", RANDOM_INCEPTION),
}
DEFAULT_IMPLS = {"gan": "reference,auto", "damsm": "loop,reference,auto"}
VOCAB_SIZE = 5000


def preset_config(preset: str, impl: str, device: torch.device, precision: str = "fp32",
                  stage: str = "gan") -> Config:
    path, overrides = PRESETS[stage, preset]
    return load_config(ROOT / path, [*overrides, f"run.impl={impl}", f"run.device={device}",
                                     f"run.precision={precision}"])


def batch_size(config: Config, stage: str) -> int:
    """The batch size the stage trains with."""
    return config.gan.batch_size if stage == "gan" else config.damsm.batch_size


def random_batch(config: Config, device: torch.device, seed: int = 0,
                 stage: str = "gan") -> dict:
    """A collated batch of the preset's shapes: images per level and class ids on `device`,
    captions with ragged lengths on the CPU, where the data loader gives them and the step keeps
    them (checked there without waiting for the GPU). Class ids all differ, so no pair is
    masked out of the DAMSM losses."""
    generator = torch.Generator().manual_seed(seed)
    batch, words = batch_size(config, stage), config.data.words_num
    lengths = torch.randint(words // 2, words + 1, (batch,), generator=generator)
    captions = torch.randint(1, VOCAB_SIZE, (batch, words), generator=generator)
    captions = captions * (torch.arange(words)[None, :] < lengths[:, None])
    images = [torch.rand(batch, 3, size, size, generator=generator) * 2 - 1
              for size in config.data.image_sizes]
    return {"images": [image.to(device) for image in images], "captions": captions,
            "lengths": lengths, "class_ids": torch.arange(batch, device=device)}


def make_trainer(config: Config, device: torch.device) -> GANTrainer:
    """A GANTrainer with random frozen DAMSM encoders (seeded, so every impl gets the same)."""
    torch.manual_seed(0)
    text_encoder = TextEncoder(VOCAB_SIZE, config.text_encoder)
    image_encoder = build_image_encoder(config.image_encoder, config.text_encoder.hidden_dim)
    for module in (text_encoder, image_encoder):
        module.to(device).eval().requires_grad_(False)
    return GANTrainer(config, text_encoder, image_encoder, device)


def training_step(preset: str, impl: str, device: torch.device, precision: str = "fp32",
                  stage: str = "gan"):
    """One call of it trains one step of the stage's preset with `impl` on a fixed random
    batch."""
    config = preset_config(preset, impl, device, precision, stage)
    batch = random_batch(config, device, stage=stage)
    if stage == "gan":
        trainer = make_trainer(config, device)
        return lambda: trainer.step(batch)
    torch.manual_seed(0)
    text_encoder, image_encoder, optimizer = build_damsm_training(config, VOCAB_SIZE, device)
    text_encoder.train()
    image_encoder.train()        # as pretraining sets them (Inception's trunk stays in eval)
    return lambda: damsm_training_step(text_encoder, image_encoder, optimizer, batch, config,
                                       device)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--stage", choices=sorted(DEFAULT_IMPLS), default="gan",
                        help="the GAN's training step or DAMSM pretraining's")
    parser.add_argument("--preset", choices=("shapes", "cub"), default="shapes")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--impls", default=None,
                        help="comma list of run.impl values; the first is the baseline "
                             "(default: gan reference,auto; damsm loop,reference,auto)")
    parser.add_argument("--precisions", default="fp32",
                        help="comma list of run.precision values (fp32, bf16), each run with "
                             "every impl; the first with the first impl is the baseline")
    parser.add_argument("--min-time", type=float, default=3.0,
                        help="seconds of timed steps per implementation")
    parser.add_argument("--record", action="store_true", help="write bench/results/")
    args = parser.parse_args()
    device = torch.device(args.device)
    impls = (args.impls or DEFAULT_IMPLS[args.stage]).split(",")
    precisions = args.precisions.split(",")
    batch = batch_size(preset_config(args.preset, impls[0], device, precisions[0], args.stage),
                       args.stage)
    rows = []
    for precision in precisions:
        for impl in impls:
            seconds = median_seconds(training_step(args.preset, impl, device, precision,
                                                   args.stage), device, args.min_time)
            rows.append({"stage": args.stage, "preset": args.preset, "impl": impl,
                         "precision": precision, "ms": 1e3 * seconds,
                         "images_per_s": batch / seconds})
            print(f"  {impl} {precision}: {1e3 * seconds:.1f} ms/step", flush=True)
    info = machine(device)
    title = "AttnGAN training step" if args.stage == "gan" else "DAMSM pretraining step"
    lines = [f"# {title}, preset {args.preset}, {device.type}, {info['date_utc']} UTC", "",
             *machine_lines(info),
             f"- batch {batch}; random encoders and data; median of "
             f"steps over {args.min_time:g} s per implementation", "",
             f"| run.impl | run.precision | ms / step | images / s | speed-up vs {impls[0]} "
             f"{precisions[0]} |",
             "|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['impl']} | {row['precision']} | {row['ms']:.1f} | "
                     f"{row['images_per_s']:.1f} | {rows[0]['ms'] / row['ms']:.2f}x |")
    text = "\n".join(lines) + "\n"
    name = "train_step" if args.stage == "gan" else "damsm_step"
    publish(f"{name}-{args.preset}", info, rows, text, args.record)
    return 0


@pytest.mark.parametrize("impl", ["reference", "auto"])
def test_train_step_shapes(benchmark, impl):
    benchmark(training_step("shapes", impl, torch.device("cpu")))


@pytest.mark.parametrize("impl", ["loop", "reference", "auto"])
def test_damsm_step_shapes(benchmark, impl):
    benchmark(training_step("shapes", impl, torch.device("cpu"), stage="damsm"))


if __name__ == "__main__":
    raise SystemExit(main())
