"""The analytic shapes checker: caption parsing, true renders near 1.0, shuffled far lower."""

import random

import numpy as np
import pytest
import torch

from attngan.data.errors import DataError
from attngan.data.synthetic import PALETTE, SHAPES, SceneObject, _captions, _scene, render_scene
from attngan.metrics.shapes_checker import (
    ObjectSpec,
    check_against_shuffled,
    check_images,
    parse_caption,
    shuffled,
)

ATTRIBUTES = (
    "color",
    "position",
    "size",
    "shape",
    "all",
    "image_all",
    "color_precision",
    "fg_position",
    "fg_size",
    "fg_shape",
)


def to_tensor(image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(image, dtype=np.float32)).permute(2, 0, 1) / 127.5 - 1


def renders(canvas: int, count: int, max_objects: int, seed: int = 0):
    rng = random.Random(seed)
    pairs = [(c, s) for c in PALETTE for s in SHAPES]
    images, captions = [], []
    for _ in range(count):
        objects = _scene(rng, pairs, rng.randint(1, max_objects), None)
        captions.append(rng.choice(_captions(objects, rng)))
        images.append(to_tensor(render_scene(objects, canvas)))
    return torch.stack(images), captions


def test_parse_caption():
    assert parse_caption("there is a tiny purple square on the top") == [
        ObjectSpec("purple", "square", "small", (0, 1))
    ]
    assert parse_caption(
        "the image shows one huge purple circle on the top right and a big "
        "red triangle in the middle"
    ) == [
        ObjectSpec("purple", "circle", "large", (0, 2)),
        ObjectSpec("red", "triangle", "large", (1, 1)),
    ]
    assert parse_caption("A little WHITE circle at the bottom left.") == [
        ObjectSpec("white", "circle", "small", (2, 0))
    ]
    assert parse_caption("a green square") == [ObjectSpec("green", "square", None, None)]
    assert parse_caption("a big yellow circle in the left") == [
        ObjectSpec("yellow", "circle", "large", (1, 0))
    ]
    assert parse_caption("there is nothing and the image shows") == []


@pytest.mark.parametrize("canvas, max_objects", [(32, 1), (64, 2), (128, 2)])
def test_true_renders_score_one_and_shuffled_captions_far_lower(canvas, max_objects):
    images, captions = renders(canvas, {32: 150, 64: 100, 128: 40}[canvas], max_objects)
    result = check_against_shuffled(images, captions, seed=1)
    true, fake = result["true"], result["shuffled"]
    assert true["images"] == len(captions) and true["objects"] >= len(captions)
    for name in ATTRIBUTES:
        assert true[name] >= 0.98, (name, true)
    assert fake["all"] <= 0.05 and fake["image_all"] <= 0.05
    assert fake["position"] <= 0.3 and fake["color"] <= 0.5 and fake["shape"] <= 0.5
    assert fake["color_precision"] <= 0.5


def test_each_wrong_attribute_is_caught():
    obj = SceneObject("blue", "square", "small", (0, 0), (1 / 6, 1 / 6), 0.09)
    image = to_tensor(render_scene([obj], 64))[None]
    right = check_images(image, ["a small blue square at the top left"])
    assert right["all"] == 1.0
    for caption, wrong in [
        ("a small red square at the top left", "color"),
        ("a small blue square at the bottom", "position"),
        ("a big blue square at the top left", "size"),
        ("a small blue circle at the top left", "shape"),
        ("a small blue triangle at the top left", "shape"),
    ]:
        result = check_images(image, [caption])
        assert result[wrong] == 0.0 and result["all"] == 0.0, caption
        others = [result[name] for name in ("color", "position", "size", "shape") if name != wrong]
        # No red pixels: the red object is absent, so nothing else about it is right either.
        assert others == ([0.0] * 3 if wrong == "color" else [1.0] * 3), caption
        # The color-blind scores read the object whatever its color.
        assert result["fg_position"] == float(wrong != "position"), caption
        assert result["fg_size"] == float(wrong != "size"), caption
        assert result["fg_shape"] == float(wrong != "shape"), caption


def test_caption_without_a_color_is_scored_by_what_it_names():
    """A caption cut short (data.eval_words_num) may name a shape but no colour: no object can
    be found by colour, so the attributes it names are wrong, and colour is not scored."""
    obj = SceneObject("blue", "square", "small", (0, 0), (1 / 6, 1 / 6), 0.09)
    image = to_tensor(render_scene([obj], 64))[None]
    assert parse_caption("a small square") == [ObjectSpec(None, "square", "small", None)]
    result = check_images(image, ["a small square"])
    assert result["size"] == result["shape"] == result["all"] == 0.0
    assert result["color"] != result["color"]  # NaN: no colour named anywhere
    assert result["fg_size"] == result["fg_shape"] == 1.0  # the colour-blind scores read it


def test_color_precision_punishes_painting_every_color():
    stripes = torch.zeros(1, 3, 60, 60)
    for index, color in enumerate(PALETTE.values()):
        stripes[0, :, :, index * 10 : (index + 1) * 10] = (
            torch.tensor(color, dtype=torch.float32) / 127.5 - 1
        ).view(3, 1, 1)
    result = check_images(stripes, ["a big red square in the center"])
    assert result["color"] == 1.0 and result["color_precision"] == pytest.approx(1 / 6, abs=0.02)
    black = check_images(-torch.ones(1, 3, 32, 32), ["a big red square in the center"])
    assert black["color"] == 0.0 and black["all"] == 0.0 and black["color_precision"] == 0.0


def test_soft_colors_still_read():
    # GAN output is rarely saturated: a darker, greyer red is still red, dim noise is background.
    obj = SceneObject("red", "circle", "large", (1, 1), (0.5, 0.5), 0.15)
    image = to_tensor(render_scene([obj], 64))
    soft = image * 0.6 + 0.2 * torch.randn(image.shape).clamp(-1, 1) * (image.mean(0) < -0.9) - 0.1
    result = check_images(soft.clamp(-1, 1)[None], ["a big red circle in the middle"])
    assert result["all"] == 1.0


def test_shuffled_moves_every_caption():
    captions = [f"caption {i}" for i in range(7)]
    mixed = shuffled(captions, seed=3)
    assert sorted(mixed) == sorted(captions)
    assert all(a != b for a, b in zip(mixed, captions))
    assert mixed == shuffled(captions, seed=3)


def test_bad_inputs():
    with pytest.raises(DataError, match="names no color or shape"):
        check_images(torch.zeros(1, 3, 32, 32), ["a bird on a branch"])
    with pytest.raises(DataError, match="2 images but 1 captions"):
        check_images(torch.zeros(2, 3, 32, 32), ["a red circle"])
    with pytest.raises(DataError, match=r"\[N, 3, H, W\]"):
        check_images(torch.zeros(3, 32, 32), ["a red circle"])
