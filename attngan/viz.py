"""Image grids and per-word attention figures, drawn with PIL only (no matplotlib).

- `save_image_grid`: a batch of images in [-1, 1] as one PNG grid (training sample grids, the
  sampler's per-stage outputs).
- `attention_figure`: the paper's Fig. 2/4 style view of word attention (docs/DESIGN.md). For
  each attention stage, a row: the image that stage produced, then one tile per shown word with
  the stage's attention map for that word, as the original's sampler draws it
  (`build_super_images2`): values up to twice the uniform share 1/n (n = caption length) set to
  0, upsampled to the tile (bilinearly; the original smooths with a Gaussian pyramid), min-max
  normalised, coloured with `colormap` and blended over the image, the word written below in
  PIL's default font. The sampler shows the `top_k` = 5 most confident words (all of them when
  the caption has at most 5), most confident first. A word's confidence, as there, is the
  attention mass it takes where it is above four times the uniform share: words that clearly
  win regions rank first, a word spread thinly over the whole image does not.
- `word_heatmaps`: each word's map of one attention stage coloured as that figure draws it
  (also what `attngan serve` lays over its images).
- `colormap`: values in [0, 1] -> RGB, a piecewise-linear "jet" (blue -> cyan -> yellow ->
  red), written here so no plotting library is needed.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont

from attngan.files import write_atomically

__all__ = [
    "quantize",
    "to_uint8",
    "save_png",
    "save_image_grid",
    "colormap",
    "word_confidence",
    "word_heatmaps",
    "attention_figure",
    "OVERLAY_ALPHA",
]

OVERLAY_ALPHA = 0.6  # weight of a word's coloured map blended over its image
_LABEL_HEIGHT = 14
_PAD = 2


def quantize(images: torch.Tensor) -> torch.Tensor:
    """Floats in [-1, 1] -> uint8 pixels, where they are, as the original's sampler writes its
    PNG files: (x + 1) * 127.5, truncated."""
    return ((images.detach().float().clamp(-1, 1) + 1) * 127.5).to(torch.uint8)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """`[N, 3, H, W]` or `[3, H, W]` floats in [-1, 1] -> uint8 `[N, H, W, 3]` / `[H, W, 3]`
    (`quantize`)."""
    return quantize(images).cpu().movedim(-3, -1).numpy()


def save_png(image: Image.Image, path: str | Path) -> Path:
    """Write `image` as a PNG file, atomically (a full disk leaves no half image)."""
    return write_atomically(path, lambda stream: image.save(stream, format="PNG"))


def save_image_grid(images: torch.Tensor, path: str | Path, nrow: int = 8, scale: int = 1) -> Path:
    """Write `[N, 3, H, W]` images in [-1, 1] as a grid of `nrow` columns (2 px black gaps),
    each image upscaled `scale` times (nearest); returns the path."""
    pixels = to_uint8(images)
    count, height, width = pixels.shape[:3]
    height, width = height * scale, width * scale
    ncol = max(1, min(nrow, count))
    rows = math.ceil(count / ncol)
    canvas = Image.new("RGB", (ncol * (width + _PAD) + _PAD, rows * (height + _PAD) + _PAD))
    for index in range(count):
        tile = Image.fromarray(pixels[index])
        if scale != 1:
            tile = tile.resize((width, height), Image.NEAREST)
        row, col = divmod(index, ncol)
        canvas.paste(tile, (_PAD + col * (width + _PAD), _PAD + row * (height + _PAD)))
    return save_png(canvas, path)


def colormap(values: np.ndarray) -> np.ndarray:
    """A "jet" colour map: float array in [0, 1] `[...]` -> uint8 RGB `[..., 3]`."""
    x = np.clip(values, 0.0, 1.0)[..., None] * 4.0
    centres = np.array([3.0, 2.0, 1.0])  # red, green, blue peaks
    rgb = np.clip(1.5 - np.abs(x - centres), 0.0, 1.0)
    return (rgb * 255).round().astype(np.uint8)


def word_confidence(attn: torch.Tensor, length: int) -> torch.Tensor:
    """Confidence per word of one caption: attn `[L, H, W]` -> `[length]`, the mass above
    4 / length (see module doc)."""
    maps = attn[:length].detach().float().flatten(1)  # [n, R]
    return (maps * (maps > 4.0 / length)).sum(dim=1)


def word_heatmaps(attn: torch.Tensor, length: int, size: int) -> np.ndarray:
    """The maps of a caption's words as the attention figure colours them: attn `[L, h, w]` ->
    uint8 RGB `[length, size, size, 3]`, values up to 2 / length set to 0, upsampled
    bilinearly, each min-max normalised and coloured by `colormap` (see module doc)."""
    maps = attn[:length].detach().float().cpu()  # [n, h, w]
    up = F.interpolate(
        (maps * (maps > 2.0 / length))[None],
        size=(size, size),
        mode="bilinear",
        align_corners=False,
    )[0]  # [n, S, S]
    low = up.amin(dim=(1, 2), keepdim=True)
    high = up.amax(dim=(1, 2), keepdim=True)
    return colormap(((up - low) / (high - low).clamp_min(1e-12)).numpy())


def _tile(image: np.ndarray, label: str, font) -> Image.Image:
    """An image `[S, S, 3]` with `label` written in a strip below it."""
    size = image.shape[0]
    tile = Image.new("RGB", (size, size + _LABEL_HEIGHT), (255, 255, 255))
    tile.paste(Image.fromarray(image), (0, 0))
    draw = ImageDraw.Draw(tile)
    text = label
    while text and draw.textlength(text, font=font) > size - 2:
        text = text[:-1]
    draw.text((1, size + 1), text, fill=(0, 0, 0), font=font)
    return tile


def attention_figure(
    images: Sequence[torch.Tensor],
    attention_maps: Sequence[torch.Tensor],
    words: Sequence[str],
    path: str | Path,
    *,
    top_k: int = 5,
    tile_size: int = 128,
    alpha: float = OVERLAY_ALPHA,
) -> Path:
    """Write the attention figure of one generated sample.

    Args:
        images: the sample's image per stage, each `[3, s, s]` in [-1, 1] (stage 0 first).
        attention_maps: per attention stage i >= 1, its map `[L, h, w]` (softmax over words);
            row i - 1 of the figure overlays it on images[i], the image that stage produced.
        words: the caption's words (length n <= L).
        path: PNG to write.
        top_k: words shown per row (all when n <= top_k), chosen per stage by `word_confidence`.
        tile_size: side of each tile in pixels (images are resized to it).
        alpha: weight of the colour map in the blend.
    Returns the path.
    """
    if len(images) != len(attention_maps) + 1:
        raise ValueError(
            f"attention_figure needs one image per stage and one map per attention "
            f"stage, got {len(images)} images and {len(attention_maps)} maps"
        )
    if not attention_maps:
        raise ValueError(
            "a one-stage generator has no word attention to draw; train with data.branch_num >= 2"
        )
    length = len(words)
    font = ImageFont.load_default()
    rows = []
    for stage, attn in enumerate(attention_maps, start=1):
        base = F.interpolate(
            images[stage][None].float().cpu(),
            size=(tile_size, tile_size),
            mode="bilinear",
            align_corners=False,
        )[0]
        base_pixels = to_uint8(base)
        # as the original's np.argsort(confidence)[::-1]: ties go to the later word
        shown = word_confidence(attn, length).argsort(stable=True).flip(0)[:top_k]
        tiles = [_tile(base_pixels, f"stage {stage + 1}", font)]
        heat = word_heatmaps(attn, length, tile_size)
        for index in shown.tolist():
            blend = (1 - alpha) * base_pixels + alpha * heat[index]
            tiles.append(_tile(blend.round().astype(np.uint8), words[index], font))
        rows.append(tiles)
    width = max(len(row) for row in rows) * (tile_size + _PAD) + _PAD
    height = len(rows) * (tile_size + _LABEL_HEIGHT + _PAD) + _PAD
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    for r, row in enumerate(rows):
        for c, tile in enumerate(row):
            canvas.paste(
                tile, (_PAD + c * (tile_size + _PAD), _PAD + r * (tile_size + _LABEL_HEIGHT + _PAD))
            )
    return save_png(canvas, path)
