"""Time candidate tile sizes of the Triton DAMSM kernels on a GPU and print the table to keep.

Each of the three kernels of kernels/damsm.py (forward, region gradient, word gradient) has a
(largest BLOCK_R, captions per program, num_warps, num_stages) entry of `kernels.damsm.TILES`
per dtype class. Candidates are tried for one kernel at a time, the others at their current
entries, timing the op that kernel dominates (forward: damsm_word_similarity_fwd; regions: the
backward without the word gradient; words: the backward with both); each candidate's outputs are
compared with the current entries' (one off by more than MISMATCH is never suggested) and its
time is a ratio to the current entry's in the same run. Each kernel gets an equal share of
--max-seconds (bench/gpu_check.sh gives the sweep 70 s). CUB size, CUDA only (on the CPU the
interpreter's timings mean nothing; tests/test_tune_damsm_tiles.py runs `sweep` there).

    python bench/tune_damsm_tiles.py [--dtype bf16] [--kernels forward,regions,words]
                                     [--max-seconds 75] [--record] [--write-tiles FILE]

--write-tiles writes the table with the suggested entries as JSON for bench_damsm.py --tiles.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_damsm import SIZES, make_inputs  # noqa: E402
from common import (
    DTYPES,
    at_least,
    machine,
    machine_lines,
    markdown_table,  # noqa: E402
    median_seconds,
    publish,
    save_tiles,
)

from attngan.kernels import damsm as tk  # noqa: E402

KERNELS = ("forward", "regions", "words")
MISMATCH = (
    1e-2  # relative difference to the current entry's outputs beyond which a candidate is wrong
)
GAMMA1, GAMMA2 = 4.0, 5.0


# Per kernel, (BLOCK_R, captions per program, num_warps, num_stages) to try, the likeliest first,
# since each kernel's share of the time covers a handful: first the bf16 tiles that ptxas compiles
# for sm_90 without spills at the CUB size (tests/triton_sm90.py), wider region tiles (64 and
# more regions put every forward product on wgmma) and two captions per program (products twice
# as wide, each block of regions read once per pair of captions), then tiles that spill a little.
CANDIDATES = {
    "forward": [
        (64, 1, 8, 2),
        (128, 1, 8, 2),
        (64, 2, 8, 2),
        (32, 2, 8, 2),
        (64, 1, 4, 2),
        (32, 1, 8, 3),
        (16, 1, 8, 2),
        (32, 4, 8, 2),
    ],
    "regions": [
        (32, 1, 8, 3),
        (32, 1, 8, 2),
        (16, 2, 8, 3),
        (32, 2, 8, 2),
        (64, 1, 8, 2),
        (16, 1, 8, 2),
        (16, 4, 8, 3),
        (32, 1, 4, 2),
    ],
    "words": [
        (32, 1, 8, 2),
        (16, 2, 8, 2),
        (32, 1, 8, 3),
        (32, 2, 8, 2),
        (64, 1, 8, 2),
        (16, 1, 8, 3),
        (16, 4, 8, 2),
        (32, 1, 4, 2),
    ],
}


def _op(kernel: str, words, lengths, regions, grad_s):
    """The call whose time the kernel's tiles decide."""
    if kernel == "forward":
        return lambda: (tk.damsm_word_similarity_fwd(words, lengths, regions, GAMMA1, GAMMA2),)
    need_words_grad = kernel == "words"
    return lambda: tk.damsm_word_similarity_bwd(
        grad_s, words, lengths, regions, GAMMA1, GAMMA2, need_words_grad
    )


def _with_entry(pair: tuple, slot: int, config) -> tuple:
    """A TILES pair (16-bit entry, fp32 entry) with its `slot` entry replaced by `config`."""
    entry = list(pair)
    entry[slot] = tuple(config)
    return tuple(entry)


def _relative_difference(outputs, expected) -> float:
    return max(
        ((o.double() - e.double()).norm() / e.double().norm().clamp(min=1e-30)).item()
        for o, e in zip(outputs, expected)
        if e.numel()
    )


def sweep(
    kernels,
    configs: dict,
    device: torch.device,
    dtype: torch.dtype,
    size: dict,
    max_seconds: float,
    min_run_time: float = 0.25,
) -> list[dict]:
    """One row per (kernel, candidate) tried: time, ratio to the current entry, difference.
    configs: kernel -> the candidates to try for it, in order."""
    words, lengths, regions, grad_s = make_inputs(size, device, dtype, ragged=True)
    slot = tk.tile_slot(dtype)
    current = dict(tk.TILES)
    rows = []
    try:
        for kernel in kernels:
            start = time.monotonic()
            call = _op(kernel, words, lengths, regions, grad_s)
            expected = call()
            baseline = median_seconds(call, device, min_run_time)
            rows.append(
                dict(
                    kernel=kernel,
                    config=current[kernel][slot],
                    current=True,
                    ms=baseline * 1e3,
                    vs_current=1.0,
                    difference=0.0,
                )
            )
            for config in configs[kernel]:
                if config == current[kernel][slot]:
                    continue
                if time.monotonic() - start > max_seconds / len(kernels):
                    rows.append(dict(kernel=kernel, config=None, stopped=True))
                    break
                tk.TILES[kernel] = _with_entry(current[kernel], slot, config)
                try:
                    difference = _relative_difference(call(), expected)
                    seconds = median_seconds(call, device, min_run_time)
                    rows.append(
                        dict(
                            kernel=kernel,
                            config=config,
                            current=False,
                            ms=seconds * 1e3,
                            vs_current=baseline / seconds,
                            difference=difference,
                        )
                    )
                except Exception as error:  # e.g. out of shared memory for this tile: skip it
                    rows.append(
                        dict(
                            kernel=kernel,
                            config=config,
                            current=False,
                            error=f"{type(error).__name__}: {str(error).splitlines()[0][:100]}",
                        )
                    )
                finally:
                    tk.TILES[kernel] = current[kernel]
    finally:
        tk.TILES.update(current)
    return rows


def best(rows: list[dict], kernel: str):
    """The fastest candidate of `kernel` whose outputs agree with the current entry's."""
    valid = [r for r in rows if r["kernel"] == kernel and "ms" in r and r["difference"] <= MISMATCH]
    return min(valid, key=lambda r: r["ms"]) if valid else None


def tuned_tiles(rows: list[dict], dtype: torch.dtype) -> dict:
    """kernels.damsm.TILES with each swept kernel's fastest agreeing candidate in the `dtype` slot
    (the current entry where none agrees)."""
    slot, tiles = tk.tile_slot(dtype), dict(tk.TILES)
    for kernel in dict.fromkeys(r["kernel"] for r in rows):
        winner = best(rows, kernel)
        if winner is not None:
            tiles[kernel] = _with_entry(tiles[kernel], slot, winner["config"])
    return tiles


def render(rows: list[dict], info: dict, dtype: torch.dtype) -> str:
    table = []
    for r in rows:
        if r.get("stopped"):
            table.append([r["kernel"], "stopped: its share of --max-seconds spent", "", "", ""])
        elif "error" in r:
            table.append([r["kernel"], str(r["config"]), "failed: " + r["error"], "", ""])
        else:
            flag = (
                " (current)"
                if r["current"]
                else (" MISMATCH" if r["difference"] > MISMATCH else "")
            )
            table.append(
                [
                    r["kernel"],
                    f"{r['config']}{flag}",
                    f"{r['ms']:.3f}",
                    f"{r['vs_current']:.2f}",
                    f"{r['difference']:.1e}",
                ]
            )
    slot = tk.tile_slot(dtype)
    suggestion = []
    for kernel in dict.fromkeys(r["kernel"] for r in rows):
        winner = best(rows, kernel)
        if winner is not None:
            suggestion.append(
                f"  {kernel}: {winner['config']} ({winner['vs_current']:.2f}x the current "
                f"{tk.TILES[kernel][slot]})"
            )
    name = str(dtype).split(".")[1]
    return "\n".join(
        [
            f"# Triton DAMSM tile candidates, {info['device']} {name}, {info['date_utc']} UTC",
            "",
            *machine_lines(info),
            "- (BLOCK_R, captions per program, num_warps, num_stages); ms: median of the op the "
            "kernel decides; x current: the current entry's time over the candidate's; "
            "difference: relative norm of the outputs' difference to the current entry's",
            "",
            markdown_table(["kernel", "candidate", "ms", "x current", "difference"], table),
            "",
            f"Fastest agreeing candidate per kernel (the {name} slot of kernels.damsm.TILES):",
            *suggestion,
        ]
    )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dtype", default="bf16", choices=sorted(DTYPES))
    parser.add_argument("--kernels", default=",".join(KERNELS))
    parser.add_argument(
        "--max-seconds",
        type=at_least(1.0, float),
        default=75.0,
        help="start no new candidate after this many seconds",
    )
    parser.add_argument(
        "--record", action="store_true", help="write JSON and markdown to bench/results/"
    )
    parser.add_argument(
        "--write-tiles",
        metavar="FILE",
        help="write kernels.damsm.TILES with the suggested entries as JSON (for "
        "bench_damsm.py --tiles FILE)",
    )
    args = parser.parse_args(argv)
    device, dtype = torch.device("cuda"), DTYPES[args.dtype]
    if not torch.cuda.is_available():
        parser.error("no CUDA device is available: tile timings need a GPU")
    kernels = [k for k in args.kernels.split(",") if k]
    unknown = [k for k in kernels if k not in KERNELS]
    if unknown:
        parser.error(f"unknown kernel(s) {unknown}; choose from {list(KERNELS)}")
    info = machine(device)
    rows = sweep(kernels, CANDIDATES, device, dtype, SIZES["cub"], args.max_seconds)
    text = render(rows, info, dtype)
    publish("damsm_tiles", info, rows, text, args.record)
    if args.write_tiles:
        save_tiles(tuned_tiles(rows, dtype), args.write_tiles)
        print(f"wrote {args.write_tiles}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
