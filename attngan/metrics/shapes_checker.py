"""Analytic checker of the synthetic shapes set (docs/DESIGN.md, "Checker"): no learned model.

For each object a caption names (color, shape, size, position) the checker reads the pixels of
that color: foreground by value, color by nearest hue (white by low saturation), the object's
mask without isolated pixels, present by area, position by the mask's centroid cell, size by its
box's longer side, shape by how much of the mask lies above its box's midline, then its fill
ratio. Scores per attribute and for all attributes, the color precision of each image, and for
one-object captions the color-blind scores; `check_against_shuffled` reports them beside the same
scores with captions shuffled across images (conditioning is the gap). Works at any image size.
"""

from __future__ import annotations

import colorsys
import math
import random
from dataclasses import dataclass
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from attngan.data.errors import DataError
from attngan.data.synthetic import PALETTE, SHAPES, SIZE_RADIUS, SIZE_WORDS
from attngan.data.vocab import tokenize

FOREGROUND_VALUE = 0.35
WHITE_SATURATION = 0.3
PRESENT_FRACTION = 0.3
FILL_RATIO = {"circle": math.pi / 4, "square": 1.0, "triangle": 0.5}
TRIANGLE_TOP_SHARE = 0.375  # midpoint of 1/4 and 1/2
SIZE_THRESHOLD = SIZE_RADIUS["small"] + SIZE_RADIUS["large"]  # midpoint of the 2 diameters
COLORS = tuple(PALETTE)
_CHROMATIC = [name for name in COLORS if name != "white"]
_HUES = torch.tensor(
    [colorsys.rgb_to_hsv(*(c / 255 for c in PALETTE[name]))[0] * 360 for name in _CHROMATIC]
)
_SIZE_OF = {word: size for size, words in SIZE_WORDS.items() for word in words}
_ROWS = {"top": 0, "bottom": 2}
_COLUMNS = {"left": 0, "right": 2}
_CENTRE = {"center", "middle"}
_CHUNK = 64  # images per pass: the per-color masks are [chunk, colors, H, W]


@dataclass(frozen=True)
class ObjectSpec:
    """An object named by a caption; None where the caption does not say."""

    color: Optional[str]
    shape: Optional[str]
    size: Optional[str]  # "small" or "large"
    position: Optional[tuple[int, int]]  # (row, column) of the 3x3 grid


def parse_caption(text: str) -> list[ObjectSpec]:
    """The objects of a shapes caption, split at "and"; a part naming no color or shape is glue."""
    specs, part = [], []
    for token in tokenize(text) + ["and"]:
        if token != "and":
            part.append(token)
            continue
        color = next((t for t in part if t in PALETTE), None)
        shape = next((t for t in part if t in SHAPES), None)
        size = next((_SIZE_OF[t] for t in part if t in _SIZE_OF), None)
        rows = [_ROWS[t] for t in part if t in _ROWS]
        columns = [_COLUMNS[t] for t in part if t in _COLUMNS]
        named = rows or columns or any(t in _CENTRE for t in part)
        position = (rows[0] if rows else 1, columns[0] if columns else 1) if named else None
        if color is not None or shape is not None:
            specs.append(ObjectSpec(color, shape, size, position))
        part = []
    return specs


def classify_pixels(images: torch.Tensor) -> torch.Tensor:
    """LongTensor[N, H, W]: index into COLORS per foreground pixel, -1 for background.

    images: [N, 3, H, W] in [-1, 1].
    """
    rgb = ((images.detach().float().clamp(-1, 1) + 1) / 2).cpu()
    high, top = rgb.max(dim=1)
    low = rgb.min(dim=1).values
    delta = high - low
    safe = delta.clamp_min(1e-6)
    r, g, b = rgb.unbind(dim=1)
    hue = (
        torch.where(
            top == 0,
            ((g - b) / safe) % 6,
            torch.where(top == 1, (b - r) / safe + 2, (r - g) / safe + 4),
        )
        * 60
    )
    saturation = delta / high.clamp_min(1e-6)
    distance = (hue.unsqueeze(-1) - _HUES).abs() % 360
    nearest = torch.minimum(distance, 360 - distance).argmin(dim=-1)
    chromatic = torch.tensor([COLORS.index(name) for name in _CHROMATIC])[nearest]
    labels = torch.where(saturation < WHITE_SATURATION, COLORS.index("white"), chromatic)
    return torch.where(high > FOREGROUND_VALUE, labels, torch.full_like(labels, -1))


def _color_stats(labels: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per image and mask [N, K + 1]: pixel count, centroid, box size and the share of pixels
    above the box's midline. Masks 0..K-1 are the palette colors, mask K all foreground."""
    n, height, width = labels.shape
    masks = labels.unsqueeze(1) == torch.arange(len(COLORS)).view(1, -1, 1, 1)  # [N, K, H, W]
    masks = torch.cat([masks, (labels >= 0).unsqueeze(1)], dim=1)  # [N, K+1, H, W]
    neighbours = F.conv2d(
        masks.float().view(-1, 1, height, width), torch.ones(1, 1, 3, 3), padding=1
    ).view(masks.shape)
    masks = masks & (neighbours >= 2)
    count = masks.sum(dim=(2, 3)).float()
    ys = torch.arange(height, dtype=torch.float32).view(1, 1, -1, 1)
    xs = torch.arange(width, dtype=torch.float32).view(1, 1, 1, -1)
    centre_y = (masks * ys).sum(dim=(2, 3)) / count.clamp_min(1)
    centre_x = (masks * xs).sum(dim=(2, 3)) / count.clamp_min(1)
    row_counts = masks.sum(dim=3).float()  # [N, K, H]

    def extent(lines: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        first = lines.int().argmax(dim=-1)
        last = lines.shape[-1] - 1 - lines.flip(-1).int().argmax(dim=-1)
        return first.float(), (last - first + 1).float()

    top, box_h = extent(row_counts > 0)
    box_w = extent(masks.any(dim=2))[1]
    # Share of each row above the box's horizontal midline (the middle row of an odd box half).
    above = ((top + box_h / 2).unsqueeze(-1) - torch.arange(height).float()).clamp(0, 1)
    top_share = (row_counts * above).sum(dim=-1) / count.clamp_min(1)
    return dict(count=count, cy=centre_y, cx=centre_x, h=box_h, w=box_w, top_share=top_share)


def check_images(images: torch.Tensor, captions: Sequence[str]) -> dict:
    """Score images against their captions (see the module docstring).

    images: [N, 3, H, W] in [-1, 1]; captions: N strings of the shapes set.
    Returns a dict of floats in [0, 1]: color, position, size, shape, all (per named object),
    image_all, color_precision (per image), fg_position, fg_size, fg_shape (color-blind: read
    from all foreground pixels, over one-object captions only; NaN when there are none), and
    the counts objects, images.
    """
    if images.dim() != 4 or images.shape[1] != 3:
        raise DataError(f"images must be [N, 3, H, W], got {list(images.shape)}")
    if len(captions) != images.shape[0]:
        raise DataError(
            f"{images.shape[0]} images but {len(captions)} captions; pass one caption per image"
        )
    height, width = images.shape[2:]
    specs = []
    for caption in captions:
        parsed = parse_caption(caption)
        if not parsed:
            raise DataError(
                f"caption {caption!r} names no color or shape; the checker reads "
                "captions of the synthetic shapes set only"
            )
        specs.append(parsed)
    names = ("color", "position", "size", "shape", "all", "fg_position", "fg_size", "fg_shape")
    hits: dict[str, list[bool]] = {name: [] for name in names}
    image_all, precision = [], []
    for start in range(0, len(specs), _CHUNK):
        labels = classify_pixels(images[start : start + _CHUNK])
        stats = {k: v.tolist() for k, v in _color_stats(labels).items()}
        per_color = [(labels == k).sum(dim=(1, 2)).tolist() for k in range(len(COLORS))]
        for i, objects in enumerate(specs[start : start + _CHUNK]):
            at = {key: values[i] for key, values in stats.items()}
            named = {COLORS.index(o.color) for o in objects if o.color is not None}
            foreground = len(COLORS)  # the index of the all-foreground mask
            total = at["count"][foreground]
            precision.append(sum(per_color[k][i] for k in named) / total if total else 0.0)
            every = True
            for spec in objects:
                found = _score(
                    spec, at, COLORS.index(spec.color) if spec.color else None, height, width
                )
                present = found.pop("present")
                if spec.color is not None:  # no colour named: nothing to score it by
                    hits["color"].append(present)
                for name, value in found.items():
                    hits[name].append(value)
                every &= found["all"]
            image_all.append(every)
            if len(objects) == 1:
                found = _score(objects[0], at, foreground, height, width)
                for name in ("position", "size", "shape"):
                    if name in found:
                        hits[f"fg_{name}"].append(found[name])
    mean = lambda values: sum(values) / len(values) if values else float("nan")  # noqa: E731
    return dict(
        {name: mean(values) for name, values in hits.items()},
        image_all=mean(image_all),
        color_precision=mean(precision),
        objects=len(hits["all"]),
        images=len(specs),
    )


def _score(
    spec: ObjectSpec, stats: dict[str, list[float]], k: Optional[int], height: int, width: int
) -> dict[str, bool]:
    """present, and each named attribute of `spec` as mask `k` shows it (False when absent).

    stats: _color_stats of one image (per mask); k None: no color to find the object by.
    """
    diameter = 2 * SIZE_RADIUS[spec.size or "small"]
    expected = FILL_RATIO[spec.shape or "triangle"] * diameter**2 * height * width
    present = k is not None and stats["count"][k] >= PRESENT_FRACTION * expected
    results = {"present": present}
    if spec.position is not None:
        cell = (
            (min(2, int(3 * stats["cy"][k] / height)), min(2, int(3 * stats["cx"][k] / width)))
            if present
            else None
        )
        results["position"] = present and cell == spec.position
    if spec.size is not None:
        side = max(stats["h"][k] / height, stats["w"][k] / width) if present else 0.0
        results["size"] = present and (side > SIZE_THRESHOLD) == (spec.size == "large")
    if spec.shape is not None and present:
        fill = stats["count"][k] / max(stats["h"][k] * stats["w"][k], 1.0)
        guess = (
            "triangle"
            if stats["top_share"][k] < TRIANGLE_TOP_SHARE
            else min(("circle", "square"), key=lambda shape: abs(FILL_RATIO[shape] - fill))
        )
        results["shape"] = guess == spec.shape
    elif spec.shape is not None:
        results["shape"] = False
    results["all"] = all(results.values())
    return results


def shuffled(captions: Sequence[str], seed: int = 0) -> list[str]:
    """The captions moved across images so that none stays with its image (N >= 2)."""
    order = list(range(len(captions)))
    random.Random(seed).shuffle(order)
    result = list(captions)
    for position, index in enumerate(order):
        result[index] = captions[order[(position + 1) % len(order)]]
    return result


def check_against_shuffled(images: torch.Tensor, captions: Sequence[str], seed: int = 0) -> dict:
    """dict(true=check_images(images, captions), shuffled=the same with shuffled captions)."""
    return dict(
        true=check_images(images, captions), shuffled=check_images(images, shuffled(captions, seed))
    )
