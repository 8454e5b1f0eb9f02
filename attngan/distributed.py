"""Several processes under torchrun: the process group, each rank's share of a global batch,
and the collectives the contrastive losses and the evaluation need.

Without torchrun every function here is the single-process identity (`SINGLE`), so the
commands run unchanged. Under torchrun (`torchrun --nproc_per_node=N [--nnodes=M ...] -m
attngan ...`) each process joins one group: NCCL with one GPU per local rank, gloo on CPUs.
A collective that waits longer than ATTNGAN_DIST_TIMEOUT seconds (default 300) for a rank that
died or hangs fails instead of hanging. docs/DESIGN.md, "Several GPUs and machines", says what
a run on N ranks computes and where it differs from one process.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
from typing import Any, Optional

import torch
import torch.distributed as dist

__all__ = [
    "World",
    "SINGLE",
    "launched_by_torchrun",
    "this_world",
    "join_world",
    "leave_world",
    "local_share",
    "gather",
    "gather_with_grad",
    "gather_lengths",
    "reduce_",
    "data_parallel",
    "all_gather_objects",
    "gather_to_main",
    "rank_seed",
    "DEFAULT_TIMEOUT",
]

DEFAULT_TIMEOUT = 300  # seconds a collective waits for the other ranks


class DistributedError(ValueError):
    """A run under torchrun that cannot go on (the message says why and what to do)."""


@dataclasses.dataclass(frozen=True)
class World:
    """This process's place among the ranks of a run: rank 0 of 1 without torchrun."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that writes checkpoints, metrics, samples and progress bars."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


SINGLE = World()


def launched_by_torchrun() -> bool:
    """Whether torchrun (or another launcher setting its environment) started this process."""
    return all(
        name in os.environ
        for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
    )


def _timeout() -> datetime.timedelta:
    text = os.environ.get("ATTNGAN_DIST_TIMEOUT", str(DEFAULT_TIMEOUT))
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1.0
    if not seconds > 0:
        raise DistributedError(f"ATTNGAN_DIST_TIMEOUT={text!r} must be a number of seconds above 0")
    return datetime.timedelta(seconds=seconds)


def this_world() -> World:
    """This process's World as the launcher set it (SINGLE without torchrun), before joining
    the process group."""
    if not launched_by_torchrun():
        return SINGLE
    return World(
        rank=int(os.environ["RANK"]),
        size=int(os.environ["WORLD_SIZE"]),
        local_rank=int(os.environ["LOCAL_RANK"]),
    )


def join_world(device: torch.device) -> tuple[World, torch.device]:
    """(this process's World, its device). Under torchrun: joins the process group, NCCL when
    `device` is a GPU (each local rank on its own GPU, cuda:<local rank>) and gloo otherwise,
    once per process; else (SINGLE, device)."""
    world = this_world()
    if world is SINGLE:
        return SINGLE, device
    if device.type == "cuda":
        if world.local_rank >= torch.cuda.device_count():
            raise DistributedError(
                f"local rank {world.local_rank} has no GPU of its own (this machine has "
                f"{torch.cuda.device_count()}); start at most that many processes per node "
                "(--nproc_per_node)"
            )
        device = torch.device("cuda", world.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(
            "nccl" if device.type == "cuda" else "gloo",
            timeout=_timeout(),
            rank=world.rank,
            world_size=world.size,
        )
    return world, device


def leave_world() -> None:
    """Leave the process group, if this process joined one."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def local_share(global_batch: int, world: World, setting: str) -> int:
    """The number of items each rank takes of a global batch of `global_batch`; a batch the
    ranks cannot share equally is a DistributedError naming `setting`."""
    if global_batch % world.size:
        raise DistributedError(
            f"{setting}={global_batch} is the global batch, and {world.size} ranks cannot "
            f"share it equally; set {setting} to a multiple of {world.size} or run on a number "
            f"of processes that divides it"
        )
    return global_batch // world.size


def gather(tensor: torch.Tensor, world: World) -> torch.Tensor:
    """Every rank's `tensor` concatenated in rank order along dim 0 (no gradient)."""
    if not world.distributed:
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(world.size)]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts)


class _GatherWithGrad(torch.autograd.Function):
    """All ranks' parts concatenated; backward: the gradients of every rank's copy of the whole,
    summed, and this rank's rows of the sum."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor, rank: int, size: int) -> torch.Tensor:
        ctx.rows, ctx.rank = tensor.shape[0], rank
        parts = [torch.empty_like(tensor) for _ in range(size)]
        dist.all_gather(parts, tensor.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        return grad[ctx.rank * ctx.rows : (ctx.rank + 1) * ctx.rows], None, None


def gather_with_grad(tensor: torch.Tensor, world: World) -> torch.Tensor:
    """`gather` through which gradients flow back to each rank's own part (every rank's part
    has as many rows). Every rank computes the same loss of the gathered whole and the
    gradients of the ranks' copies are summed into each part: with DistributedDataParallel's
    average over ranks, that is the gradient of the one loss (docs/DESIGN.md)."""
    if not world.distributed:
        return tensor
    return _GatherWithGrad.apply(tensor, world.rank, world.size)


def gather_lengths(lengths: torch.Tensor, device: torch.device, world: World) -> torch.Tensor:
    """Every rank's caption lengths (`gather`): on the CPU where the ranks talk over gloo, on
    `device` over NCCL, which moves CUDA tensors only (the ops then read them there, waiting
    for the device once)."""
    if not world.distributed or dist.get_backend() != "nccl":
        return gather(lengths, world)
    return gather(lengths.to(device, non_blocking=True), world)


def reduce_(tensor: torch.Tensor, world: World, operation: str = "sum") -> torch.Tensor:
    """`tensor`, in place, reduced over the ranks ("sum" or "max")."""
    if world.distributed:
        dist.all_reduce(tensor, dist.ReduceOp.SUM if operation == "sum" else dist.ReduceOp.MAX)
    return tensor


def data_parallel(module: torch.nn.Module, world: World, device: torch.device) -> torch.nn.Module:
    """`module` itself for one process; on several, `module` wrapped in
    DistributedDataParallel (its gradients averaged over the ranks in its backward), on a GPU
    with its BatchNorm layers made SyncBatchNorm first (in place: the wrapper and `module`
    share every parameter and buffer)."""
    if not world.distributed:
        return module
    if device.type == "cuda":
        _synchronise_batch_norms(module)
        return torch.nn.parallel.DistributedDataParallel(module, device_ids=[device])
    return torch.nn.parallel.DistributedDataParallel(module)


def _synchronise_batch_norms(module: torch.nn.Module) -> None:
    """Replace, in place, every BatchNorm child of `module` by a SyncBatchNorm holding the same
    parameters and buffers."""
    for name, child in module.named_children():
        if isinstance(child, torch.nn.modules.batchnorm._BatchNorm):
            setattr(module, name, torch.nn.SyncBatchNorm.convert_sync_batchnorm(child))
        else:
            _synchronise_batch_norms(child)


def all_gather_objects(value: Any, world: World) -> list:
    """Every rank's picklable `value`, in rank order."""
    if not world.distributed:
        return [value]
    values: list = [None] * world.size
    dist.all_gather_object(values, value)
    return values


def gather_to_main(parts: dict, world: World) -> dict:
    """On rank 0, the union of every rank's dict of picklable parts (keys distinct across
    ranks); on the other ranks, an empty dict."""
    if not world.distributed:
        return parts
    gathered: Optional[list] = [None] * world.size if world.is_main else None
    dist.gather_object(parts, gathered, dst=0)
    return {key: value for rank_parts in gathered or () for key, value in rank_parts.items()}


def rank_seed(seed: int, world: World) -> int:
    """The seed of this rank's random streams: `seed` itself on rank 0 (so one process draws
    what it always drew), distinct and fixed for every other rank."""
    return seed if world.rank == 0 else (seed * 1_000_003 + world.rank * 7_919) % 2**63
