"""Fault injection, end to end on tiny runs: what a user can get wrong, or what can go wrong
under a run, ends in one clear error and loses nothing.

Probes: two processes in one run folder (and a holder killed outright), folders that cannot be
written, a full disk (simulated everywhere; a real 2 MiB file system where root can mount one),
data changed under a run, a checkpoint edited to disagree with its config, runs that diverge
(learning rates of 1e8, a NaN injected), settings out of range or not used by the command,
bytes of a caption that are not UTF-8, a second `sample` into one folder, and Ctrl-C with the
progress bars on.
"""

import dataclasses
import errno
import json
import math
import os
import pickle
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from attngan.cli import main as cli_main
from attngan.config import ConfigError, load_config, refuse_unused_overrides
from attngan.data.cub import decode_text
from attngan.data.vocab import tokenize
from attngan.files import LOCK_NAME, FolderInUse, OutputError, hold_folder
from attngan.metrics.evaluate import evaluate_generator
from attngan.train.checkpoint import (
    CheckpointError,
    first_non_finite,
    load_checkpoint,
    save_checkpoint,
)
from attngan.train.damsm import DAMSMTrainer, pretrain_damsm
from attngan.train.gan import GANTrainer, load_gan, train_gan
from attngan.train.run import TrainingDiverged, metrics_line

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_gan_training import _with, make_tiny_run, single_thread  # noqa: E402,F401

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_run(tmp_path_factory.mktemp("faults"))


@pytest.fixture(scope="module")
def trained(tiny, tmp_path_factory):
    """A GAN run of 2 steps on the tiny set (its folder is not to be changed by tests)."""
    config, damsm = tiny
    run = tmp_path_factory.mktemp("trained") / "gan"
    train_gan(_with(config, max_steps=2), damsm, run, progress=False)
    return run


def _contents(folder: Path) -> dict[str, bytes]:
    return {
        str(path.relative_to(folder)): path.read_bytes()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def _cli(capsys, *argv: str) -> tuple[int, str]:
    status = cli_main([str(arg) for arg in argv])
    return status, capsys.readouterr().err


def _holder(folder: Path) -> subprocess.Popen:
    """Another process holding `folder` until it is killed."""
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\nfrom attngan.files import hold_folder\n"
            "with hold_folder(sys.argv[1], '--out folder', 'attngan train'):\n"
            "    print('held', flush=True)\n    time.sleep(600)\n",
            str(folder),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout.readline().strip() == "held"
    return child


# ---- one process per run folder -------------------------------------------------------------


def test_a_second_run_into_a_held_folder_changes_nothing(tiny, trained, tmp_path, capsys):
    config, damsm = tiny
    run = tmp_path / "run"
    train_gan(_with(config, max_steps=2), damsm, run, progress=False)
    child = _holder(run)
    before = _contents(run)
    try:
        with pytest.raises(
            FolderInUse,
            match=rf"{run} is in use by `attngan train` \(pid "
            rf"{child.pid} on .*\); wait until it ends or "
            "pass another --out folder",
        ):
            train_gan(_with(config, max_steps=4), damsm, run, resume=True, progress=False)
        assert _contents(run) == before
        status, err = _cli(
            capsys, "sample", "--ckpt", trained, "--text", "a red circle", "--out", run
        )
        assert status == 2 and "is in use by `attngan train`" in err
    finally:
        child.kill()
        child.wait()
    # the holder was killed outright: its record is taken over, saying so
    train_gan(_with(config, max_steps=4), damsm, run, resume=True, progress=False)
    assert f"taking over {run} from `attngan train` (pid {child.pid}" in capsys.readouterr().err
    assert (run / LOCK_NAME).read_text() == ""  # released at the end


def test_a_run_holds_its_folder_while_it_trains(tiny, tmp_path):
    """The training commands hold --out themselves (the same process cannot enter it twice)."""
    config, damsm = tiny
    with hold_folder(tmp_path / "run", "--out folder", "attngan train"):
        with pytest.raises(FolderInUse, match="is in use by `attngan train`"):
            train_gan(_with(config, max_steps=1), damsm, tmp_path / "run", progress=False)
    with pytest.raises(FolderInUse, match="is in use by"):
        with (
            hold_folder(tmp_path / "other", "--out folder", "a"),
            hold_folder(tmp_path / "other", "--out folder", "b"),
        ):
            pass


def test_a_run_that_fails_before_writing_leaves_no_folder(tiny, tmp_path):
    config, damsm = tiny
    with pytest.raises(ValueError, match="more than the 16 training images"):
        train_gan(_with(config, batch_size=32), damsm, tmp_path / "new", progress=False)
    assert not (tmp_path / "new").exists()


# ---- folders that cannot be written ---------------------------------------------------------


def test_unwritable_outputs_are_one_error_before_any_work(
    tiny, trained, tmp_path, capsys, make_unwritable
):
    config, damsm = tiny
    (tmp_path / "locked").mkdir()
    folder = make_unwritable(tmp_path / "locked")
    data = str(config.data.root)
    probes = {
        "sample": [
            "sample",
            "--ckpt",
            trained,
            "--text",
            "a red circle",
            "--out",
            folder / "samples",
        ],
        "evaluate": ["evaluate", "--ckpt", trained, "--samples", "4", "--out", folder / "e.json"],
        "make-synthetic": ["make-synthetic", folder / "shapes"],
        "pretrain-damsm": [
            "pretrain-damsm",
            "--config",
            ROOT / "configs/shapes.yaml",
            "--set",
            f"data.root={data}",
            "--out",
            folder / "damsm",
        ],
        "train": [
            "train",
            "--config",
            ROOT / "configs/shapes.yaml",
            "--set",
            f"data.root={data}",
            "--damsm",
            damsm,
            "--out",
            folder / "gan",
        ],
    }
    for command, argv in probes.items():
        status, err = _cli(capsys, *argv)
        assert status == 2, command
        assert err.startswith(f"attngan {command}: error: cannot ") and err.count("\n") == 1
        assert "make it writable or pass another" in err or "); pass another" in err, err
    assert list(folder.iterdir()) == []


def test_resume_into_a_run_folder_that_became_read_only(tiny, tmp_path, capsys, make_unwritable):
    config, damsm = tiny
    run = tmp_path / "run"
    train_gan(_with(config, max_steps=2), damsm, run, progress=False)
    before = _contents(run)
    make_unwritable(run)
    with pytest.raises(
        OutputError, match=f"cannot write {run} .*; make it writable or pass another --out folder"
    ):
        train_gan(_with(config, max_steps=4), damsm, run, resume=True, progress=False)
    assert _contents(run) == before


# ---- a full disk ----------------------------------------------------------------------------


def _fill_disk_on_second_checkpoint(monkeypatch):
    """torch.save fails as on a full disk from its second call on (the first checkpoint fits)."""
    saves = []
    real_save = torch.save

    def save(payload, stream, *args, **kwargs):
        saves.append(1)
        if len(saves) > 1:
            stream.write(b"half a checkpoint")
            raise RuntimeError(
                "[enforce fail at inline_container.cc:672] . unexpected pos"
            ) from OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_save(payload, stream, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)


def test_a_full_disk_while_checkpointing_keeps_the_last_checkpoint(
    tiny, tmp_path, monkeypatch, capsys
):
    config, damsm = tiny
    run = tmp_path / "run"
    _fill_disk_on_second_checkpoint(monkeypatch)
    with pytest.raises(
        OutputError,
        match=rf"cannot write {run}/checkpoints/gan_last.pt \(No "
        r"space left on device\); free space on that disk",
    ):
        train_gan(_with(config, max_steps=4), damsm, run, progress=False)
    assert load_checkpoint(run / "checkpoints" / "gan_last.pt")["step"] == 2
    assert sorted(path.name for path in (run / "checkpoints").iterdir()) == ["gan_last.pt"]


def _train_argv(config, damsm: Path, run: Path, **gan) -> list:
    """`attngan train` of the tiny run's settings with `gan` changed, into `run`."""
    settings = {
        "data.root": config.data.root,
        "data.base_size": config.data.base_size,
        "data.branch_num": config.data.branch_num,
        "gan.ngf": config.gan.ngf,
        "gan.ndf": config.gan.ndf,
        "gan.r_num": config.gan.r_num,
        "gan.batch_size": config.gan.batch_size,
        "gan.log_every": 1,
        "gan.sample_every": 1000,
        "gan.checkpoint_every": 2,
        "run.device": "cpu",
        "run.threads": 1,
        **{f"gan.{key}": value for key, value in gan.items()},
    }
    overrides = sum((["--set", f"{key}={value}"] for key, value in settings.items()), [])
    return [
        "train",
        "--config",
        ROOT / "configs/shapes.yaml",
        *overrides,
        "--damsm",
        damsm,
        "--out",
        run,
    ]


def test_a_real_full_disk(tiny, trained, small_disk, capsys):
    """On a file system with room for a run's first checkpoint and sample grids but not for a
    second checkpoint beside the first (the write before the replace), training stops with one
    message, keeping the first."""
    config, damsm = tiny
    checkpoint = (trained / "checkpoints" / "gan_last.pt").stat().st_size
    run = small_disk(int(1.6 * checkpoint)) / "run"
    status, err = _cli(capsys, *_train_argv(config, damsm, run, max_steps=400))
    assert status == 2, err[-300:]
    assert "(No space left on device); free space on that disk" in err
    assert "--resume goes on from the run's last checkpoint" in err
    assert load_checkpoint(run / "checkpoints" / "gan_last.pt")["step"] > 0
    assert not [path for path in run.rglob(".*tmp*")]


# ---- data changed under a run ---------------------------------------------------------------


def _swap_captions_of_the_first_two_images(data: Path) -> None:
    """Edit a data set without changing its vocabulary: in both splits, the captions of the
    first two images change places."""
    train, test, ixtoword, wordtoix = pickle.loads((data / "captions.pickle").read_bytes())
    per_image = len(train) // len(pickle.loads((data / "train/filenames.pickle").read_bytes()))
    for captions in (train, test):
        captions[: 2 * per_image] = captions[per_image : 2 * per_image] + captions[:per_image]
    (data / "captions.pickle").write_bytes(pickle.dumps([train, test, ixtoword, wordtoix]))


def test_changed_data_is_refused_unless_accepted(tiny, tmp_path, capsys):
    config, damsm = tiny
    data = tmp_path / "data"
    shutil.copytree(config.data.root, data)
    config = dataclasses.replace(config, data=dataclasses.replace(config.data, root=str(data)))
    run = tmp_path / "run"
    train_gan(_with(config, max_steps=2), damsm, run, progress=False)
    before = _contents(data)
    status, err = _cli(capsys, "make-synthetic", data)
    assert status == 2 and "already holds a synthetic shapes set" in err
    assert _contents(data) == before
    _swap_captions_of_the_first_two_images(data)
    with pytest.raises(
        CheckpointError,
        match=f"the train split in {data} is not the data .* pass --accept-changed-data to go on",
    ):
        train_gan(_with(config, max_steps=4), damsm, run, resume=True, progress=False)
    with pytest.raises(CheckpointError, match="the test split in .* --accept-changed-data"):
        evaluate_generator(run, samples=4)
    assert evaluate_generator(run, samples=4, accept_changed_data=True)["r_precision"]
    train_gan(
        _with(config, max_steps=4),
        damsm,
        run,
        resume=True,
        progress=False,
        accept_changed_data=True,
    )
    moved = tmp_path / "moved"
    data.rename(moved)  # the same data elsewhere is the same data
    assert evaluate_generator(run, samples=4, data_root=moved)["r_precision"]


# ---- checkpoints that disagree with their config, and diverged weights ----------------------


@pytest.mark.parametrize(
    "edit, match",
    [
        (
            lambda p: p["config"]["gan"].update(ngf=4),
            r"is not what its own config builds for trainer\.ema: .*keys of the wrong shape",
        ),
        (
            lambda p: p["vocab"].pop(),
            r"is not what its own config builds for text_encoder: .*keys of the wrong shape "
            r"\(first: encoder\.weight",
        ),
        (
            lambda p: p["trainer"]["ema"].pop(next(iter(p["trainer"]["ema"]))),
            r"is not what its own config builds for trainer\.ema: 1 missing keys",
        ),
    ],
)
def test_a_checkpoint_edited_against_its_config(trained, tmp_path, capsys, edit, match):
    payload = load_checkpoint(trained / "checkpoints" / "gan_last.pt")
    edit(payload)
    edited = tmp_path / "edited.pt"
    save_checkpoint(edited, payload)
    with pytest.raises(CheckpointError, match=match + ".*use an unedited checkpoint"):
        load_gan(edited)
    status, err = _cli(
        capsys, "sample", "--ckpt", edited, "--text", "a red circle", "--out", tmp_path / "samples"
    )
    assert status == 2 and err.count("\n") == 1


def test_non_finite_weights_are_refused_by_sample_and_evaluate(trained, tmp_path, capsys):
    payload = load_checkpoint(trained / "checkpoints" / "gan_last.pt")
    name = next(iter(payload["trainer"]["ema"]))
    payload["trainer"]["ema"][name].view(-1)[0] = float("nan")
    diverged = tmp_path / "diverged.pt"
    save_checkpoint(diverged, payload)
    for argv in (
        ["sample", "--ckpt", diverged, "--text", "a red circle", "--out", tmp_path / "samples"],
        ["evaluate", "--ckpt", diverged, "--samples", "4"],
    ):
        status, err = _cli(capsys, *argv)
        assert status == 2, err[-300:]
        assert (
            f"holds non-finite weights (trainer.ema.{name} has NaN or infinity): the run "
            "diverged" in err
        )
    assert not (tmp_path / "samples").exists()


# ---- runs that diverge ----------------------------------------------------------------------


def _metrics(run: Path) -> list[dict]:
    """metrics.jsonl of `run`, each line read as JSON (a bare NaN would not be)."""
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _finite(checkpoint: Path) -> bool:
    payload = load_checkpoint(checkpoint)
    return not any(first_non_finite(value, key) for key, value in payload.items())


def test_learning_rates_of_1e8_stop_the_run_keeping_its_last_good_checkpoint(
    tiny, tmp_path, capsys
):
    """Resumed at step 2 with learning rates of 1e8, the run stops with one message at the
    first step whose losses (or state) are not finite, exit 2; the checkpoint of the step
    before it stays, finite, and metrics.jsonl is JSON lines (null for NaN)."""
    config, damsm = tiny
    run = tmp_path / "run"
    assert _cli(capsys, *_train_argv(config, damsm, run, max_steps=2))[0] == 0
    status, err = _cli(
        capsys,
        *_train_argv(config, damsm, run, max_steps=8, lr_g="1e8", lr_d="1e8", checkpoint_every=1),
        "--resume",
    )
    assert status == 2
    message = err.splitlines()[-1]
    diverged = re.fullmatch(
        rf"attngan train: error: GAN training diverged (?:at|by) step (\d+) \((losses .+|.+ holds "
        rf"NaN or infinity, the losses finite)\); its last good checkpoint, {run}/checkpoints/"
        rf"gan_last.pt \(step (\d+)\), is kept: lower the learning rates \(gan.lr_g, "
        r"gan.lr_d\) and resume from it with --resume",
        message,
    )
    assert diverged, message
    step, kept = int(diverged[1]), int(diverged[3])
    assert step > 2 and kept == step - 1
    assert load_checkpoint(run / "checkpoints" / "gan_last.pt")["step"] == kept
    assert _finite(run / "checkpoints" / "gan_last.pt")
    assert [line["step"] for line in _metrics(run)] == list(range(1, step + 1))


def _poison_before_step(monkeypatch, trainer_class, index: int, weights) -> None:
    """`weights(trainer)` (a tensor) filled with NaN before the trainer's step `index` (1-based)
    of this process, as a diverging update would leave them."""
    step = trainer_class.step

    def poisoned(self, batch):
        if self.steps + 1 == index:
            with torch.no_grad():
                weights(self).fill_(float("nan"))
        return step(self, batch)

    monkeypatch.setattr(trainer_class, "step", poisoned)


def test_a_nan_between_log_steps_is_caught_before_the_next_checkpoint(tiny, tmp_path, monkeypatch):
    """A NaN at step 3 of a run that logs at its end only and saves every 2 steps: the save at
    step 4 is refused naming step 3 and its losses; the checkpoint of step 2 stays, and the run
    resumed from it ends as an undisturbed run does."""
    config, damsm = tiny
    quiet = _with(config, max_steps=6, log_every=1000, checkpoint_every=2)
    whole, run = tmp_path / "whole", tmp_path / "run"
    train_gan(quiet, damsm, whole, progress=False)
    with monkeypatch.context() as patch:
        _poison_before_step(patch, GANTrainer, 3, lambda trainer: trainer.netG.ca.fc.weight)
        with pytest.raises(
            TrainingDiverged,
            match=r"GAN training diverged at step 3 \(losses "
            r"d0=nan, d1=nan, g_adv=nan, .*g_total=nan\); "
            r"its last good checkpoint, .* \(step 2\)",
        ):
            train_gan(quiet, damsm, run, progress=False)
    assert load_checkpoint(run / "checkpoints" / "gan_last.pt")["step"] == 2
    assert _metrics(run) == []
    train_gan(quiet, damsm, run, resume=True, progress=False)
    a = load_checkpoint(whole / "checkpoints" / "gan_last.pt")["trainer"]["generator"]
    b = load_checkpoint(run / "checkpoints" / "gan_last.pt")["trainer"]["generator"]
    assert all(torch.equal(value, b[name]) for name, value in a.items())
    assert [{k: v for k, v in line.items() if k != "seconds"} for line in _metrics(run)] == [
        {k: v for k, v in line.items() if k != "seconds"} for line in _metrics(whole)
    ]


def test_non_finite_state_with_finite_losses_is_not_saved(tiny, tmp_path, monkeypatch):
    """The averaged generator (which no loss sees) made NaN before step 3: the checkpoint of
    step 4 is refused, naming the tensor."""
    config, damsm = tiny
    _poison_before_step(monkeypatch, GANTrainer, 3, lambda trainer: trainer.ema.module.ca.fc.weight)
    with pytest.raises(
        TrainingDiverged,
        match=r"GAN training diverged by step 4 \(trainer\.ema"
        r"\.ca\.fc\.weight holds NaN or infinity, the "
        r"losses finite\); its last good checkpoint, .* "
        r"\(step 2\), is kept",
    ):
        train_gan(
            _with(config, max_steps=6, checkpoint_every=2), damsm, tmp_path / "run", progress=False
        )
    assert _finite(tmp_path / "run" / "checkpoints" / "gan_last.pt")
    assert [line["step"] for line in _metrics(tmp_path / "run")] == [1, 2, 3, 4]


def test_a_nan_in_damsm_pretraining_stops_it(tiny, tmp_path, monkeypatch):
    """A NaN at step 6 (the second epoch's second step) of DAMSM pretraining: it stops at that
    step's log line (JSON, null for NaN); the checkpoint of the first epoch stays."""
    config, _ = tiny
    config = dataclasses.replace(
        config, damsm=dataclasses.replace(config.damsm, epochs=3, log_every=1, checkpoint_every=1)
    )
    _poison_before_step(
        monkeypatch, DAMSMTrainer, 6, lambda trainer: trainer.text_encoder.encoder.weight
    )
    run = tmp_path / "run"
    with pytest.raises(
        TrainingDiverged,
        match=r"DAMSM training diverged at step 6 \(losses "
        r"w0=nan, w1=nan, s0=nan, s1=nan, loss=nan\); its "
        rf"last good checkpoint, {run}/checkpoints/damsm_"
        r"last\.pt \(step 4\), is kept: lower the "
        r"learning rates \(damsm\.lr\) and resume",
    ):
        pretrain_damsm(config, run, progress=False)
    payload = load_checkpoint(run / "checkpoints" / "damsm_last.pt")
    assert (payload["epoch"], payload["step"]) == (1, 4)
    assert _finite(run / "checkpoints" / "damsm_last.pt")
    lines = _metrics(run)
    assert lines[-1]["step"] == 6 and lines[-1]["loss"] is None
    assert not (run / "r_precision.json").exists()


def test_metrics_lines_are_json_with_null_for_non_finite_values():
    line = metrics_line(
        {"step": 3, "d0": float("nan"), "kl": float("inf"), "g": -math.inf, "lr": 0.5}
    )
    assert json.loads(line) == {"step": 3, "d0": None, "kl": None, "g": None, "lr": 0.5}
    assert line.endswith("\n") and line.count("\n") == 1


# ---- settings -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "override, match",
    [
        ("gan.batch_size=0", "'gan.batch_size' must be at least 2, got 0"),
        ("data.base_size=0", "'data.base_size' must be at least 8, got 0"),
        ("data.base_size=-16", "'data.base_size' must be at least 8, got -16"),
        ("data.words_num=0", "'data.words_num' must be at least 1, got 0"),
    ],
)
def test_settings_out_of_range_before_any_work(override, match):
    with pytest.raises(ConfigError, match=match):
        load_config(ROOT / "configs/shapes.yaml", [override])


def test_a_step_that_cannot_fit_in_memory_is_refused_before_any_work(tiny, tmp_path, capsys):
    _, damsm = tiny
    for command, extra in (("train", ["--damsm", damsm]), ("pretrain-damsm", [])):
        status, err = _cli(
            capsys,
            command,
            "--config",
            ROOT / "configs/shapes.yaml",
            "--set",
            "data.base_size=100000",
            *extra,
            "--out",
            tmp_path / command,
        )
        assert status == 2, err[-300:]
        assert "one training step of these settings holds at least" in err
        assert "GiB of cpu; lower data.base_size, data.branch_num or" in err
        assert not (tmp_path / command).exists()


def test_settings_a_command_does_not_use_are_refused(tiny, tmp_path, capsys):
    _, damsm = tiny
    status, err = _cli(
        capsys,
        "train",
        "--config",
        ROOT / "configs/shapes.yaml",
        "--set",
        "text_encoder.hidden_dim=512",
        "--damsm",
        damsm,
        "--out",
        tmp_path / "g",
    )
    assert status == 2
    assert (
        "--set text_encoder.hidden_dim: attngan train does not use this setting (train "
        "takes its encoders from the DAMSM run" in err
    )
    for command, key in (("pretrain-damsm", "gan.ngf=4"), ("make-synthetic", "gan.ngf=4")):
        with pytest.raises(ConfigError, match=f"attngan {command} does not use this setting"):
            refuse_unused_overrides(command, [key])
    refuse_unused_overrides("train", ["gan.ngf=4", "damsm.gamma1=3", "data.root=x"])


def test_a_gan_run_records_the_encoders_it_uses(tiny, tmp_path):
    """The text and image encoder settings of a GAN run are its DAMSM's, whatever the config
    given to train said (they were recorded as given, and never applied)."""
    config, damsm = tiny
    other = dataclasses.replace(
        config, text_encoder=dataclasses.replace(config.text_encoder, hidden_dim=64)
    )
    train_gan(_with(other, max_steps=1), damsm, tmp_path / "run", progress=False)
    recorded = load_checkpoint(tmp_path / "run" / "checkpoints" / "gan_last.pt")["config"]
    assert recorded["text_encoder"]["hidden_dim"] == config.text_encoder.hidden_dim


# ---- minor ----------------------------------------------------------------------------------


def test_a_latin1_byte_stays_inside_its_word():
    assert tokenize(decode_text(b"a r\xe9d circle", Path("x.txt"))) == ["a", "rd", "circle"]
    assert tokenize("a r\udce9d circle") == ["a", "rd", "circle"]  # argv, as Python gets it
    assert tokenize("a r\u00e9d circle") == ["a", "rd", "circle"]


def test_a_second_sample_replaces_the_first(trained, tmp_path):
    out = tmp_path / "samples"
    status = cli_main(
        [
            "sample",
            "--ckpt",
            str(trained),
            "--text",
            "a red circle",
            "--text",
            "a blue square",
            "--n",
            "2",
            "--out",
            str(out),
        ]
    )
    assert status == 0 and len(list(out.glob("01_*"))) > 0
    mine = out / "notes.txt"
    mine.write_text("keep")
    assert (
        cli_main(
            [
                "sample",
                "--ckpt",
                str(trained),
                "--text",
                "a green circle",
                "--n",
                "2",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    names = sorted(path.name for path in out.iterdir())
    assert not [name for name in names if name.startswith("01_")], names
    assert all(name.startswith("00_a_green_circle") for name in names if name.endswith(".png")), (
        names
    )
    assert mine.read_text() == "keep"
    assert (out / "captions.txt").read_text() == "00: a green circle\n"


def test_a_killed_training_process_releases_its_folder(tiny, tmp_path, capsys):
    """SIGKILL during training: the lock goes with the process; the run resumes."""
    config, damsm = tiny
    run = tmp_path / "run"
    argv = [
        str(arg) for arg in _train_argv(config, damsm, run, max_steps=100000, checkpoint_every=1)
    ]
    child = subprocess.Popen(
        [sys.executable, "-m", "attngan", *argv],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 120
    while not (run / "checkpoints" / "gan_last.pt").exists():
        assert child.poll() is None and time.time() < deadline, child.stderr.read()
        time.sleep(0.2)
    child.send_signal(signal.SIGKILL)
    child.wait()
    record = json.loads((run / LOCK_NAME).read_text())
    assert record["pid"] == child.pid and record["command"] == "attngan train"
    step = load_checkpoint(run / "checkpoints" / "gan_last.pt")["step"]
    resumed = _train_argv(config, damsm, run, max_steps=step + 2, checkpoint_every=1)
    status, err = _cli(capsys, *resumed, "--resume")
    assert status == 0, err
    assert f"taking over {run} from `attngan train` (pid {child.pid}" in err
    assert load_checkpoint(run / "checkpoints" / "gan_last.pt")["step"] == step + 2


def _pretrain_argv(config, run: Path) -> list:
    """`attngan pretrain-damsm` of the tiny run's settings, for many epochs, into `run`."""
    settings = {
        "data.root": config.data.root,
        "data.base_size": config.data.base_size,
        "data.branch_num": config.data.branch_num,
        **{
            f"text_encoder.{key}": getattr(config.text_encoder, key)
            for key in ("embedding_dim", "hidden_dim")
        },
        **{
            f"image_encoder.{key}": getattr(config.image_encoder, key)
            for key in ("input_size", "width")
        },
        **{
            f"damsm.{key}": getattr(config.damsm, key)
            for key in ("batch_size", "eval_candidates", "eval_folds")
        },
        "damsm.epochs": 100000,
        "damsm.log_every": 1,
        "damsm.checkpoint_every": 1,
        "run.device": "cpu",
        "run.threads": 1,
    }
    overrides = sum((["--set", f"{key}={value}"] for key, value in settings.items()), [])
    return ["pretrain-damsm", "--config", ROOT / "configs/shapes.yaml", *overrides, "--out", run]


@pytest.mark.parametrize("command", ["train", "pretrain-damsm"])
def test_ctrl_c_leaves_the_interrupted_line_last(tiny, tmp_path, command):
    """SIGINT to a training command with its progress bars on, once it has a checkpoint: the
    CLI's "interrupted" line is the last on stderr (the bar was drawn again below it)."""
    config, damsm = tiny
    run = tmp_path / "run"
    if command == "train":
        argv = _train_argv(config, damsm, run, max_steps=100000, checkpoint_every=1)
        checkpoint = run / "checkpoints" / "gan_last.pt"
    else:
        argv = _pretrain_argv(config, run)
        checkpoint = run / "checkpoints" / "damsm_last.pt"
    child = subprocess.Popen(
        [sys.executable, "-m", "attngan", *map(str, argv)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        # a shell's background job starts with SIGINT ignored, and Python then keeps it so
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.time() + 120
    while not checkpoint.exists():
        assert child.poll() is None and time.time() < deadline, child.stderr.read()
        time.sleep(0.2)
    time.sleep(0.5)  # into the steps after it
    child.send_signal(signal.SIGINT)
    _, err = child.communicate(timeout=120)
    assert child.returncode == 130, err[-500:]
    lines = [line for line in re.split(r"[\r\n]", err) if line.strip()]
    assert (
        lines[-1] == f"attngan {command}: interrupted; the same command with --resume goes "
        "on from the run's last checkpoint"
    ), lines[-3:]
    assert any(line.startswith(("GAN:", "DAMSM epoch")) for line in lines)  # bars were on
