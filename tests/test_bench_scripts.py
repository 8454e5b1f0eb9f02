"""The benchmark scripts as gpu_check.sh runs them, on the CPU at small settings: each exits 0
and prints its table with a row per provider, writing no file without --record (a benchmark
broken here would otherwise be found only in a GPU session's few minutes)."""

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Optional

import pytest
import torch

from attngan import backend

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
import bench_train_step  # noqa: E402


def _with_cpp(op: str, providers: list[str]) -> list[str]:
    """`providers` and the C++ kernel of `op` where it was built."""
    built = backend.unavailable_reason(op, "cpp", torch.device("cpu")) is None
    return providers + ["cpp"] * built


def _output(script: str, *args: str, threads: Optional[int] = None) -> str:
    """Run bench/<script> with `args` (with `threads`: that many torch threads); return what it
    printed (it must exit 0 and record nothing)."""
    env = None if threads is None else {**os.environ, "OMP_NUM_THREADS": str(threads)}
    result = subprocess.run(
        [sys.executable, f"bench/{script}", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "recorded" not in result.stdout
    return result.stdout


def _table_rows(output: str) -> list[list[str]]:
    """The cells of the data rows of the markdown table in a benchmark's output."""
    lines = [line for line in output.splitlines() if line.startswith("| ")]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[1:]]


@pytest.mark.parametrize("stage", ["gan", "damsm"])
def test_train_step_ladder(stage):
    """The ladder as gpu_check.sh runs it, but for the slow rows (compile: minutes on this CPU),
    on one thread (two threads contend on a shared 2-core machine: several times slower): the
    rows asked for in ladder order, the GPU-only ones shown as not applicable with why, and the
    fastest row's profile."""
    rows = "faithful,fused,tf32,bf16,fused_adam,cuda_graphs"
    output = _output(
        "bench_train_step.py",
        "--stage",
        stage,
        "--rows",
        rows,
        "--min-time",
        "0",
        "--profile",
        "1",
        threads=1,
    )
    table = _table_rows(output.split("\n## ")[0])
    assert [row[0] for row in table] == rows.split(",")
    by_name = {row[0]: row for row in table}
    assert by_name["tf32"][2] == "not applicable" and "TF32 is a format" in by_name["tf32"][1]
    assert by_name["cuda_graphs"][2] == "not applicable"
    measured = [row for row in table if row[2] != "not applicable"]
    assert len(measured) == 4 and all(float(row[2]) > 0 and float(row[5]) > 0 for row in measured)
    assert measured[0][4] == "1.00x"
    fastest = output.split("fastest row: ")[1].split()[0]
    assert fastest in by_name
    profile = output.split("\n## Where the time goes: ")[1]
    assert profile.startswith(fastest)
    ops = _table_rows(profile)
    shares = [float(row[3].rstrip(" %")) for row in ops]
    assert len(ops) >= 5 and all(row[0].startswith("`") for row in ops)
    assert shares == sorted(shares, reverse=True) and 0 < sum(shares) <= 100.1


def test_ladder_counts_what_the_host_launches():
    """launch_count on profiler events as torch.profiler gives them: on a GPU the runtime calls
    that queue work; on the CPU each op once at its top level (not the ops it calls), compiled
    kernels too, allocations and views not (a conversion that copied is counted)."""

    def event(name, parent=None):
        made = SimpleNamespace(name=name, cpu_parent=parent, cpu_children=[])
        if parent is not None:
            parent.cpu_children.append(made)
        return made

    conv = event("aten::conv2d")
    backward = event("autograd::engine::evaluate_function: ConvolutionBackward0")
    compiled = event("Torch-Compiled Region: 0/0")
    converts, keeps = event("aten::to"), event("aten::to")
    cpu_events = [
        conv,
        event("aten::convolution", conv),
        event("aten::empty", conv),
        backward,
        event("aten::convolution_backward", backward),
        event("aten::empty_strided"),
        event("graph_0_cpp_fused_relu_0", compiled),
        compiled,
        event("attngan_C::word_attention_fwd"),
        event("aten::detach"),
        converts,
        event("aten::_to_copy", converts),
        keeps,
    ]
    assert bench_train_step.launch_count(cpu_events, cuda=False) == 5
    gpu_events = [
        event("cudaLaunchKernel", conv),
        event("cuLaunchKernel"),
        event("cudaGraphLaunch"),
        event("cudaMemcpyAsync"),
        event("cudaStreamSynchronize"),
    ]
    assert bench_train_step.launch_count(gpu_events, cuda=True) == 4


def _auto_label(op: str) -> str:
    """The "auto" provider's label on the CPU: the implementation auto keeps there."""
    return f"auto: {backend.choose(op, torch.device('cpu'))}"


def test_damsm_benchmark():
    providers = _with_cpp("damsm_word_similarity", ["loop", "reference"])
    output = _output(
        "bench_damsm.py",
        "--sizes",
        "cpu",
        "--providers",
        ",".join(providers + ["auto"]),
        "--passes",
        "forward",
        "--rounds",
        "1",
        "--min-time",
        "0.05",
        "--matmul-precision",
        "high",
    )
    rows = _table_rows(output)
    assert [row[2] for row in rows] == providers + [_auto_label("damsm_word_similarity")]
    assert all(float(row[3]) > 0 for row in rows)
    assert "- float32 matmul precision: high" in output


def test_word_attention_benchmark():
    providers = _with_cpp("word_attention", ["reference"])
    rows = _table_rows(
        _output(
            "bench_word_attention.py",
            "--sizes",
            "cub64",
            "--cat-sizes",
            "none",
            "--providers",
            ",".join(providers + ["auto"]),
            "--min-time",
            "0.05",
        )
    )
    labels = providers + [_auto_label("word_attention")]
    assert [(row[1], row[2]) for row in rows] == [
        (passes, label) for passes in ("forward", "forward+backward") for label in labels
    ]


def test_data_benchmark():
    """bench_data.py on 20 synthetic photos: a row per path, each costing CPU time, the first
    the baseline of the ratios, and the target's verdict."""
    output = _output(
        "bench_data.py", "--images", "20", "--epochs", "1", "--rounds", "1", "--workers", "0"
    )
    rows = _table_rows(output)
    assert [row[0] for row in rows] == [
        "decoded, float pyramid",
        "decoded, uint8",
        "image cache, uint8",
    ]
    assert all(float(row[1]) > 0 for row in rows) and rows[0][3] == "1.00"
    assert "Target, the cache at most 1/4 of the decoded float path's CPU time: " in output


def test_scaling_benchmark():
    """bench_scaling.py at world sizes 1 and 2 on the CPU: a row each, images/s from the step,
    the single process communicating nothing."""
    rows = _table_rows(_output("bench_scaling.py", "--steps", "1", "--world-sizes", "1,2"))
    assert [row[0] for row in rows] == ["1", "2"]
    assert all(float(row[1]) > 0 and float(row[2]) > 0 for row in rows)
    assert rows[0][3] == "1.00x" and rows[0][5] == "0.0 (0 %)"


def test_profile_summary_of_a_gpu_step():
    """bench_train_step's profile summary on events as torch.profiler gives them on a GPU (ops
    with the time of the kernels they launched, and the kernels themselves), here without one."""
    from torch.autograd import DeviceType

    def event(key, device, count, self_cpu_us, self_device_us):
        return SimpleNamespace(
            key=key,
            device_type=device,
            count=count,
            self_cpu_time_total=self_cpu_us,
            self_device_time_total=self_device_us,
        )

    events = [
        event("aten::mm", DeviceType.CPU, 4, 500, 1000),
        event("aten::conv", DeviceType.CPU, 6, 900, 3000),
        event("aten::view", DeviceType.CPU, 20, 50, 0),
        event("sm90_conv_kernel", DeviceType.CUDA, 6, 0, 3000),
        event("gemm_kernel", DeviceType.CUDA, 4, 0, 1000),
    ]
    gpu = bench_train_step.summarize_profile(events, steps=2, cuda=True)
    assert [row["name"] for row in gpu["ops"]] == ["aten::conv", "aten::mm"]  # launched nothing
    assert gpu["ops"][0] == dict(name="aten::conv", calls=3, ms=1.5, share=0.75)
    assert gpu["kernels_ms"] == 2.0 and gpu["kernels"][1]["name"] == "gemm_kernel"
    assert gpu["kernel_count"] == 5
    text = "\n".join(bench_train_step.profile_lines(gpu, 4.0, "bf16", steps=2))
    assert "the GPU busy 50 % of it" in text and "| `gemm_kernel` | 2 | 0.50 | 25.0 % |" in text
    cpu = bench_train_step.summarize_profile(events, steps=2, cuda=False)
    assert [row["name"] for row in cpu["ops"]] == ["aten::conv", "aten::mm", "aten::view"]
    assert "kernels" not in cpu
