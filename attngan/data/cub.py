"""Reader of the CUB-200-2011 layout used by AttnGAN (birds, and the synthetic shapes set).

Layout under ROOT (docs/DESIGN.md; the original release's `birds.zip` metadata plus the images):

    CUB_200_2011/images/<class>/<name>.jpg      the images (any extension images.txt names)
    CUB_200_2011/images.txt                     "<id> <class>/<name>.jpg" per image
    CUB_200_2011/bounding_boxes.txt             "<id> <x> <y> <w> <h>" per image (bird box)
    text/<class>/<name>.txt                     the captions, one a line
    train|test/filenames.pickle                 keys "<class>/<name>" of the split, in order
    train|test/class_info.pickle                class id per key
    captions.pickle                             [train captions, test captions, ixtoword,
                                                 wordtoix], captions as word-id lists

`captions.pickle` is made from text/ by `prepare_captions` (what `attngan prepare` runs) only
when it is absent: released DAMSM encoders need the released vocabulary, so an existing file is
never rebuilt. Each image keeps the first captions_per_image lines that have a word; lines with
no word (blank lines) are skipped, as the original does. Text files are read as UTF-8 with bad
bytes replaced (CUB's stray bytes become the U+FFFD pair the tokenizer treats as a space; a
UTF-16 file is refused, not read as one word per letter);
images.txt and bounding_boxes.txt as Latin-1, like the pickles, so keys match byte for byte.

Birds are cropped around their box (a side of 1.5 max(w, h) centred on the box, clipped to the
image); `crop_window` computes that window, the dataset applies it.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from attngan.data.errors import DataError, unreadable
from attngan.data.records import (
    SplitRecords,
    check_caption_lists,
    load_pickle,
    load_split_keys,
    save_pickle,
)
from attngan.data.vocab import Vocabulary, decode_utf8, tokenize

SPLITS = ("train", "test")


def cub_fix(root: Path) -> str:
    """The fix for missing CUB files: where the images and the AttnGAN metadata go."""
    return (
        f"put CUB-200-2011 (folder CUB_200_2011) and the AttnGAN birds metadata (text/, "
        f"train/, test/) under {root}, or set data.root to where they are"
    )


def decode_text(raw: bytes, path: Path) -> str:
    """A caption file's text: UTF-8, with a byte that is not UTF-8 read as Latin-1 (`decode_utf8`; a
    UTF-8 byte-order mark is dropped). UTF-16 or UTF-32 (what some editors save as "Unicode")
    is refused: decoded as UTF-8 its every letter would become a word of its own."""
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")) or b"\x00" in raw:
        raise DataError(
            f"caption file {path} is not UTF-8 text (it holds NUL bytes: UTF-16 or "
            "UTF-32, as some editors save 'Unicode'); save it as UTF-8"
        )
    return decode_utf8(raw).removeprefix("\ufeff")


def read_caption_file(path: Path, captions_per_image: int, fix: str) -> list[str]:
    """The first `captions_per_image` lines of a text file that contain a word; lines end at
    line feeds only, as the original splits them (a stray carriage return or a Unicode line
    separator inside a caption does not cut it in two)."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"caption file {path} is missing; {fix}") from None
    except OSError as error:
        raise DataError(f"caption file {path} cannot be read ({error}); {fix}") from None
    lines = [line for line in decode_text(raw, path).split("\n") if tokenize(line)]
    if len(lines) < captions_per_image:
        raise DataError(
            f"caption file {path} has {len(lines)} captions with words (of ASCII "
            f"letters and digits: other characters are dropped), fewer than "
            f"data.captions_per_image={captions_per_image}; add captions to it or "
            "lower data.captions_per_image"
        )
    return lines[:captions_per_image]


def _class_ids(root: Path, split: str, count: int, fix: str) -> list[int]:
    """The class id of each key, from train|test/class_info.pickle (a list or an array)."""
    path = root / split / "class_info.pickle"
    stored = load_pickle(path, fix)
    values = stored.tolist() if hasattr(stored, "tolist") else stored
    if not isinstance(values, (list, tuple)) or len(values) != count:
        found = (
            f"{len(values)} entries"
            if isinstance(values, (list, tuple))
            else f"a {type(stored).__name__}"
        )
        raise DataError(
            f"{path} must hold one class id per key of filenames.pickle ({count}), "
            f"not {found}; {fix}"
        )
    ids = []
    for index, value in enumerate(values):
        try:
            ids.append(operator.index(value))  # ints and NumPy integers, not 1.5 or "2"
        except TypeError:
            raise DataError(
                f"{path}: entry {index} is {value!r}, not an integer class id; {fix}"
            ) from None
    return ids


def prepare_captions(
    root: str | Path,
    captions_per_image: int = 10,
    *,
    rebuild: bool = False,
    fix: Optional[str] = None,
) -> Path:
    """Make ROOT/captions.pickle from the text files of both splits; return its path.

    The vocabulary is every word of the train and test captions, sorted, after `<end>`. An
    existing file is kept (returned untouched) unless `rebuild` is true: a rebuilt vocabulary
    no longer matches encoders trained on the old one.
    """
    root = Path(root)
    fix = fix or cub_fix(root)
    target = root / "captions.pickle"
    if target.is_file() and not rebuild:
        return target
    if not root.is_dir():
        raise DataError(f"data folder {root} does not exist; {fix}")
    tokenized = {}
    for split in SPLITS:
        tokenized[split] = [
            tokenize(line)
            for key in load_split_keys(root, split, fix)
            for line in read_caption_file(root / "text" / f"{key}.txt", captions_per_image, fix)
        ]
    vocab = Vocabulary.build(tokenized["train"] + tokenized["test"])
    ixtoword, wordtoix = vocab.to_maps()
    save_pickle(
        target,
        [[[vocab.wordtoix[w] for w in tokens] for tokens in tokenized[split]] for split in SPLITS]
        + [ixtoword, wordtoix],
    )
    return target


def load_captions(root: str | Path) -> tuple[list, list, Vocabulary]:
    """(train captions, test captions, vocabulary) of ROOT/captions.pickle as stored."""
    path = Path(root) / "captions.pickle"
    stored = load_pickle(path, f"run `attngan prepare {root}`")
    if not isinstance(stored, (list, tuple)) or len(stored) != 4:
        raise DataError(
            f"{path} is not [train captions, test captions, ixtoword, wordtoix]; "
            f"delete it and run `attngan prepare {root}` (this makes a new "
            "vocabulary: released encoders will not match it)"
        )
    train, test, ixtoword, wordtoix = stored
    return train, test, Vocabulary.from_maps(ixtoword, wordtoix, source=str(path))


def _image_list(root: Path) -> dict[str, tuple[int, str]]:
    """key -> (image id, relative path) from CUB_200_2011/images.txt, {} when absent."""
    listing = root / "CUB_200_2011" / "images.txt"
    if not listing.is_file():
        return {}
    entries, ids = {}, set()
    # Latin-1 like the pickles, so a key and its images.txt entry match byte for byte.
    for number, line in enumerate(_read_listing(listing), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2 or not parts[0].isdigit():
            raise DataError(
                f"{listing} line {number} is {line!r}, not '<id> <class>/<name>.jpg'; "
                f"the file is damaged: {cub_fix(root)}"
            )
        image_id, key = int(parts[0]), parts[1].rsplit(".", 1)[0]
        if image_id in ids or key in entries:
            twice = f"image id {image_id}" if image_id in ids else f"image {key}"
            raise DataError(
                f"{listing} line {number}: {twice} is listed twice; the file is "
                f"damaged: {cub_fix(root)}"
            )
        ids.add(image_id)
        entries[key] = (image_id, parts[1])
    return entries


def _read_listing(path: Path) -> list[str]:
    """The lines of images.txt or bounding_boxes.txt (Latin-1, like the pickles, so keys match
    byte for byte); a file that cannot be read is a DataError."""
    try:
        return path.read_text(encoding="latin1").splitlines()
    except OSError as error:
        raise unreadable(path, error) from None


def _boxes(
    root: Path, images: dict[str, tuple[int, str]], fix: str
) -> dict[int, tuple[float, float, float, float]]:
    """image id -> (x, y, w, h) from CUB_200_2011/bounding_boxes.txt."""
    path = root / "CUB_200_2011" / "bounding_boxes.txt"
    if not path.is_file() or not images:
        missing = path if not path.is_file() else root / "CUB_200_2011" / "images.txt"
        raise DataError(
            f"{missing} is missing and data.bbox_crop is true; {fix}, or set data.bbox_crop=false"
        )
    boxes = {}
    for number, line in enumerate(_read_listing(path), 1):
        parts = line.split()
        if not parts:
            continue
        try:
            image_id, x, y, w, h = int(parts[0]), *map(float, parts[1:])
        except ValueError:
            image_id = None
        if (
            image_id is None
            or len(parts) != 5
            or not all(map(math.isfinite, (x, y, w, h)))
            or w < 1
            or h < 1
        ):
            raise DataError(
                f"{path} line {number} is {line!r}, not '<id> <x> <y> <w> <h>' with "
                f"finite numbers and a size of at least 1 pixel (the crop reads "
                f"them as integers); the file is damaged: {fix}"
            )
        if image_id in boxes:
            raise DataError(
                f"{path} line {number}: image id {image_id} has a second box; the "
                f"file is damaged: {fix}"
            )
        boxes[image_id] = (x, y, w, h)
    return boxes


def crop_window(
    width: int, height: int, box: tuple[float, float, float, float]
) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of the square of side 1.5 max(w, h) centred on the box,
    clipped to the image (docs/DESIGN.md), in the original's integer arithmetic: it reads the
    box as integers (truncated) and truncates the half side and the centre."""
    x, y, w, h = (int(value) for value in box)
    half = int(max(w, h) * 0.75)
    centre_x, centre_y = int(x + w / 2), int(y + h / 2)
    left, top = max(0, centre_x - half), max(0, centre_y - half)
    right, bottom = min(width, centre_x + half), min(height, centre_y + half)
    if right <= left or bottom <= top:
        raise DataError(
            f"box {box} lies outside its {width}x{height} image; fix "
            "bounding_boxes.txt or set data.bbox_crop=false"
        )
    return left, top, right, bottom


def read_cub(
    root: str | Path,
    split: str,
    *,
    captions_per_image: int = 10,
    bbox_crop: bool = True,
    fix: Optional[str] = None,
) -> SplitRecords:
    """One split of a CUB-layout folder; makes captions.pickle first when it is absent."""
    root = Path(root)
    fix = fix or cub_fix(root)
    if split not in SPLITS:
        raise DataError(f"split must be 'train' or 'test', got {split!r}")
    if not root.is_dir():
        raise DataError(f"data folder {root} does not exist; {fix}")
    keys = load_split_keys(root, split, fix)
    class_ids = _class_ids(root, split, len(keys), fix)
    prepare_captions(root, captions_per_image, fix=fix)
    train, test, vocab = load_captions(root)
    where = f"{root / 'captions.pickle'} ({split} part)"
    remedy = f"the file does not belong to these images: delete it and run `attngan prepare {root}`"
    captions = check_caption_lists(
        train if split == "train" else test, len(keys), captions_per_image, vocab, where, remedy
    )
    images = _image_list(root)
    folder = root / "CUB_200_2011" / "images"
    unlisted = [key for key in keys if key not in images]
    if images and unlisted:
        raise DataError(
            f"{root / 'CUB_200_2011' / 'images.txt'} lists no image for "
            f"{len(unlisted)} keys of {split}/filenames.pickle (first: "
            f"{unlisted[0]}); the file is damaged: {fix}"
        )
    # Without images.txt the images are <key>.jpg, as the original reads them.
    paths = [folder / images[key][1] if images else folder / f"{key}.jpg" for key in keys]
    boxes = None
    if bbox_crop:
        by_id = _boxes(root, images, fix)
        boxes = []
        for key in keys:
            if key not in images or images[key][0] not in by_id:
                raise DataError(
                    f"image {key} has no box in {root / 'CUB_200_2011'} (images.txt "
                    f"and bounding_boxes.txt); {fix}, or set data.bbox_crop=false"
                )
            boxes.append(by_id[images[key][0]])
    return SplitRecords(
        keys=keys,
        class_ids=class_ids,
        image_paths=paths,
        captions=captions,
        vocab=vocab,
        captions_per_image=captions_per_image,
        fix=fix,
        boxes=boxes,
        texts=CaptionTexts(root, keys, captions_per_image, fix),
    )


@dataclass(frozen=True)
class CaptionTexts:
    """texts(index): the raw captions of image `index`, read from its text file on demand
    (a class, not a closure, so a data set still pickles into DataLoader worker processes)."""

    root: Path
    keys: list[str]
    captions_per_image: int
    fix: str

    def __call__(self, index: int) -> list[str]:
        return read_caption_file(
            self.root / "text" / f"{self.keys[index]}.txt", self.captions_per_image, self.fix
        )
