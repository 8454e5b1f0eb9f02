"""The decoded-image cache (attngan/data/image_cache.py, `attngan prepare --image-cache`): the
same pixels and items as decoding, for CUB (box crops) and COCO; refused, never used, when its
images or settings changed; rebuilt by `prepare`; written whole or not at all."""

import os
import pickle

import numpy as np
import PIL
import pytest
import torch
from PIL import Image
from test_coco_reader import TRAIN, VAL, write_split
from test_coco_reader import config as coco_config
from test_cub_reader import IMAGES, make_cub
from test_cub_reader import config as cub_config

from attngan.cli import main as cli_main
from attngan.data import DataError, build_dataset
from attngan.data.dataset import TextImageDataset, read_split
from attngan.data.image_cache import image_cache_path
from attngan.data.loader import prepare_image_cache
from attngan.files import OutputError


def noisy_images(folder, sizes: dict) -> None:
    """Overwrite the named images with noise of their sizes (every resize tap counts)."""
    rng = np.random.default_rng(1)
    for name, (width, height) in sizes.items():
        Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(
            folder / name, quality=90
        )


@pytest.fixture
def cub(tmp_path):
    root = make_cub(tmp_path / "birds")
    noisy_images(
        root / "CUB_200_2011" / "images", {f"{key}.jpg": size for key, _, _, size, _ in IMAGES}
    )
    return root


@pytest.fixture
def coco(tmp_path):
    root = tmp_path / "coco"
    write_split(root, "train", TRAIN)
    write_split(root, "val", VAL)
    rng = np.random.default_rng(2)
    for folder in ("train2014", "val2014"):  # other sizes and orientations than 4:3
        for path in (root / folder).iterdir():
            size = rng.integers(30, 70, 2)
            Image.fromarray(rng.integers(0, 256, (size[0], size[1], 3), dtype=np.uint8)).save(path)
    return root


def assert_same_items(cached: TextImageDataset, decoded: TextImageDataset) -> None:
    assert cached.image_cache is not None and decoded.image_cache is None
    for index in range(len(decoded)):
        assert np.array_equal(cached.loaded(index), decoded.decode(index))
        for key in ((7, 0, index), (7, 3, index), index):
            torch.manual_seed(index)  # a plain index draws from the global RNG
            a = cached[key]
            torch.manual_seed(index)
            b = decoded[key]
            assert a["caption_index"] == b["caption_index"]
            assert all(torch.equal(x, y) for x, y in zip(a["images"], b["images"], strict=True))


@pytest.mark.parametrize("dataset", ["cub", "coco"])
def test_the_cache_gives_the_decoded_pixels(dataset, cub, coco):
    data_config = (
        cub_config(cub, branch_num=2)
        if dataset == "cub"
        else coco_config(coco, branch_num=2, random_flip=True)
    )
    for split in ("train", "test"):
        path, written = prepare_image_cache(data_config, split, progress=False)
        assert written and path == image_cache_path(data_config, split, 38)
        assert path.name == f"{split}-38px{'-box' if dataset == 'cub' else ''}.cache"
        for augment in (True, False):
            cached = build_dataset(data_config, split, augment=augment)
            decoded = TextImageDataset(read_split(data_config, split), data_config, augment=augment)
            assert_same_items(cached, decoded)
    assert cached.image_cache.nbytes == sum(decoded.decode(i).nbytes for i in range(len(decoded)))
    before = path.stat().st_mtime_ns
    assert prepare_image_cache(data_config, "test", progress=False) == (path, False)
    assert path.stat().st_mtime_ns == before  # a current cache is kept
    # another load size has a cache of its own (none yet): decoded, nothing refused
    assert (
        build_dataset(
            cub_config(cub, branch_num=1) if dataset == "cub" else coco_config(coco, branch_num=1),
            "train",
            augment=True,
        ).image_cache
        is None
    )


def test_a_cache_pickles_into_workers_by_path(cub):
    data_config = cub_config(cub)
    prepare_image_cache(data_config, "train", progress=False)
    data = build_dataset(data_config, "train", augment=True)
    expected = data.loaded(1).copy()  # the memory map is open now
    clone = pickle.loads(pickle.dumps(data))
    assert len(pickle.dumps(data.image_cache)) < 1000 < data.image_cache.nbytes
    assert np.array_equal(clone.loaded(1), expected)
    # a worker process started afresh (spawn: the default start method of Python 3.14 is
    # forkserver) opens the map from the path
    loader = torch.utils.data.DataLoader(
        data, batch_size=None, num_workers=1, multiprocessing_context="spawn", sampler=[(0, 0, 0)]
    )
    item = next(iter(loader))
    assert all(torch.equal(x, y) for x, y in zip(item["images"], data[(0, 0, 0)]["images"]))


@pytest.mark.parametrize(
    "change, words",
    [("image", "the image files"), ("box", "the boxes"), ("pillow", "Pillow's version")],
)
def test_a_cache_of_other_images_or_settings_is_refused_then_rebuilt(
    cub, change, words, monkeypatch
):
    data_config = cub_config(cub)
    path, _ = prepare_image_cache(data_config, "train", progress=False)
    if change == "image":  # same name, new pixels and modification time
        image = cub / "CUB_200_2011" / "images" / f"{IMAGES[1][0]}.jpg"
        noisy_images(image.parent, {image.name: (50, 52)})
        os.utime(image, ns=(1, 1))
    elif change == "box":
        boxes = cub / "CUB_200_2011" / "bounding_boxes.txt"
        boxes.write_text(boxes.read_text().replace("1 10.0 8.0 20.0 16.0", "1 11.0 8.0 20.0 16.0"))
    else:
        monkeypatch.setattr(PIL, "__version__", "0.0.1")
    with pytest.raises(
        DataError,
        match=f"the decoded-image cache {path} no longer matches the "
        f"train split of {cub}: {words}.* changed since it was "
        f"written; rebuild it with `attngan prepare {cub} "
        "--image-cache",
    ):
        build_dataset(data_config, "train", augment=True)
    assert prepare_image_cache(data_config, "train", progress=False) == (path, True)
    assert_same_items(
        build_dataset(data_config, "train", augment=False),
        TextImageDataset(read_split(data_config, "train"), data_config, augment=False),
    )


@pytest.mark.parametrize("damage", ["truncate", "foreign", "empty"])
def test_a_damaged_cache_is_refused_then_rebuilt(cub, damage):
    data_config = cub_config(cub)
    path, _ = prepare_image_cache(data_config, "train", progress=False)
    content = path.read_bytes()
    path.write_bytes(
        {"truncate": content[:-100], "foreign": b"GIF89a" + content[6:], "empty": b""}[damage]
    )
    with pytest.raises(DataError, match=f"image cache {path} is damaged.*rebuild it"):
        build_dataset(data_config, "train", augment=False)
    assert prepare_image_cache(data_config, "train", progress=False) == (path, True)
    assert build_dataset(data_config, "train", augment=False).image_cache is not None


def test_a_cache_elsewhere_and_a_folder_that_cannot_take_it(cub, tmp_path):
    elsewhere = cub_config(cub, image_cache=str(tmp_path / "scratch" / "caches"))
    path, _ = prepare_image_cache(elsewhere, "test", progress=False)
    assert path.parent == tmp_path / "scratch" / "caches"
    assert build_dataset(elsewhere, "test", augment=False).image_cache.path == path
    assert build_dataset(cub_config(cub), "test", augment=False).image_cache is None
    (tmp_path / "a_file").write_text("")
    with pytest.raises(
        OutputError,
        match="cannot write .*test-38px-box.cache .*set "
        "data.image_cache to a folder that can take it",
    ):
        prepare_image_cache(
            cub_config(cub, image_cache=str(tmp_path / "a_file")), "test", progress=False
        )


def test_a_missing_image_is_named(cub):
    data_config = cub_config(cub)
    prepare_image_cache(data_config, "train", progress=False)
    missing = cub / "CUB_200_2011" / "images" / f"{IMAGES[2][0]}.jpg"
    missing.unlink()
    with pytest.raises(DataError, match=f"image {missing} is missing"):
        build_dataset(data_config, "train", augment=False)


def test_prepare_writes_and_keeps_the_caches(cub, tmp_path, capsys):
    """`attngan prepare ROOT --image-cache --config C` writes both splits' caches with C's
    sizes (ROOT its data.root); again, it keeps them. Misuse is one line and status 2."""
    args = [
        "prepare",
        str(cub),
        "--image-cache",
        "--config",
        "birds",
        "--set",
        "data.base_size=16",
        "--set",
        "data.branch_num=2",
    ]
    assert cli_main(args) == 0
    out = capsys.readouterr().out.splitlines()
    for line, split in zip(out[1:], ("train", "test")):
        assert line.startswith(
            f"image cache of the {split} split written to "
            f"{cub / 'image_cache' / f'{split}-38px-box.cache'} (0.00 GB)"
        )
    assert cli_main(args) == 0
    assert capsys.readouterr().out.splitlines()[2].endswith("is current, kept")
    assert cli_main(["prepare", str(cub), "--image-cache"]) == 2
    assert capsys.readouterr().err == (
        "attngan prepare: error: --image-cache needs --config: "
        "the config you will train with (its image sizes and "
        "crops shape the cache), e.g. --config birds\n"
    )
    assert cli_main(["prepare", str(cub), "--config", "birds"]) == 2
    assert "add --image-cache" in capsys.readouterr().err
