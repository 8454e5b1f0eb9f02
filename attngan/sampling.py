"""Generate images for free-text captions from a GAN checkpoint, with attention figures.

`sample_captions` loads the averaged (EMA) generator and the text encoder stored in a GAN
checkpoint (no DAMSM file needed), encodes each caption with the training vocabulary (an
unknown word is a DataError naming it), and for each caption writes:

- `NN_<words>_stage<k>_<size>px.png`: the n samples of stage k in one row (every stage; small
  images are enlarged by pixel repetition to at least VIEW_SIZE = 128 px for viewing);
- `NN_<words>_attention.png`: the attention figure of the first sample (`attngan.viz`): one
  row per attention stage, the image that stage made and one tile per shown word, the word's
  map upsampled over the image. Shown: the 5 most confident words (docs/DESIGN.md), or every
  word of a caption of at most 5 words. Not written for a one-stage generator (no attention).

plus `captions.txt` listing NN -> caption. Noise is drawn from a generator seeded with `seed`,
so the same call gives the same images. Sampling again into the same folder replaces what the
earlier call wrote there (its images go once the new ones are written) and nothing else.
`draw_samples` makes one caption's images and maps (`attngan serve` draws with it too: its
caption, n and seed give the images of a one-caption `sample_captions` call).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Sequence

import torch

from attngan.data.vocab import tokenize
from attngan.files import hold_folder, write_text_atomically
from attngan.train.gan import generate, load_gan
from attngan.train.runtime import resolve_device_argument
from attngan.viz import attention_figure, save_image_grid

__all__ = ["sample_captions", "draw_samples", "view_scale", "TOP_WORDS", "MAX_SAMPLES", "VIEW_SIZE"]

TOP_WORDS = 5
MAX_SAMPLES = 64  # images per caption: one batch, one row of the figure
LISTING = "captions.txt"
_LISTING_LINE = re.compile(r"\d{2,}: .*")
_WRITTEN = re.compile(r"\d{2,}_[a-z0-9_]+_(stage\d+_\d+px|attention)\.png")  # file names
VIEW_SIZE = 128  # smaller images are shown enlarged to at least this side


def view_scale(size: int) -> int:
    """The whole factor that shows an image of side `size` at VIEW_SIZE or more (1 if larger)."""
    return max(1, VIEW_SIZE // size)


def draw_samples(
    netG, text_encoder, ids: Sequence[int], n: int, noise_source: torch.Generator, seed: int
):
    """n samples of one caption (word ids), noise from `noise_source`, the conditioning noise
    from `seed`, on the models' device; returns (images per stage `[n, 3, s, s]`, attention maps
    per attention stage `[n, L, h, w]`) as `generate`."""
    device = next(netG.parameters()).device
    captions = torch.tensor(ids).expand(n, -1)  # [n, L]
    lengths = torch.full((n,), len(ids))
    noise = torch.randn(n, netG.z_dim, generator=noise_source).to(device)
    images, maps, _, _ = generate(netG, text_encoder, captions, lengths, noise, seed=seed)
    return images, maps


def _slug(text: str, limit: int = 40) -> str:
    """File-name form of a caption: its first whole words, at most `limit` characters."""
    slug = ""
    for word in re.findall(r"[a-z0-9]+", text.lower()):
        if len(slug) + len(word) + 1 > limit:
            break
        slug = f"{slug}_{word}" if slug else word
    return slug or "caption"


def sample_captions(
    ckpt_path: str | Path,
    texts: Sequence[str],
    *,
    n: int = 8,
    out_dir: str | Path,
    device: str | torch.device = "auto",
    seed: int = 0,
) -> list[Path]:
    """Write n samples per caption (every stage) and an attention figure; return the paths."""
    if not 1 <= n <= MAX_SAMPLES:
        raise ValueError(
            f"n={n}: ask for 1 to {MAX_SAMPLES} samples per caption (they are drawn "
            "in one batch and shown in one row)"
        )
    if not texts:
        raise ValueError("no captions given; pass at least one caption to draw")
    device = resolve_device_argument(device)
    with hold_folder(out_dir, "output folder (--out)", "attngan sample") as out_dir:
        return _sample_into(out_dir, ckpt_path, texts, n, device, seed)


def _sample_into(
    out_dir: Path,
    ckpt_path: str | Path,
    texts: Sequence[str],
    n: int,
    device: torch.device,
    seed: int,
) -> list[Path]:
    """sample_captions once `out_dir` is held."""
    listing = out_dir / LISTING
    if listing.exists() and not all(
        _LISTING_LINE.fullmatch(line) or not line.strip()
        for line in listing.read_text().splitlines()
    ):
        raise ValueError(
            f"{listing} was not written by `attngan sample` (a training run's "
            f"samples/?), and sampling would replace it; choose another --out"
        )
    earlier = (
        [path for path in out_dir.iterdir() if _WRITTEN.fullmatch(path.name)]
        if listing.exists()
        else []
    )
    netG, text_encoder, vocab, _, _ = load_gan(ckpt_path, device)
    encoded = [vocab.encode(text) for text in texts]  # DataError names unknown words
    noise_source = torch.Generator().manual_seed(seed)
    written: list[Path] = []
    lines = []
    for index, (text, ids) in enumerate(zip(texts, encoded)):
        stem = f"{index:02d}_{_slug(text)}"
        lines.append(f"{index:02d}: {' '.join(text.split())}\n")
        images, maps = draw_samples(netG, text_encoder, ids, n, noise_source, seed + index)
        for stage, stage_images in enumerate(images):
            size = stage_images.shape[-1]
            written.append(
                save_image_grid(
                    stage_images,
                    out_dir / f"{stem}_stage{stage + 1}_{size}px.png",
                    nrow=n,
                    scale=view_scale(size),
                )
            )
        if maps:
            written.append(
                attention_figure(
                    [image[0] for image in images],
                    [attn[0] for attn in maps],
                    tokenize(text),
                    out_dir / f"{stem}_attention.png",
                    top_k=TOP_WORDS,
                )
            )
    for path in set(earlier) - set(written):
        path.unlink(missing_ok=True)
    written.append(write_text_atomically(listing, "".join(lines)))
    return written
