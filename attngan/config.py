"""Typed, frozen configuration: dataclasses, YAML presets and dotted command-line overrides.

A run is described by one `Config` built from a YAML preset in `configs/` (installed with the
package as `attngan.configs`, so `--config shapes` works anywhere) plus overrides such as
`--set damsm.batch_size=8`. Loading is strict: an unknown key or a value of the wrong type is a
`ConfigError` naming the key and the fix, never a silently ignored typo. The resolved config is
written next to every run (`save_config`) so a run can be reproduced from its folder alone.
The defaults are the paper's CUB hyperparameters (docs/DESIGN.md, "GAN losses and training");
presets override what differs.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.resources
import math
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Optional, Sequence

import yaml

from attngan.backend import IMPL_CHOICES
from attngan.files import write_text_atomically


class ConfigError(ValueError):
    """A configuration problem the user can fix (the message says how)."""


@dataclass(frozen=True)
class SyntheticConfig:
    """The built-in shapes data set (docs/DESIGN.md, "Synthetic shapes"), made by
    `attngan make-synthetic`."""

    num_train: int = 2000
    num_test: int = 500
    canvas: int = 64  # image side in pixels
    max_objects: int = 1  # 1 (level 1) or 2 (attribute binding)
    colors: tuple[str, ...] = ("red", "green", "blue", "yellow")
    held_out: tuple[str, ...] = ("green triangle", "blue circle")  # never drawn in train
    seed: int = 0


@dataclass(frozen=True)
class DataConfig:
    """Where the images and captions are and how they become tensors (docs/DESIGN.md, "Data")."""

    dataset: str = "cub"  # "cub" or "shapes" (CUB layout), or "coco"
    root: str = "data/birds"
    words_num: int = 18  # longer captions keep a random ordered subset
    eval_words_num: Optional[int] = None  # words kept per caption by `attngan evaluate`
    # (the paper's: 25 CUB, 20 COCO); None: words_num
    captions_per_image: int = 10
    base_size: int = 64  # smallest side of the image pyramid
    branch_num: int = 3  # pyramid levels: base_size * 2**i
    bbox_crop: bool = True  # CUB: crop 1.5x the bird box before resizing
    random_crop: bool = True  # resize to size*76/64, then a random size crop
    random_flip: bool = True  # off for shapes: a flip swaps "left" and "right"
    # DataLoader worker processes; "auto": training on a GPU, one per CPU this process may use,
    # less one (the training loop's), at most 8; on the CPU 0, loading in the training process,
    # whose step uses the cores (attngan.data.loader.resolve_num_workers). Batches and results
    # are the same with any count.
    num_workers: int | Literal["auto"] = "auto"
    # Folder of the decoded-image caches `attngan prepare --image-cache` writes and training
    # reads (attngan.data.image_cache); None: data.root/image_cache.
    image_cache: Optional[str] = None
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)

    @property
    def image_sizes(self) -> tuple[int, ...]:
        return tuple(self.base_size * 2**i for i in range(self.branch_num))

    @property
    def test_words_num(self) -> int:
        """Words a caption keeps at test time (evaluation, serving)."""
        return self.words_num if self.eval_words_num is None else self.eval_words_num


@dataclass(frozen=True)
class TextEncoderConfig:
    """Bi-directional RNN text encoder of DAMSM (docs/DESIGN.md, "Text encoder")."""

    embedding_dim: int = 300
    hidden_dim: int = 256  # D (nef): both directions together
    rnn: str = "lstm"  # "lstm" or "gru"
    dropout: float = 0.5


@dataclass(frozen=True)
class ImageEncoderConfig:
    """DAMSM image encoder: Inception-v3 trunk, or a small CNN for CPU-sized configs."""

    backbone: str = "inception"  # "inception" or "small"
    weights: Optional[str] = None  # torchvision inception_v3_google-*.pth; never fetched
    random_init: bool = False  # allow an Inception trunk without weights (tests)
    input_size: int = 299  # images are resized to this before the backbone
    align_corners: bool = False  # Inception: enlarge to input_size as PyTorch <= 0.3.1
    # did (true for the original's released encoders)
    width: int = 64  # small CNN: channels of its first block


@dataclass(frozen=True)
class DAMSMConfig:
    """DAMSM matching and its pretraining (docs/DESIGN.md, "DAMSM losses")."""

    gamma1: float = 4.0
    gamma2: float = 5.0
    gamma3: float = 10.0
    batch_size: int = 48
    epochs: int = 200
    lr: float = 0.002
    betas: tuple[float, ...] = (0.5, 0.999)
    lr_decay: float = 0.98  # per epoch, down to lr * min_lr_ratio
    min_lr_ratio: float = 0.1
    grad_clip: float = 0.25  # text encoder gradient norm
    log_every: int = 50  # steps between metrics lines
    checkpoint_every: int = 10  # epochs between checkpoints (the last is always kept)
    eval_candidates: int = 100  # R-precision: 1 true caption against 99 others
    eval_folds: int = 10


@dataclass(frozen=True)
class GANConfig:
    """Generator, discriminators and their training (docs/DESIGN.md, "The model")."""

    ngf: int = 32
    ndf: int = 64
    z_dim: int = 100
    cond_dim: int = 100
    r_num: int = 2
    lambda_damsm: float = 5.0
    batch_size: int = 20
    epochs: int = 600
    max_steps: int = 0  # stop after this many steps (0: run all epochs)
    lr_g: float = 2e-4
    lr_d: float = 2e-4
    betas: tuple[float, ...] = (0.5, 0.999)
    ema_decay: float = 0.999
    log_every: int = 50
    sample_every: int = 500  # steps between fixed-noise sample grids
    checkpoint_every: int = 1000  # steps between checkpoints (the last is always kept)


@dataclass(frozen=True)
class RunConfig:
    """Things about a run that are not the model: seed, device, kernels, threads, and how a
    training step computes (attngan.train.speed: what each switch changes)."""

    seed: int = 0
    device: str = "auto"  # "auto", "cpu", "cuda", "cuda:1", ...
    impl: str = "auto"  # hot ops' code (attngan.backend); "loop": the original's
    threads: int = 0  # torch.set_num_threads (0: leave torch's default)
    # The training step's switches. Each one left null takes the value run.speed gives it on the
    # run's device: "faithful", the paper's step (IEEE float32, nothing below on), or "fast",
    # every switch that runs there (the README lists them).
    speed: Literal["faithful", "fast"] = "faithful"
    # "fp32": IEEE float32 products (TF32 off, also for cuDNN's convolutions); "tf32": float32
    # with TF32 products on a GPU's tensor cores; "bf16": forward passes under bfloat16
    # autocast (weights, optimizer state and the losses' reductions stay float32).
    precision: Optional[Literal["fp32", "tf32", "bf16"]] = None
    channels_last: Optional[bool] = None  # the networks' convolutions in NHWC memory format
    cudnn_benchmark: Optional[bool] = None  # cuDNN times its convolution algorithms (GPU)
    fused_adam: Optional[bool] = None  # Adam as one fused kernel per optimizer
    compile: Optional[bool] = None  # torch.compile of the generator, discriminators and
    # frozen image encoder (its BatchNorm folded)
    cuda_graphs: Optional[bool] = None  # the GAN's updates captured once, replayed (GPU)


@dataclass(frozen=True)
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    text_encoder: TextEncoderConfig = field(default_factory=TextEncoderConfig)
    image_encoder: ImageEncoderConfig = field(default_factory=ImageEncoderConfig)
    damsm: DAMSMConfig = field(default_factory=DAMSMConfig)
    gan: GANConfig = field(default_factory=GANConfig)
    run: RunConfig = field(default_factory=RunConfig)


def _is_dataclass_type(annotation: Any) -> bool:
    return isinstance(annotation, type) and dataclasses.is_dataclass(annotation)


def _type_name(annotation: Any) -> str:
    return getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")


def _convert(value: Any, annotation: Any, key: str) -> Any:
    """Check `value` against `annotation` and return it in the dataclass's form."""
    origin = typing.get_origin(annotation)
    if origin is Literal:
        choices = typing.get_args(annotation)
        if value not in choices:
            raise ConfigError(
                f"config key '{key}' must be one of "
                f"{', '.join(repr(choice) for choice in choices)}, got {value!r}"
            )
        return value
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _convert(value, option, key)
            except ConfigError as error:
                errors.append(str(error))
        raise ConfigError(errors[0] if errors else f"config key '{key}' cannot be null")
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key '{key}' must be a list, got {value!r}")
        (item_type, *_) = typing.get_args(annotation)
        return tuple(_convert(item, item_type, f"{key}[{i}]") for i, item in enumerate(value))
    if _is_dataclass_type(annotation):
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}' must be a mapping of settings, got {value!r}")
        return _build(annotation, value, key + ".")
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"config key '{key}' must be true or false, got {value!r}")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"config key '{key}' must be an integer, got {value!r}")
        return value
    if annotation is float:
        if isinstance(value, str):  # PyYAML reads 1e-3 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"config key '{key}' must be a number, got {value!r}")
        return float(value)
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"config key '{key}' must be a string, got {value!r}")
        return value
    raise ConfigError(f"config key '{key}' has an unsupported type {_type_name(annotation)}")


def _build(cls: type, values: dict, prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in values:
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = (
                f"; did you mean '{prefix}{close[0]}'?"
                if close
                else f"; valid keys here: {', '.join(names)}"
            )
            raise ConfigError(f"unknown config key '{prefix}{key}'{hint}")
    kwargs = {
        name: _convert(values[name], hints[name], prefix + name) for name in names if name in values
    }
    return cls(**kwargs)


def _at_least(low: int) -> tuple[Callable[[Any], bool], str]:
    return (lambda value: value >= low), f"at least {low}"


def _positive() -> tuple[Callable[[Any], bool], str]:
    return (lambda value: math.isfinite(value) and value > 0), "a finite number above 0"


def _between(
    low: float, high: float, *, high_open: bool = False
) -> tuple[Callable[[Any], bool], str]:
    return (
        (lambda value: low <= value < high) if high_open else (lambda value: low <= value <= high)
    ), f"in [{low}, {high}{')' if high_open else ']'}"


_ADAM_BETAS = (
    (lambda value: len(value) == 2 and all(0 <= beta < 1 for beta in value)),
    "two numbers in [0, 1), like [0.5, 0.999]",
)
_EVERY = _at_least(1)
# The ranges of the settings whose types alone let wrong values through, checked when a config
# is built, before any data or model is: a zero log_every, an empty betas list or a negative
# learning rate would otherwise fail steps or epochs later in torch's words, or run silently
# wrong (epochs = 0 trained nothing and reported a checkpoint it never wrote). Settings a module
# checks against its own rules (data.base_size, text_encoder.hidden_dim, gan.ema_decay, ...)
# are checked there.
LIMITS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "data.words_num": _at_least(1),
    "data.eval_words_num": (
        (lambda value: value is None or value >= 1),
        "at least 1, or null for data.words_num",
    ),
    "data.captions_per_image": _at_least(1),
    "data.base_size": _at_least(8),
    "data.branch_num": _at_least(1),
    "data.num_workers": (
        (lambda value: value == "auto" or value >= 0),
        "'auto' (the machine's cores) or 0 or more",
    ),
    "text_encoder.embedding_dim": _at_least(1),
    "text_encoder.dropout": _between(0, 1, high_open=True),
    "image_encoder.width": _at_least(1),
    "damsm.gamma1": _positive(),
    "damsm.gamma2": _positive(),
    "damsm.gamma3": _positive(),
    "damsm.batch_size": _at_least(2),
    "damsm.epochs": _at_least(1),
    "damsm.lr": _positive(),
    "damsm.betas": _ADAM_BETAS,
    "damsm.lr_decay": _between(0, 1),
    "damsm.min_lr_ratio": _between(0, 1),
    "damsm.grad_clip": _positive(),
    "damsm.log_every": _EVERY,
    "damsm.checkpoint_every": _EVERY,
    "damsm.eval_candidates": _at_least(2),
    "damsm.eval_folds": _at_least(1),
    "gan.ngf": _at_least(1),
    "gan.ndf": _at_least(1),
    "gan.z_dim": _at_least(1),
    "gan.cond_dim": _at_least(1),
    "gan.r_num": _at_least(0),
    "gan.lambda_damsm": (
        (lambda value: math.isfinite(value) and value >= 0),
        "a finite number, 0 or more",
    ),
    "gan.batch_size": _at_least(2),  # the discriminators' mismatched pairs need two
    "gan.epochs": _at_least(1),
    "gan.max_steps": ((lambda value: value >= 0), "0 (every epoch) or more"),
    "gan.lr_g": _positive(),
    "gan.lr_d": _positive(),
    "gan.betas": _ADAM_BETAS,
    "gan.log_every": _EVERY,
    "gan.sample_every": _EVERY,
    "gan.checkpoint_every": _EVERY,
    "run.seed": _between(0, 2**32 - 1),
    "run.impl": ((lambda value: value in IMPL_CHOICES), f"one of {', '.join(IMPL_CHOICES)}"),
    "run.threads": ((lambda value: value >= 0), "0 (torch's default) or more"),
}


def _check_limits(config: Config) -> None:
    for key, (within, allowed) in LIMITS.items():
        section, name = key.split(".")
        value = getattr(getattr(config, section), name)
        if not within(value):
            raise ConfigError(f"config key '{key}' must be {allowed}, got {value!r}")


def _matches(key: str, prefixes: tuple[str, ...]) -> bool:
    """`key` is one of `prefixes`, or in a section or group one of them ends with "."."""
    return any(
        key.startswith(prefix) if prefix.endswith(".") else key == prefix for prefix in prefixes
    )


_DAMSM_PRETRAINING = (
    "damsm.batch_size",
    "damsm.epochs",
    "damsm.lr",
    "damsm.betas",
    "damsm.lr_decay",
    "damsm.min_lr_ratio",
    "damsm.grad_clip",
    "damsm.log_every",
    "damsm.checkpoint_every",
)
# Whether each command reads a setting, and why not. A `--set` of a setting the command does not
# read is refused: the run would record it in its config as if it had applied.
COMMAND_READS: dict[str, tuple[Callable[[str], bool], str]] = {
    "train": (
        (lambda key: not _matches(key, ("text_encoder.", "image_encoder.", *_DAMSM_PRETRAINING))),
        "train takes its encoders from the DAMSM run (--damsm) and does not pretrain "
        "them; set it for attngan pretrain-damsm",
    ),
    "pretrain-damsm": (
        (lambda key: not _matches(key, ("gan.",))),
        "DAMSM pretraining trains no generator; set it for attngan train",
    ),
    "make-synthetic": (
        (lambda key: _matches(key, ("data.synthetic.",))),
        "it reads only data.synthetic.* and writes to its OUT argument",
    ),
}


def refuse_unused_overrides(command: str, overrides: Sequence[str]) -> None:
    """A ConfigError for the first `--set` override of a setting `command` does not read."""
    if command not in COMMAND_READS:
        return
    reads, why = COMMAND_READS[command]
    for override in overrides:
        key = override.split("=", 1)[0].strip()
        if not reads(key):
            raise ConfigError(
                f"--set {key}: attngan {command} does not use this setting ({why}); drop it"
            )


def config_from_dict(values: dict) -> Config:
    """Build a `Config` from nested plain values; unknown keys, wrong types and values out of
    their range (`LIMITS`) raise."""
    if not isinstance(values, dict):
        raise ConfigError(f"a config must be a mapping of sections, got {type(values).__name__}")
    config = _build(Config, values)
    _check_limits(config)
    return config


def config_to_dict(config: Any) -> dict:
    """Nested plain Python values (tuples as lists), ready for YAML or a checkpoint."""

    def plain(value):
        if isinstance(value, tuple):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value

    return plain(dataclasses.asdict(config))


def apply_overrides(values: dict, overrides: Sequence[str]) -> dict:
    """Apply `section.key=value` strings (values parsed as YAML) to nested dict `values`."""
    result = yaml.safe_load(yaml.safe_dump(values)) or {}
    for override in overrides:
        if "=" not in override:
            raise ConfigError(
                f"override '{override}' must look like section.key=value, "
                "for example --set damsm.batch_size=8"
            )
        dotted, raw = override.split("=", 1)
        parts = dotted.strip().split(".")
        if any(not part for part in parts):
            raise ConfigError(f"override '{override}' has an empty key; write section.key=value")
        node = result
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override '{override}': '{part}' is a value, not a section")
            node = child
        node[parts[-1]] = yaml.safe_load(raw) if raw.strip() else ""
    return result


def preset_names() -> list[str]:
    """The presets installed with the package (configs/*.yaml), by name: "shapes", "birds"..."""
    return sorted(
        entry.name[: -len(".yaml")]
        for entry in importlib.resources.files("attngan.configs").iterdir()
        if entry.name.endswith(".yaml")
    )


def preset_path(name: str) -> Path:
    """The installed preset `name` ("shapes", one of `preset_names()`)."""
    if name not in preset_names():
        raise ConfigError(
            f"there is no preset '{name}'; the presets are {', '.join(preset_names())}"
        )
    return Path(str(importlib.resources.files("attngan.configs") / f"{name}.yaml"))


def resolve_config_path(path: str | Path) -> Path:
    """`path` if it is a file; else, for a preset's name ("birds") or a path configs/<name>.yaml
    that is not here (outside a clone of the repository), the installed preset."""
    path = Path(path)
    if path.is_file():
        return path
    stem = path.name[: -len(".yaml")] if path.name.endswith(".yaml") else path.name
    if path.parent in (Path("."), Path("configs")) and stem in preset_names():
        return preset_path(stem)
    if path.is_dir():
        raise ConfigError(
            f"config file {path} is a folder; pass a YAML file, or a preset by "
            f"name: {', '.join(preset_names())}"
        )
    raise ConfigError(
        f"config file {path} does not exist and names no preset; pass a YAML "
        f"file, or a preset by name: {', '.join(preset_names())}"
    )


def load_config(path: Optional[str | Path] = None, overrides: Sequence[str] = ()) -> Config:
    """Read a YAML preset (or start from defaults when `path` is None) and apply overrides.
    `path` is a file, or a preset's name (`resolve_config_path`)."""
    values: dict = {}
    if path is not None:
        path = resolve_config_path(path)
        try:
            values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as error:
            raise ConfigError(f"config file {path} is not valid YAML: {error}") from None
        except UnicodeDecodeError as error:
            raise ConfigError(
                f"config file {path} is not UTF-8 text ({error.reason} at byte "
                f"{error.start}); pass a YAML file"
            ) from None
    try:
        return config_from_dict(apply_overrides(values, overrides))
    except ConfigError as error:
        where = f" (config {path}" if path is not None else " (config defaults"
        where += " with --set overrides)" if overrides else ")"
        raise ConfigError(f"{error}{where}") from None


def with_absolute_paths(config: Config) -> Config:
    """`config` with data.root, data.image_cache and image_encoder.weights as absolute paths
    (`~` expanded): what a run records, so that evaluating or resuming it from another folder
    reads the same files (a relative root read another data set of the same vocabulary there,
    silently)."""

    def absolute(path: str) -> str:
        return os.path.abspath(os.path.expanduser(path))

    weights, cache = config.image_encoder.weights, config.data.image_cache
    return dataclasses.replace(
        config,
        data=dataclasses.replace(
            config.data, root=absolute(config.data.root), image_cache=cache and absolute(cache)
        ),
        image_encoder=dataclasses.replace(
            config.image_encoder, weights=weights and absolute(weights)
        ),
    )


def save_config(config: Config, path: str | Path) -> None:
    """Write the resolved config as YAML (the file `load_config` reads back to the same)."""
    write_text_atomically(path, yaml.safe_dump(config_to_dict(config), sort_keys=False))
