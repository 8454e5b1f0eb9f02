"""A training run around its steps, in one shape for both trainers (`attngan.train.gan` and
`attngan.train.damsm`).

`TrainingRun` takes a run through the phases every run has, in this order: its folder held and
checked for writing (the `with` block), `prepare` (seeds, threads, the device, a step that fits
in its memory, the step's switches), `read_data` (the data sets and their fingerprints), `open`
(the checkpoint to resume, refused for another vocabulary or changed data), then, once the
trainer is built and restored, `start` (the random generators as the checkpoint left them,
metrics.jsonl trimmed to it, config.yaml) and `outputs` (metrics.jsonl and the checkpoints,
written in the background), with `progress_bar` for the bars; all are closed when the training
loop ends or an error or Ctrl-C leaves it.

A step's losses are watched for NaN and infinity on the device (`DivergenceWatch`: nothing is
waited for per step) and read back at log and checkpoint steps only; before a checkpoint, the
whole state is checked too. A run that diverged stops with TrainingDiverged naming the first
step whose losses were not finite, and writes no checkpoint after it: its last good one stays.
metrics.jsonl stays JSON lines (a non-finite value is null).

Under torchrun (`attngan.distributed`) every rank goes through the same phases: rank 0 alone
writes the run (holds its folder, writes its files, shows its bars), each rank draws its noise
and dropout from its own random streams (rank 0's those of one process), the losses logged are
the ranks' mean, a divergence on any rank stops every rank, and a checkpoint holds every rank's
random state, so that a resume on as many ranks continues each exactly.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, TextIO

import torch
from tqdm import tqdm

from attngan.config import Config, config_to_dict, save_config
from attngan.data.dataset import TextImageDataset, build_dataset, read_split
from attngan.data.vocab import Vocabulary
from attngan.distributed import (
    SINGLE,
    World,
    all_gather_objects,
    join_world,
    local_share,
    rank_seed,
    reduce_,
    this_world,
)
from attngan.files import write_text_atomically
from attngan.train.checkpoint import (
    RUN_NAMES,
    CheckpointError,
    CheckpointWriter,
    first_non_finite,
    hold_run_folder,
    open_run,
    require_same_data,
    require_same_vocabulary,
    set_rng_state,
    trim_metrics,
)
from attngan.train.runtime import prepare_run, require_step_fits, seed_everything
from attngan.train.speed import StepSettings, step_settings

__all__ = ["TrainingRun", "RunOutputs", "DivergenceWatch", "TrainingDiverged", "metrics_line"]

# The learning rates of each kind of run, which a run that diverged is told to lower.
LEARNING_RATES = {"damsm": ("damsm.lr",), "gan": ("gan.lr_g", "gan.lr_d")}


class TrainingDiverged(ValueError):
    """A run whose losses or state became NaN or infinite (the message names the step, what
    went non-finite and the fix)."""


def metrics_line(record: dict) -> str:
    """`record` as one line of JSON, a float that is NaN or infinite as null (JSON has
    neither)."""
    return (
        json.dumps(
            {
                key: None if isinstance(value, float) and not math.isfinite(value) else value
                for key, value in record.items()
            },
            allow_nan=False,
        )
        + "\n"
    )


def _floating_tensors(value: Any) -> Iterator[torch.Tensor]:
    """The floating-point tensors of a checkpoint payload (nested in dicts, lists, tuples)."""
    if isinstance(value, torch.Tensor):
        if value.is_floating_point():
            yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _floating_tensors(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _floating_tensors(item)


class DivergenceWatch:
    """The first step whose losses were not all finite, and those losses, kept on the device:
    `update` adds a few tiny operations to a step and waits for nothing; `read` copies them to
    the host, with any other values, in one copy (over the ranks of `world`: the latest first
    step of any rank, and every other value summed)."""

    def __init__(self, world: World = SINGLE):
        self.world = world
        self.names: list[str] = []
        self._step: Optional[torch.Tensor] = None  # int64: that step; 0: none so far
        self._losses: Optional[torch.Tensor] = None  # float32 [len(names)]: its losses

    def update(self, step: int, losses: dict[str, torch.Tensor]) -> torch.Tensor:
        """Watch the losses of `step` (scalar tensors); returns them stacked, in float32."""
        values = torch.stack([loss.float() for loss in losses.values()])
        if self._step is None:
            self.names = list(losses)
            self._step = torch.zeros((), dtype=torch.int64, device=values.device)
            self._losses = torch.zeros_like(values)
        first = self._step.eq(0) & ~values.isfinite().all()
        self._step = torch.where(first, step, self._step)
        self._losses = torch.where(first, values, self._losses)
        return values

    def read(self, *tensors: torch.Tensor) -> tuple[int, dict[str, float], list[float]]:
        """(the first non-finite step, 0 if none; its losses by name; the values of `tensors`,
        1-dimensional, on the watch's device), read back in one copy, after an `update`; on
        several ranks the step is the latest of any rank's, and the rest sums over the ranks
        (a non-finite loss of any rank stays non-finite)."""
        step = reduce_(self._step.double().view(1), self.world, "max")
        rest = reduce_(
            torch.cat([self._losses.double(), *(t.double() for t in tensors)]), self.world
        )
        values = torch.cat([step, rest]).tolist()
        count = len(self.names)
        return int(values[0]), dict(zip(self.names, values[1 : 1 + count])), values[1 + count :]


class RunOutputs:
    """What a run's training loop writes (`TrainingRun.outputs`): metrics lines and checkpoints,
    the losses watched for divergence. A process that is not the run's writer writes nothing."""

    def __init__(
        self, run: "TrainingRun", metrics: Optional[TextIO], checkpoints: Optional[CheckpointWriter]
    ):
        self._run = run
        self._metrics = metrics
        self._checkpoints = checkpoints
        self._watch = DivergenceWatch(run.world)
        self._last: Optional[torch.Tensor] = None  # the last step's losses, stacked

    def track(self, step: int, losses: dict[str, torch.Tensor]) -> None:
        """Watch the losses of `step` (the trainer's step's, on the device) and keep them for
        the next `log_losses`."""
        self._last = self._watch.update(step, losses)

    def log(self, record: dict) -> None:
        """Write `record` as a line of metrics.jsonl (`metrics_line`), flushed."""
        if self._metrics is not None:
            self._metrics.write(metrics_line(record))
            self._metrics.flush()

    def log_losses(self, record: dict, rounded: Callable[[float], float]) -> dict[str, float]:
        """Read the last tracked step's losses back (with the watch, in one copy), log them
        `rounded` after `record`'s entries and return them as logged; then stop a run that
        diverged (TrainingDiverged)."""
        first, first_losses, values = self._watch.read(self._last)
        size = self._run.world.size  # the ranks' losses summed: their mean
        losses = {name: rounded(value / size) for name, value in zip(self._watch.names, values)}
        self.log({**record, **losses})
        if first:
            raise self._diverged(f"at step {first} (losses {_non_finite(first_losses)})")
        return losses

    def save(self, step: int, payload: dict) -> None:
        """Write `payload` as the run's checkpoint of `step` in the background, unless the run
        diverged: the watch and whether every floating-point tensor of `payload` is finite are
        read first, in one copy (TrainingDiverged otherwise, the previous checkpoint kept). On
        several ranks the payload's "rng" becomes every rank's random state, in rank order."""
        tensors = list(_floating_tensors(payload))
        on_host = all(bool(t.isfinite().all()) for t in tensors if t.device.type == "cpu")
        on_device = [~t.isfinite().all() for t in tensors if t.device.type != "cpu"]
        flags = [torch.stack(on_device).any().double().view(1)] if on_device else []
        first, first_losses, non_finite = self._watch.read(*flags)
        if first:
            raise self._diverged(f"at step {first} (losses {_non_finite(first_losses)})")
        if not (on_host and not any(non_finite)):
            found = next(
                name for key, value in payload.items() if (name := first_non_finite(value, key))
            )
            raise self._diverged(
                f"by step {step} ({found} holds NaN or infinity, the losses finite)"
            )
        if self._run.world.distributed:
            payload = dict(payload, rng=all_gather_objects(payload["rng"], self._run.world))
        if self._checkpoints is not None:
            self._checkpoints.save(self._run.checkpoint_path, payload)
        self._run.saved_step = step

    def _diverged(self, where: str) -> TrainingDiverged:
        """The error that stops a run that diverged (`where`: when and what went non-finite),
        once the checkpoint under way, if any, is written (its own error first)."""
        if self._checkpoints is not None:
            self._checkpoints.wait()
        run = self._run
        rates = ", ".join(LEARNING_RATES[run.kind])
        if run.saved_step is None:
            advice = (
                f"no checkpoint was written before it: lower the learning rates ({rates}) "
                "and start the run again"
            )
        else:
            advice = (
                f"its last good checkpoint, {run.checkpoint_path} (step {run.saved_step}), "
                f"is kept: lower the learning rates ({rates}) and resume from it with "
                "--resume"
            )
        return TrainingDiverged(f"{RUN_NAMES[run.kind]} training diverged {where}; {advice}")


def _non_finite(losses: dict[str, float]) -> str:
    """ "name=nan, name=inf, ..." of the losses that are not finite."""
    return ", ".join(
        f"{name}={value}" for name, value in losses.items() if not math.isfinite(value)
    )


class TrainingRun:
    """One training run of `kind` ("damsm" or "gan") in `out_dir`, its phases in the order of
    the module docstring; `command` names the run's holder to another process.

    Args:
        resume: continue the run's checkpoint (`open`).
        accept_changed_data: resume on data other than the run recorded.
        progress: show progress bars and what the data loader reads (the writer only).

    Under torchrun this process's place among the ranks is `world` (joined by `prepare`), and
    rank 0 alone is the `writer`: it holds the folder and writes the files and bars; the other
    ranks go through the phases and write nothing.
    """

    def __init__(
        self,
        kind: str,
        command: str,
        out_dir: str | Path,
        *,
        resume: bool = False,
        accept_changed_data: bool = False,
        progress: bool = True,
    ):
        self.kind = kind
        self.command = command
        self.out_dir = Path(out_dir)
        self.resume = resume
        self.accept_changed_data = accept_changed_data
        self.world = this_world()
        self.writer = self.world.is_main
        self.progress = progress and self.writer
        self.config: Optional[Config] = None  # set by `open`
        self.fingerprints: dict[str, dict] = {}  # set by `read_data`
        self.checkpoint_path: Optional[Path] = None  # set by `open`
        self.payload: Optional[dict] = None  # the checkpoint resumed, by `open`
        self.saved_step: Optional[int] = None  # the step of the last checkpoint
        self._seconds_before = 0.0  # the time the resumed run had trained
        self._started = time.time()
        self._held = contextlib.ExitStack()

    def __enter__(self) -> "TrainingRun":
        if self.writer:
            self._held.enter_context(hold_run_folder(self.out_dir, self.command))
        return self

    def __exit__(self, *error) -> None:
        self._held.close()

    def prepare(self, config: Config) -> tuple[torch.device, StepSettings]:
        """(device, the step's switches): seeds and threads set (`prepare_run`; every rank
        seeded alike here, so that all build the same networks), the process group joined under
        torchrun (the device then this rank's GPU), a batch the ranks share equally, a step that
        fits in the device's memory, switches that run there; errors come before any
        writing."""
        device = prepare_run(config)
        self.world, device = join_world(device)
        batch_key = "gan.batch_size" if self.kind == "gan" else "damsm.batch_size"
        local_share(
            config.gan.batch_size if self.kind == "gan" else config.damsm.batch_size,
            self.world,
            batch_key,
        )
        require_step_fits(config, self.kind, device, self.world.size)
        return device, step_settings(config.run, device, stage=self.kind, processes=self.world.size)

    def read_data(
        self, config: Config, with_test_set: bool
    ) -> tuple[TextImageDataset, Optional[TextImageDataset]]:
        """(the training set, augmented; with `with_test_set` the test set, else None), the
        fingerprints of both splits recorded for the checkpoints and the resume's check."""
        train_set = build_dataset(config.data, "train", augment=True)
        test_set = build_dataset(config.data, "test", augment=False) if with_test_set else None
        test_records = test_set.records if test_set else read_split(config.data, "test")
        self.fingerprints = {
            "train": train_set.records.fingerprint(),
            "test": test_records.fingerprint(),
        }
        return train_set, test_set

    def open(self, config: Config, vocab: Vocabulary, imported: str) -> Optional[dict]:
        """The checkpoint to resume (None for a new run) of the run of `config` (what it
        records), after `open_run`'s checks (`imported`: what an imported run holds instead),
        trained on `vocab` and, unless accept_changed_data, on the data `read_data` read."""
        self.config = config
        self.checkpoint_path, payload = open_run(
            self.out_dir, self.kind, self.resume, config_to_dict(config), imported
        )
        if payload is not None:
            require_same_vocabulary(
                payload, vocab.fingerprint(), self.checkpoint_path, config.data.root
            )
            if not self.accept_changed_data:
                require_same_data(
                    payload,
                    self.fingerprints,
                    self.checkpoint_path,
                    config.data.root,
                    "--accept-changed-data",
                )
            states = payload["rng"] if isinstance(payload["rng"], list) else [payload["rng"]]
            if len(states) != self.world.size:
                raise CheckpointError(
                    f"--resume: {self.checkpoint_path} was trained on {len(states)} "
                    f"process{'es' if len(states) > 1 else ''}, each with random streams of "
                    f"its own that it continues, and this run has {self.world.size}; resume it "
                    f"on {len(states)} (torchrun --nproc_per_node and --nnodes"
                    f"{', or without torchrun' if len(states) == 1 else ''})"
                )
            self.saved_step = payload["step"]
            self._seconds_before = payload.get("seconds", 0.0)
        self.payload = payload
        return payload

    def start(self) -> None:
        """After the trainer is built (its weights draw random numbers) and restored: the
        random generators as the checkpoint left them; metrics.jsonl without what a run killed
        after its checkpoint (or before its first) logged, which the run logs again; the
        run's config.yaml."""
        step = 0
        if self.payload is not None:
            states = self.payload["rng"]
            set_rng_state(states[self.world.rank] if isinstance(states, list) else states)
            step = self.payload["step"]
        elif self.world.rank:
            seed_everything(rank_seed(self.config.run.seed, self.world))
        if self.writer:
            trim_metrics(self.out_dir / "metrics.jsonl", step)
            self.out_dir.mkdir(parents=True, exist_ok=True)
            save_config(self.config, self.out_dir / "config.yaml")

    @contextlib.contextmanager
    def outputs(self) -> Iterator[RunOutputs]:
        """The training loop's outputs (metrics.jsonl appended to, checkpoints written in the
        background, the last waited for at the end); the run's clock starts."""
        self._started = time.time()
        with contextlib.ExitStack() as opened:
            metrics = checkpoints = None
            if self.writer:
                metrics = opened.enter_context(open(self.out_dir / "metrics.jsonl", "a"))
                checkpoints = opened.enter_context(CheckpointWriter())
            yield RunOutputs(self, metrics, checkpoints)

    def progress_bar(self, iterable=None, **options) -> tqdm:
        """A tqdm bar (shown with `progress`), to use as a context manager: closed when an
        error or Ctrl-C leaves its block, it is not drawn again after the error's message."""
        return tqdm(iterable, disable=not self.progress, **options)

    def seconds(self) -> float:
        """Seconds the run has trained, over its resumes."""
        return self._seconds_before + time.time() - self._started

    def write_text(self, name: str, text: str) -> None:
        """Write the file `name` of the run folder (atomically)."""
        if self.writer:
            write_text_atomically(self.out_dir / name, text)
