"""The benchmark scripts as gpu_check.sh runs them, on the CPU at small settings: each exits 0
and prints its table with a row per provider, writing no file without --record (a benchmark
broken here would otherwise be found only in a GPU session's few minutes)."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from attngan import backend

ROOT = Path(__file__).resolve().parents[1]


def _with_cpp(op: str, providers: list[str]) -> list[str]:
    """`providers` and the C++ kernel of `op` where it was built."""
    built = backend.unavailable_reason(op, "cpp", torch.device("cpu")) is None
    return providers + ["cpp"] * built


def _output(script: str, *args: str) -> str:
    """Run bench/<script> with `args`; return what it printed (it must exit 0, recording nothing)."""
    result = subprocess.run([sys.executable, f"bench/{script}", *args], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "recorded" not in result.stdout
    return result.stdout


def _table_rows(output: str) -> list[list[str]]:
    """The cells of the data rows of the markdown table in a benchmark's output."""
    lines = [line for line in output.splitlines() if line.startswith("| ")]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[1:]]


@pytest.mark.parametrize("stage, impls", [("gan", ["reference", "auto"]),
                                          ("damsm", ["loop", "reference", "auto"])])
def test_train_step_benchmark(stage, impls):
    output = _output("bench_train_step.py", "--stage", stage, "--min-time", "0.01",
                     "--profile", "1")
    timings = _table_rows(output.split("\n## ")[0])
    assert [row[0] for row in timings] == impls and all(float(row[2]) > 0 for row in timings)
    profiles = output.split("\n## Where the time goes: ")[1:]
    assert [p.split(" (")[0] for p in profiles] == [f"{impl}, fp32" for impl in impls]
    for profile in profiles:   # the costliest ops first, each an op that ran
        ops = _table_rows(profile)
        shares = [float(row[3].rstrip(" %")) for row in ops]
        assert len(ops) >= 5 and all(row[0].startswith("`") for row in ops)
        assert shares == sorted(shares, reverse=True) and 0 < sum(shares) <= 100.1


def test_damsm_benchmark():
    providers = _with_cpp("damsm_word_similarity", ["loop", "reference"])
    output = _output("bench_damsm.py", "--sizes", "cpu", "--providers", ",".join(providers),
                     "--passes", "forward", "--rounds", "1", "--min-time", "0.05",
                     "--matmul-precision", "high")
    rows = _table_rows(output)
    assert [row[2] for row in rows] == providers and all(float(row[3]) > 0 for row in rows)
    assert "- float32 matmul precision: high" in output


def test_word_attention_benchmark():
    providers = _with_cpp("word_attention", ["reference"])
    rows = _table_rows(_output("bench_word_attention.py", "--sizes", "cub64", "--cat-sizes",
                               "none", "--providers", ",".join(providers), "--min-time", "0.05"))
    assert [(row[1], row[2]) for row in rows] == [
        (passes, provider) for passes in ("forward", "forward+backward") for provider in providers]

