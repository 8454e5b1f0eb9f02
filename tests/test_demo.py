"""`attngan demo --quick`: the whole pipeline end to end through the CLI, at smoke-test size."""

import json
import re

from attngan.cli import main


def test_quick_demo_writes_every_output(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out), "--set", "run.threads=0"]) == 0
    printed = capsys.readouterr().out
    assert "report:" in printed and "R-precision of generated images: " in printed
    assert re.search(
        r"their own captions \(shuffled captions\): colour \d\.\d{3} \(\d\.\d{3}\), "
        r"position .* all four \d\.\d{3} \(\d\.\d{3}\)\n",
        printed,
    )
    report = (out / "report.md").read_text()
    assert "R-precision, sentence level" in report and "| color |" in report
    evaluation = json.loads((out / "evaluation.json").read_text())
    assert set(evaluation) == {"protocol", "checker", "r_precision", "inception_score", "fid"}
    assert evaluation["inception_score"] is None and evaluation["fid"] is None  # no weights
    assert set(evaluation["checker"]["gap"]) >= {"color", "position", "size", "shape"}
    assert (out / "damsm" / "r_precision.json").is_file()
    assert (out / "gan" / "checkpoints" / "gan_last.pt").is_file()
    figures = sorted((out / "samples").glob("*_attention.png"))
    assert len(figures) == 4
    for link in (
        line.split("](")[1].rstrip(")")
        for line in report.splitlines()
        if line.startswith("- [samples/")
    ):
        assert (out / link).is_file(), link
    # a second demo into the same folder resumes its finished runs and ends the same way
    evaluated = (out / "evaluation.json").read_text()
    assert main(["demo", "--quick", "--out", str(out), "--set", "run.threads=0"]) == 0
    assert (out / "evaluation.json").read_text() == evaluated
    # other settings into the same folder: one error saying so, naming no option demo lacks
    assert main(["demo", "--quick", "--out", str(out), "--set", "gan.ngf=8"]) == 2
    error = capsys.readouterr().err
    assert f"{out} holds a demo run with other settings (damsm: gan.ngf=8 (the run's: " in error
    assert "choose another --out folder" in error and "--config" not in error
