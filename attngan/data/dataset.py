"""Text-image data set and batch collation (docs/DESIGN.md, "Data"), for every reader.

`build_dataset(data_config, split, augment=...)` reads the split with the reader of
`data_config.dataset` ("cub" and "shapes": CUB layout, `cub.py`; "coco": `coco.py`) and returns
a `TextImageDataset` of one item per image:

- Image: the bird box crop (CUB, when data.bbox_crop), then with data.random_crop the shorter
  side resized to top*76/64 and a top x top crop (top = the largest pyramid size), random when
  augmenting and centred otherwise; without data.random_crop the shorter side is resized to top
  and the centre kept (nothing is cut from a square image: the shapes set must keep objects in
  their named cells). A random horizontal flip when augmenting and data.random_flip. The
  pyramid (data_config.image_sizes) is made from that crop by bilinear, antialiased resizing;
  values are in [-1, 1].
- Caption: augmenting, a random one of the image's captions_per_image (as the original);
  otherwise caption `index % captions_per_image`, so an evaluation pass is reproducible and
  still uses every caption slot. A caption longer than data.words_num keeps a subset of its
  words in order (not a truncation): random when augmenting, otherwise the subset drawn by
  a generator seeded with the caption's flat index (`caption(index)`), the same in every run.
- Randomness comes from torch's global generator, which DataLoader seeds per worker.

Decoded images (after the box crop and the first resize) stay in memory up to CACHE_BYTES per
data set, so the small synthetic set (2,000 64x64 images: 25 MB) is read from disk once and
DAMSM pretraining on a CPU is not bound by PNG decoding.
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from PIL import Image

from attngan.config import DataConfig
from attngan.data.coco import prepare_captions as prepare_coco, read_coco
from attngan.data.cub import crop_window, cub_fix, prepare_captions as prepare_cub, read_cub
from attngan.data.errors import DataError, unreadable
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
        raise DataError(f"image {path} cannot be decoded ({type(error).__name__}: {error}); "
                        f"replace the file with a good copy ({fix})") from None


def resized_size(width: int, height: int, load_size: int) -> tuple[int, int]:
    """(width, height) with the shorter side scaled to `load_size`, the sizes torchvision's
    Resize(load_size) computes (the original's transform): the longer side is
    int(load_size * long / short)."""
    short = min(width, height)
    return int(load_size * width / short), int(load_size * height / short)


class TextImageDataset(torch.utils.data.Dataset):
    """Images with their captions; see the module docstring for every transform.

    Attributes: vocab, keys (per image), class_ids (per image), captions (flat word-id lists,
    captions_per_image per image in image order), captions_per_image, image_sizes, augment.
    """

    def __init__(self, records: SplitRecords, data_config: DataConfig, *, augment: bool,
                 words_num: Optional[int] = None):
        words_num = data_config.words_num if words_num is None else words_num
        if words_num < 1:
            raise DataError(f"words per caption must be at least 1, got {words_num} "
                            f"(data.words_num / data.eval_words_num)")
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
        top = self.image_sizes[-1]
        self.load_size = top * 76 // 64 if self.random_crop else top
        self._cache: dict[int, np.ndarray] = {}
        self._cache_bytes = 0

    def __len__(self) -> int:
        return len(self.keys)

    # ---- captions -----------------------------------------------------------------------
    def _pad(self, ids: list[int], keep: Optional[list[int]]) -> tuple[torch.Tensor, int]:
        if keep is not None:
            ids = [ids[i] for i in sorted(keep)]
        caption = torch.zeros(self.words_num, dtype=torch.long)
        caption[:len(ids)] = torch.tensor(ids, dtype=torch.long)
        return caption, len(ids)

    def caption(self, index: int) -> tuple[torch.Tensor, int]:
        """Flat caption `index` (image index // captions_per_image) as (LongTensor[words_num]
        zero-padded, length); a long caption keeps the same ordered subset in every call."""
        ids = self.captions[index]
        keep = None
        if len(ids) > self.words_num:
            keep = random.Random(index).sample(range(len(ids)), self.words_num)
        return self._pad(ids, keep)

    def _random_caption(self, index: int) -> tuple[torch.Tensor, int]:
        ids = self.captions[index]
        keep = None
        if len(ids) > self.words_num:
            keep = torch.randperm(len(ids))[:self.words_num].tolist()
        return self._pad(ids, keep)

    def texts(self, index: int) -> list[str]:
        """The raw caption strings of image `index` (decoded word ids when the reader kept none)."""
        if self.records.texts is not None:
            return self.records.texts(index)
        base = index * self.captions_per_image
        return [self.vocab.decode(ids)
                for ids in self.captions[base:base + self.captions_per_image]]

    # ---- images -------------------------------------------------------------------------
    def _loaded(self, index: int) -> np.ndarray:
        """uint8 [H, W, 3]: box crop, then the shorter side resized to load_size."""
        cached = self._cache.get(index)
        if cached is not None:
            return cached
        image = read_image(self.records.image_paths[index], self.records.fix)
        if self.records.boxes is not None:
            image = image.crop(crop_window(image.width, image.height, self.records.boxes[index]))
        short = min(image.width, image.height)
        if short != self.load_size:
            image = image.resize(resized_size(image.width, image.height, self.load_size),
                                 Image.BILINEAR)
        array = np.asarray(image, dtype=np.uint8)
        if self._cache_bytes + array.nbytes <= CACHE_BYTES:
            self._cache[index] = array
            self._cache_bytes += array.nbytes
        return array

    def images(self, index: int) -> list[torch.Tensor]:
        """The pyramid of image `index`: FloatTensor[3, s, s] in [-1, 1] per size, small first."""
        array = self._loaded(index)
        top = self.image_sizes[-1]
        height, width = array.shape[:2]
        if self.augment and self.random_crop:
            y = int(torch.randint(height - top + 1, ()))
            x = int(torch.randint(width - top + 1, ()))
        else:
            y, x = (height - top) // 2, (width - top) // 2
        crop = array[y:y + top, x:x + top]
        if self.augment and self.random_flip and bool(torch.rand(()) < 0.5):
            crop = crop[:, ::-1]
        crop = np.ascontiguousarray(crop)
        levels = []
        for size in self.image_sizes:
            level = crop if size == top else np.asarray(
                Image.fromarray(crop).resize((size, size), Image.BILINEAR))
            levels.append(torch.from_numpy(np.array(level, dtype=np.float32))
                          .permute(2, 0, 1).div_(127.5).sub_(1.0).contiguous())
        return levels

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < len(self.keys):
            raise IndexError(f"image index {index} out of range for {len(self.keys)} images")
        if self.augment:
            caption_index = int(torch.randint(self.captions_per_image, ()))
            caption, length = self._random_caption(index * self.captions_per_image + caption_index)
        else:
            caption_index = index % self.captions_per_image
            caption, length = self.caption(index * self.captions_per_image + caption_index)
        return dict(images=self.images(index), caption=caption, length=length,
                    class_id=int(self.class_ids[index]), key=self.keys[index],
                    caption_index=caption_index)


def collate(items: list[dict]) -> dict:
    """Stack items: images list of [B, 3, s, s], captions [B, L] (L = words_num), lengths [B],
    class_ids [B], keys, caption_indices [B]. Items keep their order (no sort by length)."""
    if not items:
        raise DataError("cannot collate an empty batch")
    return dict(
        images=[torch.stack(level) for level in zip(*(item["images"] for item in items))],
        captions=torch.stack([item["caption"] for item in items]),
        lengths=torch.tensor([item["length"] for item in items], dtype=torch.long),
        class_ids=torch.tensor([item["class_id"] for item in items], dtype=torch.long),
        keys=[item["key"] for item in items],
        caption_indices=torch.tensor([item["caption_index"] for item in items],
                                     dtype=torch.long))


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
        return read_cub(root, split, captions_per_image=data_config.captions_per_image,
                        bbox_crop=data_config.bbox_crop, fix=fix)
    raise DataError(f"data.dataset is {data_config.dataset!r}; use one of {', '.join(DATASETS)}")


def build_dataset(data_config: DataConfig, split: str, *, augment: bool,
                  words_num: Optional[int] = None) -> TextImageDataset:
    """The data set of one split ("train" or "test") as data_config describes it, its captions
    cut to `words_num` words (default data.words_num)."""
    if split not in ("train", "test"):
        raise DataError(f"split must be 'train' or 'test', got {split!r}")
    return TextImageDataset(read_split(data_config, split), data_config, augment=augment,
                            words_num=words_num)


def prepare(root: str | Path, dataset: Optional[str] = None, *,
            captions_per_image: Optional[int] = None, rebuild: bool = False) -> Path:
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
