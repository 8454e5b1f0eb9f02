"""Training on several processes: images per second of a GAN step at each world size, and the
time per step spent communicating.

Each world size k runs the preset's GAN step on k processes at once, as torchrun would start
them (one thread each on a CPU, gloo; one GPU each, NCCL), the preset's batch the global batch
(each rank its share, random images and captions): "ms / step" is the slowest rank's median
step. The same k processes then each train their share alone (no process group): the step
without communication. The difference is what the ranks spend communicating and waiting for
each other (the gradients' all-reduce, the DAMSM features' all-gather, and the slowest
rank). Images/s is the global batch over the step.

    python bench/bench_scaling.py [--preset shapes|cub] [--device cpu|cuda]
                                  [--world-sizes 1,2] [--steps 10] [--record]
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_train_step import make_trainer, preset_config, random_batch  # noqa: E402
from common import at_least, machine, machine_lines, markdown_table, publish  # noqa: E402

from attngan.distributed import SINGLE, join_world, leave_world  # noqa: E402


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _rank(
    rank: int,
    size: int,
    port: int,
    together: bool,
    preset: str,
    device_name: str,
    steps: int,
    results,
) -> None:
    """One process: `steps` timed GAN steps (after two untimed ones) of its share of the
    preset's global batch, in a process group of `size` if `together`, else alone."""
    torch.set_num_threads(1)
    device = torch.device(device_name)
    world = SINGLE
    if together and size > 1:
        os.environ.update(
            RANK=str(rank),
            WORLD_SIZE=str(size),
            LOCAL_RANK=str(rank),
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=str(port),
        )
        world, device = join_world(device)
    elif device.type == "cuda":
        device = torch.device("cuda", rank)
    try:
        config = preset_config(preset, device)
        trainer = make_trainer(config, device, world)
        batch = random_batch(config, device)
        share = config.gan.batch_size // size
        part = slice(rank * share, (rank + 1) * share)
        mine = {
            "images": [level[part] for level in batch["images"]],
            "captions": batch["captions"][part],
            "lengths": batch["lengths"][part],
            "class_ids": batch["class_ids"][part],
        }
        seconds = []
        for index in range(steps + 2):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            started = time.perf_counter()
            trainer.step(mine)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if index >= 2:
                seconds.append(time.perf_counter() - started)
        results[rank] = statistics.median(seconds)
    finally:
        leave_world()


def step_seconds(size: int, together: bool, preset: str, device: str, steps: int) -> float:
    """The slowest of `size` processes' median step (see the module docstring)."""
    results = mp.Manager().dict()
    method = "spawn" if device == "cuda" else "fork"
    mp.start_processes(
        _rank,
        args=(size, _free_port(), together, preset, device, steps, results),
        nprocs=size,
        start_method=method,
    )
    return max(results.values())


def measure(preset: str, device: str, sizes: list[int], steps: int) -> list[dict]:
    rows = []
    for size in sizes:
        batch = preset_config(preset, torch.device(device)).gan.batch_size
        if batch % size:
            raise SystemExit(
                f"the {preset} preset's batch of {batch} is not shared equally by "
                f"{size} processes; choose world sizes that divide it"
            )
        step = step_seconds(size, True, preset, device, steps)
        alone = step_seconds(size, False, preset, device, steps) if size > 1 else step
        rows.append(
            {
                "world_size": size,
                "ms_per_step": 1e3 * step,
                "images_per_second": batch / step,
                "ms_per_step_without_communication": 1e3 * alone,
                "ms_communicating": 1e3 * max(step - alone, 0.0),
            }
        )
    for row in rows:
        row["speed_up"] = row["images_per_second"] / rows[0]["images_per_second"]
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="shapes", choices=["shapes", "cub", "coco"])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument(
        "--world-sizes", default="1,2", help="comma-separated process counts (default 1,2)"
    )
    parser.add_argument(
        "--steps",
        type=at_least(1),
        default=10,
        help="timed steps per process (default 10, after 2 untimed)",
    )
    parser.add_argument("--record", action="store_true", help="write bench/results/")
    args = parser.parse_args()
    try:
        sizes = [int(size) for size in args.world_sizes.split(",")]
    except ValueError:
        parser.error(f"--world-sizes {args.world_sizes!r}: comma-separated integers")
    if not sizes or min(sizes) < 1:
        parser.error("--world-sizes: each at least 1")
    if args.device == "cuda" and max(sizes) > torch.cuda.device_count():
        parser.error(
            f"--world-sizes up to {max(sizes)} need as many GPUs; this machine has "
            f"{torch.cuda.device_count()}"
        )
    rows = measure(args.preset, args.device, sizes, args.steps)
    info = machine(torch.device(args.device))
    table = markdown_table(
        [
            "processes",
            "ms / step",
            "images / s",
            "speed-up",
            "ms / step alone",
            "ms communicating and waiting",
        ],
        [
            [
                row["world_size"],
                f"{row['ms_per_step']:.1f}",
                f"{row['images_per_second']:.1f}",
                f"{row['speed_up']:.2f}x",
                f"{row['ms_per_step_without_communication']:.1f}",
                f"{row['ms_communicating']:.1f} "
                f"({100 * row['ms_communicating'] / row['ms_per_step']:.0f} %)",
            ]
            for row in rows
        ],
    )
    lines = [
        f"# GAN training on several processes, {args.preset} preset, {args.device}, "
        f"{info['date_utc']} UTC",
        "",
        *machine_lines(info),
        f"- global batch of the preset shared by the processes, one thread each "
        f"({'gloo' if args.device == 'cpu' else 'NCCL, one GPU each'}); median of "
        f"{args.steps} steps, the slowest process; 'alone': each process its share "
        f"without a process group",
        "",
        table,
    ]
    publish(f"scaling-{args.preset}", info, rows, "\n".join(lines), args.record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
