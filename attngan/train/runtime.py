"""Run set-up shared by every training and evaluation entry point: device, threads, seeds, and
whether a training step fits in memory (the switches of a training step are in
`attngan.train.speed`)."""

from __future__ import annotations

import os
import random

import numpy as np
import torch

from attngan.backend import OP_IMPLS, ImplementationUnavailable, choose
from attngan.config import Config, ConfigError


def resolve_device(
    name: str | torch.device, setting: str = "run.device", cpu_instead: str = "--set run.device=cpu"
) -> torch.device:
    """ "auto" -> cuda when available else cpu; anything else must name a usable device. The
    errors name the `setting` that gave `name` and, for a missing GPU, `cpu_instead`."""
    name = str(name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise ValueError(
            f"{setting}='{name}' is not a device this project runs on; use auto, cpu or cuda[:N]"
        )
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"{setting}='{name}' but no CUDA device is available; use {cpu_instead}")
    return device


def resolve_device_argument(device: str | torch.device) -> torch.device:
    """resolve_device for the `device` argument of sampling and evaluation (`--device` of
    `attngan sample` and `attngan evaluate`), its errors naming both."""
    return resolve_device(device, "device", "device='cpu' (--device cpu)")


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators (torch's on every device)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def prepare_run(config: Config) -> torch.device:
    """Seed every generator, set the thread count and return the run's device, after checking
    that run.impl can run there (before a run writes anything)."""
    if config.run.threads > 0:
        torch.set_num_threads(config.run.threads)
    seed_everything(config.run.seed)
    device = resolve_device(config.run.device)
    if config.run.impl != "auto" or os.environ.get("ATTNGAN_IMPL"):  # auto alone always runs
        for op in OP_IMPLS:
            try:
                choose(op, device, config.run.impl)
            except ImplementationUnavailable as error:
                raise ImplementationUnavailable(
                    f"run.impl='{config.run.impl}' on {device.type}: {error}"
                ) from None
    return device


def device_memory(device: torch.device) -> int:
    """Bytes of memory of `device`: the GPU's, or the machine's RAM for the CPU."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def require_step_fits(config: Config, stage: str, device: torch.device, processes: int = 1) -> None:
    """Refuse, before any work, settings whose training step (`stage` "gan" or "damsm") cannot
    fit in the memory of `device`, by a lower bound of what one step holds: every level of
    this process's share of the batch (of `processes`) in float32 and, for the GAN, the
    generator's hidden map and attention context at each level (gan.ngf channels each)."""
    sizes = config.data.image_sizes
    if stage == "gan":
        batch, channels, batch_key = config.gan.batch_size, 3 + 2 * config.gan.ngf, "gan"
    else:
        batch, channels, batch_key = config.damsm.batch_size, 3, "damsm"
    needed = 4 * -(-batch // processes) * channels * sum(size * size for size in sizes)
    available = device_memory(device)
    if needed > available:
        raise ConfigError(
            f"one training step of these settings holds at least "
            f"{needed / 2**30:,.1f} GiB ({batch_key}.batch_size={batch} images at "
            f"{', '.join(map(str, sizes))} px), more than the "
            f"{available / 2**30:,.1f} GiB of {device.type}; lower "
            f"data.base_size, data.branch_num or {batch_key}.batch_size"
        )
