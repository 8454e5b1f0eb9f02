"""CUB-layout reader and the data set on a tiny CUB built here, with Python-2 pickles."""

import pickle
import random
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from attngan.cli import main as cli_main
from attngan.cli import user_message
from attngan.config import DataConfig
from attngan.data import DataError, build_dataset, collate, prepare, tokenize
from attngan.data.cub import crop_window, prepare_captions, read_caption_file, read_cub
from attngan.data.dataset import resized_size
from attngan.data.loader import float_images
from attngan.files import OutputError

CLASSES = {1: "001.Red_Bird", 2: "002.Caf\xe9_Bird"}  # a latin-1 byte, as Python 2 wrote it
IMAGES = [  # key, class, split, (width, height), box (x, y, w, h)
    ("001.Red_Bird/Red_Bird_0001", 1, "train", (60, 40), (10.0, 8.0, 20.0, 16.0)),
    ("001.Red_Bird/Red_Bird_0002", 1, "train", (50, 50), (0.0, 0.0, 50.0, 50.0)),
    ("002.Caf\xe9_Bird/Cafe_Bird_0001", 2, "train", (40, 64), (30.0, 50.0, 8.0, 10.0)),
    ("001.Red_Bird/Red_Bird_0003", 1, "test", (48, 48), (12.0, 12.0, 24.0, 24.0)),
    ("002.Caf\xe9_Bird/Cafe_Bird_0002", 2, "test", (64, 48), (5.0, 5.0, 30.0, 30.0)),
]
LONG = "this bird has a very long caption with many words to keep in order for the model here"
CONFIG = dict(
    dataset="cub",
    words_num=6,
    captions_per_image=10,
    base_size=16,
    branch_num=2,
    bbox_crop=True,
    random_crop=True,
    random_flip=True,
)


def py2_pickle(value) -> bytes:
    """Protocol 2 as Python 2 writes it: text is `str` (bytes, opcode U/T), not unicode."""

    def encode(item) -> bytes:
        if isinstance(item, str):
            item = item.encode("latin1")
        if isinstance(item, bytes):
            if len(item) < 256:
                return b"U" + bytes([len(item)]) + item
            return b"T" + struct.pack("<i", len(item)) + item
        if isinstance(item, int):
            return b"J" + struct.pack("<i", item)
        if isinstance(item, list):
            return b"]" + (b"(" + b"".join(map(encode, item)) + b"e" if item else b"")
        if isinstance(item, dict):
            pairs = b"".join(encode(k) + encode(v) for k, v in item.items())
            return b"}" + (b"(" + pairs + b"u" if item else b"")
        raise TypeError(item)

    return b"\x80\x02" + encode(value) + b"."


def caption_lines(index: int) -> list[str]:
    lines = [f"A red bird number {index} sits on branch {j}." for j in range(10)]
    lines[3] = LONG
    lines[5] = "The bird\ufffd\ufffds wing is gr\u00e9y"
    return lines[:4] + ["", "  ?! "] + lines[4:] + ["an extra eleventh line"]


def make_cub(root: Path) -> Path:
    images = root / "CUB_200_2011" / "images"
    listing, boxes = [], []
    for number, (key, _, _, size, box) in enumerate(IMAGES, 1):
        path = images / f"{key}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        pixels = np.zeros((size[1], size[0], 3), dtype=np.uint8)
        pixels[..., 2] = 200  # blue outside the crop window
        left, top, right, bottom = crop_window(size[0], size[1], box)
        pixels[top:bottom, left:right] = (220, 20, 20)  # red inside it
        Image.fromarray(pixels).save(path, quality=95)
        listing.append(f"{number} {key}.jpg")
        boxes.append(f"{number} {box[0]} {box[1]} {box[2]} {box[3]}")
        text = root / "text" / f"{key}.txt"
        text.parent.mkdir(parents=True, exist_ok=True)
        text.write_text("\n".join(caption_lines(number)) + "\n", encoding="utf-8")
    (root / "CUB_200_2011" / "images.txt").write_text("\n".join(listing) + "\n", encoding="latin1")
    (root / "CUB_200_2011" / "bounding_boxes.txt").write_text("\n".join(boxes) + "\n")
    for split in ("train", "test"):
        rows = [(key, cls) for key, cls, s, _, _ in IMAGES if s == split]
        (root / split).mkdir(parents=True, exist_ok=True)
        (root / split / "filenames.pickle").write_bytes(py2_pickle([k for k, _ in rows]))
        (root / split / "class_info.pickle").write_bytes(py2_pickle([c for _, c in rows]))
    return root


@pytest.fixture
def cub(tmp_path) -> Path:
    return make_cub(tmp_path / "birds")


def config(root: Path, **changes) -> DataConfig:
    return DataConfig(root=str(root), **{**CONFIG, **changes})


def test_python2_pickles_need_latin1(cub):
    with pytest.raises(UnicodeDecodeError):
        pickle.loads((cub / "train" / "filenames.pickle").read_bytes())
    records = read_cub(cub, "train", captions_per_image=10)
    assert records.keys[2] == IMAGES[2][0] and records.class_ids == [1, 1, 2]


def test_prepare_builds_captions_from_text(cub):
    path = prepare_captions(cub)
    train, test, ixtoword, wordtoix = pickle.loads(path.read_bytes())
    assert path.read_bytes()[:2] == b"\x80\x02"
    assert len(train) == 30 and len(test) == 20
    assert ixtoword[0] == "<end>" and wordtoix["<end>"] == 0
    words_in_order = [ixtoword[i] for i in range(1, len(ixtoword))]
    assert words_in_order == sorted(words_in_order)
    words = lambda ids: [ixtoword[i] for i in ids]  # noqa: E731
    lines = [line for line in caption_lines(1) if tokenize(line)][:10]
    assert [words(c) for c in train[:10]] == [tokenize(line) for line in lines]
    assert words(train[5]) == ["the", "bird", "s", "wing", "is", "gry"]
    assert "eleventh" not in wordtoix  # an 11th caption line is not read
    assert "4" in wordtoix and "5" in wordtoix  # test captions are in the vocabulary too


def test_existing_captions_pickle_is_never_rebuilt(cub):
    released = [
        [[1, 2]] * 30,
        [[2, 1]] * 20,
        {0: "<end>", 1: "bird", 2: "red"},
        {"<end>": 0, "bird": 1, "red": 2},
    ]
    (cub / "captions.pickle").write_bytes(py2_pickle(released))
    before = (cub / "captions.pickle").read_bytes()
    assert prepare(cub) == cub / "captions.pickle"
    data = build_dataset(config(cub), "test", augment=False)
    assert (cub / "captions.pickle").read_bytes() == before
    assert data.vocab.ixtoword == ["<end>", "bird", "red"]
    assert data.captions[0] == [2, 1]
    prepare(cub, rebuild=True)
    assert (cub / "captions.pickle").read_bytes() != before


def test_caption_length_of_a_split_can_differ_from_words_num(cub):
    """attngan evaluate cuts test captions at data.eval_words_num: build_dataset(words_num=)."""
    default = build_dataset(config(cub), "test", augment=False)
    short = build_dataset(config(cub), "test", augment=False, words_num=3)
    assert default.words_num == 6 and short.words_num == 3
    for index in range(len(short.captions)):
        caption, length = short.caption(index)
        assert caption.shape == (3,) and length == min(3, len(short.captions[index]))
        kept = caption[:length].tolist()  # an ordered subset of the caption's words
        assert all(word in short.captions[index] for word in kept)
    with pytest.raises(DataError, match="at least 1"):
        build_dataset(config(cub), "test", augment=False, words_num=0)


def test_items_pyramid_and_collate(cub):
    data = build_dataset(config(cub), "train", augment=True)
    assert len(data) == 3 and data.keys == [k for k, _, s, _, _ in IMAGES if s == "train"]
    item = data[2]
    assert [tuple(x.shape) for x in item["images"]] == [(3, 16, 16), (3, 32, 32)]
    assert all(x.dtype == torch.uint8 for x in item["images"])
    assert item["caption"].shape == (6,) and item["caption"].dtype == torch.long
    assert 1 <= item["length"] <= 6 and (item["caption"][item["length"] :] == 0).all()
    assert item["class_id"] == 2 and item["key"] == IMAGES[2][0]
    assert 0 <= item["caption_index"] < 10
    batch = collate([data[i] for i in range(3)])
    assert [tuple(x.shape) for x in batch["images"]] == [(3, 3, 16, 16), (3, 3, 32, 32)]
    assert all(x.dtype == torch.uint8 for x in batch["images"])
    floats = float_images(batch["images"][1], torch.device("cpu"))
    assert floats.dtype == torch.float32 and floats.min() >= -1 and floats.max() <= 1
    assert batch["captions"].shape == (3, 6) and batch["lengths"].dtype == torch.long
    assert batch["class_ids"].tolist() == [1, 1, 2] and batch["keys"] == data.keys
    assert batch["caption_indices"].shape == (3,)


def test_caption_lines_end_at_newlines_only(tmp_path):
    """As the original's split('\\n'): Windows line ends, a stray carriage return or a Unicode
    line separator inside a caption keep it whole; lines without ASCII words are skipped."""
    path = tmp_path / "captions.txt"
    path.write_bytes(
        "a red bird\r\nwith a long\u2028beak\n\u00e9\u00e9\nsmall\rbird\n".encode("utf-8")
    )
    assert [tokenize(line) for line in read_caption_file(path, 3, "fix")] == [
        ["a", "red", "bird"],
        ["with", "a", "long", "beak"],
        ["small", "bird"],
    ]


def test_resize_sizes_are_torchvisions():
    """The shorter side to the load size, the longer int(load * long / short) as torchvision's
    Resize: 26 x 169 at 38 is 38 x 247 (int(169 * (38 / 26)) would give 246)."""
    assert resized_size(26, 169, 38) == (38, 247)
    assert resized_size(77, 55, 355) == (497, 355)
    assert resized_size(500, 375, 304) == (405, 304)


def test_bird_box_crop(cub):
    assert crop_window(60, 40, (10, 8, 20, 16)) == (5, 1, 35, 31)
    assert crop_window(40, 64, (30, 50, 8, 10)) == (27, 48, 40, 62)
    # the original reads the box as integers (pandas astype(int)) before its arithmetic
    assert crop_window(60, 40, (10.9, 8.7, 20.99, 16.5)) == (5, 1, 35, 31)
    cropped = build_dataset(config(cub, random_crop=False), "train", augment=False)
    whole = build_dataset(config(cub, random_crop=False, bbox_crop=False), "train", augment=False)
    for index in range(3):
        red = float_images(cropped.images(index)[1], torch.device("cpu"))
        # Inside the window everything is red (JPEG noise aside); without the crop, blue shows.
        assert red[0].mean() > 0.6 and red[2].mean() < -0.6
    for index in (0, 2):  # image 1's window is the whole image
        assert whole.images(index)[1][2].max() > 0


def test_eval_is_deterministic_and_uses_caption_slots(cub):
    data = build_dataset(config(cub), "train", augment=False)
    for index in range(3):
        first, second = data[index], data[index]
        assert all(torch.equal(a, b) for a, b in zip(first["images"], second["images"]))
        assert torch.equal(first["caption"], second["caption"])
        assert first["caption_index"] == index % 10
    # A centre crop of the 16*2*76/64 = 38 resize, no flip: the same as a fresh data set's.
    other = build_dataset(config(cub), "train", augment=False)
    assert torch.equal(other[1]["images"][1], data[1]["images"][1])


def test_augment_randomizes_crop_flip_and_caption(cub):
    data = build_dataset(config(cub, bbox_crop=False), "train", augment=True)
    torch.manual_seed(1)
    draws = [data[0] for _ in range(12)]
    assert len({d["caption_index"] for d in draws}) > 2
    assert len({d["images"][1].sum().item() for d in draws}) > 2


def test_long_caption_keeps_an_ordered_subset(cub):
    data = build_dataset(config(cub), "train", augment=True)
    full = data.captions[3]  # image 0, caption slot 3: LONG (17 words)
    assert len(full) == len(tokenize(LONG)) > 6

    def is_subsequence(part):
        it = iter(full)
        return all(any(word == x for x in it) for word in part)

    fixed, length = data.caption(3)
    assert length == 6 and is_subsequence(fixed.tolist())
    assert fixed.tolist() != full[:6]  # a subset, not a truncation
    assert all(torch.equal(data.caption(3)[0], fixed) for _ in range(3))
    drawn = {tuple(data.caption(3, random.Random(seed))[0].tolist()) for seed in range(20)}
    assert len(drawn) > 5 and all(is_subsequence(list(d)) for d in drawn)
    roomy = build_dataset(config(cub, words_num=25), "train", augment=True)
    whole, whole_length = roomy.caption(3)
    assert whole_length == len(full) and whole[:whole_length].tolist() == full
    assert (whole[whole_length:] == 0).all()


def test_texts_are_the_kept_caption_lines(cub):
    data = build_dataset(config(cub), "test", augment=False)
    texts = data.texts(1)
    assert len(texts) == 10 and texts[0] == "A red bird number 5 sits on branch 0."
    assert [tokenize(t) for t in texts] == [
        [data.vocab.ixtoword[i] for i in c] for c in data.captions[10:20]
    ]


def test_dataset_pickles_for_spawned_workers(cub):
    data = build_dataset(config(cub), "test", augment=False)
    clone = pickle.loads(pickle.dumps(data))
    assert clone.texts(1) == data.texts(1)
    assert torch.equal(clone[1]["images"][0], data[1]["images"][0])


def test_dataloader_with_workers_is_reproducible(cub):
    data = build_dataset(config(cub), "train", augment=True)

    def run():
        torch.manual_seed(5)
        loader = torch.utils.data.DataLoader(
            data, batch_size=3, shuffle=True, collate_fn=collate, num_workers=2
        )
        return next(iter(loader))

    a, b = run(), run()
    assert a["keys"] == b["keys"] and torch.equal(a["captions"], b["captions"])
    assert torch.equal(a["images"][1], b["images"][1])


# ---- bad input: every case is a DataError naming the thing and the fix ----------------------
def test_missing_root(tmp_path):
    with pytest.raises(DataError, match="does not exist.*CUB-200-2011"):
        build_dataset(config(tmp_path / "nowhere"), "train", augment=False)
    shapes = DataConfig(dataset="shapes", root=str(tmp_path / "shapes"))
    with pytest.raises(DataError, match=r"attngan make-synthetic .*shapes"):
        build_dataset(shapes, "train", augment=False)


def test_missing_metadata(cub):
    (cub / "test" / "class_info.pickle").unlink()
    with pytest.raises(DataError, match=r"class_info\.pickle is missing"):
        build_dataset(config(cub), "test", augment=False)


def test_missing_text_file(cub):
    path = cub / "text" / f"{IMAGES[3][0]}.txt"
    path.unlink()
    with pytest.raises(DataError, match=f"caption file {path} is missing"):
        prepare(cub)
    assert not (cub / "captions.pickle").exists()


def test_too_few_captions(cub):
    path = cub / "text" / f"{IMAGES[0][0]}.txt"
    path.write_text("one bird\n\ntwo birds\n")
    with pytest.raises(DataError, match="has 2 captions with words.*captions_per_image=10"):
        build_dataset(config(cub), "train", augment=False)


def test_missing_image(cub):
    path = cub / "CUB_200_2011" / "images" / f"{IMAGES[1][0]}.jpg"
    path.unlink()
    data = build_dataset(config(cub), "train", augment=False)
    with pytest.raises(DataError, match=f"image {path} is missing"):
        data[1]


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_corrupt_image(cub, damage):
    path = cub / "CUB_200_2011" / "images" / f"{IMAGES[0][0]}.jpg"
    data = path.read_bytes()
    path.write_bytes(b"not an image at all" if damage == "garbage" else data[: len(data) // 2])
    dataset = build_dataset(config(cub), "train", augment=False)
    with pytest.raises(DataError, match=f"image {path} cannot be decoded"):
        dataset[0]


def test_captions_pickle_of_other_images(cub):
    (cub / "captions.pickle").write_bytes(
        py2_pickle([[[1]] * 7, [[1]] * 20, {0: "<end>", 1: "bird"}, {"<end>": 0, "bird": 1}])
    )
    with pytest.raises(DataError, match="has 7 captions but the split has 3 images"):
        build_dataset(config(cub), "train", augment=False)
    with pytest.raises(DataError, match="captions_per_image"):
        build_dataset(config(cub, captions_per_image=5), "test", augment=False)


def test_an_error_in_a_loader_worker_is_the_same_one_line(cub):
    """With data.num_workers > 0 the DataLoader wraps an item's DataError in the worker's
    traceback; the command line prints the message alone."""
    path = cub / "CUB_200_2011" / "images" / f"{IMAGES[0][0]}.jpg"
    path.write_bytes(b"not an image at all")
    dataset = build_dataset(config(cub), "train", augment=False)
    loader = torch.utils.data.DataLoader(dataset, batch_size=2, num_workers=1, collate_fn=collate)
    with pytest.raises(DataError) as caught:
        next(iter(loader))
    assert "Original Traceback" in str(caught.value)
    message = user_message(caught.value)
    assert message.startswith(f"image {path} cannot be decoded") and "\n" not in message
    plain = DataError("a message")
    assert user_message(plain) == "a message"


def test_missing_boxes(cub):
    (cub / "CUB_200_2011" / "bounding_boxes.txt").unlink()
    with pytest.raises(DataError, match="bounding_boxes.txt is missing.*bbox_crop=false"):
        build_dataset(config(cub), "train", augment=False)
    assert len(build_dataset(config(cub, bbox_crop=False), "train", augment=False)) == 3


def test_utf16_caption_file_is_refused(cub):
    """Decoded as UTF-8, each letter of a UTF-16 file would be a word of its own."""
    path = cub / "text" / f"{IMAGES[0][0]}.txt"
    path.write_text(path.read_text(encoding="utf-8"), encoding="utf-16")
    with pytest.raises(DataError, match=f"caption file {path} is not UTF-8 text.*save it as UTF-8"):
        prepare(cub)
    assert not (cub / "captions.pickle").exists()
    path.write_bytes(b"\xef\xbb\xbf" + "\n".join(caption_lines(1)).encode("utf-8"))
    prepare(cub)  # a UTF-8 byte-order mark is fine


@pytest.mark.parametrize(
    "damage, match",
    [
        (
            lambda lines: lines[:1] + [lines[1].replace("2 ", "1 ", 1)] + lines[2:],
            r"images\.txt line 2: image id 1 is listed twice",
        ),
        (
            lambda lines: lines[:1] + lines[2:],
            r"images\.txt lists no image for 1 keys of train/filenames\.pickle \(first: "
            r"001\.Red_Bird/Red_Bird_0002\)",
        ),
    ],
)
def test_damaged_image_list(cub, damage, match):
    path = cub / "CUB_200_2011" / "images.txt"
    path.write_text(
        "\n".join(damage(path.read_text(encoding="latin1").splitlines())), encoding="latin1"
    )
    with pytest.raises(DataError, match=match):
        build_dataset(config(cub, bbox_crop=False), "train", augment=False)


@pytest.mark.parametrize(
    "line, match",
    [
        ("1 0 0 inf 10", "finite numbers"),
        ("1 nan nan 10 10", "finite numbers"),
        ("2 0 0 10 10", "image id 2 has a second box"),
        ("1 5 5 0.5 10", "a size of at least 1 pixel"),  # 0 once read as an integer
    ],
)
def test_damaged_boxes(cub, line, match):
    path = cub / "CUB_200_2011" / "bounding_boxes.txt"
    path.write_text(path.read_text() + line + "\n")
    with pytest.raises(DataError, match=match):
        build_dataset(config(cub), "train", augment=False)


@pytest.mark.parametrize(
    "value, match",
    [
        ([1, None, 2], r"entry 1 is None, not an integer class id"),
        ([1, "2a", 2], r"entry 1 is '2a', not an integer class id"),
        ({"a": 1}, r"one class id per key of filenames\.pickle \(3\), not a dict"),
    ],
)
def test_damaged_class_info(cub, value, match):
    with open(cub / "train" / "class_info.pickle", "wb") as file:
        pickle.dump(value, file, protocol=2)
    with pytest.raises(DataError, match=match):
        build_dataset(config(cub), "train", augment=False)


def test_class_info_as_an_array(cub):
    with open(cub / "train" / "class_info.pickle", "wb") as file:
        pickle.dump(np.array([1, 1, 2]), file, protocol=2)
    assert list(build_dataset(config(cub), "train", augment=False).class_ids) == [1, 1, 2]


def test_empty_split(cub):
    (cub / "test" / "filenames.pickle").write_bytes(py2_pickle([]))
    (cub / "test" / "class_info.pickle").write_bytes(py2_pickle([]))
    with pytest.raises(
        DataError,
        match=r"filenames\.pickle is empty: the test split has no "
        "images",
    ):
        build_dataset(config(cub), "test", augment=False)


@pytest.mark.parametrize(
    "caption, match",
    [
        (None, "caption 0 \\(image 0\\) is None, not a list of word ids"),
        ("red bird", "caption 0 \\(image 0\\) is 'red bird', not a list of word ids"),
        ([1.7], "caption 0 \\(image 0\\) is \\[1.7\\], not a list of word ids"),
    ],
)
def test_captions_pickle_with_captions_that_are_not_word_ids(cub, caption, match):
    prepare(cub)
    train, test, ixtoword, wordtoix = pickle.loads((cub / "captions.pickle").read_bytes())
    train[0] = caption
    (cub / "captions.pickle").write_bytes(pickle.dumps([train, test, ixtoword, wordtoix]))
    with pytest.raises(DataError, match=match):
        build_dataset(config(cub), "train", augment=False)


def test_duplicate_vocabulary_word_says_to_delete_the_file(cub):
    prepare(cub)
    train, test, ixtoword, wordtoix = pickle.loads((cub / "captions.pickle").read_bytes())
    ixtoword[2] = ixtoword[1]
    (cub / "captions.pickle").write_bytes(pickle.dumps([train, test, ixtoword, wordtoix]))
    with pytest.raises(
        DataError,
        match=f"the word '{ixtoword[1]}' appears twice.*delete it and run `attngan prepare {cub}`",
    ):
        build_dataset(config(cub), "train", augment=False)


def test_unwritable_data_folder(cub):
    (cub / "captions.pickle").mkdir()  # where the file would be renamed to
    with pytest.raises(
        OutputError,
        match=r"cannot write .*captions\.pickle \(Is a directory\); "
        "copy the data set to a folder that can be written",
    ):
        prepare_captions(cub, rebuild=True)
    assert [p.name for p in cub.iterdir() if p.name.startswith(".")] == []


def test_unknown_dataset_and_split(cub):
    with pytest.raises(DataError, match="use one of cub, shapes, coco"):
        build_dataset(config(cub, dataset="flowers"), "train", augment=False)
    with pytest.raises(DataError, match="split must be"):
        build_dataset(config(cub), "val", augment=False)


def test_random_module_state_is_untouched(cub):
    data = build_dataset(config(cub), "train", augment=False)
    random.seed(11)
    expected = random.random()
    random.seed(11)
    data.caption(3)
    assert random.random() == expected


def test_prepare_says_whether_it_wrote_or_kept_the_captions(cub, capsys):
    """It keeps an existing captions.pickle; saying "written" then hid that edited captions
    were not read."""
    assert cli_main(["prepare", str(cub)]) == 0
    assert capsys.readouterr().out == f"captions written to {cub / 'captions.pickle'}\n"
    assert cli_main(["prepare", str(cub)]) == 0
    assert capsys.readouterr().out.startswith(
        f"{cub / 'captions.pickle'} exists and was kept, not rebuilt"
    )
