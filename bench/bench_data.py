"""The training data path's CPU cost per image: decoding every time against the image cache.

On synthetic CUB-sized photos this script writes to a temporary folder (the CUB layout: JPEGs
of 500 x 300-500 px with bird boxes, captions, the AttnGAN pickles), at the birds preset
(64/128/256 px pyramids, box crop, random crop and flip, batch 20), each path feeds --epochs
epochs of training batches through the project's own loader (`attngan.data.loader.
training_batches`: one loader for the run, --workers workers started once, as training runs
it). The decoded paths keep decoded images in memory as they would on CUB: up to
dataset.CACHE_BYTES, which holds 1/10 of CUB's 8,855 training images (and here the same share
of the synthetic ones).

- "decoded, float pyramid" (the path before this script existed): each image decoded from its
  JPEG, box-cropped and resized, its pyramid made float32 in [-1, 1] on the CPU and the float
  batches collated with torch.stack, to be copied into shared memory on their way out of the
  worker (the code as it was, kept here);
- "decoded, uint8": the same decoding, the pyramid handed over as uint8 (the training step
  makes it float on its device: on a GPU none of that is CPU time);
- "image cache, uint8": the pre-crop images read from the split's decoded-image cache
  (`attngan prepare --image-cache`), the pyramid handed over as uint8.

Reported: CPU milliseconds per image summed over every process (getrusage: this process and its
workers, reaped when the loader closes), of which in this process, and the cores each path
needs to feed 500 and 1,200 images/s. CPU time, not wall time: on a shared machine the
wall clock measures the neighbours too. The target: the cache at most 1/4 of the first row.

    python bench/bench_data.py [--images N] [--epochs E] [--rounds R] [--workers W] [--record]
"""

from __future__ import annotations

import argparse
import contextlib
import pickle
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import at_least, machine, machine_lines, markdown_table, publish  # noqa: E402

import attngan.data.dataset as dataset_module  # noqa: E402
import attngan.data.loader as loader_module  # noqa: E402
from attngan.config import Config, load_config  # noqa: E402
from attngan.data.dataset import TextImageDataset, build_dataset, read_split  # noqa: E402
from attngan.data.loader import (
    MAX_AUTO_WORKERS,
    prepare_image_cache,  # noqa: E402
    resolve_num_workers,
    training_batches,
)

CPU = torch.device("cpu")
CUB_TRAIN_IMAGES = 8_855
RATES = (500, 1200)  # images per second to feed
PATHS = ("decoded, float pyramid", "decoded, uint8", "image cache, uint8")
CAPTION = "this bird has a {} crown and {} wings with a short pointed beak"
COLORS = ("red", "brown", "yellow", "black", "white", "grey", "blue", "green")


def float_pyramid(array: np.ndarray, sizes, y: int, x: int, flip: bool) -> list[torch.Tensor]:
    """The pyramid as the loader made it before it handed over uint8: the `top`-px crop of the
    HWC uint8 `array` at (y, x), flipped or not, each level PIL-resized from it, then made
    float32 in [-1, 1] on the CPU (the former code)."""
    top = sizes[-1]
    crop = array[y : y + top, x : x + top]
    if flip:
        crop = crop[:, ::-1]
    crop = np.ascontiguousarray(crop)
    levels = []
    for size in sizes:
        level = (
            crop
            if size == top
            else np.asarray(Image.fromarray(crop).resize((size, size), Image.BILINEAR))
        )
        levels.append(
            torch.from_numpy(np.array(level, dtype=np.float32))
            .permute(2, 0, 1)
            .div_(127.5)
            .sub_(1.0)
            .contiguous()
        )
    return levels


class FloatPyramids(TextImageDataset):
    """Items as the loader made them before it handed over uint8 (the former `images`)."""

    def images(self, index, draws=None):
        array = self.loaded(index)
        top = self.image_sizes[-1]
        height, width = array.shape[:2]
        if draws is not None and self.random_crop:
            y, x = draws.randrange(height - top + 1), draws.randrange(width - top + 1)
        else:
            y, x = (height - top) // 2, (width - top) // 2
        flip = draws is not None and self.random_flip and draws.random() < 0.5
        return float_pyramid(array, self.image_sizes, y, x, flip)


def collate_as_it_was(items: list[dict]) -> dict:
    """`collate` as it was: each part stacked where the worker's allocator puts it (the
    DataLoader then copies it into shared memory to send it)."""
    return dict(
        images=[torch.stack(level) for level in zip(*(item["images"] for item in items))],
        captions=torch.stack([item["caption"] for item in items]),
        lengths=torch.tensor([item["length"] for item in items], dtype=torch.long),
        class_ids=torch.tensor([item["class_id"] for item in items], dtype=torch.long),
        keys=[item["key"] for item in items],
        caption_indices=torch.tensor([item["caption_index"] for item in items], dtype=torch.long),
    )


@contextlib.contextmanager
def collated_with(collate):
    """The training loaders made inside collate with `collate`."""
    kept = loader_module.collate
    loader_module.collate = collate
    try:
        yield
    finally:
        loader_module.collate = kept


def photo(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    """A photo-like image: smooth colour regions and grain (its JPEG at quality 90 about 70 KB
    at 500 x 400; a photo with more detail is larger and slower to decode)."""
    small = rng.integers(0, 256, (max(2, height // 24), max(2, width // 24), 3), dtype=np.uint8)
    base = np.asarray(
        Image.fromarray(small).resize((width, height), Image.BICUBIC), dtype=np.float32
    )
    grain = rng.normal(0, 9, (height, width, 3))
    return Image.fromarray(np.clip(base + grain, 0, 255).astype(np.uint8))


def make_cub_like(root: Path, count: int, seed: int = 0) -> Path:
    """`count` training (and 2 test) photos in the CUB layout under root, with boxes of
    30-80 % of each side anywhere in the photo (so the 1.5x box crop is often clipped)."""
    rng = np.random.default_rng(seed)
    images = root / "CUB_200_2011" / "images" / "001.Bird"
    images.mkdir(parents=True)
    listing, boxes, keys = [], [], []
    for number in range(1, count + 3):
        width, height = (
            (500, int(rng.integers(300, 501)))
            if rng.random() < 0.85
            else (int(rng.integers(300, 500)), 500)
        )
        key = f"001.Bird/Bird_{number:05d}"
        photo(rng, width, height).save(root / "CUB_200_2011" / "images" / f"{key}.jpg", quality=90)
        w, h = (int(side * rng.uniform(0.3, 0.8)) for side in (width, height))
        x, y = int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1))
        listing.append(f"{number} {key}.jpg")
        boxes.append(f"{number} {x}.0 {y}.0 {w}.0 {h}.0")
        keys.append(key)
        text = root / "text" / f"{key}.txt"
        text.parent.mkdir(parents=True, exist_ok=True)
        text.write_text("".join(CAPTION.format(*rng.choice(COLORS, 2)) + "\n" for _ in range(10)))
    (root / "CUB_200_2011" / "images.txt").write_text("\n".join(listing) + "\n")
    (root / "CUB_200_2011" / "bounding_boxes.txt").write_text("\n".join(boxes) + "\n")
    for split, split_keys in (("train", keys[:count]), ("test", keys[count:])):
        (root / split).mkdir()
        (root / split / "filenames.pickle").write_bytes(pickle.dumps(split_keys, protocol=2))
        (root / split / "class_info.pickle").write_bytes(
            pickle.dumps([1] * len(split_keys), protocol=2)
        )
    return root


def cpu_seconds() -> tuple[float, float]:
    """(this process's, its reaped children's) user + system CPU seconds."""
    own, children = (
        resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
    )
    return own.ru_utime + own.ru_stime, children.ru_utime + children.ru_stime


def run(path: str, config: Config, epochs: int) -> dict:
    """CPU seconds (all; this process's), wall seconds and images of `epochs` epochs of
    training batches along `path`; the workers have exited and been reaped when it returns."""
    data = config.data
    if path == PATHS[2]:
        dataset = build_dataset(data, "train", augment=True)
        assert dataset.image_cache is not None
    else:
        kind = FloatPyramids if path == PATHS[0] else TextImageDataset
        dataset = kind(read_split(data, "train"), data, augment=True)
    batches = epochs * (len(dataset) // config.gan.batch_size)
    own_before, children_before = cpu_seconds()
    started = time.perf_counter()
    with (
        collated_with(collate_as_it_was if path == PATHS[0] else loader_module.collate),
        training_batches(
            dataset,
            config,
            CPU,
            config.gan.batch_size,
            epoch=0,
            batch=0,
            count=batches,
            progress=False,
        ) as loader,
    ):
        for batch in loader:
            assert batch["images"][-1].dtype == (torch.float32 if path == PATHS[0] else torch.uint8)
    wall = time.perf_counter() - started
    own, children = cpu_seconds()
    return dict(
        seconds=own - own_before + children - children_before,
        own_seconds=own - own_before,
        wall_seconds=wall,
        images=batches * config.gan.batch_size,
    )


def measure(root: Path, images: int, workers: int, epochs: int, rounds: int) -> list[dict]:
    """Per path, the median over `rounds` of `run`'s per-image numbers; the paths take turns
    within each round, so that each sees the same mix of the shared machine's load."""
    config = load_config(
        "birds", [f"data.root={root}", f"data.num_workers={workers}", "run.device=cpu"]
    )
    prepare_image_cache(config.data, "train", progress=False)
    # the share of the images the in-memory cache of decoded images holds on CUB
    dataset_module.CACHE_BYTES = dataset_module.CACHE_BYTES * images // CUB_TRAIN_IMAGES
    results = {path: [] for path in PATHS}
    for round_ in range(rounds):
        for path in PATHS:
            result = run(path, config, epochs)
            results[path].append(
                {
                    name: 1e3 * result[name] / result["images"]
                    for name in ("seconds", "own_seconds", "wall_seconds")
                }
            )
            print(
                f"  round {round_ + 1}, {path}: "
                f"{results[path][-1]['seconds']:.2f} CPU-ms per image",
                flush=True,
            )
    rows = []
    for path, runs in results.items():
        ms, own, wall = (
            float(np.median([run[name] for run in runs]))
            for name in ("seconds", "own_seconds", "wall_seconds")
        )
        rows.append(
            {
                "path": path,
                "workers": workers,
                "images_per_round": result["images"],
                "rounds": rounds,
                "cpu_ms_per_image": ms,
                "cpu_ms_per_image_each_round": [round(run["seconds"], 3) for run in runs],
                "main_process_ms_per_image": own,
                "wall_ms_per_image": wall,
                **{f"cores_for_{rate}": ms * rate / 1e3 for rate in RATES},
            }
        )
    return rows


def workers_setting(text: str) -> int:
    """An argparse type: --workers as a count ("auto" as training on a GPU resolves it: this
    measures what feeding a GPU costs)."""
    return (
        resolve_num_workers("auto", torch.device("cuda")) if text == "auto" else at_least(0)(text)
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--images",
        type=at_least(20),
        default=300,
        help="synthetic training photos (default 300; an epoch is every whole batch of 20 of them)",
    )
    parser.add_argument(
        "--epochs",
        type=at_least(1),
        default=3,
        help="epochs per path and round, through one loader (default 3)",
    )
    parser.add_argument(
        "--rounds",
        type=at_least(1),
        default=3,
        help="rounds, each path once in each; the median is reported (default 3)",
    )
    parser.add_argument(
        "--workers",
        type=workers_setting,
        default="auto",
        help="data.num_workers of every run: a count, or auto (default: as "
        "a GPU run resolves it, one per CPU but one, at most "
        f"{MAX_AUTO_WORKERS})",
    )
    parser.add_argument("--record", action="store_true", help="write bench/results/")
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="bench_data-") as folder:
        root = make_cub_like(Path(folder) / "birds", args.images)
        sizes = [path.stat().st_size for path in root.glob("CUB_200_2011/images/*/*.jpg")]
        rows = measure(root, args.images, args.workers, args.epochs, args.rounds)
        cache_bytes = sum(path.stat().st_size for path in root.glob("image_cache/*.cache"))
    info = machine(CPU)
    base = rows[0]["cpu_ms_per_image"]
    lines = [
        f"# Data path, CPU time per image, birds preset, {info['date_utc']} UTC",
        "",
        *machine_lines(info),
        f"- {args.images} synthetic CUB-sized photos (JPEG, mean {np.mean(sizes) / 1e3:.0f} "
        f"KB; their cache {cache_bytes / args.images / 1e3:.0f} KB per image), batch 20, "
        f"{args.epochs} epochs per path through one loader, the median of {args.rounds} "
        f"rounds (the paths take turns in each), data.num_workers={args.workers}; CPU time "
        f"of every process (getrusage self + reaped workers); the uint8 paths leave the "
        f"float conversion to the training device",
        "",
        markdown_table(
            [
                "path",
                "CPU-ms / image",
                "of which main process",
                "vs decoded, float",
                *(f"cores for {rate:,} images/s" for rate in RATES),
            ],
            [
                [
                    row["path"],
                    f"{row['cpu_ms_per_image']:.2f}",
                    f"{row['main_process_ms_per_image']:.2f}",
                    f"{row['cpu_ms_per_image'] / base:.2f}",
                    *(f"{row[f'cores_for_{rate}']:.2f}" for rate in RATES),
                ]
                for row in rows
            ],
        ),
        "",
        f"Target, the cache at most 1/4 of the decoded float path's CPU time: "
        f"{'met' if rows[2]['cpu_ms_per_image'] <= base / 4 else 'missed'} "
        f"({rows[2]['cpu_ms_per_image'] / base:.2f}).",
    ]
    publish("data", info, rows, "\n".join(lines), args.record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
