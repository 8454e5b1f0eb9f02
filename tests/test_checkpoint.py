"""Checkpoints: atomic write, weights_only load, kind checks, run folders, exact RNG restore."""

import os
import pickle
import random
import stat

import numpy as np
import pytest
import torch

from attngan.config import Config, config_to_dict
from attngan.train.checkpoint import (
    CheckpointError,
    load_checkpoint,
    require_resumable_config,
    require_same_vocabulary,
    resolve_run_checkpoint,
    rng_state,
    run_checkpoint_path,
    save_checkpoint,
    set_rng_state,
    trim_metrics,
)


def test_round_trip_with_weights_only(tmp_path):
    payload = {
        "kind": "damsm",
        "weights": {"w": torch.randn(3, 4)},
        "step": 7,
        "vocab": ["<end>", "a"],
        "betas": (0.5, 0.999),
    }
    path = save_checkpoint(tmp_path / "sub" / "c.pt", payload)
    loaded = load_checkpoint(path)
    assert torch.equal(loaded["weights"]["w"], payload["weights"]["w"])
    assert loaded["step"] == 7 and loaded["vocab"] == ["<end>", "a"]
    assert [p.name for p in path.parent.iterdir()] == ["c.pt"]  # no temporary left behind


def test_wrong_kind_missing_and_corrupt_files(tmp_path):
    path = save_checkpoint(tmp_path / "c.pt", {"kind": "gan"})
    with pytest.raises(CheckpointError, match="'gan' checkpoint, but a 'damsm'"):
        load_checkpoint(path, kind="damsm")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a checkpoint at all")
    with pytest.raises(
        CheckpointError,
        match=r"\(UnpicklingError: Unsupported operand \d+\); "
        "it is corrupt",
    ) as error:
        load_checkpoint(corrupt)
    assert "weights_only" not in str(error.value)  # not torch's advice to load unsafely
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(path.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="failed reading zip archive"):
        load_checkpoint(truncated)
    torch.save({"no": "kind"}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not an attngan checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
    torch.save({"kind": "gan", "config": {}}, tmp_path / "partial.pt")
    with pytest.raises(
        CheckpointError,
        match="partial.pt is not a complete attngan gan checkpoint \\(no 'damsm_config', ",
    ):
        load_checkpoint(tmp_path / "partial.pt", kind="gan")


def test_run_folders_resolve_to_their_last_checkpoint(tmp_path):
    """A file is passed through (load_checkpoint checks it); a run folder gives its checkpoint;
    a folder without one says what it holds: another kind of run, or runs inside it."""
    assert resolve_run_checkpoint(tmp_path / "c.pt", "gan") == tmp_path / "c.pt"
    gan = save_checkpoint(
        tmp_path / "demo" / "gan" / "checkpoints" / "gan_last.pt", {"kind": "gan"}
    )
    save_checkpoint(
        tmp_path / "demo" / "damsm" / "checkpoints" / "damsm_last.pt", {"kind": "damsm"}
    )
    assert resolve_run_checkpoint(tmp_path / "demo" / "gan", "gan") == gan
    with pytest.raises(
        CheckpointError,
        match=r"demo/damsm is not a GAN run folder \(no "
        r"checkpoints/gan_last.pt; it holds checkpoints/damsm_last.pt\): pass a "
        r"GAN run folder or its .pt file",
    ):
        resolve_run_checkpoint(tmp_path / "demo" / "damsm", "gan")
    with pytest.raises(
        CheckpointError,
        match=r"demo is not a DAMSM run folder \(no checkpoints/"
        r"damsm_last.pt; the runs inside it: \S+/demo/damsm, \S+/demo/gan\)",
    ):
        resolve_run_checkpoint(tmp_path / "demo", "damsm")
    (tmp_path / "empty").mkdir()
    with pytest.raises(
        CheckpointError,
        match=r"empty is not a GAN run folder \(no "
        r"checkpoints/gan_last.pt\): pass",
    ):
        resolve_run_checkpoint(tmp_path / "empty", "gan")


class Pickled:
    """An arbitrary class: weights_only loading must refuse to rebuild it."""


def test_pickled_objects_are_refused(tmp_path):
    torch.save({"kind": "damsm", "x": Pickled()}, tmp_path / "evil.pt")
    with pytest.raises(
        CheckpointError,
        match=r"cannot be read \(UnpicklingError: Unsupported "
        r"global: GLOBAL test_checkpoint.Pickled was not an allowed global "
        r"by default\); it is corrupt",
    ):
        load_checkpoint(tmp_path / "evil.pt")


def test_failed_write_keeps_the_old_file(tmp_path):
    path = save_checkpoint(tmp_path / "c.pt", {"kind": "gan", "step": 1})
    # a local lambda cannot be pickled: AttributeError up to Python 3.13, PicklingError after
    with pytest.raises((AttributeError, pickle.PicklingError), match="pickle"):
        save_checkpoint(path, {"kind": "gan", "bad": lambda: 0})
    assert load_checkpoint(path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]


def test_checkpoints_have_the_umasks_permissions(tmp_path):
    """0666 less the umask, as open() makes a file: the temporary file it is written through is
    its owner's only, which the rename must not keep."""
    old = os.umask(0o027)
    try:
        path = save_checkpoint(tmp_path / "c.pt", {"kind": "gan", "step": 1})
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o640


def test_rng_state_restores_every_generator(tmp_path):
    random.gauss(0, 1)  # leaves a cached gauss value in Python's generator state
    path = save_checkpoint(tmp_path / "r.pt", {"kind": "x", "rng": rng_state()})
    first = (random.random(), random.gauss(0, 1), np.random.rand(), torch.rand(2).tolist())
    set_rng_state(load_checkpoint(path)["rng"])
    again = (random.random(), random.gauss(0, 1), np.random.rand(), torch.rand(2).tolist())
    assert first == again


def test_resume_on_another_vocabulary_is_refused():
    payload = {"kind": "gan", "vocab_fingerprint": "abc"}
    require_same_vocabulary(payload, "abc", "c.pt", "data/shapes")
    with pytest.raises(CheckpointError, match="another vocabulary than the data in data/x"):
        require_same_vocabulary(payload, "def", "c.pt", "data/x")


def test_run_folders_are_checked_before_a_run_writes(tmp_path):
    """A run never writes into a file, into a run of the other kind (whose config.yaml and
    metrics it would overwrite), or over a run of its kind without --resume."""
    damsm = tmp_path / "damsm"
    save_checkpoint(damsm / "checkpoints" / "damsm_last.pt", {"kind": "damsm"})
    with pytest.raises(
        CheckpointError,
        match=r"holds a DAMSM run \(checkpoints/damsm_last\.pt\); "
        "choose another --out folder for the GAN run",
    ):
        run_checkpoint_path(damsm, "gan", resume=False)
    with pytest.raises(CheckpointError, match="already holds a DAMSM run .* pass --resume"):
        run_checkpoint_path(damsm, "damsm", resume=False)
    assert (
        run_checkpoint_path(damsm, "damsm", resume=True) == damsm / "checkpoints" / "damsm_last.pt"
    )
    with pytest.raises(
        CheckpointError, match="--resume: .*gan_last.pt does not exist; train without --resume"
    ):
        run_checkpoint_path(tmp_path / "new", "gan", resume=True)
    (tmp_path / "file").write_text("x")
    with pytest.raises(CheckpointError, match="is a file, not a folder"):
        run_checkpoint_path(tmp_path / "file", "damsm", resume=False)


def test_a_resume_may_change_only_how_long_where_and_how_fast_a_run_trains(tmp_path):
    config = Config()
    saved = {"kind": "gan", "config": config_to_dict(config)}
    changed = config_to_dict(config)
    changed["gan"].update(max_steps=99, epochs=3, lr_g=1e-5, lr_d=1e-5)
    changed["damsm"]["lr"] = 1e-4
    changed["run"].update(device="cpu", impl="reference")
    changed["data"]["root"] = "/elsewhere"
    require_resumable_config(saved, changed, tmp_path / "c.pt", tmp_path)
    changed["gan"]["ngf"] = 8
    changed["damsm"]["gamma1"] = 3.0
    with pytest.raises(
        CheckpointError,
        match=r"--resume: the config differs from the one .*c\.pt "
        r"was trained with: damsm\.gamma1=3\.0 \(the run's: 4\.0\), gan\.ngf=8 "
        r"\(the run's: 32\); resume with the run's config \(--config "
        f"{tmp_path}/config.yaml",
    ):
        require_resumable_config(saved, changed, tmp_path / "c.pt", tmp_path)


def test_trim_metrics_drops_later_lines_and_a_line_cut_short(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1}\n{"step": 2}\n{"step": 3}\n{"step": 4, "lo')
    trim_metrics(path, 2)
    assert path.read_text() == '{"step": 1}\n{"step": 2}\n'
    path.write_text('{"step": 1}\n{"ste\n{"step": 2}\n')
    with pytest.raises(CheckpointError, match="metrics.jsonl line 2 is not a JSON record"):
        trim_metrics(path, 2)
    assert path.read_text() == '{"step": 1}\n{"ste\n{"step": 2}\n'


def test_a_write_removes_the_temporaries_of_a_killed_one(tmp_path):
    """A process killed outright (SIGKILL) while writing leaves its temporary file: the next
    write of the same file removes it, and only it: not a live writer's, not another file's."""
    dead, live = 999_999_999, os.getpid()  # above any pid_max; this process
    (tmp_path / f".c.pt.tmp-{dead}-x1y2").write_bytes(b"half a checkpoint")
    (tmp_path / f".c.pt.tmp-{live}-x1y2").write_bytes(b"a write in progress")
    (tmp_path / f".other.pt.tmp-{dead}-x1y2").write_bytes(b"another file's")
    save_checkpoint(tmp_path / "c.pt", {"kind": "gan", "step": 1})
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        f".c.pt.tmp-{live}-x1y2",
        f".other.pt.tmp-{dead}-x1y2",
        "c.pt",
    ]
