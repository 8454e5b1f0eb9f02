"""Checkpoints: atomic write, weights_only load, kind checks, run folders, exact RNG restore."""
import os
import random
import stat

import numpy as np
import pytest
import torch

from attngan.train.checkpoint import (CheckpointError, load_checkpoint,
                                      require_same_vocabulary, resolve_run_checkpoint,
                                      rng_state, save_checkpoint, set_rng_state)


def test_round_trip_with_weights_only(tmp_path):
    payload = {"kind": "damsm", "weights": {"w": torch.randn(3, 4)}, "step": 7,
               "vocab": ["<end>", "a"], "betas": (0.5, 0.999)}
    path = save_checkpoint(tmp_path / "sub" / "c.pt", payload)
    loaded = load_checkpoint(path, kind="damsm")
    assert torch.equal(loaded["weights"]["w"], payload["weights"]["w"])
    assert loaded["step"] == 7 and loaded["vocab"] == ["<end>", "a"]
    assert [p.name for p in path.parent.iterdir()] == ["c.pt"]   # no temporary left behind


def test_wrong_kind_missing_and_corrupt_files(tmp_path):
    path = save_checkpoint(tmp_path / "c.pt", {"kind": "gan"})
    with pytest.raises(CheckpointError, match="'gan' checkpoint, but a 'damsm'"):
        load_checkpoint(path, kind="damsm")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match=r"\(UnpicklingError: Unsupported operand \d+\); "
                       "it is corrupt") as error:
        load_checkpoint(corrupt)
    assert "weights_only" not in str(error.value)   # not torch's advice to load unsafely
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(path.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="failed reading zip archive"):
        load_checkpoint(truncated)
    torch.save({"no": "kind"}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not an attngan checkpoint"):
        load_checkpoint(tmp_path / "other.pt")


def test_run_folders_resolve_to_their_last_checkpoint(tmp_path):
    """A file is passed through (load_checkpoint checks it); a run folder gives its checkpoint;
    a folder without one says what it holds: another kind of run, or runs inside it."""
    assert resolve_run_checkpoint(tmp_path / "c.pt", "gan_last.pt", "GAN") == tmp_path / "c.pt"
    gan = save_checkpoint(tmp_path / "demo" / "gan" / "checkpoints" / "gan_last.pt",
                          {"kind": "gan"})
    save_checkpoint(tmp_path / "demo" / "damsm" / "checkpoints" / "damsm_last.pt",
                    {"kind": "damsm"})
    assert resolve_run_checkpoint(tmp_path / "demo" / "gan", "gan_last.pt", "GAN") == gan
    with pytest.raises(CheckpointError, match=r"demo/damsm is not a GAN run folder \(no "
                       r"checkpoints/gan_last.pt; it holds checkpoints/damsm_last.pt\): pass a "
                       r"GAN run folder or its .pt file"):
        resolve_run_checkpoint(tmp_path / "demo" / "damsm", "gan_last.pt", "GAN")
    with pytest.raises(CheckpointError, match=r"demo is not a DAMSM run folder \(no checkpoints/"
                       r"damsm_last.pt; the runs inside it: \S+/demo/damsm, \S+/demo/gan\)"):
        resolve_run_checkpoint(tmp_path / "demo", "damsm_last.pt", "DAMSM")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match=r"empty is not a GAN run folder \(no "
                       r"checkpoints/gan_last.pt\): pass"):
        resolve_run_checkpoint(tmp_path / "empty", "gan_last.pt", "GAN")


class Pickled:
    """An arbitrary class: weights_only loading must refuse to rebuild it."""


def test_pickled_objects_are_refused(tmp_path):
    torch.save({"kind": "damsm", "x": Pickled()}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match=r"cannot be read \(UnpicklingError: Unsupported "
                       r"global: GLOBAL test_checkpoint.Pickled was not an allowed global "
                       r"by default\); it is corrupt"):
        load_checkpoint(tmp_path / "evil.pt")


def test_failed_write_keeps_the_old_file(tmp_path):
    path = save_checkpoint(tmp_path / "c.pt", {"kind": "gan", "step": 1})
    with pytest.raises(Exception):
        save_checkpoint(path, {"kind": "gan", "bad": lambda: 0})   # lambdas cannot be pickled
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
    random.gauss(0, 1)   # leaves a cached gauss value in Python's generator state
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
