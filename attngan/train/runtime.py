"""Run set-up shared by every training and evaluation entry point: device, threads, seeds."""
from __future__ import annotations

import random

import numpy as np
import torch

from attngan.config import Config


def resolve_device(name: str) -> torch.device:
    """"auto" -> cuda when available else cpu; anything else must name a usable device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"run.device='{name}' is not a device; use auto, cpu or cuda[:N]") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"run.device='{name}' but no CUDA device is available; "
                         "use --set run.device=cpu")
    return device


def prepare_run(config: Config) -> torch.device:
    """Seed every generator, set the thread count and return the run's device."""
    if config.run.threads > 0:
        torch.set_num_threads(config.run.threads)
    random.seed(config.run.seed)
    np.random.seed(config.run.seed)
    torch.manual_seed(config.run.seed)
    return resolve_device(config.run.device)
