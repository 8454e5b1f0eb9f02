"""The decoded-image cache: each image of a split as the data set has it before the random crop
(box crop, then the shorter side resized to the load size: `TextImageDataset.decode`), in one
file per split that training reads through a memory map instead of decoding the image files.

`attngan prepare ROOT --image-cache --config PRESET` writes it (`attngan.data.loader.
prepare_image_cache`); `build_dataset` reads it when it is there. Its file,
<data.image_cache, default ROOT/image_cache>/<split>-<load size>px[-box].cache, records what its
images were made from (`cache_identity`): the image files (a digest of each one's path under
ROOT, size and modification time), the boxes, the load size and Pillow's version (its decoders
and resampling make the pixels). A cache that differs in any of them is refused with a
DataError that says what differs and how to rebuild it, never silently used. It is written
atomically (`attngan.files.write_atomically`): whole or absent.

Layout: MAGIC and the header's offset (uint64, little-endian); from DATA_START the images'
pixels one after another, each row-major uint8 [H, W, 3]; the index (int64 absolute offsets
[N], then int64 shapes [N, 2] as height, width); the header (UTF-8 JSON: the identity and the
index's offset).
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from pathlib import Path
from typing import Iterable, Optional

import numpy as np
import PIL

from attngan.config import DataConfig
from attngan.data.errors import DataError, unreadable
from attngan.data.records import SplitRecords
from attngan.files import write_atomically

MAGIC = b"attngan images\x00\x01"
FORMAT = 1  # the layout's version, in the header
DATA_START = 4096  # the pixels start on a page: the memory map reads them as stored
# What a cache records of its images (cache_identity), as a refusal names each.
IDENTITY = {
    "images": "the number of images",
    "files": "the image files (their paths, sizes or modification times)",
    "boxes": "the boxes (bounding_boxes.txt, data.bbox_crop)",
    "load_size": "the load size (data.base_size, data.branch_num, data.random_crop)",
    "pillow": "Pillow's version (it decodes and resizes the images)",
}


def image_cache_path(data_config: DataConfig, split: str, load_size: int) -> Path:
    """The cache file of `split` at `load_size` (module docstring): the name keeps the caches of
    presets with other sizes or crops apart."""
    folder = Path(data_config.image_cache or Path(data_config.root) / "image_cache")
    return folder / f"{split}-{load_size}px{'-box' if data_config.bbox_crop else ''}.cache"


def rebuild_advice(data_config: DataConfig) -> str:
    """How to write a split's cache again, or do without it."""
    return (
        f"rebuild it with `attngan prepare {data_config.root} --image-cache --config "
        "<the config you train with>`, or delete it to decode the images each time"
    )


def cache_identity(records: SplitRecords, root: str | Path, load_size: int) -> dict:
    """What a split's images are made from (IDENTITY): one stat per image file, no decoding."""
    files = hashlib.sha256()
    for path in records.image_paths:
        try:
            stat = path.stat()
        except FileNotFoundError:
            raise DataError(f"image {path} is missing; {records.fix}") from None
        except OSError as error:
            raise unreadable(path, error, "image ") from None
        files.update(
            f"{os.path.relpath(path, root)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode(
                "utf-8", "surrogateescape"
            )
        )
    boxes = (
        None
        if records.boxes is None
        else hashlib.sha256(json.dumps(records.boxes).encode()).hexdigest()
    )
    return {
        "images": len(records.image_paths),
        "files": files.hexdigest(),
        "boxes": boxes,
        "load_size": load_size,
        "pillow": PIL.__version__,
    }


class ImageCache:
    """The images of one cache file: `cache[i]` is image i, a read-only uint8 [H, W, 3] view of
    the memory map. The map is opened on first use, so a data set holding a cache pickles into
    spawned DataLoader workers by path; forked ones share the parent's pages."""

    def __init__(self, path: Path, offsets: np.ndarray, shapes: np.ndarray):
        self.path, self.offsets, self.shapes = path, offsets, shapes
        self._pixels: Optional[np.ndarray] = None

    def __len__(self) -> int:
        return len(self.offsets)

    @property
    def nbytes(self) -> int:
        return int((self.shapes[:, 0] * self.shapes[:, 1]).sum() * 3)

    def __getitem__(self, index: int) -> np.ndarray:
        if self._pixels is None:
            self._pixels = np.memmap(self.path, dtype=np.uint8, mode="r").view(np.ndarray)
        height, width = (int(side) for side in self.shapes[index])
        start = int(self.offsets[index])
        return self._pixels[start : start + height * width * 3].reshape(height, width, 3)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_pixels": None}


def _read_index(path: Path, fix: str) -> tuple[dict, np.ndarray, np.ndarray]:
    """(header, offsets, shapes) of a cache file; one that is not whole is a DataError."""
    try:
        with open(path, "rb") as file:
            start = file.read(len(MAGIC) + 8)
            size = os.fstat(file.fileno()).st_size
            if len(start) < len(MAGIC) + 8 or not start.startswith(MAGIC):
                raise ValueError("it does not start as one")
            (header_at,) = struct.unpack("<Q", start[len(MAGIC) :])
            file.seek(header_at)
            header = json.loads(file.read())
            if header.get("format") != FORMAT:
                raise ValueError(f"layout {header.get('format')}, not {FORMAT}")
            count, index_at = int(header["images"]), int(header["index"])
            file.seek(index_at)
            offsets = np.frombuffer(file.read(8 * count), "<i8").astype(np.int64)
            shapes = np.frombuffer(file.read(16 * count), "<i8").astype(np.int64).reshape(-1, 2)
    except OSError as error:
        raise unreadable(path, error, "image cache ") from None
    except (ValueError, KeyError, TypeError, struct.error) as error:
        raise DataError(
            f"image cache {path} is damaged or not an attngan image cache "
            f"({type(error).__name__}: {error}); {fix}"
        ) from None
    ends = offsets + shapes[:, 0] * shapes[:, 1] * 3
    if (
        len(offsets) != count
        or len(shapes) != count
        or header_at >= size
        or (
            count
            and (
                offsets[0] != DATA_START or (offsets[1:] != ends[:-1]).any() or ends[-1] != index_at
            )
        )
    ):
        raise DataError(f"image cache {path} is damaged (its index does not match its size); {fix}")
    return header, offsets, shapes


def _differences(header: dict, identity: dict) -> list[str]:
    """What a cache was made from (its header) that differs from `identity`, in IDENTITY's
    words."""
    return [words for name, words in IDENTITY.items() if header.get(name) != identity[name]]


def is_current(path: Path, identity: dict) -> bool:
    """Whether `path` is a whole cache of `identity` (what `prepare` keeps)."""
    try:
        return path.exists() and not _differences(_read_index(path, "")[0], identity)
    except DataError:
        return False


def open_image_cache(
    data_config: DataConfig, split: str, records: SplitRecords, load_size: int
) -> Optional[ImageCache]:
    """The split's cache, None when it has none; a cache of other images or settings is a
    DataError naming what differs and the fix."""
    path = image_cache_path(data_config, split, load_size)
    if not path.exists():
        return None
    fix = rebuild_advice(data_config)
    header, offsets, shapes = _read_index(path, fix)
    differs = _differences(header, cache_identity(records, data_config.root, load_size))
    if differs:
        raise DataError(
            f"the decoded-image cache {path} no longer matches the {split} split of "
            f"{data_config.root}: {'; '.join(differs)} changed since it was "
            f"written; {fix}"
        )
    return ImageCache(path, offsets, shapes)


def write_image_cache(path: Path, identity: dict, images: Iterable[np.ndarray]) -> Path:
    """Write the cache of `identity` (cache_identity) holding `images` (uint8 [H, W, 3], in the
    split's order) atomically; a folder that cannot take it is a DataError."""

    def write(stream) -> None:
        stream.write(MAGIC + bytes(DATA_START - len(MAGIC)))  # header offset filled in last
        offsets, shapes, position = [], [], DATA_START
        for image in images:
            if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
                raise ValueError(
                    f"an image cache holds uint8 [H, W, 3] images, not "
                    f"{image.dtype} {list(image.shape)}"
                )
            offsets.append(position)
            shapes.append(image.shape[:2])
            stream.write(np.ascontiguousarray(image).data)
            position += image.nbytes
        if len(offsets) != identity["images"]:
            raise ValueError(f"{len(offsets)} images for a cache of {identity['images']}")
        stream.write(np.asarray(offsets, "<i8").tobytes())
        stream.write(np.asarray(shapes, "<i8").reshape(-1, 2).tobytes())
        header_at = position + 24 * len(offsets)
        stream.write(json.dumps({"format": FORMAT, **identity, "index": position}).encode())
        stream.seek(len(MAGIC))
        stream.write(struct.pack("<Q", header_at))

    return write_atomically(
        path,
        write,
        fix="make room there (README: sizes), or set data.image_cache to a folder that can take it",
    )
