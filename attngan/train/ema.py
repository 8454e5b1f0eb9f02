"""Exponential moving average of the generator's weights (SPEC section 3).

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
        for average, current in zip(self.module.parameters(), model.parameters(), strict=True):
            average.mul_(self.decay).add_(current.detach(), alpha=1.0 - self.decay)
        for average, current in zip(self.module.buffers(), model.buffers(), strict=True):
            average.copy_(current)

    def state_dict(self) -> dict:
        return self.module.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state)
