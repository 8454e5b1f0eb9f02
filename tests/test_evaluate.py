"""Generator evaluation (attngan/metrics/evaluate.py): the JSON's keys, the protocol it
records, and the checker gap as true minus shuffled."""

import dataclasses
import json

import pytest
from test_gan_training import single_thread, train_tiny_gan  # noqa: F401 (autouse)

from attngan.data.errors import DataError
from attngan.files import file_sha256
from attngan.metrics import evaluate as evaluate_module
from attngan.metrics.evaluate import evaluate_generator, evaluation_captions
from attngan.train.checkpoint import CheckpointError
from attngan.train.damsm import resolve_damsm_checkpoint


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    gan, damsm = train_tiny_gan(tmp_path_factory.mktemp("evaluate"))
    return gan, damsm


def test_evaluation_json(run, tmp_path):
    gan, damsm = run
    out = tmp_path / "eval.json"
    result = evaluate_generator(gan, out_path=out, samples=20, seed=3)
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    protocol = result["protocol"]
    assert protocol["samples"] == 20 and protocol["split"] == "test" and protocol["seed"] == 3
    assert protocol["test_images"] == 12 and protocol["resolution"] == 32
    assert protocol["checkpoint_step"] == 2 and protocol["damsm_is_training_damsm"]
    assert protocol["words_per_caption"] == 18  # data.eval_words_num unset: words_num
    assert protocol["damsm_sha256"] == file_sha256(resolve_damsm_checkpoint(damsm))
    checker = result["checker"]
    for name in ("color", "position", "size", "shape", "all", "image_all", "color_precision"):
        assert 0.0 <= checker["true"][name] <= 1.0
        assert checker["gap"][name] == pytest.approx(
            checker["true"][name] - checker["shuffled"][name]
        )
    assert checker["true"]["images"] == 20
    rp = result["r_precision"]
    assert 0.0 <= rp["mean"] <= 1.0 and rp["n"] == 20 and rp["candidates"] == 4


def test_evaluation_is_reproducible(run):
    gan, _ = run
    a = evaluate_generator(gan, samples=8, seed=1)
    b = evaluate_generator(gan, samples=8, seed=1)
    assert a["checker"] == b["checker"] and a["r_precision"] == b["r_precision"]


def _evaluate_with_eval_words(run, monkeypatch, eval_words_num):
    """evaluate_generator on the tiny run, its stored config given data.eval_words_num; returns
    (result, the data sets it built)."""
    load_gan, build_dataset = evaluate_module.load_gan, evaluate_module.build_dataset
    seen = []

    def load_with_eval_words(*args, **kwargs):
        netG, text_encoder, vocab, config, payload = load_gan(*args, **kwargs)
        data = dataclasses.replace(config.data, eval_words_num=eval_words_num)
        return netG, text_encoder, vocab, dataclasses.replace(config, data=data), payload

    def spy(*args, **kwargs):
        seen.append(build_dataset(*args, **kwargs))
        return seen[-1]

    monkeypatch.setattr(evaluate_module, "load_gan", load_with_eval_words)
    monkeypatch.setattr(evaluate_module, "build_dataset", spy)
    return evaluate_generator(run[0], samples=20, seed=0), seen


def test_test_captions_are_cut_at_eval_words_num(run, monkeypatch):
    """A config with data.eval_words_num (the paper's: 25 CUB, 20 COCO) evaluates on captions of
    that many words, whatever the training length."""
    result, seen = _evaluate_with_eval_words(run, monkeypatch, 25)
    assert result["protocol"]["words_per_caption"] == 25
    assert [dataset.words_num for dataset in seen] == [25]


def test_captions_cut_below_what_the_checker_reads_fail_before_generating(run, monkeypatch):
    generated = []
    monkeypatch.setattr(evaluate_module, "generate", lambda *args, **kwargs: generated.append(1))
    with pytest.raises(DataError, match="raise data.eval_words_num"):
        _evaluate_with_eval_words(run, monkeypatch, 2)
    assert generated == []


def test_evaluation_captions_come_in_rounds_of_every_test_image():
    """Each round takes every test image once with a caption not taken before: 30,000 images
    of CUB's 2,933 test images x 10 captions are all 29,330 captions and 670 again; fewer
    images than test images are distinct ones."""
    pairs = evaluation_captions(2933, 10, 30_000, seed=0)
    assert len(pairs) == 30_000
    assert len(set(pairs[:29_330])) == 29_330  # every caption once
    assert len({image for image, _ in pairs[29_330:]}) == 670  # then distinct images
    first = pairs[:2933]
    assert sorted(image for image, _ in first) == list(range(2933))  # a round: every image
    assert len({slot for _, slot in first}) == 10  # captions at random
    assert [image for image, _ in first[:20]] != list(range(20))  # in a random order
    few = evaluation_captions(2933, 10, 500, seed=0)
    assert len({image for image, _ in few}) == 500
    assert evaluation_captions(12, 5, 40, seed=3) == evaluation_captions(12, 5, 40, seed=3)
    assert evaluation_captions(12, 5, 40, seed=3) != evaluation_captions(12, 5, 40, seed=4)


def test_too_few_images_is_a_clear_error(run, monkeypatch):
    with pytest.raises(ValueError, match="at least 2"):
        evaluate_generator(run[0], samples=1)
    # too few for the run's R-precision (4 candidates), found before generating
    generated = []
    monkeypatch.setattr(evaluate_module, "generate", lambda *args, **kwargs: generated.append(1))
    with pytest.raises(
        ValueError,
        match=r"damsm.eval_candidates=4 needs 3 mismatched .* "
        r"raise samples \(--samples; 3 now\)",
    ):
        evaluate_generator(run[0], samples=3)
    assert generated == []


def test_data_of_another_vocabulary_is_refused_before_generating(run, monkeypatch):
    """A generator evaluated on data whose vocabulary is not the one it was trained with (its
    word ids would index the wrong embeddings) ends in one error naming the fix."""
    load_gan = evaluate_module.load_gan

    def load_with_other_vocabulary(*args, **kwargs):
        netG, text_encoder, vocab, config, payload = load_gan(*args, **kwargs)
        return netG, text_encoder, vocab, config, {**payload, "vocab_fingerprint": "another"}

    generated = []
    monkeypatch.setattr(evaluate_module, "load_gan", load_with_other_vocabulary)
    monkeypatch.setattr(evaluate_module, "generate", lambda *args, **kwargs: generated.append(1))
    with pytest.raises(
        CheckpointError, match="another vocabulary.*evaluate it on the data it was trained on"
    ):
        evaluate_generator(run[0], samples=4)
    assert generated == []


def test_an_output_that_cannot_be_written_is_an_error_before_generating(run, tmp_path, monkeypatch):
    """An --out that is a folder lost the whole evaluation at the end."""
    generated = []
    monkeypatch.setattr(evaluate_module, "generate", lambda *args, **kwargs: generated.append(1))
    with pytest.raises(
        ValueError,
        match=f"--out {tmp_path} is a folder; pass the path of a "
        r"\.json file",
    ):
        evaluate_generator(run[0], out_path=tmp_path, samples=4)
    (tmp_path / "file").write_text("x")
    with pytest.raises(
        ValueError,
        match=f"--out {tmp_path / 'file'} exists and is not the "
        "result of an evaluation; pass a new path",
    ):
        evaluate_generator(run[0], out_path=tmp_path / "file", samples=4)
    assert (tmp_path / "file").read_text() == "x"
    with pytest.raises(ValueError, match="file is a file, not a folder; pass another --out path"):
        evaluate_generator(run[0], out_path=tmp_path / "file" / "e.json", samples=4)
    assert generated == []


def test_data_and_damsm_that_moved_since_training(run, tmp_path, monkeypatch):
    """The run's config and checkpoint name where its data and DAMSM were; when they have
    moved, the error says which option points at them, and the options work."""
    gan, damsm = run
    load_gan = evaluate_module.load_gan

    def load_as_if_moved(*args, **kwargs):
        netG, text_encoder, vocab, config, payload = load_gan(*args, **kwargs)
        data = dataclasses.replace(config.data, root=str(tmp_path / "old_data"))
        return (
            netG,
            text_encoder,
            vocab,
            dataclasses.replace(config, data=data),
            {**payload, "damsm_checkpoint": str(tmp_path / "old_damsm" / "d.pt")},
        )

    monkeypatch.setattr(evaluate_module, "load_gan", load_as_if_moved)
    data_root = load_gan(gan)[3].data.root
    with pytest.raises(
        DataError,
        match=f"the run's test data, data.root={tmp_path}/old_data in "
        "its config, is not there .* pass --data-root",
    ):
        evaluate_generator(gan, samples=4)
    with pytest.raises(
        CheckpointError, match=f"{tmp_path}/old_damsm/d.pt, is not there any more; pass --damsm"
    ):
        evaluate_generator(gan, samples=4, data_root=data_root)
    result = evaluate_generator(gan, samples=12, data_root=data_root, damsm_path=damsm)
    assert result["protocol"]["samples"] == 12
