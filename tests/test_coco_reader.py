"""COCO 2014 reader on a tiny COCO built here from the standard caption annotation format."""

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from attngan.config import DataConfig
from attngan.data import DataError, build_dataset, collate, prepare, tokenize

TRAIN = {
    9: [
        "a dog runs on grass",
        "the dog is brown",
        "grass and a dog",
        "a running dog",
        "dog on a field",
        "a sixth caption that is dropped",
    ],
    25: ["two cats sleep", "cats on a sofa", "a sofa with cats", "sleeping cats", "cats resting"],
    3: ["a red bus", "the bus is red", "bus on a street", "a city bus", "red bus stop"],
}
VAL = {
    42: [
        "a pizza on a plate",
        "the pizza is hot",
        "pizza slice",
        "a plate of pizza",
        "cheesy zebra pizza",
    ],
    7: [
        "a kite in the sky",
        "kite flying",
        "the sky and a kite",
        "a blue kite",
        "kite over the beach",
    ],
}


def file_name(split: str, image_id: int) -> str:
    return f"COCO_{split}2014_{image_id:012d}.jpg"


def write_split(root: Path, split: str, captions: dict[int, list[str]]) -> None:
    folder = root / f"{split}2014"
    folder.mkdir(parents=True, exist_ok=True)
    images, notes, note_id = [], [], 1000
    for image_id, texts in captions.items():
        name = file_name(split, image_id)
        Image.fromarray(np.full((30 + image_id % 7, 40, 3), image_id * 5 % 255, np.uint8)).save(
            folder / name
        )
        images.append({"id": image_id, "file_name": name, "width": 40, "height": 30})
        for text in texts:
            notes.append({"id": note_id, "image_id": image_id, "caption": text})
            note_id += 1
    notes.reverse()  # the file's order is not the annotation-id order
    (root / "annotations").mkdir(exist_ok=True)
    (root / "annotations" / f"captions_{split}2014.json").write_text(
        json.dumps({"info": {}, "images": images, "annotations": notes})
    )


@pytest.fixture
def coco(tmp_path) -> Path:
    root = tmp_path / "coco"
    write_split(root, "train", TRAIN)
    write_split(root, "val", VAL)
    return root


def config(root: Path, **changes) -> DataConfig:
    values = dict(
        dataset="coco",
        root=str(root),
        words_num=4,
        captions_per_image=5,
        base_size=16,
        branch_num=1,
        bbox_crop=False,
    )
    return DataConfig(**{**values, **changes})


def test_reads_both_splits_with_a_shared_vocabulary(coco):
    train = build_dataset(config(coco), "train", augment=False)
    test = build_dataset(config(coco), "test", augment=False)
    assert train.keys == [file_name("train", i)[:-4] for i in sorted(TRAIN)]
    assert test.keys == [file_name("val", i)[:-4] for i in sorted(VAL)]
    assert train.class_ids == [0, 1, 2] and test.class_ids == [0, 1]  # nothing is masked
    assert train.vocab is not None and train.vocab == test.vocab
    assert "zebra" in train.vocab and "sixth" not in train.vocab
    assert len(train.captions) == 15 and len(test.captions) == 10
    decoded = [" ".join(train.vocab.ixtoword[i] for i in c) for c in train.captions[:5]]
    assert decoded == [" ".join(tokenize(t)) for t in TRAIN[3]]  # image 3 sorts first
    assert train.texts(1) == TRAIN[9][:5]
    assert pickle.loads(pickle.dumps(train)).texts(2) == TRAIN[25][:5]  # workers can spawn


def test_items_and_batches(coco):
    data = build_dataset(config(coco, branch_num=2), "train", augment=True)
    batch = collate([data[i] for i in range(3)])
    assert [tuple(x.shape) for x in batch["images"]] == [(3, 3, 16, 16), (3, 3, 32, 32)]
    assert batch["captions"].shape == (3, 4) and batch["class_ids"].tolist() == [0, 1, 2]
    assert all(x.dtype == torch.uint8 for x in batch["images"])


def test_metadata_is_cached_and_the_json_not_needed_again(coco):
    path = prepare(coco)
    assert path == coco / "captions.pickle"
    train, test, ixtoword, wordtoix = pickle.loads(path.read_bytes())
    assert len(train) == 15 and len(test) == 10 and ixtoword[0] == "<end>"
    keys = pickle.loads((coco / "train" / "filenames.pickle").read_bytes())
    assert keys[0] == "COCO_train2014_000000000003"
    before = path.read_bytes()
    for name in ("captions_train2014.json", "captions_val2014.json"):
        (coco / "annotations" / name).unlink()
    data = build_dataset(config(coco), "test", augment=False)
    assert path.read_bytes() == before and len(data) == 2
    # Without the JSON the raw text is gone; decoded word ids stand in for it.
    assert data.texts(1)[0] == "a pizza on a plate"


def test_released_layout_images_folder(coco):
    prepare(coco)
    images = coco / "images"
    (coco / "val2014").rename(images)
    data = build_dataset(config(coco), "test", augment=False)
    assert data[1]["images"][0].shape == (3, 16, 16)


def test_too_few_captions(coco):
    write_split(coco, "val", {**VAL, 8: ["one", "two", "?!"]})
    with pytest.raises(DataError, match=r"1 images have fewer than .*5.*000000000008"):
        build_dataset(config(coco), "train", augment=False)
    assert not (coco / "captions.pickle").exists()


def test_missing_annotation_file(coco):
    (coco / "annotations" / "captions_val2014.json").unlink()
    with pytest.raises(DataError, match=r"captions_val2014\.json is missing.*train2014"):
        prepare(coco)


def test_damaged_annotation_file(coco):
    (coco / "annotations" / "captions_train2014.json").write_text('{"images": [{"id": 1}]}')
    with pytest.raises(DataError, match="is not a COCO caption file"):
        prepare(coco)


@pytest.mark.parametrize(
    "damage, match",
    [
        (
            lambda data: data["annotations"][0].update(caption=None),
            r"annotation 1015 has the caption None, not text",
        ),
        (
            lambda data: data["annotations"][0].update(caption=5),
            r"annotation 1015 has the caption 5, not text",
        ),
        (lambda data: data["annotations"].insert(0, "oops"), "is not a COCO caption file"),
        (lambda data: data.update(images=[], annotations=[]), "lists no images"),
    ],
)
def test_damaged_annotations(coco, damage, match):
    path = coco / "annotations" / "captions_train2014.json"
    data = json.loads(path.read_text())
    damage(data)
    path.write_text(json.dumps(data))
    with pytest.raises(DataError, match=match):
        prepare(coco)
    assert not (coco / "captions.pickle").exists()


def test_a_filenames_pickle_of_the_users_is_kept(coco):
    """Its images, in its order, are the split: prepare builds the captions for them and never
    replaces the list with every image of the annotation file."""
    keys = [file_name("train", 25)[:-4], file_name("train", 9)[:-4]]
    (coco / "train").mkdir()
    with open(coco / "train" / "filenames.pickle", "wb") as file:
        pickle.dump(keys, file, protocol=2)
    before = (coco / "train" / "filenames.pickle").read_bytes()
    prepare(coco)
    assert (coco / "train" / "filenames.pickle").read_bytes() == before
    data = build_dataset(config(coco), "train", augment=False)
    assert data.keys == keys
    assert data.texts(0)[0] == "two cats sleep" and data.texts(1)[0] == "a dog runs on grass"
    assert data.vocab.decode(data.caption(0)[0][:2].tolist()) == "two cats"
    with open(coco / "train" / "filenames.pickle", "wb") as file:
        pickle.dump(keys + ["COCO_train2014_000000000077"], file, protocol=2)
    (coco / "captions.pickle").unlink()
    with pytest.raises(
        DataError,
        match="names 1 images that captions_train2014.json lacks "
        r"\(first: COCO_train2014_000000000077\)",
    ):
        prepare(coco)


def test_missing_image(coco):
    path = coco / "train2014" / file_name("train", 25)
    path.unlink()
    data = build_dataset(config(coco), "train", augment=False)
    with pytest.raises(DataError, match=f"image {path} is missing"):
        data[2]


def test_missing_root(tmp_path):
    with pytest.raises(DataError, match="does not exist.*annotations"):
        build_dataset(config(tmp_path / "nothing"), "train", augment=False)
