"""The synthetic shapes generator: layout, captions, held-out pairs, determinism, errors."""

import json
import os
import pickle
import pickletools
import stat
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from attngan.config import DataConfig, SyntheticConfig
from attngan.data import DataError, build_dataset, make_synthetic, tokenize
from attngan.data.synthetic import CAPTIONS_PER_IMAGE, MAX_TOKENS, PALETTE, SHAPES
from attngan.metrics.shapes_checker import parse_caption

CFG = SyntheticConfig(
    num_train=60,
    num_test=30,
    canvas=32,
    max_objects=2,
    colors=("red", "green", "blue", "yellow"),
    held_out=("green triangle", "blue circle"),
    seed=3,
)


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    return make_synthetic(tmp_path_factory.mktemp("synthetic") / "shapes", CFG)


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def _load(path: Path):
    with open(path, "rb") as handle:
        return pickle.load(handle, encoding="latin1")


def test_layout_is_the_cub_one(shapes):
    for split, count in (("train", CFG.num_train), ("test", CFG.num_test)):
        keys = _load(shapes / split / "filenames.pickle")
        classes = _load(shapes / split / "class_info.pickle")
        assert len(keys) == len(classes) == count
        for key in keys:
            assert (shapes / "CUB_200_2011" / "images" / f"{key}.png").is_file()
            assert (shapes / "text" / f"{key}.txt").is_file()
    listing = (shapes / "CUB_200_2011" / "images.txt").read_text().split("\n")[:-1]
    boxes = (shapes / "CUB_200_2011" / "bounding_boxes.txt").read_text().split("\n")[:-1]
    assert len(listing) == len(boxes) == CFG.num_train + CFG.num_test
    assert listing[0].startswith("1 ") and boxes[0] == "1 0.0 0.0 32.0 32.0"
    image = Image.open(shapes / "CUB_200_2011" / "images" / listing[5].split()[1])
    assert image.size == (32, 32) and image.mode == "RGB"
    train, test, ixtoword, wordtoix = _load(shapes / "captions.pickle")
    assert len(train) == CFG.num_train * CAPTIONS_PER_IMAGE and ixtoword[0] == "<end>"


def test_pickles_are_protocol_2(shapes):
    for name in ("train/filenames.pickle", "test/class_info.pickle", "captions.pickle"):
        data = (shapes / name).read_bytes()
        assert data[:2] == b"\x80\x02"
        assert max(op.proto for op, _, _ in pickletools.genops(data)) <= 2


def test_scenes_captions_and_classes_agree(shapes):
    meta = json.loads((shapes / "scenes.json").read_text())
    assert len(meta["images"]) == CFG.num_train + CFG.num_test
    counts = set()
    for key, scene in meta["images"].items():
        objects = scene["objects"]
        counts.add(len(objects))
        assert (
            len({o["color"] for o in objects})
            == len({tuple(o["cell"]) for o in objects})
            == len(objects)
        )
        first = objects[0]
        assert key.split("/")[0].endswith(f"{first['color']}_{first['shape']}")
        for o in objects:
            x, y, w, h = o["box"]
            assert x >= 0 and y >= 0 and x + w <= 32 + 1e-6 and y + h <= 32 + 1e-6
        captions = (shapes / "text" / f"{key}.txt").read_text().splitlines()
        assert captions == scene["captions"] and len(captions) == CAPTIONS_PER_IMAGE
        assert len(set(captions)) >= 5
        truth = sorted((o["color"], o["shape"], o["size"], tuple(o["cell"])) for o in objects)
        for caption in captions:
            assert 1 <= len(tokenize(caption)) <= MAX_TOKENS
            parsed = sorted((s.color, s.shape, s.size, s.position) for s in parse_caption(caption))
            assert parsed == truth, caption
    assert counts == {1, 2}


def test_held_out_pairs_only_in_test(shapes):
    meta = json.loads((shapes / "scenes.json").read_text())
    held = {("green", "triangle"), ("blue", "circle")}
    seen = {"train": set(), "test": set()}
    for scene in meta["images"].values():
        seen[scene["split"]] |= {(o["color"], o["shape"]) for o in scene["objects"]}
    assert not seen["train"] & held
    assert held <= seen["test"]
    allowed = {(c, s) for c in CFG.colors for s in SHAPES} - held
    assert seen["train"] == allowed


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path, shapes):
    again = make_synthetic(tmp_path / "again", CFG)
    assert _files(again) == _files(shapes)
    other = make_synthetic(tmp_path / "other", SyntheticConfig(**{**CFG.__dict__, "seed": 4}))
    assert _files(other)["CUB_200_2011/images.txt"] != _files(shapes)["CUB_200_2011/images.txt"]


def test_regenerating_replaces_an_earlier_set_with_force_and_refuses_other_folders(tmp_path):
    small = SyntheticConfig(num_train=4, num_test=2, canvas=16, seed=1)
    root = make_synthetic(tmp_path / "set", small)
    before = _files(root)
    with pytest.raises(
        DataError,
        match="already holds a synthetic shapes set; runs trained on "
        "it refuse another one, so it is kept: pass --force",
    ):
        make_synthetic(root, SyntheticConfig(num_train=3, num_test=2, canvas=16, seed=2))
    assert _files(root) == before
    make_synthetic(root, SyntheticConfig(num_train=3, num_test=2, canvas=16, seed=2), force=True)
    assert len(_load(root / "train" / "filenames.pickle")) == 3
    assert len(list((root / "CUB_200_2011" / "images").rglob("*.png"))) == 5
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(DataError, match="not a synthetic shapes set"):
        make_synthetic(foreign, small)
    assert (foreign / "notes.txt").read_text() == "keep me"
    (root / "notes.txt").write_text("keep me too")
    (root / "runs").mkdir()
    with pytest.raises(
        DataError, match="also notes.txt, runs, which replacing the set would delete; move them out"
    ):
        make_synthetic(root, small, force=True)
    assert (root / "notes.txt").read_text() == "keep me too" and (root / "runs").is_dir()
    assert len(_load(root / "train" / "filenames.pickle")) == 3


def test_a_set_left_half_written_by_a_killed_run_is_removed(tmp_path):
    (tmp_path / ".set.tmp-999999999-abc123" / "text").mkdir(parents=True)  # a dead pid
    make_synthetic(tmp_path / "set", SyntheticConfig(num_train=3, num_test=2, canvas=16))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["set"]


def test_the_set_has_the_umasks_permissions(tmp_path):
    """Folders and files as mkdir and open would make them (a shared data folder stays
    readable by its group), not the owner-only ones of the temporary folder it is written in."""
    old = os.umask(0o022)
    try:
        root = make_synthetic(
            tmp_path / "set", SyntheticConfig(num_train=3, num_test=2, canvas=16, seed=1)
        )
    finally:
        os.umask(old)
    assert stat.S_IMODE(root.stat().st_mode) == 0o755
    for name in ("captions.pickle", "train/filenames.pickle", "scenes.json"):
        assert stat.S_IMODE((root / name).stat().st_mode) == 0o644, name


@pytest.mark.parametrize(
    "changes, match",
    [
        (dict(colors=("red", "pink")), "colors must be distinct names"),
        (dict(colors=("red", "red")), "colors must be distinct names"),
        (dict(held_out=("red hexagon",)), "held_out entry 'red hexagon'"),
        (dict(held_out=("purple circle",)), "held_out entry 'purple circle'"),
        (dict(max_objects=3), "max_objects must be 1 or 2"),
        (dict(num_test=1), "num_test"),
        (dict(canvas=8), "canvas"),
        (
            dict(colors=("red",), held_out=("red circle", "red square", "red triangle")),
            "removes every",
        ),
    ],
)
def test_bad_configs_raise(tmp_path, changes, match):
    fields = dict(num_train=4, num_test=2, canvas=16, held_out=("red circle", "blue square"))
    with pytest.raises(DataError, match=match):
        make_synthetic(tmp_path / "bad", SyntheticConfig(**{**fields, **changes}))
    assert not (tmp_path / "bad").exists()


def test_the_cub_reader_reads_it(shapes):
    config = DataConfig(
        dataset="shapes",
        root=str(shapes),
        base_size=16,
        branch_num=2,
        bbox_crop=True,
        random_crop=False,
        random_flip=False,
    )
    train = build_dataset(config, "train", augment=False)
    assert len(train) == CFG.num_train and train.captions_per_image == CAPTIONS_PER_IMAGE
    words = set(train.vocab.ixtoword)
    assert set(CFG.colors) | set(SHAPES) <= words and not set(PALETTE) - set(CFG.colors) & words
    item = train[7]
    # The whole-canvas box makes the bird-box crop a no-op: the 32-pixel level is the PNG.
    png = np.asarray(Image.open(train.records.image_paths[7]).convert("RGB"))
    assert np.array_equal(item["images"][1].permute(1, 2, 0).numpy(), png)
    assert train.texts(7)[item["caption_index"]] == train.vocab.decode(item["caption"])
