"""The one place that picks an implementation of a hot op (docs/DESIGN.md, "Dispatch").

Precedence: the `impl` argument, then the ATTNGAN_IMPL environment variable, then "auto".
Auto takes one of AUTO_CANDIDATES[device type] that can run the call. On a device type in
MEASURED_DEVICE_TYPES (CUDA) it takes the fastest for the call's op, dtype and shape, measured
at the first eager call (attngan.autotune), the reference among the candidates; elsewhere (the
CPU) the first one that runs: the C++ kernel if built, else the reference. An explicitly
requested implementation that is unavailable raises with the reason; auto leaves it out and
warns once per (op, reason).

Ops and the implementations each can have:
    damsm_word_similarity: loop, reference, cpp, triton, cuda
    word_attention:        reference, cpp, triton, cuda
"loop" names the original code's way everywhere (`run.impl=loop` trains as the original
computed): the per-caption loop of the DAMSM similarity, and for word attention, which the
original computes batched, the reference.
Triton kernels run on CPU tensors only under the interpreter (TRITON_INTERPRET=1).
"""

from __future__ import annotations

import functools
import importlib
import os
import warnings
from typing import Callable, Optional

import torch

OP_IMPLS: dict[str, tuple[str, ...]] = {
    "damsm_word_similarity": ("loop", "reference", "cpp", "triton", "cuda"),
    "word_attention": ("reference", "cpp", "triton", "cuda"),
}
# The Triton file of each op in kernels/ (installed as attngan.kernels.<module>).
TRITON_MODULES = {"damsm_word_similarity": "damsm", "word_attention": "word_attention"}
IMPL_CHOICES = ("auto", "loop", "reference", "cpp", "triton", "cuda")
IMPL_VARIABLE = "ATTNGAN_IMPL"
# Auto's candidates per device type, each ending with the reference (which runs any call); the
# first that runs a call is auto's choice where nothing is measured.
AUTO_CANDIDATES = {"cuda": ("reference", "triton", "cuda"), "cpu": ("cpp", "reference")}
# Where auto measures. Not on the CPU: the C++ kernel was the fastest at every size measured,
# and a fixed choice keeps a run's arithmetic the same on every machine (README, "The hot ops").
MEASURED_DEVICE_TYPES = ("cuda",)
_warned: set[tuple[str, str]] = set()


class ImplementationUnavailable(RuntimeError):
    """An explicitly requested implementation cannot run here (the message says why)."""


@functools.lru_cache(maxsize=None)
def compiled_extension():
    """The compiled module attngan._C, or None when it was not built."""
    try:
        return importlib.import_module("attngan._C")
    except ImportError:
        return None


@functools.lru_cache(maxsize=None)
def _triton_kernels(op: str):
    try:
        importlib.import_module("triton")
        return importlib.import_module(f"attngan.kernels.{TRITON_MODULES[op]}")
    except ImportError:
        return None


def triton_interpreter() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def interpreter_dtype_reason(impl: str, dtype: torch.dtype, device: torch.device) -> Optional[str]:
    """Why the Triton interpreter (which runs the Triton kernels on CPU tensors) cannot take
    `dtype`, or None: its bfloat16 products are wrong (a 16 x 16 bfloat16 tl.dot off by 1e10
    under Triton 3.8), which would be a silent wrong result."""
    if impl == "triton" and dtype == torch.bfloat16 and torch.device(device).type == "cpu":
        return (
            "the Triton interpreter (TRITON_INTERPRET=1, CPU tensors) computes bfloat16 "
            "products wrongly; use float32 or float16 there, or impl='cpp'"
        )
    return None


def unavailable_reason(op: str, impl: str, device: torch.device) -> Optional[str]:
    """None if `impl` of `op` can run on `device`, else a sentence saying why not."""
    if op not in OP_IMPLS:
        raise ValueError(f"unknown op '{op}'; known ops: {', '.join(OP_IMPLS)}")
    if impl not in OP_IMPLS[op]:
        return f"'{impl}' is not an implementation of {op} (choose from {', '.join(OP_IMPLS[op])})"
    if impl in ("loop", "reference"):
        return None
    if impl == "triton":
        if _triton_kernels(op) is None:
            return "triton is not installed (pip install triton)"
        if device.type != "cuda" and not triton_interpreter():
            return (
                "Triton kernels need a CUDA tensor (or TRITON_INTERPRET=1 for the CPU interpreter)"
            )
        return None
    extension = compiled_extension()
    if extension is None:
        return (
            "the compiled extension attngan._C is not built "
            "(reinstall with `pip install --no-build-isolation -e .` and a C++ compiler)"
        )
    if not hasattr(torch.ops.attngan_C, f"{op}_fwd"):
        return f"attngan._C was built without the {op} kernel"
    if impl == "cpp" and device.type != "cpu":
        return "the C++ kernel runs on CPU tensors only"
    if impl == "cuda":
        if not extension.with_cuda:
            return "attngan._C was built without CUDA (no nvcc or a CPU-only torch at build time)"
        if device.type != "cuda":
            return "the CUDA kernel needs CUDA tensors"
    return None


def _requested(impl: str) -> tuple[str, str]:
    """(the implementation asked for, who asked): the argument, or ATTNGAN_IMPL under "auto"."""
    if impl == "auto" and os.environ.get(IMPL_VARIABLE):
        return os.environ[IMPL_VARIABLE], f"the environment variable {IMPL_VARIABLE}"
    return impl, "impl"


def measures(device: torch.device, impl: str) -> bool:
    """Whether a call with `impl` on `device` leaves the choice to auto's measurements."""
    return _requested(impl)[0] == "auto" and device.type in MEASURED_DEVICE_TYPES


def warn_once(op: str, message: str, stacklevel: int = 2) -> None:
    """A RuntimeWarning "<op>: <message>", the first time only."""
    if (op, message) not in _warned:
        _warned.add((op, message))
        warnings.warn(f"{op}: {message}", RuntimeWarning, stacklevel=stacklevel + 1)


def choose(
    op: str,
    device: torch.device,
    impl: str = "auto",
    supported: Optional[Callable[[str], Optional[str]]] = None,
    key: Optional[tuple] = None,
) -> str:
    """Return the implementation to run.

    Args:
        op: a key of OP_IMPLS.
        device: where the inputs are.
        impl: "auto" or an implementation name; "auto" defers to ATTNGAN_IMPL when set.
        supported: optional shape check, impl -> None if the inputs are supported, else why not.
        key: the call's key (attngan.autotune) where `measures` holds; without one auto takes
            its first candidate that can run the call.
    """
    impl, source = _requested(impl)
    if impl not in IMPL_CHOICES:
        raise ValueError(f"{source}='{impl}' is not known; choose from {', '.join(IMPL_CHOICES)}")
    if impl == "loop" and "loop" not in OP_IMPLS.get(op, ("loop",)):
        impl = "reference"  # an op the original computes batched: its way is the reference
    if impl != "auto":
        reason = unavailable_reason(op, impl, device)
        if reason is None and supported is not None:
            reason = supported(impl)
        if reason is not None:
            raise ImplementationUnavailable(f"{op}: {source}='{impl}' cannot run here: {reason}")
        return impl
    candidates = []
    for candidate in AUTO_CANDIDATES.get(device.type, ("reference",)):
        reason = unavailable_reason(op, candidate, device)
        if reason is None and supported is not None:
            reason = supported(candidate)
        if reason is None:
            candidates.append(candidate)
        else:  # the reference runs everything: it is always a candidate
            warn_once(op, f"auto leaves out '{candidate}' ({reason})", stacklevel=3)
    if key is None or len(candidates) == 1:
        return candidates[0]
    from attngan import autotune  # it imports this module

    return autotune.pick(op, device, key, tuple(candidates))


def describe() -> str:
    """One line: which implementations this installation can run on CPU and CUDA, and where
    auto measures."""
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    parts = []
    for op, impls in OP_IMPLS.items():
        cpu_ok = [i for i in impls if unavailable_reason(op, i, cpu) is None]
        cuda_ok = [i for i in impls if unavailable_reason(op, i, cuda) is None]
        parts.append(f"{op}: cpu[{','.join(cpu_ok)}] cuda[{','.join(cuda_ok)}]")
    if unavailable_reason("damsm_word_similarity", "cpp", cpu) is None:
        amx = torch.ops.attngan_C.damsm_cpu_amx()
        parts.append(f"cpp bfloat16 products: {'AMX tiles' if amx else 'in float32'}")
    from attngan import autotune

    parts.append(
        f"auto measures on {', '.join(MEASURED_DEVICE_TYPES)} "
        f"(choices kept in {autotune.cache_path()})"
    )
    return "; ".join(parts)
