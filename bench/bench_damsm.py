"""Benchmark of the DAMSM word-level similarity, every provider, two sizes.

What is timed and counted: docs/DESIGN.md, "Benchmarks".
Providers: "loop" (the original's per-caption loop), "reference" (vectorized PyTorch),
"reference_compiled" (the same under torch.compile), the fused kernels "cpp", "triton", "cuda"
where the device has them, and "auto", the public op's default, labelled with the implementation
it ran (on a GPU: the one it measured fastest at its first call, whose timings the output lists;
attngan.autotune), all through the public `damsm_word_similarity` (so all follow its precision
policy). Passes: "forward", "forward+backward" (both gradients, as in DAMSM pretraining) and
"forward+backward_regions" (the regions' only, as in the GAN step). Sizes: "cub" B_img = B_cap =
48, D = 256, L = 18, R = 289, and "cpu" the same with B = 32; every caption has all L words.
GFLOP/s by the FLOP count of docs/DESIGN.md, against the machine's own square-matmul rate in the
same dtype, measured in the same run.

    python bench/bench_damsm.py [--device cuda] [--dtype bf16] [--sizes cub,cpu] [--record]
                                [--providers loop,reference,cpp] [--min-time 1.0]
                                [--tiles FILE]   (Triton tiles from tune_damsm_tiles.py)
                                [--lengths-on cpu|device]   (default cpu, as in training)
                                [--matmul-precision highest|high|medium]   (default highest)
    pytest bench/bench_damsm.py          # pytest-benchmark, the "cpu" size
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from functools import partial
from pathlib import Path
from typing import Callable, Optional

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (
    DTYPES,
    add_lengths_option,
    add_matmul_precision_option,  # noqa: E402
    at_least,
    auto_lines,
    interleaved_cpu_samples,
    lengths_device,
    load_tiles,
    machine,
    machine_lines,
    markdown_table,
    matmul_gflops,
    median_seconds,
    peak_memory_bytes,
    provider_label,
    publish,
)

from attngan import autotune, backend  # noqa: E402
from attngan.ops import damsm  # noqa: E402

SIZES = {
    "cub": dict(batch=48, dim=256, words=18, regions=289),
    "cpu": dict(batch=32, dim=256, words=18, regions=289),
}
PYTORCH_PROVIDERS = ("loop", "reference", "reference_compiled")
PROJECT_PROVIDERS = ("cpp", "triton", "cuda", "auto")
# forward; forward + gradients of words and regions (DAMSM pretraining); forward + gradient of
# the regions only (the GAN step: the text encoder is frozen).
PASSES = ("forward", "forward+backward", "forward+backward_regions")
# FLOP per word, per image, per D x R (docs/DESIGN.md, "Benchmarks")
FLOP_PER_DRN = {"forward": 4, "forward+backward": 12, "forward+backward_regions": 10}


def make_inputs(
    size: dict,
    device: torch.device,
    dtype: torch.dtype,
    seed: int = 0,
    scale: Optional[float] = None,
    ragged: bool = False,
    lengths_on: Optional[torch.device] = None,
):
    """Words, lengths (on `lengths_on`, default `device`), regions and an upstream gradient.
    Gaussian features times `scale`, by default D^-1/4 so that s = v^T e has unit spread
    (softmaxes neither uniform nor one-hot).
    With scale 1, s spreads ~ sqrt(D) = 16: one-hot word softmaxes whose tiny values (denormal
    floats) slow the PyTorch providers down. Every caption has all L words, or with `ragged`
    between L / 2 and L."""
    generator = torch.Generator().manual_seed(seed)
    scale = size["dim"] ** -0.25 if scale is None else scale
    words = torch.randn(size["batch"], size["dim"], size["words"], generator=generator) * scale
    regions = torch.randn(size["batch"], size["dim"], size["regions"], generator=generator) * scale
    if ragged:
        lengths = torch.randint(
            max(1, size["words"] // 2), size["words"] + 1, (size["batch"],), generator=generator
        )
    else:
        lengths = torch.full((size["batch"],), size["words"], dtype=torch.long)
    grad_s = torch.randn(size["batch"], size["batch"], generator=generator)
    return (
        words.to(device, dtype),
        lengths.to(lengths_on or device),
        regions.to(device, dtype),
        grad_s.to(device),
    )


def flop_count(
    num_images: int, lengths: torch.Tensor, dim: int, num_regions: int, pass_name: str
) -> int:
    return FLOP_PER_DRN[pass_name] * num_images * int(lengths.sum()) * dim * num_regions


def unavailable(provider: str, words: torch.Tensor, regions: torch.Tensor) -> Optional[str]:
    """None if the provider runs on these inputs here, else why not."""
    if provider == "auto":
        return None
    impl = "reference" if provider == "reference_compiled" else provider
    reason = backend.unavailable_reason("damsm_word_similarity", impl, words.device)
    return reason or damsm._unsupported(
        impl, words.dtype, words.device, damsm._shape_reasons(words, regions)
    )


def make_call(
    provider: str, words, lengths, regions, grad_s, pass_name: str
) -> Callable[[], object]:
    """One timed call: S, or S and the gradients the pass asks for."""
    if provider == "reference_compiled":
        function = torch.compile(
            partial(damsm.damsm_word_similarity, impl="reference"), dynamic=False
        )
    else:
        function = partial(damsm.damsm_word_similarity, impl=provider)
    if pass_name == "forward":

        def forward():
            with torch.no_grad():
                return function(words, lengths, regions)

        return forward
    words_leaf, regions_leaf = pass_inputs(words, regions, pass_name)
    leaves = (words_leaf, regions_leaf) if words_leaf.requires_grad else (regions_leaf,)

    def forward_backward():
        similarity = function(words_leaf, lengths, regions_leaf)
        return torch.autograd.grad(similarity, leaves, grad_s)

    return forward_backward


def pass_inputs(words, regions, pass_name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Words and regions as leaves needing the gradients the pass asks for."""
    return (
        words.detach().requires_grad_(pass_name == "forward+backward"),
        regions.detach().requires_grad_(pass_name != "forward"),
    )


def auto_choice(words, regions, pass_name: str) -> dict:
    """The implementation auto runs in this pass ("auto"), and the milliseconds it measured of
    each candidate ("auto_measured_ms"; None where it measured nothing, as on the CPU)."""
    words_leaf, regions_leaf = pass_inputs(words, regions, pass_name)
    with torch.set_grad_enabled(pass_name != "forward"):
        key = autotune.damsm_key(words_leaf, regions_leaf, words.dtype, "auto")
    impl = backend.choose(
        "damsm_word_similarity",
        words.device,
        "auto",
        lambda name: unavailable(name, words, regions),
        key,
    )
    return dict(auto=impl, auto_measured_ms=autotune.measured_ms(words.device, key, impl))


def run_benchmarks(
    device: torch.device,
    dtype: torch.dtype,
    size_names,
    passes,
    providers,
    min_run_time: float,
    rounds: int,
    scale: Optional[float] = None,
    lengths_on: str = "cpu",
) -> tuple[list[dict], float]:
    matmul = matmul_gflops(device, dtype, min_run_time=min_run_time)
    print(f"machine {dtype} matmul: {matmul:.0f} GFLOP/s", flush=True)
    rows = []
    for size_name in size_names:
        size = SIZES[size_name]
        words, lengths, regions, grad_s = make_inputs(
            size, device, dtype, scale=scale, lengths_on=lengths_device(lengths_on, device)
        )
        for pass_name in passes:
            flop = flop_count(size["batch"], lengths, size["dim"], size["regions"], pass_name)
            calls, first_call = {}, {}
            for provider in providers:
                reason = unavailable(provider, words, regions)
                if reason is not None:
                    print(f"  {size_name} {pass_name} {provider}: skipped ({reason})", flush=True)
                    continue
                calls[provider] = make_call(provider, words, lengths, regions, grad_s, pass_name)
                started = time.perf_counter()
                calls[provider]()  # warm-up (compilation for reference_compiled, auto measures)
                first_call[provider] = time.perf_counter() - started
            auto = auto_choice(words, regions, pass_name) if "auto" in calls else {}
            if device.type == "cpu":
                samples = interleaved_cpu_samples(calls, rounds)
                medians = {p: statistics.median(t) for p, t in samples.items()}
                minima = {p: min(t) for p, t in samples.items()}
            else:
                medians = {
                    p: median_seconds(call, device, min_run_time) for p, call in calls.items()
                }
                minima = {p: None for p in calls}
            for provider, call in calls.items():
                seconds, peak = medians[provider], peak_memory_bytes(call, device)
                rows.append(
                    dict(
                        size=size_name,
                        **size,
                        dtype=str(dtype).split(".")[1],
                        feature_scale=scale or size["dim"] ** -0.25,
                        pass_=pass_name,
                        provider=provider,
                        median_ms=seconds * 1e3,
                        min_ms=None if minima[provider] is None else minima[provider] * 1e3,
                        first_call_s=first_call[provider],
                        gflop=flop / 1e9,
                        **(auto if provider == "auto" else {}),
                        gflops=flop / seconds / 1e9,
                        matmul_gflops=matmul,
                        peak_mib=None if peak is None else peak / 2**20,
                    )
                )
                print(f"  {size_name} {pass_name} {provider}: {seconds * 1e3:.1f} ms", flush=True)
    for row in rows:
        same = [r for r in rows if r["size"] == row["size"] and r["pass_"] == row["pass_"]]
        loop = next((r["median_ms"] for r in same if r["provider"] == "loop"), None)
        pytorch = [r["median_ms"] for r in same if r["provider"] in PYTORCH_PROVIDERS]
        row["speedup_vs_loop"] = loop / row["median_ms"] if loop else None
        row["speedup_vs_best_pytorch"] = min(pytorch) / row["median_ms"] if pytorch else None
    return rows, matmul


def render(rows: list[dict], info: dict, dtype: torch.dtype) -> str:
    """The markdown of a run: machine, matmul rate, the Triton tiles measured, the table."""

    def fmt(value, spec):
        return "-" if value is None else format(value, spec)

    def fmt_ms(value):  # GPU times are fractions of a millisecond
        return fmt(value, ".1f" if value is None or value >= 10 else ".3f")

    headers = [
        "size",
        "pass",
        "provider",
        "median ms",
        "min ms",
        "x loop",
        "x best PyTorch",
        "GFLOP/s",
        "% matmul",
        "peak MiB",
    ]
    table = markdown_table(
        headers,
        [
            [
                f"{r['size']} (B={r['batch']})",
                r["pass_"],
                provider_label(r),
                fmt_ms(r["median_ms"]),
                fmt_ms(r["min_ms"]),
                fmt(r["speedup_vs_loop"], ".2f"),
                fmt(r["speedup_vs_best_pytorch"], ".2f"),
                fmt(r["gflops"], ".1f"),
                fmt(100 * r["gflops"] / r["matmul_gflops"], ".0f"),
                fmt(r["peak_mib"], ".1f"),
            ]
            for r in rows
        ],
    )
    matmul = rows[0]["matmul_gflops"] if rows else None
    tiles = info.get("triton_tiles")
    source = f", from {tiles['file']}" if tiles and tiles["file"] else ""
    tiles_line = (
        [
            f"- Triton tiles (kernels.damsm.TILES; per kernel the 16-bit and the fp32 "
            f"entry): {tiles['table']}{source}"
        ]
        if tiles
        else []
    )
    return "\n".join(
        [
            f"# DAMSM word similarity, {info['device']} {str(dtype).split('.')[1]}, "
            f"{info['date_utc']} UTC",
            "",
            *machine_lines(info),
            f"- machine matmul ({str(dtype).split('.')[1]}): {fmt(matmul, '.0f')} GFLOP/s; "
            "FLOP counts in docs/DESIGN.md; D=256, L=18 (all words valid), R=289; "
            f"features N(0, 1) x {rows[0]['feature_scale'] if rows else '-'}",
            *tiles_line,
            "",
            table,
            *auto_lines(rows),
        ]
    )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--dtype", default="fp32", choices=sorted(DTYPES))
    parser.add_argument(
        "--sizes",
        default=None,
        help="comma list of: " + ",".join(SIZES) + " (default: both on CPU, "
        "cub on CUDA, where compiling the reference per size takes the time)",
    )
    parser.add_argument("--providers", default=",".join(PYTORCH_PROVIDERS + PROJECT_PROVIDERS))
    parser.add_argument(
        "--passes",
        default=None,
        help="comma list of: " + ",".join(PASSES) + " (default: all on CPU, the first two on CUDA)",
    )
    parser.add_argument(
        "--min-time",
        type=at_least(0.01, float),
        default=1.0,
        help="seconds of timed runs per measurement on CUDA and for the matmul rate (default 1)",
    )
    parser.add_argument(
        "--rounds",
        type=at_least(1),
        default=7,
        help="CPU: timed calls per provider, interleaved over the providers (default 7)",
    )
    parser.add_argument(
        "--scale",
        type=at_least(1e-6, float),
        default=None,
        help="feature scale (default D^-1/4: s = v^T e of unit spread)",
    )
    parser.add_argument(
        "--threads",
        type=at_least(1),
        default=None,
        help="CPU threads (torch.set_num_threads); default: torch's choice",
    )
    parser.add_argument(
        "--record", action="store_true", help="write JSON and markdown to bench/results/"
    )
    parser.add_argument(
        "--tiles",
        metavar="FILE",
        help="measure the Triton kernels with this kernels.damsm.TILES table "
        "(JSON, as bench/tune_damsm_tiles.py --write-tiles writes it)",
    )
    add_lengths_option(parser)
    add_matmul_precision_option(parser)
    args = parser.parse_args(argv)
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    torch.set_float32_matmul_precision(args.matmul_precision)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")
    sizes = [
        s for s in (args.sizes or ("cub" if device.type == "cuda" else "cub,cpu")).split(",") if s
    ]
    unknown = [s for s in sizes if s not in SIZES]
    if unknown:
        parser.error(f"unknown size(s) {unknown}; choose from {list(SIZES)}")
    providers = [p for p in args.providers.split(",") if p]
    unknown = [p for p in providers if p not in PYTORCH_PROVIDERS + PROJECT_PROVIDERS]
    if unknown:
        parser.error(
            f"unknown provider(s) {unknown}; choose from "
            f"{list(PYTORCH_PROVIDERS + PROJECT_PROVIDERS)}"
        )
    passes = [
        p
        for p in (
            args.passes or (",".join(PASSES[:2]) if device.type == "cuda" else ",".join(PASSES))
        ).split(",")
        if p
    ]
    unknown = [p for p in passes if p not in PASSES]
    if unknown:
        parser.error(f"unknown pass(es) {unknown}; choose from {list(PASSES)}")
    info = dict(machine(device), lengths_on=args.lengths_on)
    triton_runs = backend.unavailable_reason("damsm_word_similarity", "triton", device) is None
    if "triton" in providers and triton_runs:
        from attngan.kernels import damsm as triton_damsm

        if args.tiles:
            try:
                triton_damsm.TILES.update(load_tiles(args.tiles, list(triton_damsm.TILES)))
            except ValueError as error:
                parser.error(str(error))
        info["triton_tiles"] = dict(table=dict(triton_damsm.TILES), file=args.tiles)
    elif args.tiles:
        parser.error(
            "--tiles sets the Triton kernels' tiles, but the triton provider does not "
            "run here (not in --providers, or unavailable on this device)"
        )
    rows, _ = run_benchmarks(
        device,
        dtype,
        sizes,
        passes,
        providers,
        args.min_time,
        args.rounds,
        args.scale,
        args.lengths_on,
    )
    text = render(rows, info, dtype)
    publish("damsm", info, rows, text, args.record)
    return 0


# ------------------------------------------------------------------------ pytest-benchmark

_DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


@pytest.mark.parametrize("pass_name", PASSES)
@pytest.mark.parametrize("provider", list(PYTORCH_PROVIDERS[:2] + PROJECT_PROVIDERS))
def test_damsm_word_similarity(benchmark, provider, pass_name):
    size = SIZES["cpu"]
    words, lengths, regions, grad_s = make_inputs(
        size, _DEVICE, torch.float32, lengths_on=torch.device("cpu")
    )
    reason = unavailable(provider, words, regions)
    if reason is not None:
        pytest.skip(reason)
    call = make_call(provider, words, lengths, regions, grad_s, pass_name)
    timed = call if _DEVICE.type == "cpu" else (lambda: (call(), torch.cuda.synchronize()))
    benchmark.extra_info.update(
        gflop=flop_count(size["batch"], lengths, size["dim"], size["regions"], pass_name) / 1e9,
        device=_DEVICE.type,
        threads=torch.get_num_threads(),
        **size,
    )
    benchmark.pedantic(timed, rounds=3, warmup_rounds=1)


if __name__ == "__main__":
    sys.exit(main())
