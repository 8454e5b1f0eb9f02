"""Checkpoints that load with `weights_only=True`, are written atomically and resume exactly.

A checkpoint is a dict of tensors and plain Python values only (no pickled classes), so
`torch.load(..., weights_only=True)` reads it and a file from an untrusted source cannot run
code. It is written to a temporary file in the same folder and renamed over the target, so a
crash mid-write never leaves a truncated checkpoint; training runs write theirs on a background
thread (`CheckpointWriter`). RNG state (Python, NumPy, torch CPU and CUDA) is captured and
restored so a resumed run draws the same numbers as an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import json
import random
import threading
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import numpy as np
import torch

from attngan.files import hold_folder, require_writable, write_atomically
from attngan.nn.state_files import load_failure_reason, load_state_exactly


class CheckpointError(ValueError):
    """A checkpoint that is missing, unreadable or of the wrong kind (the message says the fix)."""


# The checkpoint file of each kind of run folder, the run's name in messages, and the entries
# every checkpoint of the kind holds (imported runs included).
CHECKPOINT_NAMES = {"damsm": "damsm_last.pt", "gan": "gan_last.pt"}
RUN_NAMES = {"damsm": "DAMSM", "gan": "GAN"}
REQUIRED_ENTRIES = {
    "damsm": (
        "config",
        "vocab",
        "vocab_fingerprint",
        "text_encoder",
        "image_encoder",
        "epoch",
        "step",
    ),
    "gan": (
        "config",
        "damsm_config",
        "damsm_checkpoint",
        "damsm_sha256",
        "vocab",
        "vocab_fingerprint",
        "text_encoder",
        "trainer",
        "step",
        "epoch",
    ),
}
# What a resumed run may set differently from the run it continues: how long it trains, how
# often it writes, where and with which kernels and step switches it runs (attngan.train.speed:
# none of them changes the model), where the data, its image cache and the Inception weights now
# are, how the finished run is evaluated, and its learning rates (lowered to go on from the last
# good checkpoint of a run that diverged). Anything else (a model size, the data's sizes) would
# not continue the run but start another from its weights, or fail to load them.
RESUME_MAY_CHANGE = frozenset(
    {
        "data.root",
        "data.image_cache",
        "image_encoder.weights",
        "data.num_workers",
        "damsm.epochs",
        "damsm.log_every",
        "damsm.checkpoint_every",
        "damsm.eval_candidates",
        "damsm.eval_folds",
        "data.eval_words_num",
        "damsm.lr",
        "gan.epochs",
        "gan.max_steps",
        "gan.log_every",
        "gan.sample_every",
        "gan.checkpoint_every",
        "gan.lr_g",
        "gan.lr_d",
        "run.device",
        "run.impl",
        "run.threads",
        "run.speed",
        "run.precision",
        "run.channels_last",
        "run.cudnn_benchmark",
        "run.fused_adam",
        "run.compile",
        "run.cuda_graphs",
    }
)


def run_checkpoint_path(out_dir: Path, kind: str, resume: bool) -> Path:
    """The checkpoint of a `kind` run to be written in `out_dir`, after checking the folder: it
    must be a folder or nothing yet, hold no run of another kind (whose config.yaml and metrics
    the new run would overwrite), hold no run of this kind unless resuming, and hold one when
    resuming."""
    name, run = CHECKPOINT_NAMES[kind], RUN_NAMES[kind]
    checkpoint = out_dir / "checkpoints" / name
    if out_dir.exists() and not out_dir.is_dir():
        raise CheckpointError(
            f"--out {out_dir} is a file, not a folder; choose a folder for the {run} run"
        )
    for other, other_name in CHECKPOINT_NAMES.items():
        if other != kind and (out_dir / "checkpoints" / other_name).exists():
            raise CheckpointError(
                f"{out_dir} holds a {RUN_NAMES[other]} run (checkpoints/"
                f"{other_name}); choose another --out folder for the {run} run"
            )
    if checkpoint.exists() and not resume:
        raise CheckpointError(
            f"{out_dir} already holds a {run} run ({checkpoint}); pass "
            "--resume to continue it or choose another --out folder"
        )
    if resume and not checkpoint.exists():
        raise CheckpointError(
            f"--resume: {checkpoint} does not exist; train without --resume "
            "to start a new run in this folder"
        )
    return checkpoint


@contextlib.contextmanager
def hold_run_folder(out_dir: str | Path, command: str) -> Iterator[Path]:
    """Hold the run folder `out_dir` while the block runs (attngan.files.hold_folder), so that a
    second run into it fails at once, changing nothing, after checking it for writing.
    `command` names the holder in the second run's error."""
    with hold_folder(out_dir, "--out folder", command) as folder:
        require_writable(folder, "--out folder")
        yield folder


def holds_run_folder(command: str) -> Callable:
    """Decorator of a function with an `out_dir` argument that writes a run: `hold_run_folder`
    for the call."""

    def decorate(function: Callable) -> Callable:
        signature = inspect.signature(function)

        @functools.wraps(function)
        def run(*args, **kwargs):
            with hold_run_folder(signature.bind(*args, **kwargs).arguments["out_dir"], command):
                return function(*args, **kwargs)

        return run

    return decorate


def open_run(
    out_dir: Path, kind: str, resume: bool, config: dict, imported: str
) -> tuple[Path, Optional[dict]]:
    """(checkpoint path, the checkpoint to resume from or None) of a `kind` run in `out_dir`:
    run_checkpoint_path's checks, and when resuming, a checkpoint that is not an imported run
    (`imported`: what it holds and what to do with it instead) of a config the resume keeps
    (require_resumable_config with `config`, config_to_dict of the new run's)."""
    checkpoint_path = run_checkpoint_path(out_dir, kind, resume)
    if not resume:
        return checkpoint_path, None
    payload = load_checkpoint(checkpoint_path, kind=kind)
    if "imported" in payload:
        raise CheckpointError(f"{checkpoint_path} holds {imported}")
    require_resumable_config(payload, config, checkpoint_path, out_dir)
    return checkpoint_path, payload


def _flat(values: dict, prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def config_changes(payload: dict, config: dict) -> str:
    """The settings in which `config` (config_to_dict) differs from the run of checkpoint
    `payload` beyond RESUME_MAY_CHANGE, as "key=new (the run's: old), ...", or ""."""
    saved, given = _flat(payload["config"]), _flat(config)
    changed = sorted(
        key
        for key in saved.keys() | given.keys()
        if key not in RESUME_MAY_CHANGE and saved.get(key) != given.get(key)
    )
    return ", ".join(
        f"{key}={given.get(key)!r} (the run's: {saved.get(key)!r})" for key in changed[:3]
    ) + (" ..." if len(changed) > 3 else "")


def require_resumable_config(payload: dict, config: dict, path: Path, out_dir: Path) -> None:
    """Refuse to resume the run of checkpoint `payload` with a `config` (config_to_dict) that
    differs from the run's own in anything but RESUME_MAY_CHANGE."""
    shown = config_changes(payload, config)
    if shown:
        other = next(name for name in RUN_NAMES if name != payload["kind"])
        allowed = sorted(key for key in RESUME_MAY_CHANGE if not key.startswith(f"{other}."))
        raise CheckpointError(
            f"--resume: the config differs from the one {path} was trained with: {shown}; resume "
            f"with the run's config (--config {out_dir / 'config.yaml'}; a resume may change only "
            f"{', '.join(allowed)}) or start a new run in another --out folder"
        )


def trim_metrics(path: Path, last_step: int) -> None:
    """Drop the lines of a run's metrics.jsonl written after the checkpoint it resumes from, or
    all of them for a new run (last_step 0) in a folder where a run was killed before its first
    checkpoint: the run writes them again. A last line cut short by a crash goes too."""
    if not path.exists():
        return
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    kept = []
    for number, line in enumerate(lines, 1):
        try:
            record = json.loads(line)
        except ValueError:
            if number == len(lines):
                break
            raise CheckpointError(
                f"{path} line {number} is not a JSON record ({line[:40]!r}); "
                "repair or delete that line, then run again"
            ) from None
        if record.get("step", 0) <= last_step:
            kept.append(line)
    text = "".join(line + "\n" for line in kept).encode()
    write_atomically(path, lambda stream: stream.write(text))


def save_checkpoint(path: str | Path, payload: dict) -> Path:
    """Write `payload` to `path` atomically (attngan.files.write_atomically)."""
    return write_atomically(path, lambda stream: torch.save(payload, stream))


def _on_host(value: Any) -> Any:
    """`value` with every tensor copied to the CPU: a snapshot that training, which goes on
    changing its tensors in place, cannot change."""
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", copy=True)
    if isinstance(value, dict):
        return {key: _on_host(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_on_host(item) for item in value)
    return value


class CheckpointWriter:
    """Writes a training run's checkpoints on a background thread, one at a time.

    `save(path, payload)` waits for the previous write to finish, copies the payload's tensors
    to the CPU (on the calling thread, so the snapshot is the state at that step) and starts
    writing it with `save_checkpoint` (atomic); the training goes on meanwhile. `wait()`, and
    leaving a `with` block (also by an error or Ctrl-C), waits for the last write. A write that
    failed raises its error at the next `save` or `wait` (when leaving the block by another
    error, that one propagates); the file it was replacing is left as it was. The thread is not
    a daemon, so even an interpreter that exits waits for a write under way.
    """

    def __init__(self):
        self._thread: Optional[threading.Thread] = None
        self._error: Optional[BaseException] = None

    def __enter__(self) -> "CheckpointWriter":
        return self

    def __exit__(self, error_type, error, traceback) -> None:
        self.wait(raise_error=error_type is None)

    def save(self, path: str | Path, payload: dict) -> None:
        self.wait()
        snapshot = _on_host(payload)
        self._thread = threading.Thread(
            target=self._write,
            args=(Path(path), snapshot),
            name=f"checkpoint writer ({Path(path).name})",
        )
        self._thread.start()

    def _write(self, path: Path, payload: dict) -> None:
        try:
            save_checkpoint(path, payload)
        except BaseException as error:  # raised on the training's thread by wait()
            self._error = error

    def wait(self, raise_error: bool = True) -> None:
        """Wait for the write under way, if any; raise its error (with `raise_error`)."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        error, self._error = self._error, None
        if error is not None and raise_error:
            raise error


def resolve_run_checkpoint(path_or_run_dir: str | Path, kind: str) -> Path:
    """`path_or_run_dir` itself unless it is a folder (`load_checkpoint` then checks the file);
    for the folder of a `kind` run its last checkpoint, <folder>/checkpoints/<CHECKPOINT_NAMES
    [kind]>. A folder without one is an error that says what the folder holds instead (another
    kind of run, or runs in its sub-folders, as `attngan demo` writes them)."""
    path = Path(path_or_run_dir)
    if not path.is_dir():
        return path
    file_name, run_kind = CHECKPOINT_NAMES[kind], RUN_NAMES[kind]
    checkpoint = path / "checkpoints" / file_name
    if checkpoint.is_file():
        return checkpoint
    others = sorted(found.name for found in path.glob("checkpoints/*_last.pt"))
    runs = sorted({str(found.parent.parent) for found in path.glob("*/checkpoints/*_last.pt")})
    holds = (
        f"; it holds checkpoints/{', '.join(others)}"
        if others
        else f"; the runs inside it: {', '.join(runs)}"
        if runs
        else ""
    )
    raise CheckpointError(
        f"{path} is not a {run_kind} run folder (no checkpoints/{file_name}"
        f"{holds}): pass a {run_kind} run folder or its .pt file"
    )


def load_checkpoint(
    path: str | Path, *, kind: str | None = None, map_location: str | torch.device = "cpu"
) -> dict:
    """Read a checkpoint with weights_only=True; if `kind` ("damsm", "gan") is given, check that
    the checkpoint is one of that kind with every entry such a checkpoint holds."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"checkpoint {path} does not exist; pass the .pt file written by "
            "a training run (or its run folder)"
        )
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # torch.load fails in many ways on a corrupt file
        raise CheckpointError(
            f"checkpoint {path} cannot be read ({load_failure_reason(error)}"
            f"); it is corrupt or not an attngan checkpoint: "
            "use another checkpoint or retrain"
        ) from None
    if not isinstance(payload, dict) or "kind" not in payload:
        raise CheckpointError(f"{path} is not an attngan checkpoint (no 'kind' entry)")
    if kind is not None and payload["kind"] != kind:
        raise CheckpointError(
            f"{path} is a '{payload['kind']}' checkpoint, but a '{kind}' checkpoint is needed here"
        )
    missing = [entry for entry in REQUIRED_ENTRIES.get(kind, ()) if entry not in payload]
    if missing:
        raise CheckpointError(
            f"{path} is not a complete attngan {kind} checkpoint "
            f"(no {', '.join(repr(entry) for entry in missing)}): use another "
            "checkpoint or retrain"
        )
    return payload


def require_same_vocabulary(
    payload: dict,
    fingerprint: str,
    path: str | Path,
    data_root: str,
    fix: str = "resume with the data it was trained on or start a new run",
) -> None:
    """Refuse to use a checkpoint on data whose vocabulary differs from the checkpoint's: its
    word ids would index the wrong embeddings. `fix` ends the message (what to do instead)."""
    if payload["vocab_fingerprint"] != fingerprint:
        raise CheckpointError(
            f"{path} was trained with another vocabulary than the data in {data_root}; {fix}"
        )


def require_same_data(
    payload: dict,
    fingerprints: dict[str, dict],
    path: str | Path,
    data_root: str,
    accept_option: str,
) -> None:
    """Refuse data whose splits (`fingerprints`: split -> SplitRecords.fingerprint()) differ
    from those the run of checkpoint `payload` recorded: a run resumed or evaluated on other
    images or captions would report numbers of neither. `accept_option` goes on anyway. A
    checkpoint that recorded none (an imported run) is not checked."""
    recorded = payload.get("data_fingerprint") or {}
    for split, now in fingerprints.items():
        then = recorded.get(split)
        if then is not None and then != now:
            raise CheckpointError(
                f"the {split} split in {data_root} is not the data {path} was made with "
                f"({now['images']} images now, {then['images']} then, or other images or "
                f"captions); point data.root (or --data-root) at that data set, or pass "
                f"{accept_option} to go on with this one"
            )


def load_state(module: torch.nn.Module, state: dict, what: str, path: str | Path) -> None:
    """Load the entry `what` of checkpoint `path` into `module`, which the checkpoint's own
    config built: every key and shape must fit (a CheckpointError names the first misfits)."""
    load_state_exactly(
        module,
        state,
        path,
        "checkpoint",
        f"what its own config builds for {what}",
        "the checkpoint or its config was edited or damaged: use an unedited checkpoint or retrain",
        CheckpointError,
    )


def first_non_finite(state: dict, what: str) -> Optional[str]:
    """The name of the first floating-point tensor of a state dict (nested in dicts and lists)
    that holds NaN or infinity, as "what.name", or None."""
    if isinstance(state, torch.Tensor):
        return what if state.is_floating_point() and not bool(state.isfinite().all()) else None
    items = (
        state.items()
        if isinstance(state, dict)
        else enumerate(state)
        if isinstance(state, (list, tuple))
        else ()
    )
    for name, value in items:
        found = first_non_finite(value, f"{what}.{name}")
        if found:
            return found
    return None


def require_finite(state: dict, what: str, path: str | Path) -> None:
    """Refuse weights holding NaN or infinity: a diverged run's, which draw black images."""
    found = first_non_finite(state, what)
    if found:
        raise CheckpointError(
            f"{path} holds non-finite weights ({found} has NaN or infinity): "
            "the run diverged; use an earlier checkpoint or retrain with "
            "lower learning rates"
        )


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
