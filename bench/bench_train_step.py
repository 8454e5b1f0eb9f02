"""One AttnGAN training step end to end: the pure-PyTorch references against the fused kernels.

What a user of the project feels: the time of `GANTrainer.step` (the discriminator updates, the
generator forward and backward with word attention at every attention stage, and the DAMSM loss
of the final image through the frozen encoders) with `run.impl` set to "reference" and to each
fused implementation, on one random batch (random encoders, random images and captions of
the preset's sizes; timing does not depend on the values), in float32 and, with --precisions,
under bfloat16 autocast (`run.precision`). Reported: median ms per step, images per second, and
the speed-up over the first row (the reference ops in the first precision), measured in the
same run.

Presets: "shapes" (configs/shapes.yaml, the CPU demo) and "cub" (configs/birds.yaml: 64/128/256
images, batch 20, Inception-v3 DAMSM image encoder with random weights: a GPU size).

    python bench/bench_train_step.py [--preset shapes|cub] [--device cpu|cuda]
                                     [--impls reference,auto] [--precisions fp32,bf16]
                                     [--record]
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
from attngan.train.gan import GANTrainer  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
PRESETS = {
    "shapes": ("configs/shapes.yaml", []),
    "cub": ("configs/birds.yaml", ["image_encoder.random_init=true"]),
}
VOCAB_SIZE = 5000


def preset_config(preset: str, impl: str, device: torch.device, precision: str = "fp32") -> Config:
    path, overrides = PRESETS[preset]
    return load_config(ROOT / path, [*overrides, f"run.impl={impl}", f"run.device={device}",
                                     f"run.precision={precision}"])


def random_batch(config: Config, device: torch.device, seed: int = 0) -> dict:
    """A collated batch of the preset's shapes: images per level and class ids on `device`,
    captions with ragged lengths on the CPU, where the data loader gives them and the step keeps
    them (checked there without waiting for the GPU)."""
    generator = torch.Generator().manual_seed(seed)
    batch, words = config.gan.batch_size, config.data.words_num
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


def training_step(preset: str, impl: str, device: torch.device, precision: str = "fp32"):
    """One call of it trains one step of the preset with `impl` on a fixed random batch."""
    config = preset_config(preset, impl, device, precision)
    trainer, batch = make_trainer(config, device), random_batch(config, device)
    return lambda: trainer.step(batch)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="shapes")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--impls", default="reference,auto",
                        help="comma list of run.impl values; the first is the baseline")
    parser.add_argument("--precisions", default="fp32",
                        help="comma list of run.precision values (fp32, bf16), each run with "
                             "every impl; the first with the first impl is the baseline")
    parser.add_argument("--min-time", type=float, default=3.0,
                        help="seconds of timed steps per implementation")
    parser.add_argument("--record", action="store_true", help="write bench/results/")
    args = parser.parse_args()
    device = torch.device(args.device)
    impls, precisions = args.impls.split(","), args.precisions.split(",")
    batch = preset_config(args.preset, impls[0], device, precisions[0]).gan.batch_size
    rows = []
    for precision in precisions:
        for impl in impls:
            seconds = median_seconds(training_step(args.preset, impl, device, precision), device,
                                     args.min_time)
            rows.append({"preset": args.preset, "impl": impl, "precision": precision,
                         "ms": 1e3 * seconds, "images_per_s": batch / seconds})
            print(f"  {impl} {precision}: {1e3 * seconds:.1f} ms/step", flush=True)
    info = machine(device)
    lines = [f"# AttnGAN training step, preset {args.preset}, {device.type}, "
             f"{info['date_utc']} UTC", "", *machine_lines(info),
             f"- batch {batch}; random encoders and data; median of "
             f"steps over {args.min_time:g} s per implementation", "",
             f"| run.impl | run.precision | ms / step | images / s | speed-up vs {impls[0]} "
             f"{precisions[0]} |",
             "|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['impl']} | {row['precision']} | {row['ms']:.1f} | "
                     f"{row['images_per_s']:.1f} | {rows[0]['ms'] / row['ms']:.2f}x |")
    text = "\n".join(lines) + "\n"
    publish(f"train_step-{args.preset}", info, rows, text, args.record)
    return 0


@pytest.mark.parametrize("impl", ["reference", "auto"])
def test_train_step_shapes(benchmark, impl):
    benchmark(training_step("shapes", impl, torch.device("cpu")))


if __name__ == "__main__":
    raise SystemExit(main())
