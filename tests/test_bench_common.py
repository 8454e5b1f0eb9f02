"""bench/common.py's record of a GPU check (what bench/gpu_check.sh writes last): the machine,
the commit it is told, each step's status and the tail of its log, as markdown and JSON."""
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from common import gpu_check_record  # noqa: E402


def test_gpu_check_record(tmp_path, monkeypatch):
    monkeypatch.setenv("ATTNGAN_COMMIT", "abc1234")
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "build.log").write_text("\n".join(f"line {i}" for i in range(50)) + "\n")
    base = gpu_check_record(["build|ok|5", "pytest_gpu|failed (exit 1)|2"], logs,
                            "20261127-2100", started=0, out_dir=tmp_path / "results")
    record = json.loads(base.with_suffix(".json").read_text())
    assert record["commit"] == "abc1234" and record["dirty_tree"] is False
    assert record["steps"] == [dict(name="build", status="ok", seconds="5"),
                               dict(name="pytest_gpu", status="failed (exit 1)", seconds="2")]
    assert record["log_tails"]["build"].splitlines() == [f"line {i}" for i in range(10, 50)]
    assert "numpy" in record["versions"] and record["date_utc"] == "20261127-2100"
    markdown = base.with_suffix(".md").read_text()
    assert "- commit: abc1234\n" in markdown and "| pytest_gpu | failed (exit 1) | 2 |" in markdown
