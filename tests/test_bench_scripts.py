"""The benchmark scripts as gpu_check.sh runs them, on the CPU at small settings: each exits 0
and prints its table with a row per provider, writing no file without --record (a benchmark
broken here would otherwise be found only in a GPU session's few minutes); and records that
never overwrite one another."""
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
    rows = _table_rows(_output("bench_train_step.py", "--stage", stage, "--min-time", "0.01"))
    assert [row[0] for row in rows] == impls and all(float(row[2]) > 0 for row in rows)


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


def test_records_of_one_minute_keep_each_other(tmp_path, monkeypatch):
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import common
    finally:
        sys.path.remove(str(ROOT / "bench"))
    monkeypatch.setattr(common, "RESULTS", tmp_path)
    info = dict(gpu=None, cpu="Some CPU", threads=2)
    paths = [common.record("damsm", info, [dict(run=k)], f"run {k}") for k in range(3)]
    assert len({path for pair in paths for path in pair}) == 6
    assert [md.read_text() for _, md in paths] == ["run 0\n", "run 1\n", "run 2\n"]
    assert paths[1][0].name.endswith("-some-cpu-2t-2.json")
