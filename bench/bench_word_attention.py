"""Benchmark of the generator's word attention, every provider (docs/DESIGN.md, "Benchmarks").

Providers: "reference" (vectorized PyTorch), "reference_compiled" (under torch.compile),
PyTorch's scaled_dot_product_attention with each backend forced ("sdpa_math",
"sdpa_efficient", "sdpa_flash", "sdpa_cudnn": the query viewed as [B, 1, R, C], the words as
keys and values, a boolean word mask, scale=1, the transposes back to channel-first timed too;
a backend that declines is listed as skipped with PyTorch's reason), and the fused kernels
"cpp", "triton", "cuda" where the device has them, and "auto", the public op's default, labelled
with the implementation it ran (on a GPU: the one it measured fastest at its first call, whose
timings the output lists; attngan.autotune); all through the public `word_attention`, context
only: SDPA returns no map. Passes "forward" and "forward+backward"; "cat-forward" and
"cat-forward+backward" (--cat-sizes only) time what the generator's next layer reads,
torch.cat([h, context], 1): the context then torch.cat, against "<impl>_concat", the kernel's
one-pass variant. Sizes: "cub64" / "cub128" B = 20, C = 32, L = 18; "coco64" / "coco128" B = 14,
C = 48, L = 12; "cpu" B = 4, C = 32, L = 18 at 32x32. Lengths ragged, uniform in L/2..L with a
fixed seed (--full-lengths: all L). GB/s by the byte count of docs/DESIGN.md.
    python bench/bench_word_attention.py [--device cuda] [--dtype bf16] [--sizes cub64,coco64]
                                         [--cat-sizes cub64] [--full-lengths] [--threads 1]
                                         [--lengths-on cpu|device] [--record]
    pytest bench/bench_word_attention.py    # pytest-benchmark, the "cpu" size
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
import warnings
from functools import partial
from pathlib import Path
from typing import Callable, Optional

import pytest
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (
    DTYPES,
    add_lengths_option,
    at_least,
    auto_lines,  # noqa: E402
    lengths_device,
    machine,
    machine_lines,
    markdown_table,
    median_seconds,
    peak_memory_bytes,
    provider_label,
    publish,
)

from attngan import autotune, backend  # noqa: E402

# attngan.ops re-exports the function under the module's name: fetch the module itself.
wa = importlib.import_module("attngan.ops.word_attention")

SIZES = {
    "cub64": dict(batch=20, channels=32, words=18, side=64),
    "cub128": dict(batch=20, channels=32, words=18, side=128),
    "coco64": dict(batch=14, channels=48, words=12, side=64),
    "coco128": dict(batch=14, channels=48, words=12, side=128),
    "cpu": dict(batch=4, channels=32, words=18, side=32),
}
# Defaults per device: on CUDA they fit bench/gpu_check.sh's two minutes (each size and pass
# compiles the reference once).
DEFAULT_SIZES = {"cpu": "cub64,coco64,cpu", "cuda": "cub64,cub128,coco64"}
DEFAULT_CAT_SIZES = {"cpu": "cub64,cpu", "cuda": "cub128"}
DEFAULT_MIN_TIME = {"cpu": 1.0, "cuda": 0.25}
PYTORCH_PROVIDERS = (
    "reference",
    "reference_compiled",
    "sdpa_math",
    "sdpa_efficient",
    "sdpa_flash",
    "sdpa_cudnn",
)
PROJECT_PROVIDERS = ("cpp", "triton", "cuda", "auto")
PASSES = ("forward", "forward+backward")
CAT_PASSES = ("cat-forward", "cat-forward+backward")


def make_inputs(
    size: dict,
    device: torch.device,
    dtype: torch.dtype,
    full_lengths: bool,
    seed: int = 0,
    lengths_on: Optional[torch.device] = None,
):
    """Features scaled so the scores h^T e' have unit spread (softmax neither uniform nor
    one-hot); the lengths on `lengths_on` (default `device`)."""
    generator = torch.Generator().manual_seed(seed)
    batch, channels, words, side = size["batch"], size["channels"], size["words"], size["side"]
    scale = channels**-0.25
    query = torch.randn(batch, channels, side, side, generator=generator) * scale
    projected = torch.randn(batch, channels, words, generator=generator) * scale
    if full_lengths:
        lengths = torch.full((batch,), words, dtype=torch.long)
    else:
        lengths = torch.randint(max(1, words // 2), words + 1, (batch,), generator=generator)
    # the gradient of [h; context]; its last C channels are the context's gradient
    grad_out = torch.randn(batch, 2 * channels, side, side, generator=generator)
    return (
        query.to(device, dtype),
        projected.to(device, dtype),
        lengths.to(lengths_on or device),
        grad_out.to(device, dtype),
    )


def byte_count(size: dict, dtype: torch.dtype, pass_name: str) -> int:
    """The least bytes any implementation moves (docs/DESIGN.md, "Benchmarks")."""
    element = torch.finfo(dtype).bits // 8
    maps = size["batch"] * size["channels"] * size["side"] ** 2
    words = size["batch"] * size["channels"] * size["words"]
    map_passes = {"forward": 2, "forward+backward": 5, "cat-forward": 3, "cat-forward+backward": 7}
    return element * (
        map_passes[pass_name] * maps + (3 if pass_name.endswith("backward") else 1) * words
    )


_SDPA_BACKENDS = {
    "sdpa_math": "MATH",
    "sdpa_efficient": "EFFICIENT_ATTENTION",
    "sdpa_flash": "FLASH_ATTENTION",
    "sdpa_cudnn": "CUDNN_ATTENTION",
}


def sdpa_word_attention(query, words, lengths, backend_name: str):
    """The same op through scaled_dot_product_attention with one backend forced."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    batch, channels, height, width = query.shape
    # The fused SDPA kernels want the last dimension contiguous: the copies are part of the cost.
    q = (
        query.reshape(batch, channels, height * width).transpose(1, 2).contiguous()[:, None]
    )  # [B, 1, R, C]
    kv = words.transpose(1, 2).contiguous()[:, None]  # [B, 1, L, C]
    keep = (
        torch.arange(words.shape[2], device=words.device)[None, :]
        < lengths.to(words.device, non_blocking=True)[:, None]
    )[:, None, None, :]  # [B, 1, 1, L]
    with sdpa_kernel(getattr(SDPBackend, backend_name)), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # why a backend declined: reported as skipped
        out = F.scaled_dot_product_attention(q, kv, kv, attn_mask=keep, scale=1.0)  # [B, 1, R, C]
    return out[:, 0].transpose(1, 2).reshape(batch, channels, height, width)


def unavailable(
    provider: str, device: torch.device, dtype: torch.dtype, size: dict
) -> Optional[str]:
    """None if the provider runs here (as far as can be told without running it), else why not."""
    if provider.startswith("sdpa_"):
        from torch.nn.attention import SDPBackend

        name = _SDPA_BACKENDS[provider]
        return None if hasattr(SDPBackend, name) else f"this torch has no SDPBackend.{name}"
    impl = _implementation(provider)
    if impl == "auto":
        return None
    reason = backend.unavailable_reason("word_attention", impl, device)
    return reason or wa._unsupported(impl, size["channels"], size["words"], dtype, str(device))


def _implementation(provider: str) -> str:
    """The word_attention impl behind a provider name."""
    return "reference" if provider == "reference_compiled" else provider.removesuffix("_concat")


def auto_choice(query, words, provider: str, pass_name: str, size: dict) -> dict:
    """The implementation auto runs for this provider and pass ("auto"), and the milliseconds it
    measured of each candidate ("auto_measured_ms"; None where it measured nothing, as on the
    CPU)."""
    backward = pass_name.endswith("backward")
    query_leaf, words_leaf = (t.detach().requires_grad_(backward) for t in (query, words))
    with torch.set_grad_enabled(backward):
        key = autotune.word_attention_key(
            query_leaf, words_leaf, "auto", False, provider.endswith("_concat")
        )
    impl = backend.choose(
        "word_attention",
        query.device,
        "auto",
        lambda name: unavailable(name, query.device, query.dtype, size),
        key=key,
    )
    return dict(auto=impl, auto_measured_ms=autotune.measured_ms(query.device, key, impl))


def _with_cat(function: Callable) -> Callable:
    def attention_then_cat(query, words, lengths):
        return torch.cat([query, function(query, words, lengths)], dim=1)

    return attention_then_cat


def make_call(
    provider: str, query, words, lengths, grad_out, pass_name: str
) -> Callable[[], object]:
    """One timed call: the pass's output, or it and the gradients of query and words."""
    cat = pass_name.startswith("cat-")
    if provider.startswith("sdpa_"):
        function = partial(sdpa_word_attention, backend_name=_SDPA_BACKENDS[provider])
    elif provider.endswith("_concat"):
        function = partial(wa.word_attention, impl=_implementation(provider), concat=True)
    else:
        function = partial(wa.word_attention, impl=_implementation(provider))
        function = _with_cat(function) if cat else function
    if provider == "reference_compiled":
        function = torch.compile(function, dynamic=False)
    grad = grad_out if cat else grad_out[:, query.shape[1] :].contiguous()
    backward = pass_name.endswith("backward")
    if not backward:

        def forward():
            with torch.no_grad():
                return function(query, words, lengths)

        return forward
    query_leaf = query.detach().requires_grad_()
    words_leaf = words.detach().requires_grad_()

    def forward_backward():
        out = function(query_leaf, words_leaf, lengths)
        return torch.autograd.grad(out, (query_leaf, words_leaf), grad)

    return forward_backward


def timed_in(provider: str, pass_name: str) -> bool:
    """SDPA is timed in the plain passes only, the _concat variants in the cat passes only."""
    cat = pass_name.startswith("cat-")
    if provider.startswith("sdpa_"):
        return not cat
    return cat if provider.endswith("_concat") else True


def pass_providers(pass_name: str, providers) -> list[str]:
    """Providers timed in a pass: each fused kernel followed by its _concat variant."""
    expanded = [
        name
        for provider in providers
        for name in (
            (provider, provider + "_concat") if provider in PROJECT_PROVIDERS else (provider,)
        )
    ]
    return [provider for provider in expanded if timed_in(provider, pass_name)]


def cpu_seconds(fn: Callable[[], object], min_run_time: float) -> tuple[float, float]:
    """(median, fastest) time of one call on CPU. On a shared machine the fastest block is the
    steadier number: other processes only ever add time."""
    from torch.utils import benchmark

    fn()
    timer = benchmark.Timer("fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
    measurement = timer.blocked_autorange(min_run_time=min_run_time)
    return measurement.median, min(measurement.times)


def run_benchmarks(
    device: torch.device,
    dtype: torch.dtype,
    size_names,
    providers,
    min_run_time: float,
    full_lengths: bool,
    cat_size_names=(),
    lengths_on: str = "cpu",
) -> list[dict]:
    rows = []
    for size_name in dict.fromkeys(list(size_names) + list(cat_size_names)):
        size = SIZES[size_name]
        query, words, lengths, grad_out = make_inputs(
            size, device, dtype, full_lengths, lengths_on=lengths_device(lengths_on, device)
        )
        passes = (PASSES if size_name in size_names else ()) + (
            CAT_PASSES if size_name in cat_size_names else ()
        )
        for pass_name in passes:
            nbytes = byte_count(size, dtype, pass_name)
            for provider in pass_providers(pass_name, providers):
                reason = unavailable(provider, device, dtype, size)
                call = (
                    None
                    if reason
                    else make_call(provider, query, words, lengths, grad_out, pass_name)
                )
                started = time.perf_counter()
                try:
                    if call is not None:
                        call()  # warm-up (and compilation for reference_compiled)
                except RuntimeError as error:  # e.g. an SDPA backend refusing the mask or dtype
                    reason = str(error).strip().splitlines()[0][:160]
                if reason is not None:
                    print(f"  {size_name} {pass_name} {provider}: skipped ({reason})", flush=True)
                    rows.append(
                        dict(
                            size=size_name,
                            **size,
                            pass_=pass_name,
                            provider=provider,
                            skipped=reason,
                        )
                    )
                    continue
                warmup = time.perf_counter() - started
                auto = (
                    auto_choice(query, words, provider, pass_name, size)
                    if provider.startswith("auto")
                    else {}
                )
                if device.type == "cpu":
                    seconds, fastest = cpu_seconds(call, min_run_time)
                else:
                    seconds, fastest = median_seconds(call, device, min_run_time), None
                peak = peak_memory_bytes(call, device)
                rows.append(
                    dict(
                        size=size_name,
                        **size,
                        dtype=str(dtype).split(".")[1],
                        lengths=lengths.tolist(),
                        pass_=pass_name,
                        provider=provider,
                        median_ms=seconds * 1e3,
                        min_ms=None if fastest is None else fastest * 1e3,
                        first_call_s=warmup,
                        mbytes=nbytes / 1e6,
                        **auto,
                        gbps=nbytes / seconds / 1e9,
                        peak_mib=None if peak is None else peak / 2**20,
                    )
                )
                print(f"  {size_name} {pass_name} {provider}: {seconds * 1e3:.2f} ms", flush=True)
    for row in rows:
        if "skipped" in row:
            continue
        same = [
            r
            for r in rows
            if r["size"] == row["size"] and r["pass_"] == row["pass_"] and "skipped" not in r
        ]
        # the cat passes' rows for one kernel: the fused variant against attention + torch.cat
        unfused = next(
            (r["median_ms"] for r in same if r["provider"] + "_concat" == row["provider"]), None
        )
        row["speedup_vs_attention_then_cat"] = unfused / row["median_ms"] if unfused else None
        eager = next((r["median_ms"] for r in same if r["provider"] == "reference"), None)
        pytorch = [r["median_ms"] for r in same if r["provider"] in PYTORCH_PROVIDERS]
        row["speedup_vs_reference"] = eager / row["median_ms"] if eager else None
        row["speedup_vs_best_pytorch"] = min(pytorch) / row["median_ms"] if pytorch else None
        eager_min = next((r["min_ms"] for r in same if r["provider"] == "reference"), None)
        row["speedup_vs_reference_min"] = (
            eager_min / row["min_ms"] if eager_min and row["min_ms"] else None
        )
    return rows


def render(rows: list[dict], info: dict, dtype: torch.dtype, full_lengths: bool) -> str:
    def fmt(value, spec):
        return "-" if value is None else format(value, spec)

    headers = [
        "size",
        "pass",
        "provider",
        "median ms",
        "x reference",
        "x best PyTorch",
        "GB/s",
        "min ms",
        "x reference (min)",
        "x same kernel + cat",
        "peak MiB",
    ]
    body = []
    for r in rows:
        label = f"{r['size']} (B={r['batch']} C={r['channels']} L={r['words']} {r['side']}²)"
        if "skipped" in r:
            body.append([label, r["pass_"], r["provider"], "skipped: " + r["skipped"]] + [""] * 7)
            continue
        body.append(
            [
                label,
                r["pass_"],
                provider_label(r),
                fmt(r["median_ms"], ".2f"),
                fmt(r["speedup_vs_reference"], ".2f"),
                fmt(r["speedup_vs_best_pytorch"], ".2f"),
                fmt(r["gbps"], ".1f"),
                fmt(r["min_ms"], ".2f"),
                fmt(r["speedup_vs_reference_min"], ".2f"),
                fmt(r["speedup_vs_attention_then_cat"], ".2f"),
                fmt(r["peak_mib"], ".1f"),
            ]
        )
    return "\n".join(
        [
            f"# Word attention, {info['device']} {str(dtype).split('.')[1]}, "
            f"{info['date_utc']} UTC",
            "",
            *machine_lines(info),
            "- lengths: "
            + ("all L" if full_lengths else "ragged, uniform in L/2..L (seed 0)")
            + "; context only (no map); GB/s over the minimum bytes of docs/DESIGN.md;"
            " cat-* passes output torch.cat([h, context], 1)",
            "",
            markdown_table(headers, body),
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
        help="comma list of: " + ",".join(SIZES) + " (default: per device; 'none' for none)",
    )
    parser.add_argument(
        "--cat-sizes",
        default=None,
        help="sizes for the cat-* passes, [h; context] (default: per device; 'none' for none)",
    )
    parser.add_argument("--providers", default=",".join(PYTORCH_PROVIDERS + PROJECT_PROVIDERS))
    parser.add_argument("--full-lengths", action="store_true", help="every caption has all L words")
    parser.add_argument(
        "--threads",
        type=at_least(1),
        default=None,
        help="CPU threads (default: torch's; one thread is the steadier number on "
        "a shared machine, where a busy core stalls the other thread)",
    )
    parser.add_argument(
        "--min-time",
        type=at_least(0.01, float),
        default=None,
        help="seconds of timed runs per measurement (default 1 on CPU, 0.25 on CUDA)",
    )
    parser.add_argument(
        "--record", action="store_true", help="write JSON and markdown to bench/results/"
    )
    add_lengths_option(parser)
    args = parser.parse_args(argv)
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    def size_list(given: Optional[str], default: str) -> list[str]:
        return [s for s in (given or default).split(",") if s and s != "none"]

    sizes = size_list(args.sizes, DEFAULT_SIZES[device.type])
    cat_sizes = size_list(args.cat_sizes, DEFAULT_CAT_SIZES[device.type])
    unknown = [s for s in sizes + cat_sizes if s not in SIZES]
    if unknown:
        parser.error(f"unknown size(s) {unknown}; choose from {list(SIZES)}")
    info = dict(machine(device), lengths_on=args.lengths_on)
    min_time = args.min_time if args.min_time is not None else DEFAULT_MIN_TIME[device.type]
    rows = run_benchmarks(
        device,
        dtype,
        sizes,
        args.providers.split(","),
        min_time,
        args.full_lengths,
        cat_sizes,
        args.lengths_on,
    )
    text = render(rows, info, dtype, args.full_lengths)
    publish("word_attention", info, rows, text, args.record)
    return 0


# ------------------------------------------------------------------------ pytest-benchmark

_DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


@pytest.mark.parametrize("pass_name", PASSES + CAT_PASSES)
@pytest.mark.parametrize(
    "provider",
    ["reference", "sdpa_math"]
    + list(PROJECT_PROVIDERS)
    + [p + "_concat" for p in PROJECT_PROVIDERS],
)
def test_word_attention(benchmark, provider, pass_name):
    size = SIZES["cpu"]
    if not timed_in(provider, pass_name):
        pytest.skip(f"{provider} is not timed in the {pass_name} pass")
    reason = unavailable(provider, _DEVICE, torch.float32, size)
    if reason is not None:
        pytest.skip(reason)
    query, words, lengths, grad_out = make_inputs(
        size, _DEVICE, torch.float32, False, lengths_on=torch.device("cpu")
    )
    call = make_call(provider, query, words, lengths, grad_out, pass_name)
    timed = call if _DEVICE.type == "cpu" else (lambda: (call(), torch.cuda.synchronize()))
    benchmark.extra_info.update(
        mbytes=byte_count(size, torch.float32, pass_name) / 1e6,
        device=_DEVICE.type,
        threads=torch.get_num_threads(),
        **size,
    )
    benchmark.pedantic(timed, rounds=5, warmup_rounds=1)


if __name__ == "__main__":
    sys.exit(main())
