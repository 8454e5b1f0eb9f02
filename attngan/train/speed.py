"""The switches of a training step (run.speed, run.precision, ...) and what the trainers build
from them.

`step_settings` resolves a run's switches on its device: each one the config sets, the others
as run.speed says ("faithful": the paper's step, IEEE float32 and nothing else; "fast": on a
GPU every switch that runs there for the stage, on a CPU those measured faster there). None of
them changes the model: batch size, BatchNorm statistics, losses and update order stay the
paper's. What each switch does:

- precision: "fp32" turns TF32 off for cuBLAS and cuDNN (torch's default lets cuDNN's
  convolutions use TF32); "tf32" turns it on (GPU only); "bf16" runs the GAN's forward passes
  under bfloat16 autocast, with the frozen networks' matrix weights cast to bfloat16 once
  (`frozen_network`) instead of by autocast on every call, and TF32 for what stays float32; in
  DAMSM pretraining it runs only the frozen Inception trunk in bfloat16 (the encoders it trains
  stay in float32: trained in bfloat16 they learned less, docs/RESULTS.md).
- channels_last: the networks' convolution weights in NHWC memory format.
- cudnn_benchmark: cuDNN times its algorithms for each convolution shape once (GPU only).
- fused_adam: torch's fused Adam kernel (capturable when the step is captured).
- compile: torch.compile (fullgraph) of the generator, each discriminator's loss and the
  generator step's loss (through the frozen image encoder, whose Inception BatchNorm is folded
  into its convolutions first); DAMSM pretraining compiles its image encoder.
- cuda_graphs: the GAN's discriminator and generator updates captured as one CUDA graph and
  replayed (GPU only; the frozen text encoder runs before it).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
from typing import Callable, Iterable, Iterator, Optional

import torch
import torch.nn as nn

from attngan.config import ConfigError, RunConfig
from attngan.nn.inception import fold_batch_norms

__all__ = [
    "StepSettings",
    "FAITHFUL",
    "SWITCHES",
    "EAGER_STEPS",
    "step_settings",
    "unavailable_reason",
    "cpu_has_bfloat16",
    "training_autocast",
    "backend_flags",
    "adam",
    "load_optimizer_state",
    "frozen_network",
    "compiled",
]

SWITCHES = ("precision", "channels_last", "cudnn_benchmark", "fused_adam", "compile", "cuda_graphs")
# Steps a trainer runs eagerly before it runs compiled code or captures a graph: the first
# call of each op decides its implementation (attngan.backend) only eagerly.
EAGER_STEPS = 1


@dataclasses.dataclass(frozen=True)
class StepSettings:
    """The resolved switches of a training step (see the module docstring)."""

    precision: str = "fp32"
    channels_last: bool = False
    cudnn_benchmark: bool = False
    fused_adam: bool = False
    compile: bool = False
    cuda_graphs: bool = False

    def describe(self) -> str:
        """One line: the precision and the switches that are on."""
        return ", ".join([self.precision] + [name for name in SWITCHES[1:] if getattr(self, name)])


FAITHFUL = StepSettings()
_FAST = StepSettings("bf16", True, True, True, True, True)


def unavailable_reason(
    switch: str,
    value,
    device: torch.device,
    stage: str = "gan",
    impl: str = "auto",
    processes: int = 1,
) -> Optional[str]:
    """Why `switch` = `value` cannot run on `device` in `stage` ("gan" or "damsm") with ops
    `impl` on `processes` ranks, or None. The value that switches a lever off always runs."""
    if value in (False, "fp32"):
        return None
    on_cuda = torch.device(device).type == "cuda"
    if switch in ("compile", "cuda_graphs") and processes > 1:
        return (
            "on several processes (torchrun) the DAMSM losses gather every rank's features "
            "through a collective that a compiled graph or a CUDA graph does not hold; "
            "train without it under torchrun"
        )
    if switch == "precision" and value == "tf32" and not on_cuda:
        return "TF32 is a format of NVIDIA tensor cores; on the CPU use fp32 or bf16"
    if switch == "cudnn_benchmark" and not on_cuda:
        return "cudnn.benchmark times cuDNN's convolutions, on a CUDA device only"
    if switch == "compile" and stage == "gan" and impl == "loop":
        return (
            "run.impl=loop reads the caption lengths back on the host (the original's "
            "per-caption loop), which a compiled graph cannot hold"
        )
    if switch == "cuda_graphs":
        if not on_cuda:
            return "CUDA graphs need a CUDA device"
        if stage == "damsm":
            return (
                "DAMSM pretraining trains the text encoder, whose packed LSTM cannot be "
                "captured in a CUDA graph"
            )
        if impl == "loop":
            return (
                "run.impl=loop reads the caption lengths back on the host (the original's "
                "per-caption loop), which a CUDA graph cannot capture"
            )
    return None


def cpu_has_bfloat16() -> bool:
    """Whether this CPU multiplies bfloat16 natively (AVX512-BF16 or AMX); elsewhere bfloat16
    products are emulated, slower than float32."""
    return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()


def _faster_on_cpu(switch: str, stage: str) -> bool:
    """Whether `switch` made the `stage`'s step faster on the development CPU (docs/RESULTS.md,
    "The training step's switches"): not channels_last, nor compile or bfloat16 in DAMSM
    pretraining (its small image encoder runs faster through oneDNN eagerly, and bfloat16
    there is only for a frozen Inception trunk), nor bfloat16 on a CPU without bfloat16
    instructions."""
    if switch == "precision":
        return cpu_has_bfloat16() and stage == "gan"
    return switch != "channels_last" and not (switch == "compile" and stage == "damsm")


def _fast(switch: str, device: torch.device, stage: str, impl: str, processes: int):
    """The value run.speed=fast gives `switch` on `device`: on, where it runs (on a CPU, where
    it was measured faster)."""
    value = getattr(_FAST, switch)
    if unavailable_reason(switch, value, device, stage, impl, processes) is not None or (
        device.type == "cpu" and not _faster_on_cpu(switch, stage)
    ):
        return getattr(FAITHFUL, switch)
    return value


def step_settings(
    run: RunConfig, device: torch.device, stage: str = "gan", processes: int = 1
) -> StepSettings:
    """The switches of `run` on `device` for `stage` on `processes` ranks: those set in the
    config, the others from run.speed. A set switch that cannot run here is a ConfigError
    naming it and the fix."""
    device = torch.device(device)
    chosen = {}
    for switch in SWITCHES:
        value = getattr(run, switch)
        if value is None:
            value = (
                _fast(switch, device, stage, run.impl, processes)
                if run.speed == "fast"
                else getattr(FAITHFUL, switch)
            )
        else:
            reason = unavailable_reason(switch, value, device, stage, run.impl, processes)
            if reason is not None:
                raise ConfigError(
                    f"run.{switch}={str(value).lower()} cannot run here: {reason}; "
                    f"leave run.{switch} unset (null) or change it"
                )
        chosen[switch] = value
    return StepSettings(**chosen)


def training_autocast(settings: StepSettings, device: torch.device) -> torch.autocast:
    """A fresh autocast context for the forward passes of a training step: bfloat16 with
    precision "bf16" (matrix products and convolutions in bfloat16, what autocast keeps in
    float32, such as the losses, in float32), off otherwise. Backward passes and optimizer
    steps run outside it, on the float32 weights."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=settings.precision == "bf16")


@contextlib.contextmanager
def backend_flags(settings: StepSettings, device: torch.device) -> Iterator[None]:
    """On a GPU, TF32 (cuBLAS and cuDNN) and cudnn.benchmark as `settings` say, for the
    duration of the block, then as they were. The legacy switches (allow_tf32) are the ones
    set: torch's own code still reads them, and reading them fails once the newer
    fp32_precision ones were set. On the CPU nothing changes (TF32 is a GPU format)."""
    if device.type != "cuda":
        yield
        return
    matmul, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    before = (matmul.allow_tf32, cudnn.allow_tf32, cudnn.benchmark)
    tf32 = settings.precision != "fp32"
    matmul.allow_tf32, cudnn.allow_tf32, cudnn.benchmark = tf32, tf32, settings.cudnn_benchmark
    try:
        yield
    finally:
        matmul.allow_tf32, cudnn.allow_tf32, cudnn.benchmark = before


def adam(
    parameters: Iterable[nn.Parameter], lr: float, betas: tuple, settings: StepSettings
) -> torch.optim.Adam:
    """torch's Adam: fused with fused_adam, capturable with cuda_graphs (its step count then
    lives on the device), else the multi-tensor (foreach) kernels torch picks by default."""
    return torch.optim.Adam(
        parameters,
        lr=lr,
        betas=betas,
        fused=settings.fused_adam or None,
        capturable=settings.cuda_graphs,
    )


_OWN_SETTINGS = ("lr", "foreach", "fused", "capturable")


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict) -> None:
    """optimizer.load_state_dict(state), keeping the optimizer's own learning rate and kernel
    flags (fused, capturable, foreach): a resumed run may change them, and torch would take the
    saved ones. The step counts move to where those flags keep them (the device for fused or
    capturable, else the CPU), and the moments take their parameter's memory layout: torch
    loads them contiguous, and the fused kernel pairs a channels_last parameter's elements with
    a contiguous moment's by memory position (it updated the wrong ones)."""
    own = [{name: group[name] for name in _OWN_SETTINGS} for group in optimizer.param_groups]
    optimizer.load_state_dict(state)
    for group, kept in zip(optimizer.param_groups, own, strict=True):
        group.update(kept)
        for parameter in group["params"]:
            entry = optimizer.state.get(parameter, {})
            for name, value in entry.items():
                if name == "step":
                    on_device = bool(kept["fused"] or kept["capturable"])
                    entry[name] = value.to(
                        device=parameter.device if on_device else "cpu", dtype=torch.float32
                    )
                elif value.shape == parameter.shape and value.stride() != parameter.stride():
                    entry[name] = torch.empty_like(parameter, dtype=value.dtype).copy_(value)


def frozen_network(
    module: nn.Module, settings: StepSettings, device: torch.device, fold: bool = False
) -> nn.Module:
    """A frozen (eval-mode) network as the step runs it: `module` itself when nothing changes,
    else a copy with, for compile and `fold`, its BatchNorm folded into its convolutions
    (`fold_batch_norms`), for channels_last its convolutions in NHWC, and for bf16 the weights
    autocast would cast to bfloat16 on every call cast once: convolutions and linear layers
    (the same products, bit for bit, normalizations kept in float32), and on a GPU the LSTM,
    which autocast runs in bfloat16 there (on the CPU it leaves it in float32)."""
    fold = fold and settings.compile
    cast = settings.precision == "bf16"
    if not (fold or settings.channels_last or cast):
        return module
    module = copy.deepcopy(module)
    if fold:
        fold_batch_norms(module)
    if settings.channels_last:
        module.to(memory_format=torch.channels_last)
    if cast:
        kinds = (nn.Conv1d, nn.Conv2d, nn.Linear) + (
            (nn.LSTM, nn.GRU, nn.Embedding) if device.type == "cuda" else ()
        )
        for layer in module.modules():
            if isinstance(layer, kinds):
                layer.to(torch.bfloat16)
    return module


def compiled(function: Callable) -> Callable:
    """torch.compile of a network or a loss, as one graph (a graph break is an error), for the
    shapes it is first called with (no dynamic-shape recompiles), with random numbers drawn as
    eagerly (fallback_random: a compiled step draws the noise an eager one would, so resumed
    and compiled runs follow the same random stream)."""
    return torch.compile(function, fullgraph=True, dynamic=False, options={"fallback_random": True})
