"""bench/bench_train_step.py as gpu_check.sh runs it, on the CPU at the shapes preset: both
stages print their table with one row per implementation (a broken benchmark found here costs
no GPU time)."""
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("stage, impls", [("gan", ["reference", "auto"]),
                                          ("damsm", ["loop", "reference", "auto"])])
def test_script_prints_a_row_per_implementation(stage, impls):
    result = subprocess.run([sys.executable, "bench/bench_train_step.py", "--stage", stage,
                             "--min-time", "0.01"], cwd=ROOT, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    title = "AttnGAN training step" if stage == "gan" else "DAMSM pretraining step"
    assert f"# {title}, preset shapes, cpu" in result.stdout
    assert f"| speed-up vs {impls[0]} fp32 |" in result.stdout
    rows = [line for line in result.stdout.splitlines() if line.startswith("| ")][1:]
    assert [row.split(" | ")[0].lstrip("| ") for row in rows] == impls
    assert "recorded" not in result.stdout                     # no --record, no file written
