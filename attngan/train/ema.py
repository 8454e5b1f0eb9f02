"""Exponential moving average of the generator's weights (docs/DESIGN.md).

After every generator step, avg <- decay·avg + (1 - decay)·current for each parameter, with
decay 0.999, the original's `avg_param_G`. The averaged generator is the one used for samples
and evaluation. Buffers (BatchNorm running statistics) are not averaged but copied from the
live generator, as in the original, where the averaged parameters are loaded into the trained
network and so use its running statistics.
"""

from __future__ import annotations

import copy

import torch
import torch.nn as nn

__all__ = ["EMA"]


class EMA:
    """A frozen copy of `model` whose parameters track `model` by an exponential average.

    Attributes:
        module: the averaged copy (eval mode, requires_grad False).
    """

    def __init__(self, model: nn.Module, decay: float = 0.999):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"gan.ema_decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.module = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """One step of the average, as a few multi-tensor kernels rather than two per parameter."""
        averages, currents = list(self.module.parameters()), list(model.parameters())
        buffers, sources = list(self.module.buffers()), list(model.buffers())
        if len(averages) != len(currents) or len(buffers) != len(sources):
            raise ValueError(
                f"EMA.update: the model has {len(currents)} parameters and "
                f"{len(sources)} buffers, the average {len(averages)} and "
                f"{len(buffers)}; pass the model the EMA was built from"
            )
        torch._foreach_mul_(averages, self.decay)
        torch._foreach_add_(averages, currents, alpha=1.0 - self.decay)
        if buffers:
            torch._foreach_copy_(buffers, sources)

    def state_dict(self) -> dict:
        return self.module.state_dict()
