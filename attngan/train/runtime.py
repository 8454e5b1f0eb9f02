"""Run set-up shared by every training and evaluation entry point: device, threads and seeds
(the switches of a training step are in `attngan.train.speed`)."""
from __future__ import annotations

import os
import random

import numpy as np
import torch

from attngan.backend import OP_IMPLS, ImplementationUnavailable, choose
from attngan.config import Config


def resolve_device(name: str | torch.device, setting: str = "run.device",
                   cpu_instead: str = "--set run.device=cpu") -> torch.device:
    """"auto" -> cuda when available else cpu; anything else must name a usable device. The
    errors name the `setting` that gave `name` and, for a missing GPU, `cpu_instead`."""
    name = str(name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise ValueError(f"{setting}='{name}' is not a device this project runs on; use auto, "
                         "cpu or cuda[:N]")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"{setting}='{name}' but no CUDA device is available; use {cpu_instead}")
    return device


def resolve_device_argument(device: str | torch.device) -> torch.device:
    """resolve_device for the `device` argument of sampling and evaluation (`--device` of
    `attngan sample` and `attngan evaluate`), its errors naming both."""
    return resolve_device(device, "device", "device='cpu' (--device cpu)")


def prepare_run(config: Config) -> torch.device:
    """Seed every generator, set the thread count and return the run's device, after checking
    that run.impl can run there (before a run writes anything)."""
    if config.run.threads > 0:
        torch.set_num_threads(config.run.threads)
    random.seed(config.run.seed)
    np.random.seed(config.run.seed)
    torch.manual_seed(config.run.seed)
    device = resolve_device(config.run.device)
    if config.run.impl != "auto" or os.environ.get("ATTNGAN_IMPL"):   # auto alone always runs
        for op in OP_IMPLS:
            try:
                choose(op, device, config.run.impl)
            except ImplementationUnavailable as error:
                raise ImplementationUnavailable(f"run.impl='{config.run.impl}' on "
                                                f"{device.type}: {error}") from None
    return device

