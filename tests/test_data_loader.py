"""The training data path (attngan/data/loader.py and the items of dataset.py): uint8 pyramids
made into floats bit for bit as the float path made them, per-item seeded draws with the
original's distributions, the batch order of a run from any position, the same batches with any
number of workers, and workers that stop with the loader."""

import dataclasses
import multiprocessing
import random
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_cub_reader import IMAGES, config, make_cub

import attngan.data.dataset as dataset_module
from attngan.config import Config, DataConfig, RunConfig
from attngan.data import build_dataset
from attngan.data.loader import (
    MAX_AUTO_WORKERS,
    EpochBatches,
    epoch_order,
    float_images,
    resolve_num_workers,
    training_batches,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from bench_data import float_pyramid  # noqa: E402  the loader's former path, the baseline there

CPU = torch.device("cpu")


class FixedDraws:
    """Stands in for an item's generator: the crop offsets and the flip given."""

    def __init__(self, y: int, x: int, flip: bool):
        self.offsets, self.flip = [y, x], flip

    def randrange(self, stop: int) -> int:
        offset = self.offsets.pop(0)
        assert offset < stop
        return offset

    def random(self) -> float:
        return 0.0 if self.flip else 0.75


@pytest.fixture
def noisy_cub(tmp_path):
    """The tiny CUB of test_cub_reader with noise for pixels, so every resize tap counts."""
    root = make_cub(tmp_path / "birds")
    rng = np.random.default_rng(0)
    for key, _, _, (width, height), _ in IMAGES:
        Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(
            root / "CUB_200_2011" / "images" / f"{key}.jpg", quality=90
        )
    return root


def run_config(data: DataConfig, seed: int = 3, **data_changes) -> Config:
    return Config(data=dataclasses.replace(data, **data_changes), run=RunConfig(seed=seed))


def test_float_images_are_the_float_paths_bit_for_bit():
    every_value = torch.arange(256, dtype=torch.uint8).view(1, 1, 16, 16).expand(2, 3, 16, 16)
    images = torch.cat([every_value, torch.randint(256, (2, 3, 16, 16), dtype=torch.uint8)])
    floats = float_images(images, CPU)
    expected = images.float().div_(127.5).sub_(1.0)
    assert floats.dtype == torch.float32 and floats.is_contiguous()
    assert torch.equal(floats, expected)  # bit for bit, not within a tolerance
    assert floats.min() == -1 and floats.max() == 1


def test_float_images_compile_whole_and_exact():
    """Inside a compiled training step: no graph break, the same bits (the table is made
    eagerly, so no compiler turns its division into a product)."""
    images = torch.randint(256, (2, 16, 16, 3), dtype=torch.uint8).permute(0, 3, 1, 2)
    compiled = torch.compile(float_images, fullgraph=True)(images, CPU)
    assert compiled.is_contiguous() and torch.equal(compiled, float_images(images, CPU))


@pytest.mark.parametrize("random_crop, random_flip", [(True, True), (False, False)])
def test_uint8_pyramids_are_the_float_paths(noisy_cub, random_crop, random_flip):
    """Every crop position at the corners and the middle, flipped or not: the uint8 levels
    made floats equal the float path's levels exactly (a resized level is PIL's uint8 resize of
    the uint8 crop either way)."""
    data = build_dataset(
        config(noisy_cub, random_crop=random_crop, random_flip=random_flip), "train", augment=True
    )
    sizes = data.image_sizes
    for index in range(len(data)):
        array = data.loaded(index)
        height, width = array.shape[0] - sizes[-1], array.shape[1] - sizes[-1]
        cases = [((height // 2, width // 2, False), None)]  # centred, as evaluation
        if random_crop:
            cases += [
                ((y, x, flip), FixedDraws(y, x, flip))
                for y in (0, height // 2, height)
                for x in (0, width)
                for flip in (False, True)
            ]
        for (y, x, flip), draws in cases:
            levels = [float_images(level[None], CPU)[0] for level in data.images(index, draws)]
            for got, want in zip(levels, float_pyramid(array, sizes, y, x, flip), strict=True):
                assert torch.equal(got, want), (index, y, x, flip, got.shape)


def test_an_items_draws_are_its_own(noisy_cub):
    """(seed, epoch, index) gives the same item in every call and process; another epoch or
    seed draws anew; a plain index draws from torch's global generator."""
    data = build_dataset(config(noisy_cub, words_num=6), "train", augment=True)

    def same(a, b):
        return (
            a["caption_index"] == b["caption_index"]
            and torch.equal(a["caption"], b["caption"])
            and all(torch.equal(x, y) for x, y in zip(a["images"], b["images"]))
        )

    assert same(data[(3, 1, 0)], data[(3, 1, 0)])
    assert not all(same(data[(3, 1, 0)], data[(3, epoch, 0)]) for epoch in range(2, 6))
    assert not all(same(data[(3, 1, 0)], data[(seed, 1, 0)]) for seed in range(4, 8))
    torch.manual_seed(7)
    first = data[0]
    torch.manual_seed(7)
    assert same(first, data[0])
    evaluation = build_dataset(config(noisy_cub), "train", augment=False)
    state = torch.get_rng_state()
    assert same(evaluation[(3, 1, 2)], evaluation[2]) and same(evaluation[2], evaluation[2])
    assert torch.equal(torch.get_rng_state(), state)  # evaluation items draw nothing


def test_draws_keep_the_originals_distributions(noisy_cub, monkeypatch):
    """Each draw of an augmented item is uniform over what the original drew from: the caption
    slot, the crop offsets (every one of 0..H-top and 0..W-top), a flip half the time, and the
    words of a long caption (a uniform ordered subset)."""
    calls = []

    class Recording(random.Random):
        def getrandbits(self, k):  # keeps the parent's integer draws (see __init_subclass__)
            return super().getrandbits(k)

        def randrange(self, stop):
            value = super().randrange(stop)
            calls.append(("randrange", stop, value))
            return value

        def random(self):
            value = super().random()
            calls.append(("random", None, value))
            return value

        def sample(self, population, k):
            chosen = super().sample(population, k)
            calls.append(("sample", len(population), tuple(sorted(chosen))))
            return chosen

    monkeypatch.setattr(
        dataset_module,
        "item_random",
        lambda seed, epoch, index: Recording(f"{seed}/{epoch}/{index}"),
    )
    data = build_dataset(config(noisy_cub), "train", augment=True)
    items = [data[(0, epoch, 0)] for epoch in range(600)]
    slots = [item["caption_index"] for item in items]
    assert set(slots) == set(range(10)) and max(map(slots.count, range(10))) < 100
    top = data.image_sizes[-1]
    height, width = data.loaded(0).shape[:2]
    crops = [(stop, value) for kind, stop, value in calls if kind == "randrange" and stop != 10]
    assert {stop for stop, _ in crops} == {height - top + 1, width - top + 1}
    for stop in (height - top + 1, width - top + 1):
        assert {value for s, value in crops if s == stop} == set(range(stop))
    flips = [value < 0.5 for kind, _, value in calls if kind == "random"]
    assert len(flips) == 600 and 0.44 < sum(flips) / 600 < 0.56
    long = len(data.captions[3])  # slot 3 holds the 17-word caption
    subsets = [value for kind, size, value in calls if kind == "sample" and size == long]
    assert len(subsets) == slots.count(3) and all(len(subset) == 6 for subset in subsets)
    assert len(set(subsets)) > 0.9 * len(subsets)  # of C(17, 6) = 12,376 subsets


def test_epoch_batches_from_any_position():
    """Epoch e's batches are slices of its own permutation, the last partial one dropped; a run
    resumed at (epoch, batch) gets the rest of the same sequence."""
    whole = list(EpochBatches(size=10, batch_size=3, seed=5, epoch=0, batch=0, count=8))
    assert len(whole) == 8 and len(EpochBatches(10, 3, 5, 0, 0, 8)) == 8
    for epoch in range(3):
        batches = whole[3 * epoch : 3 * epoch + 3]
        assert all(key[:2] == (5, epoch) for batch in batches for key in batch)
        order = epoch_order(10, 5, epoch)
        assert [key[2] for batch in batches for key in batch] == order[: 3 * len(batches)]
    assert epoch_order(10, 5, 0) != epoch_order(10, 5, 1) != epoch_order(10, 6, 1)
    assert list(EpochBatches(10, 3, 5, epoch=1, batch=2, count=3)) == whole[5:]
    assert list(EpochBatches(10, 3, 5, epoch=2, batch=0, count=0)) == []


def _batches(data, config, count, epoch=0, batch=0):
    with training_batches(
        data, config, CPU, 2, epoch=epoch, batch=batch, count=count, progress=False
    ) as loader:
        return list(loader)


def _assert_same(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x["keys"] == y["keys"] and torch.equal(x["captions"], y["captions"])
        assert torch.equal(x["lengths"], y["lengths"])
        assert torch.equal(x["caption_indices"], y["caption_indices"])
        assert all(torch.equal(p, q) for p, q in zip(x["images"], y["images"], strict=True))


def test_batches_do_not_depend_on_the_number_of_workers(noisy_cub):
    """0 workers and 2 give the same batches, over epochs, leaving the global RNG (the GAN's
    noise) as it was; a loader started mid-run gives the rest of them."""
    data = build_dataset(config(noisy_cub, words_num=6), "train", augment=True)
    configs = {
        workers: run_config(data_config, num_workers=workers)
        for workers, data_config in [(0, config(noisy_cub)), (2, config(noisy_cub))]
    }
    state = torch.get_rng_state()
    in_process = _batches(data, configs[0], count=5)  # 1 batch of 2 per epoch of 3
    assert torch.equal(torch.get_rng_state(), state)
    _assert_same(_batches(data, configs[2], count=5), in_process)
    assert torch.equal(torch.get_rng_state(), state)
    _assert_same(_batches(data, configs[2], count=2, epoch=3), in_process[3:])
    assert len({tuple(batch["keys"]) for batch in in_process}) > 1


def test_take_goes_on_and_workers_stop_with_the_loader(noisy_cub):
    data = build_dataset(config(noisy_cub), "train", augment=True)
    config_ = run_config(config(noisy_cub), num_workers=2)
    before = set(multiprocessing.active_children())
    whole = _batches(data, config_, count=4)
    with training_batches(
        data, config_, CPU, 2, epoch=0, batch=0, count=4, progress=False
    ) as loader:
        parts = [list(loader.take(1)), list(loader.take(2))]
        assert set(multiprocessing.active_children()) - before  # workers run
        for batch in loader:  # the rest
            parts.append([batch])
            break
    _assert_same([batch for part in parts for batch in part], whole)
    assert set(multiprocessing.active_children()) - before == set()  # and are gone


def test_auto_workers_use_the_cpus_but_one_beside_a_gpu(monkeypatch):
    """On a GPU (or decoding alone) one worker per CPU but one, capped; on the CPU none: the
    step's threads use the cores there. A count is taken as it is."""
    cuda = torch.device("cuda")  # a device name: no GPU needed
    for cpus, workers in [(1, 0), (2, 1), (5, 4), (64, MAX_AUTO_WORKERS)]:
        monkeypatch.setattr("os.sched_getaffinity", lambda pid, cpus=cpus: set(range(cpus)))
        assert resolve_num_workers("auto", cuda) == resolve_num_workers("auto", None) == workers
        assert resolve_num_workers("auto", CPU) == 0
    assert resolve_num_workers(0, cuda) == 0 and resolve_num_workers(3, CPU) == 3


@pytest.mark.gpu
def test_gpu_batches_are_the_cpu_ones(noisy_cub):
    """On CUDA: float_images gives the CPU's floats bit for bit, and the batches copied ahead
    (pinned memory, a side stream) are the CPU batches, on the GPU."""
    cuda = torch.device("cuda")
    images = torch.randint(256, (4, 3, 32, 32), dtype=torch.uint8)
    assert torch.equal(float_images(images, cuda).cpu(), float_images(images, CPU))
    data = build_dataset(config(noisy_cub), "train", augment=True)
    config_ = run_config(config(noisy_cub), num_workers=2)
    with training_batches(
        data, config_, cuda, 2, epoch=0, batch=0, count=4, progress=False
    ) as loader:
        on_gpu = list(loader)
    assert all(level.is_cuda for batch in on_gpu for level in batch["images"])
    assert all(batch["class_ids"].is_cuda and not batch["captions"].is_cuda for batch in on_gpu)
    on_cpu = _batches(data, config_, count=4)
    for gpu, cpu in zip(on_gpu, on_cpu, strict=True):
        assert all(torch.equal(g.cpu(), c) for g, c in zip(gpu["images"], cpu["images"]))
        assert torch.equal(gpu["class_ids"].cpu(), cpu["class_ids"])
