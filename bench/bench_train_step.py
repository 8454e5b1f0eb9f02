"""One training step end to end: the pure-PyTorch references against the fused kernels.

What a user of the project feels, for the two trainings:
- stage "gan": `GANTrainer.step` (the discriminator updates, the generator forward and backward
  with word attention at every attention stage, and the DAMSM loss of the final image through
  the frozen encoders);
- stage "damsm": one step of DAMSM pretraining (`damsm_training_step`: both encoders forward,
  the word-level loss of every image against every caption and the sentence-level loss, the
  backward into both encoders, clipping, Adam), where the original computed the word-level
  loss with a loop over captions ("loop" here).
Each with `run.impl` set to each implementation named ("loop": as the original computed, its
per-caption loop for the DAMSM word loss), on one random batch (random encoders,
random images and captions of the preset's sizes; timing does not depend on the values), in
float32 and, with --precisions, under bfloat16 autocast (`run.precision`). Reported: median ms
per step, images per second, and the speed-up over the first row (the first impl in the first
precision), measured in the same run. With --profile N, also where each row's step spends its
time (torch.profiler over N steps): the ops that take the most, on a GPU by the time of the
kernels each launched, then the kernels that take the most and their total against the step's
time (a GPU busy far less than the step waits for the CPU to launch work), on the CPU by the
ops' own CPU time.

Presets: "shapes" (configs/shapes.yaml, the CPU demo) and "cub" (a GPU size: for the GAN
configs/birds.yaml, 64/128/256 images, batch 20; for DAMSM configs/birds_damsm.yaml, 299 px
images, batch 48; both with an Inception-v3 image encoder of random weights).

    python bench/bench_train_step.py [--stage gan|damsm] [--preset shapes|cub]
                                     [--device cpu|cuda] [--impls loop,reference,auto]
                                     [--precisions fp32,bf16] [--profile N] [--record]
    pytest bench/bench_train_step.py   (pytest-benchmark, the shapes preset)
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (at_least, machine, machine_lines, markdown_table,  # noqa: E402
                    median_seconds, publish)

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
STAGES = ("damsm", "gan")
DEFAULT_IMPLS = "loop,reference,auto"
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
    """A collated batch of the preset's shapes: uint8 images per level (as the data loader
    hands them over; the step makes them floats) and class ids on `device`, captions with
    ragged lengths on the CPU, where the data loader gives them and the step keeps them (checked
    there without waiting for the GPU). Class ids all differ, so no pair is masked out of the
    DAMSM losses."""
    generator = torch.Generator().manual_seed(seed)
    batch, words = batch_size(config, stage), config.data.words_num
    lengths = torch.randint(words // 2, words + 1, (batch,), generator=generator)
    captions = torch.randint(1, VOCAB_SIZE, (batch, words), generator=generator)
    captions = captions * (torch.arange(words)[None, :] < lengths[:, None])
    images = [torch.randint(256, (batch, 3, size, size), generator=generator, dtype=torch.uint8)
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
    image_encoder.train()        # as pretraining sets them (Inception's BatchNorm included)
    return lambda: damsm_training_step(text_encoder, image_encoder, optimizer, batch, config,
                                       device)


def profile_step(step, device: torch.device, steps: int) -> dict:
    """Profile `steps` calls of `step` (after one unprofiled call) with torch.profiler, CUDA
    kernels too on a GPU, and summarize it (summarize_profile)."""
    from torch.profiler import ProfilerActivity, profile
    cuda = device.type == "cuda"

    def run(count):
        for _ in range(count):
            step()
        if cuda:
            torch.cuda.synchronize(device)
    run(1)
    with profile(activities=[ProfilerActivity.CPU]
                 + ([ProfilerActivity.CUDA] if cuda else [])) as profiler:
        run(steps)
    return summarize_profile(profiler.key_averages(), steps, cuda)


def summarize_profile(events, steps: int, cuda: bool, top: int = 15) -> dict:
    """Per step, from torch.profiler's key_averages() over `steps` steps:
    - "ops": the `top` ops taking the most time: on CUDA by the time of the kernels each op
      launched itself, on the CPU by its own CPU time (children excluded either way, so nothing
      counts twice), each {"name", "calls", "ms", "share"} (share of "ops_ms", all ops' total);
    - on CUDA "kernels": the same for the kernels themselves, and "kernels_ms", the total time
      of all kernels (against the step's time: how busy the GPU is)."""
    from torch.autograd import DeviceType

    def table(timed):
        timed = [(event, us) for event, us in timed if us > 0]
        total_us = sum(us for _, us in timed)
        timed.sort(key=lambda pair: -pair[1])
        return [{"name": event.key, "calls": event.count / steps, "ms": us / steps / 1e3,
                 "share": us / total_us} for event, us in timed[:top]], total_us / steps / 1e3
    summary = {}
    summary["ops"], summary["ops_ms"] = table(
        (event, event.self_device_time_total if cuda else event.self_cpu_time_total)
        for event in events if event.device_type == DeviceType.CPU)
    if cuda:
        summary["kernels"], summary["kernels_ms"] = table(
            (event, event.self_device_time_total)
            for event in events if event.device_type == DeviceType.CUDA)
    return summary


def profile_lines(summary: dict, step_ms: float, impl: str, precision: str,
                  steps: int) -> list[str]:
    """The markdown of one summarize_profile result, for a step of step_ms."""
    def table(rows, what):
        return markdown_table([what, "calls / step", "ms / step", "share"],
                              [[f"`{r['name'][:100]}`", f"{r['calls']:g}", f"{r['ms']:.2f}",
                                f"{100 * r['share']:.1f} %"] for r in rows])
    if "kernels" not in summary:
        return ["", f"## Where the time goes: {impl}, {precision} (ops by their own CPU time; "
                f"{steps} profiled steps)", "",
                f"- {summary['ops_ms']:.1f} ms per step in ops (timed under the profiler, which "
                f"slows the many small ones)", "", table(summary["ops"], "op")]
    busy = summary["kernels_ms"]
    return ["", f"## Where the time goes: {impl}, {precision} (ops by the time of the kernels "
            f"they launched; {steps} profiled steps)", "",
            f"- kernels {busy:.1f} ms per step against a {step_ms:.1f} ms step: the GPU busy "
            f"{100 * busy / step_ms:.0f} % of it", "", table(summary["ops"], "op"), "",
            table(summary["kernels"], "kernel")]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--stage", choices=STAGES, default="gan",
                        help="the GAN's training step or DAMSM pretraining's")
    parser.add_argument("--preset", choices=("shapes", "cub"), default="shapes")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--impls", default=None,
                        help="comma list of run.impl values; the first is the baseline "
                             "(default: loop,reference,auto)")
    parser.add_argument("--precisions", default="fp32",
                        help="comma list of run.precision values (fp32, bf16), each run with "
                             "every impl; the first with the first impl is the baseline")
    parser.add_argument("--min-time", type=at_least(0.01, float), default=3.0,
                        help="seconds of timed steps per implementation")
    parser.add_argument("--profile", type=at_least(0), default=0, metavar="N",
                        help="also profile N steps of each row and show the ops that take the "
                             "most time (default 0: no profile)")
    parser.add_argument("--record", action="store_true", help="write bench/results/")
    args = parser.parse_args()
    device = torch.device(args.device)
    impls = (args.impls or DEFAULT_IMPLS).split(",")
    precisions = args.precisions.split(",")
    batch = batch_size(preset_config(args.preset, impls[0], device, precisions[0], args.stage),
                       args.stage)
    rows, profiles = [], []
    for precision in precisions:
        for impl in impls:
            step = training_step(args.preset, impl, device, precision, args.stage)
            seconds = median_seconds(step, device, args.min_time)
            row = {"stage": args.stage, "preset": args.preset, "impl": impl,
                   "precision": precision, "ms": 1e3 * seconds, "images_per_s": batch / seconds}
            print(f"  {impl} {precision}: {1e3 * seconds:.1f} ms/step", flush=True)
            if args.profile:
                row["profile"] = profile_step(step, device, args.profile)
                profiles += profile_lines(row["profile"], row["ms"], impl, precision,
                                          args.profile)
            rows.append(row)
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
    text = "\n".join(lines + profiles) + "\n"
    name = "train_step" if args.stage == "gan" else "damsm_step"
    publish(f"{name}-{args.preset}", info, rows, text, args.record)
    return 0


@pytest.mark.parametrize("impl", ["loop", "reference", "auto"])
def test_train_step_shapes(benchmark, impl):
    benchmark(training_step("shapes", impl, torch.device("cpu")))


@pytest.mark.parametrize("impl", ["loop", "reference", "auto"])
def test_damsm_step_shapes(benchmark, impl):
    benchmark(training_step("shapes", impl, torch.device("cpu"), stage="damsm"))


if __name__ == "__main__":
    raise SystemExit(main())
