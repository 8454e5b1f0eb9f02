"""State dicts from files the user names (Inception weights, the original's released models),
read and loaded key by key: every failure is one error naming the file, what is wrong with it,
and the fix."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional, Union

import torch
import torch.nn as nn

__all__ = ["load_failure_reason", "read_state_file", "load_state_exactly"]


def load_failure_reason(failure: Exception) -> str:
    """Why `torch.load(..., weights_only=True)` refused a file, in one short line: the
    unpickler's own reason ("Unsupported operand 103", "Unsupported global: GLOBAL
    mymodule.Net was not an allowed global by default") or the first sentence of any other error,
    without torch's advice to retry with weights_only=False (which would run code from the
    file)."""
    text = str(failure)
    marker = "WeightsUnpickler error:"
    if marker in text:
        text = text.split(marker, 1)[1]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    first = lines[0] if lines else ""
    return f"{type(failure).__name__}: {first.split('. ')[0].rstrip('.')}"


def read_state_file(
    path: Union[str, Path], what: str, fix: str, error: type[Exception] = ValueError
) -> dict:
    """The state dict in `path` (read on the CPU with weights_only; tensors only).

    `what` names the file in messages ("Inception weights file"), `fix` ends them; `error` is
    raised when the file is missing, unreadable, or not a mapping of names to tensors.
    """
    path = Path(path)
    if not path.is_file():
        raise error(f"{what} {path} does not exist; {fix}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as failure:  # torch.load fails in many ways on a corrupt file
        raise error(
            f"{what} {path} could not be read as a PyTorch file "
            f"({load_failure_reason(failure)}); it is corrupt or not a .pth file; "
            f"{fix}"
        ) from None
    if not isinstance(state, dict) or not all(
        isinstance(key, str) and isinstance(value, torch.Tensor) for key, value in state.items()
    ):
        raise error(
            f"{what} {path} does not hold a state dict (a mapping of parameter names to "
            f"tensors), it holds a {type(state).__name__}; {fix}"
        )
    return state


def load_state_exactly(
    module: nn.Module,
    state: dict,
    path: Union[str, Path],
    what: str,
    kind: str,
    fix: str,
    error: type[Exception] = ValueError,
    rename: Optional[Callable[[str], str]] = None,
    file_name: Optional[Callable[[str], str]] = None,
    ignore_unexpected: bool = False,
) -> list[str]:
    """Load `state` (read from `path`) into `module`: every parameter and buffer of the module
    with its shape (BatchNorm's `num_batches_tracked` counters may be absent: the module keeps
    its own), and, unless `ignore_unexpected`, no other key.

    `rename` gives the module's name of a file key, `file_name` the file's name of a module key
    (for messages); both default to the same name. Returns the sorted ignored keys. Raises
    `error` "{what} {path} is not {kind}: <the first missing, unexpected and misshapen keys>;
    {fix}".
    """
    rename = rename or (lambda key: key)
    file_name = file_name or (lambda key: key)
    expected = module.state_dict()
    mapped = {rename(key): value for key, value in state.items()}
    unexpected = sorted(key for key in state if rename(key) not in expected)
    missing = [
        file_name(key)
        for key in expected
        if key not in mapped and not key.endswith("num_batches_tracked")
    ]
    wrong = [
        f"{file_name(key)} {tuple(mapped[key].shape)} (expected {tuple(value.shape)})"
        for key, value in expected.items()
        if key in mapped and mapped[key].shape != value.shape
    ]
    problems = [
        (f"{len(keys)} {name} (first: {', '.join(keys[:3])})")
        for name, keys in (
            ("missing keys", missing),
            ("unexpected keys", [] if ignore_unexpected else unexpected),
            ("keys of the wrong shape", wrong),
        )
        if keys
    ]
    if problems:
        raise error(f"{what} {path} is not {kind}: {'; '.join(problems)}; {fix}")
    module.load_state_dict({key: mapped.get(key, value) for key, value in expected.items()})
    return unexpected
