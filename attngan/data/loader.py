"""From a data set to the training device: workers, batch order, copies ahead, float images.

- `float_images`: a batch's uint8 image level to float32 in [-1, 1] on the training device, the
  first thing a training step does with its images. It looks the values up in a 256-entry table
  made on the CPU with the operations the loader used to apply to every pixel (x / 127.5 - 1 in
  float32), so the floats are those bit for bit on any device; computed there instead, a CUDA
  division by a number multiplies by its reciprocal, which can differ in the last bit.
- `resolve_num_workers`: data.num_workers as a count.
- `EpochBatches`: the batch order of a training run, from any position (a resumed run's) on;
  each item is asked for by (seed, epoch, index), so its random draws are its own
  (`dataset.item_random`) and the batches are the same with any number of workers.
- `DeviceBatches` (`training_batches`, `evaluation_batches`): one DataLoader for the whole run,
  its workers started once; on CUDA pinned memory, and the next batch's images and class ids
  copied to the device on a side stream while the current batch trains.
- `prepare_image_cache`: decode a split with those workers into its image cache
  (`image_cache.py`; `attngan prepare --image-cache`).
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from attngan.config import Config, DataConfig
from attngan.data.dataset import TextImageDataset, collate, load_size, read_split
from attngan.data.image_cache import cache_identity, image_cache_path, is_current, write_image_cache
from attngan.distributed import SINGLE, World, local_share

MAX_AUTO_WORKERS = 8
# Entry v is v / 127.5 - 1 as the CPU computes it, made eagerly at import (so that no compiler
# ever rewrites the division), and its copy on each device float_images has used.
FLOAT_TABLE = torch.arange(256, dtype=torch.float32).div_(127.5).sub_(1.0)
_float_tables: dict[torch.device, torch.Tensor] = {}


def float_images(images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """uint8 images (a batch's level, [B, 3, s, s] in any memory layout, on the CPU or
    `device`) as contiguous float32 in [-1, 1] on `device`: exactly v / 127.5 - 1 computed in
    float32 on the CPU."""
    device = torch.device(device)
    table = _float_tables.get(device)
    if table is None:  # once per device (a copy: before any graph capture)
        table = _float_tables[device] = FLOAT_TABLE.to(device)
    return table[images.to(device, non_blocking=True).long()].contiguous()


def resolve_num_workers(setting: int | str, device: Optional[torch.device]) -> int:
    """data.num_workers as a count for training on `device` (None: decoding alone, as
    `prepare_image_cache`): "auto" is 0 on the CPU, whose cores the training step's threads
    use (a worker beside them stalls them), else one worker per CPU this process may use, less
    one (the training loop's), at most MAX_AUTO_WORKERS. 0 loads in the training process."""
    if setting != "auto":
        return int(setting)
    if device is not None and torch.device(device).type == "cpu":
        return 0
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(0, min(cpus - 1, MAX_AUTO_WORKERS))


def epoch_order(size: int, seed: int, epoch: int) -> list[int]:
    """The order of the images in `epoch` of a run seeded `seed`."""
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return torch.randperm(size, generator=generator).tolist()


class EpochBatches(torch.utils.data.Sampler):
    """Batch sampler: `count` batches of a run from batch `batch` of `epoch` on. Epoch e's
    batches are consecutive batch_size slices of epoch_order(size, seed, e) (a last partial
    slice is dropped); items are (seed, epoch, index) keys. Under torchrun each rank takes its
    share of every such global batch (`world`: rank r of n, the r-th of n equal parts)."""

    def __init__(
        self,
        size: int,
        batch_size: int,
        seed: int,
        epoch: int,
        batch: int,
        count: int,
        world: World = SINGLE,
    ):
        self.size, self.batch_size, self.seed = size, batch_size, seed
        self.epoch, self.batch, self.count = epoch, batch, count
        self.per_epoch = size // batch_size
        share = local_share(batch_size, world, "the batch size")
        self.part = slice(world.rank * share, (world.rank + 1) * share)

    def __len__(self) -> int:
        return self.count

    def __iter__(self) -> Iterator[list[tuple[int, int, int]]]:
        epoch, first, left = self.epoch, self.batch, self.count
        while left > 0:
            order = epoch_order(self.size, self.seed, epoch)
            for batch in range(first, min(self.per_epoch, first + left)):
                whole = order[batch * self.batch_size : (batch + 1) * self.batch_size]
                yield [(self.seed, epoch, index) for index in whole[self.part]]
                left -= 1
            epoch, first = epoch + 1, 0


class DeviceBatches:
    """Collated batches of `dataset` in `batch_sampler`'s order through data.num_workers
    workers, with the images and class ids on `device` (captions and lengths stay on the CPU,
    where the text encoder and the ops check them). Iterating goes on where the last iteration
    stopped (`take` a part); after a whole pass over the sampler the next starts another. Close
    it, or use it in a `with`, to stop its workers."""

    def __init__(
        self,
        dataset: TextImageDataset,
        batch_sampler,
        num_workers: int | str,
        device: torch.device,
        seed: int,
    ):
        self.device = torch.device(device)
        workers = resolve_num_workers(num_workers, self.device)
        # The loader's own generator seeds the workers: the global RNG is not drawn from.
        self.loader: Optional[DataLoader] = DataLoader(
            dataset,
            batch_sampler=batch_sampler,
            collate_fn=collate,
            num_workers=workers,
            persistent_workers=workers > 0,
            pin_memory=self.device.type == "cuda",
            generator=torch.Generator().manual_seed(seed),
        )
        self._pass: Optional[Iterator[dict]] = None

    def __iter__(self) -> Iterator[dict]:
        if self._pass is None:
            self._pass = self._on_device(iter(self.loader))
        # A loop, not `yield from`: closing this iterator early must leave the pass open.
        for batch in self._pass:
            yield batch
        self._pass = None

    def take(self, count: int) -> Iterator[dict]:
        """The next `count` batches."""
        return itertools.islice(iter(self), count)

    def _on_device(self, batches: Iterator[dict]) -> Iterator[dict]:
        if self.device.type != "cuda":  # float_images converts in the step: nothing to copy
            yield from batches
            return
        copies = torch.cuda.Stream(self.device)
        ahead = self._copy(next(batches, None), copies)
        while ahead is not None:
            current, step_stream = ahead, torch.cuda.current_stream(self.device)
            step_stream.wait_stream(copies)
            for tensor in (*current["images"], current["class_ids"]):
                tensor.record_stream(step_stream)  # their memory stays theirs until used
            ahead = self._copy(next(batches, None), copies)
            yield current

    def _copy(self, batch: Optional[dict], stream) -> Optional[dict]:
        if batch is None:
            return None
        with torch.cuda.stream(stream):
            return dict(
                batch,
                class_ids=batch["class_ids"].to(self.device, non_blocking=True),
                images=[level.to(self.device, non_blocking=True) for level in batch["images"]],
            )

    def close(self) -> None:
        """Stop the workers (a later iteration is an error)."""
        self._pass = None
        self.loader = None  # its persistent workers stop with it

    def __enter__(self) -> "DeviceBatches":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def describe_images(dataset: TextImageDataset, device: torch.device) -> Optional[str]:
    """The line a training run prints once about where its images come from: the image cache
    when there is one, a hint to write one when training on a GPU without it."""
    cache = dataset.image_cache
    if cache is not None:
        return (
            f"images: the decoded-image cache {cache.path} ({len(cache):,} images, "
            f"{cache.nbytes / 1e9:.2f} GB)"
        )
    if torch.device(device).type == "cuda":
        return (
            "images: decoded from their files at every use; `attngan prepare DATA_ROOT "
            "--image-cache --config <this config>` writes a cache that takes a fraction of "
            "the CPU time"
        )
    return None


def training_batches(
    dataset: TextImageDataset,
    config: Config,
    device: torch.device,
    batch_size: int,
    *,
    epoch: int,
    batch: int,
    count: int,
    progress: bool = True,
    world: World = SINGLE,
) -> DeviceBatches:
    """The `count` batches of a training run from batch `batch` of `epoch` on (EpochBatches,
    seeded by run.seed; `batch_size` the global batch, of which this rank of `world` loads its
    share); with `progress`, says once where the images come from."""
    line = describe_images(dataset, device) if progress else None
    if line:
        tqdm.write(line)
    sampler = EpochBatches(len(dataset), batch_size, config.run.seed, epoch, batch, count, world)
    return DeviceBatches(dataset, sampler, config.data.num_workers, device, config.run.seed)


def evaluation_batches(
    dataset: TextImageDataset, config: Config, device: torch.device, batch_size: int
) -> DeviceBatches:
    """The whole batches of `dataset` in its order, a pass per iteration."""
    batches = [
        list(range(start, start + batch_size))
        for start in range(0, len(dataset) - batch_size + 1, batch_size)
    ]
    return DeviceBatches(dataset, batches, config.data.num_workers, device, config.run.seed)


class _Decoded(torch.utils.data.Dataset):
    """Image i of a data set as its image cache stores it (`TextImageDataset.decode`)."""

    def __init__(self, dataset: TextImageDataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> torch.Tensor:
        return torch.from_numpy(np.array(self.dataset.decode(index)))  # a writable copy


def prepare_image_cache(
    data_config: DataConfig, split: str, progress: bool = True
) -> tuple[Path, bool]:
    """Write the image cache of `split` (data.num_workers workers decoding) unless a current one
    is there; return (its path, whether it was written)."""
    records = read_split(data_config, split)
    size = load_size(data_config)
    path = image_cache_path(data_config, split, size)
    identity = cache_identity(records, data_config.root, size)
    if is_current(path, identity):
        return path, False
    dataset = TextImageDataset(records, data_config, augment=False)
    # One image at a time (no batching), in order; each arrives as a tensor in shared memory.
    loader = DataLoader(
        _Decoded(dataset),
        batch_size=None,
        num_workers=resolve_num_workers(data_config.num_workers, None),
    )
    with tqdm(
        loader,
        total=len(dataset),
        desc=f"image cache ({split})",
        unit="image",
        disable=not progress,
    ) as images:  # closed before an interruption's message is printed
        write_image_cache(path, identity, (image.numpy() for image in images))
    return path, True
