"""Checkpoints that load with `weights_only=True`, are written atomically and resume exactly.

A checkpoint is a dict of tensors and plain Python values only (no pickled classes), so
`torch.load(..., weights_only=True)` reads it and a file from an untrusted source cannot run
code. It is written to a temporary file in the same folder and renamed over the target, so a
crash mid-write never leaves a truncated checkpoint. RNG state (Python, NumPy, torch CPU and
CUDA) is captured and restored so a resumed run draws the same numbers as an uninterrupted one.
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from attngan.files import write_atomically
from attngan.nn.state_files import load_failure_reason


class CheckpointError(ValueError):
    """A checkpoint that is missing, unreadable or of the wrong kind (the message says the fix)."""


def save_checkpoint(path: str | Path, payload: dict) -> Path:
    """Write `payload` to `path` atomically (attngan.files.write_atomically)."""
    return write_atomically(path, lambda stream: torch.save(payload, stream))


def resolve_run_checkpoint(path_or_run_dir: str | Path, file_name: str, run_kind: str) -> Path:
    """`path_or_run_dir` itself unless it is a folder (`load_checkpoint` then checks the file);
    for a run folder its last checkpoint, <folder>/checkpoints/<file_name>. A folder without one
    is an error that says what the folder holds instead (another kind of run, or runs in its
    sub-folders, as `attngan demo` writes them)."""
    path = Path(path_or_run_dir)
    if not path.is_dir():
        return path
    checkpoint = path / "checkpoints" / file_name
    if checkpoint.is_file():
        return checkpoint
    others = sorted(found.name for found in path.glob("checkpoints/*_last.pt"))
    runs = sorted({str(found.parent.parent) for found in path.glob("*/checkpoints/*_last.pt")})
    holds = (f"; it holds checkpoints/{', '.join(others)}" if others else
             f"; the runs inside it: {', '.join(runs)}" if runs else "")
    raise CheckpointError(f"{path} is not a {run_kind} run folder (no checkpoints/{file_name}"
                          f"{holds}): pass a {run_kind} run folder or its .pt file")


def load_checkpoint(path: str | Path, *, kind: str | None = None,
                    map_location: str | torch.device = "cpu") -> dict:
    """Read a checkpoint with weights_only=True; check its `kind` ("damsm", "gan") if given."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; pass the .pt file written by "
                              "a training run (or its run folder)")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # torch.load fails in many ways on a corrupt file
        raise CheckpointError(f"checkpoint {path} cannot be read ({load_failure_reason(error)}"
                              f"); it is corrupt or not an attngan checkpoint: "
                              "use another checkpoint or retrain") from None
    if not isinstance(payload, dict) or "kind" not in payload:
        raise CheckpointError(f"{path} is not an attngan checkpoint (no 'kind' entry)")
    if kind is not None and payload["kind"] != kind:
        raise CheckpointError(f"{path} is a '{payload['kind']}' checkpoint, but a '{kind}' "
                              "checkpoint is needed here")
    return payload


def require_same_vocabulary(payload: dict, fingerprint: str, path: str | Path, data_root: str,
                            fix: str = "resume with the data it was trained on or start a new "
                                       "run") -> None:
    """Refuse to use a checkpoint on data whose vocabulary differs from the checkpoint's: its
    word ids would index the wrong embeddings. `fix` ends the message (what to do instead)."""
    if payload["vocab_fingerprint"] != fingerprint:
        raise CheckpointError(f"{path} was trained with another vocabulary than the data in "
                              f"{data_root}; {fix}")


def rng_state() -> dict[str, Any]:
    """The state of every random generator a run uses, as tensors and plain values."""
    numpy_state = np.random.get_state()
    version, internal, gauss = random.getstate()
    state = {
        "python": [version, list(internal), gauss],
        "numpy_keys": torch.from_numpy(numpy_state[1].astype(np.int64)),
        "numpy_pos": int(numpy_state[2]),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what `rng_state` captured."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    keys = state["numpy_keys"].numpy().astype(np.uint32)
    np.random.set_state(("MT19937", keys, state["numpy_pos"], 0, 0.0))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
