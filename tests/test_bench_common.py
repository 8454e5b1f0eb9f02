"""bench/common.py: the record of a GPU check (what bench/gpu_check.sh writes last: the machine,
the commit it is told, each step's status and the tail of its log, as markdown and JSON),
where the benchmarks keep the caption lengths (--lengths-on), and records that never overwrite
one another."""

import argparse
import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import common  # noqa: E402
from common import (
    add_lengths_option,
    gpu_check_record,
    lengths_device,
    machine,  # noqa: E402
    machine_lines,
)


def test_gpu_check_record(tmp_path, monkeypatch):
    monkeypatch.setenv("ATTNGAN_COMMIT", "abc1234")
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "build.log").write_text("\n".join(f"line {i}" for i in range(50)) + "\n")
    base = gpu_check_record(
        ["build|ok|5", "pytest_gpu|failed (exit 1)|2"],
        logs,
        "20261127-2100",
        started=0,
        out_dir=tmp_path / "results",
    )
    record = json.loads(base.with_suffix(".json").read_text())
    assert record["commit"] == "abc1234" and record["dirty_tree"] is False
    assert record["steps"] == [
        dict(name="build", status="ok", seconds="5"),
        dict(name="pytest_gpu", status="failed (exit 1)", seconds="2"),
    ]
    assert record["log_tails"]["build"].splitlines() == [f"line {i}" for i in range(10, 50)]
    assert "numpy" in record["versions"] and record["date_utc"] == "20261127-2100"
    markdown = base.with_suffix(".md").read_text()
    assert "- commit: abc1234\n" in markdown and "| pytest_gpu | failed (exit 1) | 2 |" in markdown


def test_lengths_option():
    parser = argparse.ArgumentParser()
    add_lengths_option(parser)
    assert parser.parse_args([]).lengths_on == "cpu"  # as the training steps pass them
    assert parser.parse_args(["--lengths-on", "device"]).lengths_on == "device"
    with pytest.raises(SystemExit):
        parser.parse_args(["--lengths-on", "gpu"])
    cuda = torch.device("cuda")
    assert lengths_device("cpu", cuda) == torch.device("cpu")
    assert lengths_device("device", cuda) == cuda
    info = dict(machine(torch.device("cpu")), lengths_on="cpu")
    assert "- caption lengths on the cpu (--lengths-on)" in machine_lines(info)
    assert not any("lengths" in line for line in machine_lines(machine(torch.device("cpu"))))


def test_records_of_one_minute_keep_each_other(tmp_path, monkeypatch):
    monkeypatch.setattr(common, "RESULTS", tmp_path)
    info = dict(gpu=None, cpu="Some CPU", threads=2)
    paths = [common.record("damsm", info, [dict(run=k)], f"run {k}") for k in range(3)]
    assert len({path for pair in paths for path in pair}) == 6
    assert [md.read_text() for _, md in paths] == ["run 0\n", "run 1\n", "run 2\n"]
    assert paths[1][0].name.endswith("-some-cpu-2t-2.json")


def test_counts_and_times_below_their_least_are_usage_errors():
    """--rounds 0 or a negative --min-time failed after the set-up (a median of nothing)."""
    rounds, seconds = common.at_least(1), common.at_least(0.01, float)
    assert rounds("7") == 7 and seconds("0.5") == 0.5
    for parse, text, message in (
        (rounds, "0", "0 is less than 1"),
        (rounds, "x", "'x' is not an integer"),
        (seconds, "-1", "-1 is less than 0.01"),
        (seconds, "nan", "nan is not a finite number"),
        (seconds, "inf", "inf is not a finite number"),
        (seconds, "fast", "'fast' is not a number"),
    ):
        with pytest.raises(argparse.ArgumentTypeError, match=message):
            parse(text)
