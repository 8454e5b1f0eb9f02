"""Generator evaluation (attngan/metrics/evaluate.py): the JSON's keys, the protocol it
records, and the checker gap as true minus shuffled."""
import json

import pytest

from attngan.metrics.evaluate import evaluate_generator
from attngan.train.damsm import resolve_damsm_checkpoint
from attngan.train.gan import file_sha256
from test_gan_training import single_thread, train_tiny_gan  # noqa: F401 (autouse)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    gan, damsm = train_tiny_gan(tmp_path_factory.mktemp("evaluate"))
    return gan, damsm


def test_evaluation_json(run, tmp_path):
    gan, damsm = run
    out = tmp_path / "eval.json"
    result = evaluate_generator(gan, out_path=out, max_images=20, seed=3)
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    protocol = result["protocol"]
    assert protocol["samples"] == 20 and protocol["split"] == "test" and protocol["seed"] == 3
    assert protocol["test_images"] == 12 and protocol["resolution"] == 32
    assert protocol["checkpoint_step"] == 2 and protocol["damsm_is_training_damsm"]
    assert protocol["damsm_sha256"] == file_sha256(resolve_damsm_checkpoint(damsm))
    checker = result["checker"]
    for name in ("color", "position", "size", "shape", "all", "image_all", "color_precision"):
        assert 0.0 <= checker["true"][name] <= 1.0
        assert checker["gap"][name] == pytest.approx(
            checker["true"][name] - checker["shuffled"][name])
    assert checker["true"]["images"] == 20
    rp = result["r_precision"]
    assert 0.0 <= rp["mean"] <= 1.0 and rp["n"] == 20 and rp["candidates"] == 4


def test_evaluation_is_reproducible(run):
    gan, _ = run
    a = evaluate_generator(gan, max_images=8, seed=1)
    b = evaluate_generator(gan, max_images=8, seed=1)
    assert a["checker"] == b["checker"] and a["r_precision"] == b["r_precision"]


def test_too_few_images_is_a_clear_error(run):
    with pytest.raises(ValueError, match="at least 2"):
        evaluate_generator(run[0], max_images=1)
