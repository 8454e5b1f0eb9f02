"""What a reader hands the dataset, and the pickle files of the AttnGAN metadata.

Both readers (CUB layout in `cub.py`, COCO in `coco.py`) return a `SplitRecords`: per image its
key, class id, image path and optional box, plus the flat caption list (captions_per_image per
image, in image order) as word ids of one `Vocabulary`. The dataset turns that into tensors.

The metadata pickles of the original release were written by Python 2, so they are read with
`encoding="latin1"` (a Python-2 `str` becomes a Python-3 `str` byte for byte); the ones this
project writes use protocol 2 so Python 2 can read them back.
"""

from __future__ import annotations

import hashlib
import json
import operator
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from attngan.data.errors import DataError, unreadable
from attngan.data.vocab import Vocabulary
from attngan.files import write_atomically


@dataclass
class SplitRecords:
    """One split of a data set, before any image is read.

    keys, class_ids, image_paths, boxes: one entry per image (boxes None when not cropping;
    a box is (x, y, w, h) in pixels). captions: captions_per_image word-id lists per image, in
    image order. texts: raw caption strings of image i, when the reader keeps them. fix: what to
    tell the user when an image file is missing.
    """

    keys: list[str]
    class_ids: list[int]
    image_paths: list[Path]
    captions: list[list[int]]
    vocab: Vocabulary
    captions_per_image: int
    fix: str
    boxes: Optional[list[tuple[float, float, float, float]]] = None
    texts: Optional[Callable[[int], list[str]]] = field(default=None, repr=False)

    def fingerprint(self) -> dict:
        """What identifies this split's data, cheaply: its image count and a hash of every
        image's key, class and box and of every caption's word ids. The same after the data set
        is moved; another after images, captions or splits change."""
        content = json.dumps(
            [self.keys, self.class_ids, self.boxes, self.captions], separators=(",", ":")
        )
        return {
            "images": len(self.keys),
            "sha256": hashlib.sha256(content.encode("utf-8")).hexdigest(),
        }


def load_pickle(path: Path, fix: str) -> Any:
    """Unpickle `path` (Python 2 pickles included); a missing or damaged file is a DataError."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path} is missing; {fix}")
    try:
        with open(path, "rb") as handle:
            return pickle.load(handle, encoding="latin1")
    except OSError as error:
        raise unreadable(path, error) from None
    except Exception as error:  # pickle raises many types on damaged input
        raise DataError(
            f"{path} cannot be read ({type(error).__name__}: {error}); the file is damaged: {fix}"
        ) from None


def save_pickle(path: Path, value: Any) -> None:
    """Write a protocol-2 pickle atomically (attngan.files.write_atomically); a folder that
    cannot be written is an OutputError naming it."""
    write_atomically(
        path,
        lambda stream: pickle.dump(value, stream, protocol=2),
        fix="copy the data set to a folder that can be written and has room and "
        "set data.root to it",
    )


def split_keys_file(root: Path, split: str) -> Path:
    """ROOT/<split>/filenames.pickle: the image keys of a split, in the original's layout."""
    return Path(root) / split / "filenames.pickle"


def load_split_keys(root: Path, split: str, fix: str) -> list[str]:
    """The image keys of ROOT/<split>/filenames.pickle (Python 2 byte strings decoded as
    Latin-1); a file that is not a non-empty list of keys is a DataError."""
    path = split_keys_file(root, split)
    keys = load_pickle(path, fix)
    if not isinstance(keys, (list, tuple)) or not all(isinstance(k, (str, bytes)) for k in keys):
        raise DataError(f"{path} is not a list of image keys; {fix}")
    if not keys:
        raise DataError(f"{path} is empty: the {split} split has no images; {fix}")
    return [k.decode("latin1") if isinstance(k, bytes) else k for k in keys]


def check_caption_lists(
    captions: Any, num_images: int, captions_per_image: int, vocab: Vocabulary, where: str, fix: str
) -> list[list[int]]:
    """Validate one split's caption lists of a captions.pickle against its images and words."""
    if not isinstance(captions, list):
        raise DataError(f"{where} is a {type(captions).__name__}, not a list of captions; {fix}")
    expected = num_images * captions_per_image
    if len(captions) != expected:
        raise DataError(
            f"{where} has {len(captions)} captions but the split has {num_images} images x "
            f"data.captions_per_image={captions_per_image} = {expected}; set "
            "data.captions_per_image to the data's count (10 for CUB and shapes, 5 for COCO), "
            f"or {fix}"
        )
    size = len(vocab)
    result = []
    for index, caption in enumerate(captions):
        try:
            ids = [operator.index(word) for word in caption]  # ints, not 1.7 or "red"
        except TypeError:
            raise DataError(
                f"{where}: caption {index} (image {index // captions_per_image}) is "
                f"{caption!r:.60}, not a list of word ids; {fix}"
            ) from None
        if not ids:
            raise DataError(
                f"{where}: caption {index} (image {index // captions_per_image}) is empty; {fix}"
            )
        if min(ids) < 1 or max(ids) >= size:
            raise DataError(
                f"{where}: caption {index} uses word ids outside 1..{size - 1} of "
                f"its vocabulary; {fix}"
            )
        result.append(ids)
    return result
