"""Text-image data set and batch collation (docs/DESIGN.md, "Data"), for every reader.

`build_dataset(data_config, split, augment=...)` reads the split with the reader of
`data_config.dataset` ("cub" and "shapes": CUB layout, `cub.py`; "coco": `coco.py`) and returns
a `TextImageDataset` of one item per image:

- Image: the bird box crop (CUB, when data.bbox_crop), then with data.random_crop the shorter
  side resized to top*76/64 and a top x top crop (top = the largest pyramid size), random when
  augmenting and centred otherwise; without data.random_crop the shorter side is resized to top
  and the centre kept (nothing is cut from a square image: the shapes set must keep objects in
  their named cells). A random horizontal flip when augmenting and data.random_flip. The
  pyramid (data_config.image_sizes) is made from that crop by bilinear, antialiased resizing
  (PIL, in uint8). Items hand the levels over as uint8 [3, s, s] views of the pixels as PIL
  lays them out ([s, s, 3] in memory: no transposing copy on the CPU); `attngan.data.loader.
  float_images` makes them float32 [-1, 1] on the training device.
- Caption: augmenting, a random one of the image's captions_per_image (as the original);
  otherwise caption `index % captions_per_image`, so an evaluation pass is reproducible and
  still uses every caption slot. A caption longer than data.words_num keeps a subset of its
  words in order (not a truncation): random when augmenting, otherwise the subset drawn by
  a generator seeded with the caption's flat index (`caption(index)`), the same in every run.
- Random draws: an item asked for by (seed, epoch, index), as the training loaders ask
  (`attngan.data.loader`), draws its caption, words, crop and flip from `item_random(seed,
  epoch, index)`: the same in any process, so a run's batches do not depend on
  data.num_workers and a resumed run draws what the uninterrupted one drew. An item asked for
  by its index alone draws from a generator seeded by torch's global one.

Decoded images (after the box crop and the first resize) come from the split's decoded-image
cache when `attngan prepare --image-cache` wrote one (`image_cache.py`); without it they stay
in memory up to CACHE_BYTES per data set, so the small synthetic set (2,000 64x64 images:
25 MB) is read from disk once and DAMSM pretraining on a CPU is not bound by PNG decoding.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from PIL import Image

from attngan.config import DataConfig
from attngan.data.coco import prepare_captions as prepare_coco
from attngan.data.coco import read_coco
from attngan.data.cub import crop_window, cub_fix, read_cub
from attngan.data.cub import prepare_captions as prepare_cub
from attngan.data.errors import DataError, unreadable
from attngan.data.image_cache import ImageCache, open_image_cache
from attngan.data.records import SplitRecords

CACHE_BYTES = 256 << 20
DATASETS = ("cub", "shapes", "coco")


def read_image(path: Path, fix: str) -> Image.Image:
    """Decode `path` to RGB; a missing or undecodable file is a DataError naming it."""
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except FileNotFoundError:
        raise DataError(f"image {path} is missing; {fix}") from None
    except (PermissionError, IsADirectoryError) as error:
        raise unreadable(path, error, "image ") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise DataError(
            f"image {path} cannot be decoded ({type(error).__name__}: {error}); "
            f"replace the file with a good copy ({fix})"
        ) from None


def resized_size(width: int, height: int, load_size: int) -> tuple[int, int]:
    """(width, height) with the shorter side scaled to `load_size`, the sizes torchvision's
    Resize(load_size) computes (the original's transform): the longer side is
    int(load_size * long / short)."""
    short = min(width, height)
    return int(load_size * width / short), int(load_size * height / short)


def load_size(data_config: DataConfig) -> int:
    """The shorter side images are resized to before the top x top crop (module docstring)."""
    top = max(data_config.image_sizes)
    return top * 76 // 64 if data_config.random_crop else top


def item_random(seed: int, epoch: int, index: int) -> random.Random:
    """The generator of every random draw of item `index` in `epoch` of a run seeded `seed`
    (Python's string seeding hashes the text with SHA-512: distinct triples, unrelated
    streams, the same in every process and Python version)."""
    return random.Random(f"{seed}/{epoch}/{index}")


class TextImageDataset(torch.utils.data.Dataset):
    """Images with their captions; see the module docstring for every transform.

    Attributes: vocab, keys (per image), class_ids (per image), captions (flat word-id lists,
    captions_per_image per image in image order), captions_per_image, image_sizes, augment,
    load_size, image_cache (the split's ImageCache, or None: images are decoded).
    """

    def __init__(
        self,
        records: SplitRecords,
        data_config: DataConfig,
        *,
        augment: bool,
        words_num: Optional[int] = None,
        image_cache: Optional[ImageCache] = None,
    ):
        words_num = data_config.words_num if words_num is None else words_num
        if words_num < 1:
            raise DataError(
                f"words per caption must be at least 1, got {words_num} "
                f"(data.words_num / data.eval_words_num)"
            )
        self.records = records
        self.vocab = records.vocab
        self.keys = records.keys
        self.class_ids = records.class_ids
        self.captions = records.captions
        self.captions_per_image = records.captions_per_image
        self.words_num = words_num
        self.image_sizes = tuple(sorted(data_config.image_sizes))
        self.augment = augment
        self.random_crop = data_config.random_crop
        self.random_flip = data_config.random_flip
        self.load_size = load_size(data_config)
        self.image_cache = image_cache
        self._cache: dict[int, np.ndarray] = {}
        self._cache_bytes = 0

    def __len__(self) -> int:
        return len(self.keys)

    # ---- captions -----------------------------------------------------------------------
    def _pad(self, ids: list[int], keep: Optional[list[int]]) -> tuple[torch.Tensor, int]:
        if keep is not None:
            ids = [ids[i] for i in sorted(keep)]
        caption = torch.zeros(self.words_num, dtype=torch.long)
        caption[: len(ids)] = torch.tensor(ids, dtype=torch.long)
        return caption, len(ids)

    def caption(
        self, index: int, draws: Optional[random.Random] = None
    ) -> tuple[torch.Tensor, int]:
        """Flat caption `index` (image index // captions_per_image) as (LongTensor[words_num]
        zero-padded, length). A long caption keeps an ordered subset of its words: drawn from
        `draws`, or without it the same subset in every call."""
        ids = self.captions[index]
        keep = None
        if len(ids) > self.words_num:
            keep = (draws if draws is not None else random.Random(index)).sample(
                range(len(ids)), self.words_num
            )
        return self._pad(ids, keep)

    def texts(self, index: int) -> list[str]:
        """The raw caption strings of image `index` (decoded word ids when the reader kept none)."""
        if self.records.texts is not None:
            return self.records.texts(index)
        base = index * self.captions_per_image
        return [
            self.vocab.decode(ids) for ids in self.captions[base : base + self.captions_per_image]
        ]

    # ---- images -------------------------------------------------------------------------
    def decode(self, index: int) -> np.ndarray:
        """Image `index` read from its file, uint8 [H, W, 3]: box crop, then the shorter side
        resized to load_size (what the image cache stores)."""
        image = read_image(self.records.image_paths[index], self.records.fix)
        if self.records.boxes is not None:
            image = image.crop(crop_window(image.width, image.height, self.records.boxes[index]))
        short = min(image.width, image.height)
        if short != self.load_size:
            image = image.resize(
                resized_size(image.width, image.height, self.load_size), Image.BILINEAR
            )
        return np.asarray(image, dtype=np.uint8)

    def loaded(self, index: int) -> np.ndarray:
        """`decode(index)`, from the image cache when there is one, else kept in memory while
        the data set's decoded images take at most CACHE_BYTES."""
        if self.image_cache is not None:
            return self.image_cache[index]
        cached = self._cache.get(index)
        if cached is not None:
            return cached
        array = self.decode(index)
        if self._cache_bytes + array.nbytes <= CACHE_BYTES:
            self._cache[index] = array
            self._cache_bytes += array.nbytes
        return array

    def images(self, index: int, draws: Optional[random.Random] = None) -> list[torch.Tensor]:
        """The pyramid of image `index`: uint8 [3, s, s] per size, small first ([s, s, 3] in
        memory). With `draws` (augmenting) the crop and flip are random as the settings allow;
        without, centred and unflipped."""
        array = self.loaded(index)
        top = self.image_sizes[-1]
        height, width = array.shape[:2]
        if draws is not None and self.random_crop:
            y, x = draws.randrange(height - top + 1), draws.randrange(width - top + 1)
        else:
            y, x = (height - top) // 2, (width - top) // 2
        crop = Image.fromarray(array[y : y + top, x : x + top])
        if draws is not None and self.random_flip and draws.random() < 0.5:
            crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        levels = [
            crop if size == top else crop.resize((size, size), Image.BILINEAR)
            for size in self.image_sizes
        ]
        return [torch.from_numpy(np.array(level)).permute(2, 0, 1) for level in levels]

    def __getitem__(self, key: int | tuple[int, int, int]) -> dict:
        """Item `key`: an image index, or (seed, epoch, index) (module docstring)."""
        if isinstance(key, tuple):
            seed, epoch, index = key
            draws = item_random(seed, epoch, index) if self.augment else None
        else:
            index = key
            draws = random.Random(int(torch.randint(2**62, ()))) if self.augment else None
        if not 0 <= index < len(self.keys):
            raise IndexError(f"image index {index} out of range for {len(self.keys)} images")
        if draws is not None:
            caption_index = draws.randrange(self.captions_per_image)
        else:
            caption_index = index % self.captions_per_image
        caption, length = self.caption(index * self.captions_per_image + caption_index, draws)
        return dict(
            images=self.images(index, draws),
            caption=caption,
            length=length,
            class_id=int(self.class_ids[index]),
            key=self.keys[index],
            caption_index=caption_index,
        )


def _stack(levels: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """Items' [3, s, s] levels as [B, 3, s, s], kept [B, s, s, 3] in memory (a plain copy of
    each); in a DataLoader worker into shared memory, where the batch goes on its way to the
    training process (as torch's default_collate does: it saves a copy there)."""
    pixels = [level.permute(1, 2, 0) for level in levels]
    out = None
    if torch.utils.data.get_worker_info() is not None:
        first = pixels[0]
        storage = first._typed_storage()._new_shared(len(pixels) * first.numel())
        out = first.new(storage).resize_(len(pixels), *first.shape)
    return torch.stack(pixels, out=out).permute(0, 3, 1, 2)


def collate(items: list[dict]) -> dict:
    """Stack items: images list of uint8 [B, 3, s, s] ([B, s, s, 3] in memory;
    `attngan.data.loader.float_images` makes them [-1, 1] floats), captions [B, L]
    (L = words_num), lengths [B], class_ids [B], keys, caption_indices [B]. Items keep their
    order (no sort by length)."""
    if not items:
        raise DataError("cannot collate an empty batch")
    return dict(
        images=[_stack(level) for level in zip(*(item["images"] for item in items))],
        captions=torch.stack([item["caption"] for item in items]),
        lengths=torch.tensor([item["length"] for item in items], dtype=torch.long),
        class_ids=torch.tensor([item["class_id"] for item in items], dtype=torch.long),
        keys=[item["key"] for item in items],
        caption_indices=torch.tensor([item["caption_index"] for item in items], dtype=torch.long),
    )


def synthetic_fix(root: str | Path) -> str:
    """The fix for a missing synthetic shapes folder."""
    return f"run `attngan make-synthetic {root}` to generate the shapes data set"


def read_split(data_config: DataConfig, split: str) -> SplitRecords:
    """The reader of data_config.dataset applied to one split."""
    root = Path(data_config.root)
    if data_config.dataset == "coco":
        return read_coco(root, split, captions_per_image=data_config.captions_per_image)
    if data_config.dataset in ("cub", "shapes"):
        fix = synthetic_fix(root) if data_config.dataset == "shapes" else cub_fix(root)
        return read_cub(
            root,
            split,
            captions_per_image=data_config.captions_per_image,
            bbox_crop=data_config.bbox_crop,
            fix=fix,
        )
    raise DataError(f"data.dataset is {data_config.dataset!r}; use one of {', '.join(DATASETS)}")


def build_dataset(
    data_config: DataConfig, split: str, *, augment: bool, words_num: Optional[int] = None
) -> TextImageDataset:
    """The data set of one split ("train" or "test") as data_config describes it, its captions
    cut to `words_num` words (default data.words_num), reading the split's image cache when
    there is one."""
    if split not in ("train", "test"):
        raise DataError(f"split must be 'train' or 'test', got {split!r}")
    records = read_split(data_config, split)
    return TextImageDataset(
        records,
        data_config,
        augment=augment,
        words_num=words_num,
        image_cache=open_image_cache(data_config, split, records, load_size(data_config)),
    )


def prepare(
    root: str | Path,
    dataset: Optional[str] = None,
    *,
    captions_per_image: Optional[int] = None,
    rebuild: bool = False,
) -> Path:
    """Make ROOT/captions.pickle (what `attngan prepare ROOT` runs); return its path.

    dataset None: COCO when ROOT/annotations/ exists, else the CUB layout. An existing file is
    kept unless `rebuild`.
    """
    root = Path(root)
    if dataset is None:
        dataset = "coco" if (root / "annotations").is_dir() else "cub"
    if dataset == "coco":
        return prepare_coco(root, captions_per_image or 5, rebuild=rebuild)
    if dataset in ("cub", "shapes"):
        fix = synthetic_fix(root) if dataset == "shapes" else cub_fix(root)
        return prepare_cub(root, captions_per_image or 10, rebuild=rebuild, fix=fix)
    raise DataError(f"dataset is {dataset!r}; use one of {', '.join(DATASETS)}")
