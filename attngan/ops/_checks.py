"""The input checks of the public ops: one message and one exception type per kind of problem.

The public functions in `attngan.ops` validate their inputs once, here, before any
implementation runs: TypeError for an argument of the wrong type or dtype, ValueError for a
wrong shape, device or value. The Triton launchers and the compiled kernels check only their own
preconditions (docs/DESIGN.md, "Validation").
"""

from __future__ import annotations

import torch
from torch import Tensor

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
INT_DTYPES = (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)


def check_tensors(op: str, **tensors) -> None:
    """TypeError unless every argument is a torch.Tensor."""
    for name, value in tensors.items():
        if not isinstance(value, Tensor):
            raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(value).__name__}")


def check_floating(op: str, **tensors: Tensor) -> None:
    """TypeError unless every tensor is floating point."""
    for name, value in tensors.items():
        if value.dtype not in FLOAT_DTYPES:
            raise TypeError(
                f"{op}: {name} must be floating point (float16, bfloat16, float32 "
                f"or float64), got {value.dtype}"
            )


def check_dims(op: str, **tensors: tuple[Tensor, str]) -> None:
    """ValueError unless each tensor has as many dimensions as its layout, e.g. "[B, C, L]"."""
    for name, (value, layout) in tensors.items():
        if value.dim() != layout.count(",") + 1:
            raise ValueError(f"{op}: {name} must be {layout}, got shape {tuple(value.shape)}")


def check_same_device(op: str, **tensors: Tensor) -> None:
    """ValueError unless all tensors are on one device."""
    (first, value), *others = tensors.items()
    for name, other in others:
        if other.device != value.device:
            raise ValueError(
                f"{op}: {name} is on {other.device} but {first} on {value.device}; "
                f"move both to one device"
            )


def check_not_empty(op: str, **tensors: Tensor) -> None:
    """ValueError if any tensor has a size of 0."""
    if any(value.numel() == 0 for value in tensors.values()):
        shapes = ", ".join(f"{name} {tuple(value.shape)}" for name, value in tensors.items())
        raise ValueError(f"{op}: empty input ({shapes}); every size must be at least 1")


def check_lengths_tensor(op: str, lengths: Tensor, batch: int, device: torch.device) -> None:
    """The caption lengths' type, shape and device: an integer [batch] tensor on the CPU or on
    `device`, the features' (values: `check_lengths`)."""
    if lengths.dtype not in INT_DTYPES:
        raise TypeError(
            f"{op}: lengths must be an integer tensor (torch.long), got dtype {lengths.dtype}"
        )
    if lengths.dim() != 1 or lengths.shape[0] != batch:
        raise ValueError(
            f"{op}: lengths must be [B] = [{batch}] (one length per caption), got "
            f"shape {tuple(lengths.shape)}"
        )
    if lengths.device not in (device, torch.device("cpu")):
        where = (
            "the CPU"
            if device.type == "cpu"
            else f"the CPU (checked there without waiting for the GPU) or on {device}"
        )
        raise ValueError(
            f"{op}: lengths are on {lengths.device} but the features on {device}; "
            f"put lengths on {where}"
        )


def check_lengths(op: str, lengths: Tensor, num_words: int) -> None:
    """ValueError unless every caption length is in 1..L = 1..num_words. Free for CPU lengths;
    one host synchronisation for GPU ones (both extremes come back in one copy), skipped while a
    CUDA graph is captured, which forbids synchronising: the kernels clamp lengths into [1, L],
    which keeps a replay in bounds. The C++ kernels give the same message (csrc/cpu/checks.h)."""
    if lengths.is_cuda and torch.cuda.is_current_stream_capturing():
        return
    low, high = torch.stack(torch.aminmax(lengths)).tolist()
    if low < 1 or high > num_words:
        raise ValueError(
            f"{op}: every length must be in 1..L = 1..{num_words}, got min {low}, "
            f"max {high}: a caption needs at least one word, and lengths must be "
            f"<= L, the word slots of words.shape[2]"
        )
