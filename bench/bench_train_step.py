"""One training step end to end, as a ladder: each row turns one more switch of the step on,
from the way the original computed it to everything that runs on the device.

Stages: "gan", `GANTrainer.step` (the discriminator updates, the generator forward and backward
with word attention at every attention stage, the DAMSM loss of the final image through the
frozen encoders, Adam, the EMA); "damsm", `DAMSMTrainer.step` (both encoders forward, the
word-level loss of every image against every caption and the sentence-level loss, the backward
into both encoders, clipping, Adam). Rows, cumulative (`attngan.train.speed` says what each
switch does):

    faithful       run.impl=loop (the original's per-caption DAMSM loop), IEEE float32
    reference      the vectorized reference ops (run.impl=reference)
    fused          the fused ops (run.impl=auto, or --fused-impl)
    tf32           run.precision=tf32
    bf16           run.precision=bf16
    channels_last  run.channels_last and run.cudnn_benchmark
    fused_adam     run.fused_adam
    compile        run.compile
    cuda_graphs    run.cuda_graphs

A row none of whose switches runs on the device (or in the stage) is shown as not applicable,
with why; a row whose switches run in part runs with those (the table says which were left
out). Each row steps on one random batch (random encoders, random images and captions of the
preset's sizes: timing does not depend on the values), after the trainer's own warm-up (eager
steps, compilation, the capture). Reported per row: median ms per step and images per second
(the speed-up against the first row, in the same run); on a GPU the peak memory (the most
allocated while the row was built, warmed up and timed, above what was allocated before it: the
model, optimizer state and activations); launches per step, from torch.profiler over --profile
N steps: on a GPU the kernel launches, copies and graph launches the host made (CUDA runtime
calls), on the CPU the ops and compiled kernels the host called (profiler events with no op
above them; allocations and views not counted), a proxy for launches; on a GPU also the kernels
(and copies) the device ran per step and how busy it was (their time against the step's). The
fastest row's profile follows the table: the ops that take the most, on a GPU by the time of
the kernels each launched, then the kernels; on the CPU by the ops' own CPU time.

Presets: "shapes" (configs/shapes.yaml, the CPU demo), "cub" and "coco" (GPU sizes: for the
GAN configs/birds.yaml and coco.yaml, 64/128/256 images, batch 20 and 14; for DAMSM
birds_damsm.yaml and coco_damsm.yaml, 299 px images, batch 48; with Inception-v3 image
encoders of random weights).

    python bench/bench_train_step.py [--stage gan|damsm] [--preset shapes|cub|coco]
        [--device cpu|cuda] [--rows faithful,...] [--fused-impl auto] [--min-time S]
        [--profile N] [--trace DIR] [--record]
    pytest bench/bench_train_step.py   (pytest-benchmark, the shapes preset)
"""

from __future__ import annotations

import argparse
import functools
import gc
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (
    at_least,
    machine,
    machine_lines,
    markdown_table,  # noqa: E402
    median_seconds,
    publish,
)

import attngan.train.speed as speed  # noqa: E402
from attngan.config import Config, load_config  # noqa: E402
from attngan.distributed import SINGLE, World  # noqa: E402
from attngan.nn.image_encoder import build_image_encoder  # noqa: E402
from attngan.nn.text_encoder import TextEncoder  # noqa: E402
from attngan.train.damsm import DAMSMTrainer  # noqa: E402
from attngan.train.gan import GRAPH_WARMUP_STEPS, GANTrainer  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
RANDOM_INCEPTION = ["image_encoder.random_init=true"]
PRESETS = {  # (stage, preset) -> (config file, overrides)
    ("gan", "shapes"): ("configs/shapes.yaml", []),
    ("gan", "cub"): ("configs/birds.yaml", RANDOM_INCEPTION),
    ("gan", "coco"): ("configs/coco.yaml", RANDOM_INCEPTION),
    ("damsm", "shapes"): ("configs/shapes.yaml", []),
    ("damsm", "cub"): ("configs/birds_damsm.yaml", RANDOM_INCEPTION),
    ("damsm", "coco"): ("configs/coco_damsm.yaml", RANDOM_INCEPTION),
}
STAGES = ("damsm", "gan")
VOCAB_SIZE = 5000
FUSED_IMPL = "{fused}"  # stands for --fused-impl in LADDER


@dataclass(frozen=True)
class Rung:
    name: str
    label: str
    overrides: dict  # config keys of run -> value, added to the rungs before it


LADDER = (
    Rung("faithful", "the original's loop, IEEE fp32", {"impl": "loop", "precision": "fp32"}),
    Rung("reference", "reference ops", {"impl": "reference"}),
    Rung("fused", "fused ops", {"impl": FUSED_IMPL}),
    Rung("tf32", "TF32", {"precision": "tf32"}),
    Rung("bf16", "bf16 autocast", {"precision": "bf16"}),
    Rung(
        "channels_last",
        "channels_last + cudnn.benchmark",
        {"channels_last": True, "cudnn_benchmark": True},
    ),
    Rung("fused_adam", "fused Adam", {"fused_adam": True}),
    Rung("compile", "torch.compile", {"compile": True}),
    Rung("cuda_graphs", "CUDA graphs", {"cuda_graphs": True}),
)
RUNG_NAMES = tuple(rung.name for rung in LADDER)
# Profiler events that allocate and launch nothing (left out of the CPU's launch count, with
# the views: is_view).
ALLOCATIONS = ("aten::empty", "aten::empty_strided", "aten::empty_like")
# CUDA runtime and driver calls that put work on a stream (the GPU's launch count).
LAUNCHES = ("LaunchKernel", "GraphLaunch", "MemcpyAsync", "MemsetAsync")


def preset_config(preset: str, device: torch.device, overrides=(), stage: str = "gan") -> Config:
    """The stage's preset on `device` with `overrides` ("section.key=value" strings)."""
    path, preset_overrides = PRESETS[stage, preset]
    return load_config(ROOT / path, [*preset_overrides, f"run.device={device}", *overrides])


def ladder(device: torch.device, stage: str, fused_impl: str = "auto") -> list[dict]:
    """The rungs on `device` for `stage`: each {"rung", "overrides" (the cumulative "run.key=
    value" strings of what runs here, or None for a row that cannot run), "left_out" (why each
    switch of the rung that cannot run here was left out)}."""
    applied: dict = {}
    rows = []
    for rung in LADDER:
        left_out = []
        for key, value in rung.overrides.items():
            value = fused_impl if value == FUSED_IMPL else value
            reason = (
                speed.unavailable_reason(key, value, device, stage, applied.get("impl", "auto"))
                if key in speed.SWITCHES
                else None
            )
            if reason is None:
                applied[key] = value
            else:
                left_out.append(f"{key}: {reason}")
        runs = len(left_out) < len(rung.overrides)
        rows.append(
            {
                "rung": rung,
                "overrides": [f"run.{key}={str(value).lower()}" for key, value in applied.items()]
                if runs
                else None,
                "left_out": left_out,
            }
        )
    return rows


def batch_size(config: Config, stage: str) -> int:
    """The batch size the stage trains with."""
    return config.gan.batch_size if stage == "gan" else config.damsm.batch_size


def random_batch(config: Config, device: torch.device, seed: int = 0, stage: str = "gan") -> dict:
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
    images = [
        torch.randint(256, (batch, 3, size, size), generator=generator, dtype=torch.uint8)
        for size in config.data.image_sizes
    ]
    return {
        "images": [image.to(device) for image in images],
        "captions": captions,
        "lengths": lengths,
        "class_ids": torch.arange(batch, device=device),
    }


def make_trainer(config: Config, device: torch.device, world: World = SINGLE) -> GANTrainer:
    """A GANTrainer with random frozen DAMSM encoders (seeded, so every row, and every rank of
    `world`, gets the same)."""
    torch.manual_seed(0)
    text_encoder = TextEncoder(VOCAB_SIZE, config.text_encoder)
    image_encoder = build_image_encoder(config.image_encoder, config.text_encoder.hidden_dim)
    for module in (text_encoder, image_encoder):
        module.to(device).eval().requires_grad_(False)
    return GANTrainer(config, text_encoder, image_encoder, device, world=world)


def training_step(
    config: Config, device: torch.device, stage: str = "gan"
) -> tuple[Callable[[], object], int]:
    """(one call trains one step of the stage with `config` on a fixed random batch, the calls
    the trainer needs before it runs as it will from then on: eager steps, compilation, the
    capture)."""
    batch = random_batch(config, device, stage=stage)
    if stage == "gan":
        trainer = make_trainer(config, device)
    else:
        torch.manual_seed(0)
        trainer = DAMSMTrainer(config, VOCAB_SIZE, device)
        trainer.text_encoder.train()
        trainer.image_encoder.train()  # as pretraining sets them (Inception's BatchNorm too)
    settings = trainer.settings
    warmup = (
        GRAPH_WARMUP_STEPS + 1
        if settings.cuda_graphs
        else speed.EAGER_STEPS + 1
        if settings.compile
        else 1
    )
    return (lambda: trainer.step(batch)), warmup


def profile_step(step, device: torch.device, steps: int, trace: Optional[Path] = None) -> dict:
    """Profile `steps` calls of `step` with torch.profiler (CUDA kernels too on a GPU) and
    summarize it (summarize_profile, plus "launches" per step: launch_count); with `trace`,
    also write a Chrome trace there."""
    from torch.profiler import ProfilerActivity, profile

    cuda = device.type == "cuda"
    with profile(
        activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    ) as profiler:
        for _ in range(steps):
            step()
        if cuda:
            torch.cuda.synchronize(device)
    if trace is not None:
        profiler.export_chrome_trace(str(trace))
    summary = summarize_profile(profiler.key_averages(), steps, cuda)
    summary["launches"] = launch_count(profiler.events(), cuda) / steps
    return summary


@functools.lru_cache(maxsize=None)
def is_view(name: str) -> bool:
    """Whether every overload of the aten op `name` ("aten::detach") that returns tensors
    returns views of its inputs (a view computes nothing; aten::to returns one when there is
    nothing to convert)."""
    namespace, _, op = name.partition("::")
    packet = getattr(torch.ops.aten, op, None) if namespace == "aten" else None
    if packet is None:
        return False
    returns = [
        schema.returns
        for schema in (getattr(packet, overload)._schema for overload in packet.overloads())
        if any("Tensor" in str(value.type) for value in schema.returns)
    ]
    return bool(returns) and all(
        value.alias_info is not None and not value.alias_info.is_write
        for values in returns
        for value in values
    )


def launch_count(events, cuda: bool) -> int:
    """What the host launched in a profile's `events` (torch.profiler's FunctionEvents): on a
    GPU its CUDA runtime and driver calls that queue work (LAUNCHES); on the CPU the ops and
    compiled kernels it called, counted once each (events with no op above them: the
    convolution an aten::conv2d calls, the kernels an autograd node runs are not counted
    twice), but for those that compute nothing: allocations (ALLOCATIONS) and views
    (is_view) that called no op that computes."""
    if cuda:
        return sum(any(name in event.name for name in LAUNCHES) for event in events)

    def is_op(event) -> bool:
        return event.name.startswith(("aten::", "attngan")) or "cpp_fused" in event.name

    def computes(event) -> bool:
        if event.name in ALLOCATIONS:
            return False
        return not is_view(event.name) or any(
            computes(child) for child in event.cpu_children if is_op(child)
        )

    def top_level(event) -> bool:
        parent = event.cpu_parent
        while parent is not None:
            if is_op(parent):
                return False
            parent = parent.cpu_parent
        return True

    return sum(is_op(event) and top_level(event) and computes(event) for event in events)


def summarize_profile(events, steps: int, cuda: bool, top: int = 15) -> dict:
    """Per step, from torch.profiler's key_averages() over `steps` steps:
    - "ops": the `top` ops taking the most time: on CUDA by the time of the kernels each op
      launched itself, on the CPU by its own CPU time (children excluded either way, so nothing
      counts twice), each {"name", "calls", "ms", "share"} (share of "ops_ms", all ops' total);
    - on CUDA "kernels": the same for the kernels themselves, "kernels_ms", the total time of
      all kernels (against the step's time: how busy the GPU is), and "kernel_count", how many
      kernels (and copies) ran."""
    from torch.autograd import DeviceType

    def table(timed):
        timed = [(event, us) for event, us in timed if us > 0]
        total_us = sum(us for _, us in timed)
        timed.sort(key=lambda pair: -pair[1])
        return [
            {
                "name": event.key,
                "calls": event.count / steps,
                "ms": us / steps / 1e3,
                "share": us / total_us,
            }
            for event, us in timed[:top]
        ], total_us / steps / 1e3

    summary = {}
    summary["ops"], summary["ops_ms"] = table(
        (event, event.self_device_time_total if cuda else event.self_cpu_time_total)
        for event in events
        if event.device_type == DeviceType.CPU
    )
    if cuda:
        device_events = [event for event in events if event.device_type == DeviceType.CUDA]
        summary["kernels"], summary["kernels_ms"] = table(
            (event, event.self_device_time_total) for event in device_events
        )
        summary["kernel_count"] = sum(event.count for event in device_events) / steps
    return summary


def profile_lines(summary: dict, step_ms: float, row: str, steps: int) -> list[str]:
    """The markdown of one summarize_profile result, for a step of step_ms."""

    def table(rows, what):
        return markdown_table(
            [what, "calls / step", "ms / step", "share"],
            [
                [
                    f"`{r['name'][:100]}`",
                    f"{r['calls']:g}",
                    f"{r['ms']:.2f}",
                    f"{100 * r['share']:.1f} %",
                ]
                for r in rows
            ],
        )

    if "kernels" not in summary:
        return [
            "",
            f"## Where the time goes: {row} (ops by their own CPU time; {steps} profiled steps)",
            "",
            f"- {summary['ops_ms']:.1f} ms per step in ops (timed under the profiler, which "
            f"slows the many small ones)",
            "",
            table(summary["ops"], "op"),
        ]
    busy = summary["kernels_ms"]
    return [
        "",
        f"## Where the time goes: {row} (ops by the time of the kernels they launched; "
        f"{steps} profiled steps)",
        "",
        f"- kernels {busy:.1f} ms per step against a {step_ms:.1f} ms step: the GPU busy "
        f"{100 * busy / step_ms:.0f} % of it",
        "",
        table(summary["ops"], "op"),
        "",
        table(summary["kernels"], "kernel"),
    ]


def measure(
    config: Config,
    device: torch.device,
    stage: str,
    min_time: float,
    profile_steps: int,
    trace: Optional[Path],
) -> dict:
    """One row: ms per step, peak memory (GPU), and the profile of `profile_steps` steps."""
    cuda = device.type == "cuda"
    if cuda:
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    step, warmup = training_step(config, device, stage)
    for _ in range(warmup):
        step()
    seconds = median_seconds(step, device, min_time)
    row = {
        "ms": 1e3 * seconds,
        "images_per_s": batch_size(config, stage) / seconds,
        "profile": profile_step(step, device, profile_steps, trace),
    }
    if cuda:
        row["peak_mib"] = (torch.cuda.max_memory_allocated(device) - base) / 2**20
    return row


def ladder_table(rows: list[dict], cuda: bool) -> str:
    """The ladder's markdown table (not applicable rows with why)."""
    base = next((row for row in rows if "ms" in row), None)
    headers = [
        "row",
        "switch",
        "ms / step",
        "images / s",
        f"vs {base['row'] if base else '-'}",
        "launches / step",
    ]
    headers += ["kernels / step", "GPU busy", "peak MiB"] if cuda else []
    lines = []
    for row in rows:
        label = row["label"] + "".join(f" (left out: {why})" for why in row["left_out"])
        if "ms" not in row:
            lines.append([row["row"], label, "not applicable", "", "", ""] + ["", "", ""] * cuda)
            continue
        profile = row["profile"]
        cells = [
            row["row"],
            label,
            f"{row['ms']:.1f}",
            f"{row['images_per_s']:.1f}",
            f"{base['ms'] / row['ms']:.2f}x",
            f"{profile['launches']:.0f}",
        ]
        if cuda:
            cells += [
                f"{profile['kernel_count']:.0f}",
                f"{100 * profile['kernels_ms'] / row['ms']:.0f} %",
                f"{row['peak_mib']:.0f}",
            ]
        lines.append(cells)
    return markdown_table(headers, lines)


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--stage",
        choices=STAGES,
        default="gan",
        help="the GAN's training step or DAMSM pretraining's",
    )
    parser.add_argument("--preset", choices=("shapes", "cub", "coco"), default="shapes")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument(
        "--rows",
        default=",".join(RUNG_NAMES),
        help="comma list of the rows to run (each with the switches of the rows "
        f"before it too; default all: {','.join(RUNG_NAMES)})",
    )
    parser.add_argument(
        "--fused-impl",
        default="auto",
        help="run.impl of the fused row and those after it (default auto)",
    )
    parser.add_argument(
        "--min-time",
        type=at_least(0.0, float),
        default=3.0,
        help="seconds of timed steps per row (0: one step)",
    )
    parser.add_argument(
        "--profile",
        type=at_least(1),
        default=2,
        metavar="N",
        help="steps profiled per row (launches, kernels, the fastest row's profile; default 2)",
    )
    parser.add_argument(
        "--trace",
        type=Path,
        default=None,
        metavar="DIR",
        help="also write the fastest row's profile as a Chrome trace to DIR/<row>.json",
    )
    parser.add_argument("--record", action="store_true", help="write bench/results/")
    args = parser.parse_args()
    device = torch.device(args.device)
    wanted = args.rows.split(",")
    unknown = sorted(set(wanted) - set(RUNG_NAMES))
    if unknown:
        parser.error(f"--rows: unknown {', '.join(unknown)}; the rows are {', '.join(RUNG_NAMES)}")
    # the compiled CPU kernels report themselves to the profiler, so that they are counted
    from torch._inductor import config as inductor_config

    inductor_config.cpp.enable_kernel_profile = True
    if args.trace is not None:
        args.trace.mkdir(parents=True, exist_ok=True)
    # A time limit (gpu_check.sh's timeout sends SIGTERM) ends the ladder with the rows measured.
    signal.signal(signal.SIGTERM, _interrupt)
    rows, stopped = [], None
    for entry in ladder(device, args.stage, args.fused_impl):
        rung = entry["rung"]
        if rung.name not in wanted:
            continue
        row = {
            "row": rung.name,
            "label": rung.label,
            "left_out": entry["left_out"],
            "overrides": entry["overrides"],
        }
        if entry["overrides"] is not None:
            config = preset_config(args.preset, device, entry["overrides"], args.stage)
            try:
                row.update(
                    measure(
                        config,
                        device,
                        args.stage,
                        args.min_time,
                        args.profile,
                        args.trace and args.trace / f"{rung.name}.json",
                    )
                )
            except KeyboardInterrupt:
                stopped = rung.name
                break
            row["settings"] = speed.step_settings(config.run, device, args.stage).describe()
            profile = row["profile"]  # (each row printed as it comes: the log keeps it)
            print(
                f"  {rung.name}: {row['ms']:.1f} ms/step, {profile['launches']:.0f} "
                f"launches/step"
                + (
                    f", {profile['kernel_count']:.0f} kernels/step, GPU busy "
                    f"{100 * profile['kernels_ms'] / row['ms']:.0f} %, peak "
                    f"{row['peak_mib']:.0f} MiB"
                    if "peak_mib" in row
                    else ""
                ),
                flush=True,
            )
        rows.append(row)
    measured = [row for row in rows if "ms" in row]
    if not measured:
        print("no row of --rows runs on this device")
        return 1
    fastest = min(measured, key=lambda row: row["ms"])
    for row in measured:  # each row's trace was written: the fastest one's is kept
        if args.trace is not None and row is not fastest:
            (args.trace / f"{row['row']}.json").unlink(missing_ok=True)
    info = machine(device)
    title = "AttnGAN training step" if args.stage == "gan" else "DAMSM pretraining step"
    batch = batch_size(preset_config(args.preset, device, (), args.stage), args.stage)
    lines = [
        f"# {title}, the ladder, preset {args.preset}, {device.type}, {info['date_utc']} UTC",
        "",
        *machine_lines(info),
        f"- batch {batch}; random encoders and data; median of steps over {args.min_time:g} "
        f"s per row after the trainer's warm-up; launches, kernels and busy from "
        f"{args.profile} profiled steps",
        "",
        ladder_table(rows, device.type == "cuda"),
        "",
        *([f"stopped (time limit) while measuring the row {stopped}", ""] if stopped else []),
        f"fastest row: {fastest['row']}",
    ]
    lines += profile_lines(fastest["profile"], fastest["ms"], fastest["row"], args.profile)
    name = "train_ladder" if args.stage == "gan" else "damsm_ladder"
    publish(f"{name}-{args.preset}", info, rows, "\n".join(lines) + "\n", args.record)
    return 0


CPU_ROWS = [
    entry
    for entry in ladder(torch.device("cpu"), "gan")
    if entry["overrides"] is not None and entry["rung"].name != "compile"
]


@pytest.mark.parametrize("stage", STAGES)
@pytest.mark.parametrize("entry", CPU_ROWS, ids=lambda entry: entry["rung"].name)
def test_train_step_shapes(benchmark, stage, entry):
    config = preset_config("shapes", torch.device("cpu"), entry["overrides"], stage)
    step, warmup = training_step(config, torch.device("cpu"), stage)
    for _ in range(warmup):
        step()
    benchmark(step)


if __name__ == "__main__":
    raise SystemExit(main())
