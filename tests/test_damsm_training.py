"""DAMSM pretraining end to end on a tiny synthetic set: loss falls, resume is exact, one step
is the same with every implementation of the word-level similarity, checkpoints load with
weights_only, the CLI runs and its errors are one clear line."""

import json

import pytest
import torch

from attngan import backend
from attngan.cli import main
from attngan.config import load_config
from attngan.data.dataset import build_dataset, collate
from attngan.data.synthetic import make_synthetic
from attngan.files import file_sha256
from attngan.train.checkpoint import CheckpointError, load_checkpoint
from attngan.train.damsm import (
    DAMSMTrainer,
    epoch_learning_rate,
    evaluate_r_precision,
    load_damsm,
    pretrain_damsm,
)

TINY = [
    "data.synthetic.num_train=96",
    "data.synthetic.num_test=48",
    "data.synthetic.canvas=32",
    "data.base_size=32",
    "data.branch_num=1",
    "image_encoder.input_size=32",
    "image_encoder.width=8",
    "text_encoder.hidden_dim=32",
    "text_encoder.embedding_dim=16",
    "damsm.batch_size=16",
    "damsm.log_every=1",
    "damsm.checkpoint_every=1",
    "damsm.eval_candidates=10",
    "damsm.eval_folds=2",
    "run.threads=2",
    "run.device=cpu",
]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    config = load_config("configs/shapes.yaml", TINY)
    make_synthetic(root, config.data.synthetic)
    return root


def tiny_config(root, *extra):
    return load_config("configs/shapes.yaml", [*TINY, f"data.root={root}", *extra])


def test_learning_rate_schedule_matches_the_original():
    lr, values = 0.002, []
    for _ in range(200):
        values.append(lr)
        if lr > 0.002 / 10:
            lr *= 0.98
    assert [epoch_learning_rate(0.002, 0.98, 0.1, e) for e in range(200)] == pytest.approx(values)


def test_loss_falls_and_outputs_are_written(data_root, tmp_path):
    results = pretrain_damsm(tiny_config(data_root, "damsm.epochs=6"), tmp_path, progress=False)
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    losses = [line["loss"] for line in lines if "loss" in line]
    assert len(losses) == 6 * (96 // 16)
    assert sum(losses[-6:]) / 6 < 0.8 * sum(losses[:6]) / 6
    assert all(torch.isfinite(torch.tensor(losses)))
    saved = json.loads((tmp_path / "r_precision.json").read_text())
    assert saved["sentence"]["candidates"] == 10 and 0.0 <= saved["sentence"]["mean"] <= 1.0
    assert saved["word"]["n"] == 48
    assert saved["checkpoint_sha256"] == file_sha256(saved["checkpoint"])
    protocol = saved["protocol"]
    assert protocol["words_per_caption"] == 18 and protocol["image_size"] == 32
    assert protocol["data_root"] == str(data_root)
    assert protocol["image_encoder"] == "small, input 32 px"
    assert (tmp_path / "config.yaml").is_file()
    assert results["steps"] == len(losses)


def test_resume_continues_exactly(data_root, tmp_path):
    """With any number of workers: the straight run loads in its own process, the interrupted
    one with 2 workers and, resumed, with 1."""
    straight = tmp_path / "straight"
    pretrain_damsm(
        tiny_config(data_root, "damsm.epochs=2", "data.num_workers=0"), straight, progress=False
    )
    split = tmp_path / "split"
    pretrain_damsm(
        tiny_config(data_root, "damsm.epochs=1", "data.num_workers=2"), split, progress=False
    )
    with pytest.raises(CheckpointError, match="--resume"):
        pretrain_damsm(tiny_config(data_root, "damsm.epochs=2"), split, progress=False)
    pretrain_damsm(
        tiny_config(data_root, "damsm.epochs=2", "data.num_workers=1"),
        split,
        resume=True,
        progress=False,
    )
    a = load_checkpoint(straight / "checkpoints" / "damsm_last.pt")
    b = load_checkpoint(split / "checkpoints" / "damsm_last.pt")
    assert a["step"] == b["step"]
    for part in ("text_encoder", "image_encoder"):
        for name, tensor in a[part].items():
            assert torch.equal(tensor, b[part][name]), f"{part}.{name} differs after resume"

    def metrics(run):
        return [
            {k: v for k, v in json.loads(line).items() if k != "seconds"}
            for line in (run / "metrics.jsonl").read_text().splitlines()
        ]

    assert metrics(split) == metrics(straight)
    with pytest.raises(
        CheckpointError,
        match="has trained 2 epochs, more than damsm.epochs=1; set damsm.epochs to at least 2",
    ):
        pretrain_damsm(tiny_config(data_root, "damsm.epochs=1"), split, resume=True, progress=False)
    # a finished run resumed with its own length trains nothing and is evaluated again
    again = pretrain_damsm(
        tiny_config(data_root, "damsm.epochs=2"), split, resume=True, progress=False
    )
    assert again["steps"] == a["step"] and metrics(split) == metrics(straight)


@pytest.mark.parametrize("impl", ["reference", "cpp"])
def test_one_step_is_the_same_with_every_implementation(data_root, impl):
    """One pretraining step (both encoders, the four losses with same-class pairs masked,
    backward, clipping, Adam) with `impl` against the original's per-caption loop: the same
    losses and the same gradients of every parameter, up to float32 rounding (measured: at most
    2e-6 of each tensor's largest entry; the same dropout masks)."""
    reason = backend.unavailable_reason("damsm_word_similarity", impl, torch.device("cpu"))
    if reason is not None:
        pytest.skip(reason)
    dataset = build_dataset(tiny_config(data_root).data, "train", augment=False)
    batch = collate([dataset[index] for index in range(16)])
    assert len(set(batch["class_ids"].tolist())) < 16  # some pairs are masked
    steps = {}
    for name in ("loop", impl):
        config = tiny_config(data_root, f"run.impl={name}")
        torch.manual_seed(0)
        trainer = DAMSMTrainer(config, len(dataset.vocab), torch.device("cpu"))
        losses = trainer.step(batch)
        gradients = {
            f"{prefix}.{key}": parameter.grad
            for prefix, module in (("text", trainer.text_encoder), ("image", trainer.image_encoder))
            for key, parameter in module.named_parameters()
            if parameter.grad is not None
        }
        steps[name] = ({key: value.detach() for key, value in losses.items()}, gradients)
    (loop_losses, loop_gradients), (losses, gradients) = steps["loop"], steps[impl]
    for key, value in loop_losses.items():
        torch.testing.assert_close(losses[key], value, rtol=1e-5, atol=1e-5, msg=key)
    assert gradients.keys() == loop_gradients.keys() and len(gradients) > 10
    for key, value in loop_gradients.items():  # within float32 rounding of each tensor
        scale = value.abs().max()
        assert scale > 0 and (gradients[key] - value).abs().max() <= 2e-5 * scale, key


def test_load_damsm_gives_frozen_encoders_and_checks_vocabulary(data_root, tmp_path):
    config = tiny_config(data_root, "damsm.epochs=1")
    pretrain_damsm(config, tmp_path, progress=False)
    text_encoder, image_encoder, vocab, loaded = load_damsm(tmp_path)
    assert loaded == config and not text_encoder.training
    assert not any(p.requires_grad for p in text_encoder.parameters())
    captions = torch.tensor([vocab.encode("a small red circle")])
    words, sentence = text_encoder(captions, torch.tensor([captions.shape[1]]))
    assert words.shape == (1, 32, captions.shape[1]) and sentence.shape == (1, 32)
    regions, code = image_encoder(torch.zeros(2, 3, 32, 32))
    assert code.shape == (2, 32)
    other = type(vocab)(list(vocab.ixtoword) + ["zebra"])
    with pytest.raises(CheckpointError, match="differs from this data"):
        load_damsm(tmp_path, expected_vocab=other)


def test_cli_end_to_end_and_errors(data_root, tmp_path, capsys):
    out = tmp_path / "run"
    args = [
        "pretrain-damsm",
        "--config",
        "configs/shapes.yaml",
        "--out",
        str(out),
        *[
            item
            for setting in [*TINY, f"data.root={data_root}", "damsm.epochs=1"]
            for item in ("--set", setting)
        ],
    ]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "R-precision (sentence level" in printed and "chance 10 %" in printed
    assert main(args) == 2
    assert "--resume" in capsys.readouterr().err
    assert main(["pretrain-damsm", "--set", "damsm.batchsize=3"]) == 2
    assert "did you mean 'damsm.batch_size'" in capsys.readouterr().err
    assert (
        main(
            [
                "pretrain-damsm",
                "--out",
                str(tmp_path / "x"),
                "--set",
                f"data.root={tmp_path / 'no_such_data'}",
            ]
        )
        == 2
    )
    assert "no_such_data" in capsys.readouterr().err


def test_impossible_r_precision_is_refused_before_training(data_root, tmp_path):
    """The R-precision that ends a run is checked before the run: 48 test images of 4 colours
    (classes) cannot give an image 99 captions of other classes; nothing is written."""
    with pytest.raises(
        ValueError,
        match=r"damsm.eval_candidates=100 needs 99 mismatched .* "
        r"lower damsm.eval_candidates to at most \d+",
    ):
        pretrain_damsm(
            tiny_config(data_root, "damsm.eval_candidates=100"), tmp_path / "run", progress=False
        )
    with pytest.raises(ValueError, match="damsm.eval_folds=49 needs between 1 and 48 folds"):
        pretrain_damsm(
            tiny_config(data_root, "damsm.eval_folds=49"), tmp_path / "run", progress=False
        )
    assert not (tmp_path / "run").exists()


def test_word_level_r_precision_in_blocks_of_images(data_root, monkeypatch):
    """The word-level R-precision scores blocks of images (no [N, N] matrix on a large test
    split); blocks of 7 images give the result of one block of all 48."""
    from attngan.metrics import r_precision as r_precision_module

    config = tiny_config(data_root, "run.impl=reference")
    test_set = build_dataset(config.data, "test", augment=False)
    torch.manual_seed(0)
    trainer = DAMSMTrainer(config, len(test_set.vocab), torch.device("cpu"))
    text_encoder, image_encoder = trainer.text_encoder, trainer.image_encoder
    whole = evaluate_r_precision(text_encoder, image_encoder, test_set, config, torch.device("cpu"))
    monkeypatch.setattr(r_precision_module, "ROWS", 7)
    blocks = evaluate_r_precision(
        text_encoder, image_encoder, test_set, config, torch.device("cpu")
    )
    assert whole["word"]["n"] == 48 and blocks["word"]["folds"] == whole["word"]["folds"]
    assert blocks["sentence"]["folds"] == whole["sentence"]["folds"]
