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


def _table_rows(script: str, *args: str) -> list[list[str]]:
    """Run bench/<script> with `args`; return the cells of its markdown table's data rows."""
    result = subprocess.run([sys.executable, f"bench/{script}", *args], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "recorded" not in result.stdout
    lines = [line for line in result.stdout.splitlines() if line.startswith("| ")]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[1:]]


@pytest.mark.parametrize("stage, impls", [("gan", ["reference", "auto"]),
                                          ("damsm", ["loop", "reference", "auto"])])
def test_train_step_benchmark(stage, impls):
    rows = _table_rows("bench_train_step.py", "--stage", stage, "--min-time", "0.01")
    assert [row[0] for row in rows] == impls and all(float(row[2]) > 0 for row in rows)


def test_damsm_benchmark():
    providers = _with_cpp("damsm_word_similarity", ["loop", "reference"])
    rows = _table_rows("bench_damsm.py", "--sizes", "cpu", "--providers", ",".join(providers),
                       "--passes", "forward", "--rounds", "1", "--min-time", "0.05")
    assert [row[2] for row in rows] == providers and all(float(row[3]) > 0 for row in rows)


def test_word_attention_benchmark():
    providers = _with_cpp("word_attention", ["reference"])
    rows = _table_rows("bench_word_attention.py", "--sizes", "cub64", "--cat-sizes", "none",
                       "--providers", ",".join(providers), "--min-time", "0.05")
    assert [(row[1], row[2]) for row in rows] == [
        (passes, provider) for passes in ("forward", "forward+backward") for provider in providers]
