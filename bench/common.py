"""Shared helpers of the benchmarks in bench/: timing, the machine's own matmul rate, peak
memory, a description of the machine and software, and recording results.

Timing (docs/DESIGN.md, "Benchmarks"): on CPU `torch.utils.benchmark` (median of blocked runs,
or of single calls interleaved over the providers on a shared machine), on CUDA
`triton.testing.do_bench` (median, after warm-up; CUDA events when triton is missing). Every
recorded result names the machine (CPU model, GPU model via nvidia-ml-py), the thread count,
versions and the git commit.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import re
import subprocess
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from attngan.autotune import cpu_model

RESULTS = Path(__file__).resolve().parent / "results"
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def median_seconds(
    fn: Callable[[], object], device: torch.device, min_run_time: float = 1.0
) -> float:
    """Median wall time of one call of fn (fn synchronizes nothing itself)."""
    if device.type == "cuda":
        try:
            from triton.testing import do_bench

            return (
                do_bench(
                    fn, warmup=25, rep=max(100, int(min_run_time * 1000)), return_mode="median"
                )
                / 1e3
            )
        except ImportError:
            return _cuda_events_median(fn)
    from torch.utils import benchmark

    fn()  # warm-up: first-call allocations, lazy initialisation
    timer = benchmark.Timer("fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
    return timer.blocked_autorange(min_run_time=min_run_time).median


def interleaved_cpu_samples(calls: dict, rounds: int) -> dict:
    """Seconds of single calls, taken round-robin over the providers, `rounds` each.

    On a machine shared with other work the load changes within seconds; timing the providers
    one after another would give each a different load. Interleaved, every provider sees the
    same mix, so their ratios stay fair (report the median; the minimum approximates an
    unloaded machine)."""
    from torch.utils import benchmark

    threads = torch.get_num_threads()
    timers = {
        name: benchmark.Timer("fn()", globals={"fn": fn}, num_threads=threads)
        for name, fn in calls.items()
    }
    samples = {name: [] for name in calls}
    for _ in range(rounds):
        for name, timer in timers.items():
            samples[name].append(timer.timeit(1).times[0])
    return samples


def _cuda_events_median(fn: Callable[[], object], repeats: int = 50) -> float:
    for _ in range(5):
        fn()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return sorted(times)[len(times) // 2]


def matmul_gflops(
    device: torch.device, dtype: torch.dtype, size: int = 2048, min_run_time: float = 1.0
) -> float:
    """The machine's own square-matmul rate in this dtype, measured now (the roofline we quote).
    On CPU the best of the timed blocks: what the cores can do when nothing else runs on them."""
    if device.type == "cuda":
        size = max(size, 8192)
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    if device.type == "cuda":
        seconds = median_seconds(lambda: torch.mm(a, b), device, min_run_time)
    else:
        from torch.utils import benchmark

        timer = benchmark.Timer(
            "torch.mm(a, b)",
            globals={"torch": torch, "a": a, "b": b},
            num_threads=torch.get_num_threads(),
        )
        seconds = min(timer.blocked_autorange(min_run_time=min_run_time).times)
    return 2 * size**3 / seconds / 1e9


def peak_memory_bytes(fn: Callable[[], object], device: torch.device) -> Optional[int]:
    """Peak memory allocated above the baseline during one call; None where not measurable
    (the CPU allocator keeps no statistics)."""
    if device.type != "cuda":
        return None
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - base


def _run(*cmd: str) -> str:
    try:
        return subprocess.run(
            cmd, capture_output=True, text=True, timeout=20, cwd=Path(__file__).resolve().parent
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def gpu_model() -> Optional[str]:
    try:
        import pynvml

        pynvml.nvmlInit()
        name = pynvml.nvmlDeviceGetName(pynvml.nvmlDeviceGetHandleByIndex(0))
        return name.decode() if isinstance(name, bytes) else name
    except Exception:  # no driver, no GPU or no nvidia-ml-py
        return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None


def machine(device: torch.device) -> dict:
    """Where and with what a result was measured."""
    versions = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
    }
    try:
        import triton

        versions["triton"] = triton.__version__
    except ImportError:
        versions["triton"] = None
    # A copy of the tree whose .git is absent or stale (the GPU machine's) is named by
    # ATTNGAN_COMMIT.
    named = os.environ.get("ATTNGAN_COMMIT")
    commit = named or _run("git", "rev-parse", "HEAD") or "unknown"
    dirty = not named and bool(_run("git", "status", "--porcelain", "--untracked-files=no"))
    # On a shared machine the CPU timings depend on what else runs: keep the load with them.
    load = [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None
    return dict(
        device=device.type,
        cpu=cpu_model(),
        cpu_cores=os.cpu_count(),
        threads=torch.get_num_threads(),
        load_average_1_5_15min=load,
        gpu=gpu_model() if device.type == "cuda" else None,
        versions=versions,
        commit=commit,
        uncommitted_changes=dirty,
        float32_matmul_precision=torch.get_float32_matmul_precision(),
        date_utc=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M"),
    )


def machine_lines(info: dict) -> list[str]:
    """The markdown lines naming where and with what a result was measured."""
    where = info["gpu"] or (
        f"{info['cpu']}, {info['threads']} threads of {info['cpu_cores']} "
        f"cores, load average {info['load_average_1_5_15min']} at the start"
    )
    versions = ", ".join(f"{k} {v}" for k, v in info["versions"].items() if v)
    dirty = " (uncommitted changes)" if info["uncommitted_changes"] else ""
    lines = [f"- machine: {where}", f"- {versions}", f"- commit {info['commit']}{dirty}"]
    if "lengths_on" in info:
        lines.append(f"- caption lengths on the {info['lengths_on']} (--lengths-on)")
    if info.get("float32_matmul_precision", "highest") != "highest":
        lines.append(
            f"- float32 matmul precision: {info['float32_matmul_precision']} "
            f"(torch.set_float32_matmul_precision, for every provider; "
            f"--matmul-precision)"
        )
    return lines


def at_least(low: float, kind: type = int) -> Callable[[str], float]:
    """An argparse type: a number of `kind` that is at least `low`, so that --rounds 0 or a
    negative time is a usage error instead of a failure after the set-up."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{text!r} is not {'an integer' if kind is int else 'a number'}"
            ) from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{text} is not a finite number")
        if value < low:
            raise argparse.ArgumentTypeError(f"{text} is less than {low}")
        return value

    return parse


def add_matmul_precision_option(parser) -> None:
    """--matmul-precision: torch.set_float32_matmul_precision for a whole run."""
    parser.add_argument(
        "--matmul-precision",
        default="highest",
        choices=("highest", "high", "medium"),
        help="torch.set_float32_matmul_precision for the whole run: every "
        "provider and the machine matmul rate (default highest: IEEE "
        "float32 products). torch's own matmul follows it (on a CPU, "
        "medium rounds the operands to bfloat16), and so do the C++ DAMSM "
        "op's float32 products, which go through it; the Triton, CUDA and "
        "C++ word-attention kernels compute float32 in IEEE float32",
    )


def add_lengths_option(parser) -> None:
    """--lengths-on: where a benchmark keeps the caption lengths its ops are called with."""
    parser.add_argument(
        "--lengths-on",
        default="cpu",
        choices=("cpu", "device"),
        help="cpu (default): as the data loader and the training steps pass "
        "them, so the ops need not synchronise; device: every call copies "
        "them back to check them, one synchronisation (how GPU records "
        "before 2026-11-28 were made)",
    )


def lengths_device(lengths_on: str, device: torch.device) -> torch.device:
    """The device of the caption lengths for --lengths-on on `device`."""
    return torch.device("cpu") if lengths_on == "cpu" else device


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def provider_label(row: dict) -> str:
    """A row's provider; for "auto", with the implementation it ran."""
    return f"{row['provider']}: {row['auto']}" if row.get("auto") else row["provider"]


def auto_lines(rows: Sequence[dict]) -> list[str]:
    """A line for each "auto" row that measured its choice: what it measured at its first call
    (attngan.autotune keeps those milliseconds with the choice)."""
    return [
        f"- {row['provider']}, {row['size']} {row['pass_']}: ran {row['auto']}; measured at "
        f"its first call: "
        + ", ".join(f"{impl} {ms:.3f} ms" for impl, ms in row["auto_measured_ms"].items())
        for row in rows
        if row.get("auto_measured_ms")
    ]


def record(name: str, info: dict, rows: list[dict], markdown: str) -> tuple[Path, Path]:
    """Write bench/results/<date>-<name>-<machine>.json and .md; return their paths. A second
    record of the same name within the minute gets -2 (-3, ...) after it, never overwrites."""
    where = info["gpu"] if info.get("gpu") else f"{info['cpu']} {info['threads']}t"
    slug = re.sub(r"[^a-z0-9]+", "-", where.lower()).strip("-")
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d-%H%M")
    RESULTS.mkdir(parents=True, exist_ok=True)
    base, count = RESULTS / f"{stamp}-{name}-{slug}", 1
    while base.with_suffix(".json").exists() or base.with_suffix(".md").exists():
        count += 1
        base = RESULTS / f"{stamp}-{name}-{slug}-{count}"
    base.with_suffix(".json").write_text(
        json.dumps(dict(machine=info, results=rows), indent=2) + "\n"
    )
    base.with_suffix(".md").write_text(markdown + "\n")
    return base.with_suffix(".json"), base.with_suffix(".md")


def publish(name: str, info: dict, rows: list[dict], markdown: str, keep: bool) -> None:
    """Print a benchmark's table; with keep (its --record flag) also record it, saying where."""
    if keep:
        for path in record(name, info, rows, markdown):
            print(f"recorded {path}")
    print(markdown)


def gpu_check_record(
    steps: Sequence[str], logs: str | Path, stamp: str, started: int, out_dir: Path = RESULTS
) -> Path:
    """bench/gpu_check.sh's results file, <out_dir>/<stamp>-<gpu>.md and .json: the machine
    (as `machine` sees it), each step's status and seconds ("name|status|seconds"), the last 40
    lines of each step's log in `logs`. Returns the path without its suffix."""
    info = machine(torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    gpu = info["gpu"] or "no-gpu"
    versions = dict(info["versions"], numpy=np.__version__)
    steps = [dict(zip(("name", "status", "seconds"), step.split("|"))) for step in steps]
    tails = {}
    for step in steps:
        log = Path(logs) / f"{step['name']}.log"
        if log.exists():
            tails[step["name"]] = "\n".join(log.read_text(errors="replace").splitlines()[-40:])
    base = out_dir / f"{stamp}-{re.sub(r'[^a-z0-9]+', '-', gpu.lower()).strip('-')}"
    base.parent.mkdir(parents=True, exist_ok=True)
    total = int(datetime.datetime.now(datetime.timezone.utc).timestamp()) - started
    result = dict(
        gpu=gpu,
        cpu=info["cpu"],
        versions=versions,
        commit=info["commit"],
        dirty_tree=info["uncommitted_changes"],
        date_utc=stamp,
        total_seconds=total,
        steps=steps,
        log_tails=tails,
    )
    base.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    dirty = " (with uncommitted changes)" if info["uncommitted_changes"] else ""
    lines = [
        f"# GPU check {stamp} on {gpu}",
        "",
        f"- CPU: {info['cpu']}",
        "- versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()),
        f"- commit: {info['commit']}{dirty}",
        f"- total: {total} s",
        "",
        markdown_table(
            ["step", "status", "seconds"], [[s["name"], s["status"], s["seconds"]] for s in steps]
        ),
    ]
    for name, tail in tails.items():
        lines += ["", f"## {name}", "", "```", tail, "```"]
    base.with_suffix(".md").write_text("\n".join(lines) + "\n")
    return base


def save_tiles(tiles: dict, path: str | Path) -> None:
    """Write a `kernels.damsm.TILES`-shaped table (kernel -> (16-bit entry, fp32 entry)) as JSON:
    what bench/tune_damsm_tiles.py --write-tiles suggests and bench_damsm.py --tiles measures."""
    Path(path).write_text(
        json.dumps(
            {kernel: [list(entry) for entry in pair] for kernel, pair in tiles.items()}, indent=1
        )
        + "\n"
    )


def load_tiles(path: str | Path, kernels: Sequence[str]) -> dict:
    """The table save_tiles wrote, as TILES holds it (tuples); one ValueError naming the file and
    the problem when it is missing, not JSON, or not one (BLOCK_R, captions per program,
    num_warps, num_stages) pair of positive integers for each of `kernels`."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as error:
        raise ValueError(
            f"tiles file {path}: {error}; write one with bench/tune_damsm_tiles.py --write-tiles"
        ) from None
    if not isinstance(data, dict) or sorted(data) != sorted(kernels):
        raise ValueError(
            f"tiles file {path}: needs exactly the kernels {sorted(kernels)}, got "
            f"{sorted(data) if isinstance(data, dict) else type(data).__name__}"
        )
    tiles = {}
    for kernel, pair in data.items():
        if not (
            isinstance(pair, list)
            and len(pair) == 2
            and all(
                isinstance(entry, list)
                and len(entry) == 4
                and all(isinstance(x, int) and not isinstance(x, bool) and x > 0 for x in entry)
                for entry in pair
            )
        ):
            raise ValueError(
                f"tiles file {path}: '{kernel}' must be two entries (16-bit, fp32) of "
                f"four positive integers (BLOCK_R, captions per program, num_warps, "
                f"num_stages), got {pair!r}"
            )
        tiles[kernel] = tuple(tuple(entry) for entry in pair)
    return tiles
