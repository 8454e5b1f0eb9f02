"""Reader of MS-COCO 2014 with its standard caption annotations (docs/DESIGN.md, "Data").

Layout under ROOT:

    train2014/<file_name>.jpg, val2014/<file_name>.jpg      the images
    annotations/captions_train2014.json, captions_val2014.json
        {"images": [{"id", "file_name"}, ...], "annotations": [{"image_id", "caption"}, ...]}

The "train" split is train2014 and "test" is val2014, as in AttnGAN. An image's captions are
its annotations in annotation-id order (file order when ids are absent); the first
captions_per_image (5) that contain a word are kept. COCO 2014 gives every image at least 5, so
an image with fewer means a damaged or foreign annotation file: that is a DataError naming the
image, not something padded over. COCO has no classes: class_id is the image's index, so
DAMSM's same-class masking masks nothing.

`prepare_captions` (what `attngan prepare` runs for COCO) tokenizes both files once and writes
the original release's metadata: train|test/filenames.pickle (keys = file names without
extension, images sorted by file name) and captions.pickle [train, test, ixtoword, wordtoix]
with the vocabulary of train and val. A filenames.pickle already there (the released one, or a
subset of the user's) is kept: the captions follow its images and order. An existing
captions.pickle (for example the released one) is never rebuilt; with it and the filenames
pickles present the large JSON files are not read at all. Images are looked up in train2014/
or val2014/ by the key's prefix, then in images/ (the original release's folder).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from attngan.data.cub import load_captions
from attngan.data.errors import DataError
from attngan.data.records import (
    SplitRecords,
    check_caption_lists,
    load_split_keys,
    save_pickle,
    split_keys_file,
)
from attngan.data.vocab import Vocabulary, tokenize

SPLITS = {"train": "train2014", "test": "val2014"}


def coco_fix(root: Path) -> str:
    """The fix for missing COCO files."""
    return (
        f"put the COCO 2014 images (train2014/, val2014/) and annotations/"
        f"captions_train2014.json, captions_val2014.json under {root}, or set data.root"
    )


def read_annotations(
    root: Path, split: str, captions_per_image: int
) -> tuple[list[str], list[list[str]]]:
    """(keys sorted by file name, the first captions_per_image raw captions of each)."""
    path = root / "annotations" / f"captions_{SPLITS[split]}.json"
    if not path.is_file():
        raise DataError(f"COCO annotation file {path} is missing; {coco_fix(root)}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        images = {int(image["id"]): str(image["file_name"]) for image in data["images"]}
        notes = sorted(
            enumerate(data["annotations"]), key=lambda item: (item[1].get("id", item[0]), item[0])
        )
        grouped: dict[int, list[str]] = {image_id: [] for image_id in images}
        for _, note in notes:
            image_id = int(note["image_id"])
            if image_id not in grouped:
                raise DataError(
                    f"{path}: annotation {note.get('id')} names image {image_id}, "
                    "which its 'images' list lacks; the file is damaged: "
                    f"{coco_fix(root)}"
                )
            if not isinstance(note["caption"], str):
                raise DataError(
                    f"{path}: annotation {note.get('id')} has the caption "
                    f"{note['caption']!r}, not text; the file is damaged: "
                    f"{coco_fix(root)}"
                )
            if tokenize(note["caption"]):
                grouped[image_id].append(note["caption"])
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        if isinstance(error, DataError):
            raise
        raise DataError(
            f"{path} is not a COCO caption file (images[{{id, file_name}}], "
            f"annotations[{{image_id, caption}}]): {type(error).__name__}: {error}; "
            f"{coco_fix(root)}"
        ) from None
    if not images:
        raise DataError(f"{path} lists no images; the file is damaged: {coco_fix(root)}")
    order = sorted(images, key=lambda image_id: images[image_id])
    short = [images[i] for i in order if len(grouped[i]) < captions_per_image]
    if short:
        raise DataError(
            f"{path}: {len(short)} images have fewer than data.captions_per_image="
            f"{captions_per_image} captions with words (first: {short[0]}); COCO "
            "2014 has 5 per image, so check the file, or lower "
            "data.captions_per_image"
        )
    keys = [images[i].rsplit(".", 1)[0] for i in order]
    return keys, [grouped[i][:captions_per_image] for i in order]


def prepare_captions(
    root: str | Path, captions_per_image: int = 5, *, rebuild: bool = False
) -> Path:
    """Make ROOT/captions.pickle and train|test/filenames.pickle from the annotation files.

    An existing captions.pickle is returned untouched unless `rebuild` (a new vocabulary no
    longer matches encoders trained on the old one).
    """
    root = Path(root)
    target = root / "captions.pickle"
    if target.is_file() and not rebuild:
        return target
    if not root.is_dir():
        raise DataError(f"data folder {root} does not exist; {coco_fix(root)}")
    keys, tokenized = {}, {}
    for split in SPLITS:
        keys[split], texts = read_annotations(root, split, captions_per_image)
        listed = _listed_keys(root, split)
        if listed is not None:  # a split of the user's: its images, its order
            by_key = dict(zip(keys[split], texts))
            absent = [key for key in listed if key not in by_key]
            if absent:
                raise DataError(
                    f"{split_keys_file(root, split)} names {len(absent)} images "
                    f"that captions_{SPLITS[split]}.json lacks (first: {absent[0]}); "
                    "fix the list, or delete it to use every image of the file"
                )
            keys[split], texts = listed, [by_key[key] for key in listed]
        tokenized[split] = [tokenize(text) for image in texts for text in image]
    vocab = Vocabulary.build(tokenized["train"] + tokenized["test"])
    for split in SPLITS:
        if not split_keys_file(root, split).is_file():
            save_pickle(split_keys_file(root, split), keys[split])
    ixtoword, wordtoix = vocab.to_maps()
    save_pickle(
        target,
        [[[vocab.wordtoix[w] for w in tokens] for tokens in tokenized[split]] for split in SPLITS]
        + [ixtoword, wordtoix],
    )
    return target


def _listed_keys(root: Path, split: str) -> Optional[list[str]]:
    """The keys of ROOT/<split>/filenames.pickle, None when there is none."""
    if not split_keys_file(root, split).is_file():
        return None
    return load_split_keys(root, split, f"delete it and run `attngan prepare {root}`")


def _image_path(root: Path, key: str, split: str) -> Path:
    """The first of train2014|val2014 (by the key's prefix), images/ that holds the file;
    the split's own folder when none does, so a missing-image error names that path."""
    folder = next((f for f in SPLITS.values() if f in key), SPLITS[split])
    candidates = [root / folder / f"{key}.jpg", root / "images" / f"{key}.jpg"]
    return next((path for path in candidates if path.is_file()), candidates[0])


def read_coco(root: str | Path, split: str, *, captions_per_image: int = 5) -> SplitRecords:
    """One split of COCO; prepares the metadata first when captions.pickle is absent."""
    root = Path(root)
    fix = coco_fix(root)
    if split not in SPLITS:
        raise DataError(f"split must be 'train' or 'test', got {split!r}")
    if not root.is_dir():
        raise DataError(f"data folder {root} does not exist; {fix}")
    prepare_captions(root, captions_per_image)
    keys = _listed_keys(root, split)
    if keys is None:
        keys = read_annotations(root, split, captions_per_image)[0]
    train, test, vocab = load_captions(root)
    captions = check_caption_lists(
        train if split == "train" else test,
        len(keys),
        captions_per_image,
        vocab,
        f"{root / 'captions.pickle'} ({split} part)",
        f"the file does not belong to these images: delete it and run `attngan prepare {root}`",
    )
    return SplitRecords(
        keys=keys,
        class_ids=list(range(len(keys))),
        image_paths=[_image_path(root, key, split) for key in keys],
        captions=captions,
        vocab=vocab,
        captions_per_image=captions_per_image,
        fix=fix,
        texts=AnnotationTexts(root, split, keys, captions, captions_per_image, vocab),
    )


class AnnotationTexts:
    """texts(index): the raw captions of image `index` from the annotation JSON, read on the
    first call (80 MB for train: only when someone asks); when the JSON is gone or does not
    list the image, the decoded word ids stand in. A class, not a closure, so a data set still
    pickles into DataLoader worker processes."""

    def __init__(
        self,
        root: Path,
        split: str,
        keys: list[str],
        captions: list[list[int]],
        captions_per_image: int,
        vocab: Vocabulary,
    ):
        self.root, self.split, self.keys, self.captions = root, split, keys, captions
        self.captions_per_image, self.vocab = captions_per_image, vocab
        self.raw: Optional[dict[str, list[str]]] = None

    def __call__(self, index: int) -> list[str]:
        if self.raw is None:
            try:
                self.raw = dict(
                    zip(*read_annotations(self.root, self.split, self.captions_per_image))
                )
            except DataError:
                self.raw = {}
        if self.keys[index] in self.raw:
            return list(self.raw[self.keys[index]])
        base = index * self.captions_per_image
        return [self.vocab.decode(c) for c in self.captions[base : base + self.captions_per_image]]
