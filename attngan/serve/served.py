"""The GAN run behind `attngan serve`, loaded once, and what the API answers from it.

`ServedRun.read` tokenizes a caption as training did (`attngan.data.vocab`): words the
vocabulary knows are used, unknown ones are dropped and named with the closest known word, and
a caption that cannot be drawn (no words, no known word, more known words than the run reads at
test time) gets one message naming the problem and the fix. `ServedRun.draw` makes the images
with the sampler's `draw_samples` (a caption, n and seed give the images `attngan sample
--text CAPTION --n N --seed SEED` writes) and colours each word's attention maps as the
sampler's attention figure does (`attngan.viz.word_heatmaps`), all as PNG data URIs.
"""

from __future__ import annotations

import base64
import dataclasses
import io
import random
import time
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from PIL import Image

from attngan import __version__
from attngan.data import DataError, build_dataset, tokenize
from attngan.sampling import draw_samples, view_scale
from attngan.train.gan import load_gan
from attngan.train.runtime import resolve_device_argument
from attngan.viz import OVERLAY_ALPHA, to_uint8, word_heatmaps

__all__ = ["ServedRun", "CaptionReading", "MAX_IMAGES"]

MAX_IMAGES = 8  # images per request: one batch, one row on the page


def png_data_uri(pixels: np.ndarray) -> str:
    """uint8 `[H, W, 3]` -> "data:image/png;base64,..."."""
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


@dataclasses.dataclass
class CaptionReading:
    """A caption as the run reads it: every token with whether the vocabulary knows it (and the
    closest known word when not), the words used, those dropped, and `problem`, the message
    why it cannot be drawn (None when it can)."""

    tokens: list[dict]
    used: list[str]
    dropped: list[str]
    problem: Optional[str]


class ServedRun:
    """A GAN run (checkpoint file or run folder) on `device`, its averaged generator and text
    encoder loaded once; `data_root` says where its data set is now (default: data.root of
    its config; only the test split's captions are read, for random captions)."""

    def __init__(
        self,
        ckpt: str | Path,
        device: str | torch.device = "auto",
        data_root: Optional[str | Path] = None,
    ):
        self.device = resolve_device_argument(device)
        self.netG, self.text_encoder, self.vocab, self.config, payload = load_gan(ckpt, self.device)
        self.checkpoint = payload["path"]
        self.step = payload["step"]
        self.word_limit = self.config.data.test_words_num
        self.test_split, self.random_captions_note = self._open_test_split(data_root)
        self._random = random.Random()

    def _open_test_split(self, data_root):
        """(the test split's data set, None), or (None, why there are no random captions). A
        data set that `data_root` names must be there."""
        data = self.config.data
        if data_root is not None:
            data = dataclasses.replace(data, root=str(Path(data_root).resolve()))
        try:
            return build_dataset(data, "test", augment=False), None
        except DataError as error:
            if data_root is not None:
                raise
            return None, (
                f"no random captions: the run's test split is not at hand ({error}); "
                "pass --data-root with where its data set is now"
            )

    def info(self) -> dict:
        """What `GET /api/info` answers."""
        data = self.config.data
        return {
            "run": self.checkpoint,
            "step": self.step,
            "dataset": data.dataset,
            "image_sizes": list(data.image_sizes),
            "attention_stages": data.branch_num - 1,
            "vocabulary_size": len(self.vocab),
            "word_limit": self.word_limit,
            "max_images": MAX_IMAGES,
            "device": str(self.device),
            "random_captions": self.test_split is not None,
            "random_captions_note": self.random_captions_note,
            "overlay_alpha": OVERLAY_ALPHA,
            "version": __version__,
        }

    def read(self, text: str) -> CaptionReading:
        """The caption as this run reads it (see module doc)."""
        words = tokenize(text)
        tokens = [
            {
                "word": word,
                "known": word in self.vocab,
                "suggestion": None if word in self.vocab else self.vocab.closest(word),
            }
            for word in words
        ]
        used = [word for word in words if word in self.vocab]
        dropped = [word for word in words if word not in self.vocab]
        problem = None
        if not words:
            problem = (
                "the caption has no words (after lowercasing and dropping punctuation and "
                "non-ASCII); write a few words"
            )
        elif not used:
            unknown = []
            for token in tokens:
                hint = f" (did you mean '{token['suggestion']}'?)" if token["suggestion"] else ""
                unknown.append(f"'{token['word']}'{hint}")
            problem = (
                f"no word of the caption is in the vocabulary ({len(self.vocab)} words of "
                f"the run's training data): {', '.join(dict.fromkeys(unknown))}; rephrase "
                "with known words"
            )
        elif len(used) > self.word_limit:
            problem = (
                f"the caption has {len(used)} known words, and this run reads at most "
                f"{self.word_limit} (data.eval_words_num, else data.words_num, of its "
                f"config); leave out {len(used) - self.word_limit}"
            )
        return CaptionReading(tokens, used, dropped, problem)

    def random_caption(self) -> str:
        """A caption of a random test image; a LookupError saying why where there is none."""
        if self.test_split is None:
            raise LookupError(self.random_captions_note)
        image = self._random.randrange(len(self.test_split))
        return " ".join(self._random.choice(self.test_split.texts(image)).split())

    def draw(self, words: list[str], n: int, seed: int) -> dict:
        """n samples of the known `words`, seeded with `seed`: per stage its size, the size the
        page shows it at, the images, and from the second stage on each image's maps of every
        word (`attention[image][word]`), as PNG data URIs; with the seconds taken."""
        started = time.perf_counter()
        ids = [self.vocab.wordtoix[word] for word in words]
        with torch.inference_mode():
            images, maps = draw_samples(
                self.netG, self.text_encoder, ids, n, torch.Generator().manual_seed(seed), seed
            )
            images = [stage.cpu() for stage in images]  # waits for the device: the time
            maps = [attn.cpu() for attn in maps]  # below is the generation's
        generated = time.perf_counter()
        stages = []
        for index, stage_images in enumerate(images):
            size = stage_images.shape[-1]
            attention = None
            if index > 0:
                attention = [
                    [png_data_uri(heat) for heat in word_heatmaps(attn, len(ids), size)]
                    for attn in maps[index - 1]
                ]
            stages.append(
                {
                    "stage": index + 1,
                    "size": size,
                    "shown_size": size * view_scale(size),
                    "images": [png_data_uri(pixels) for pixels in to_uint8(stage_images)],
                    "attention": attention,
                }
            )
        return {
            "stages": stages,
            "seconds": {
                "generating": round(generated - started, 4),
                "encoding": round(time.perf_counter() - generated, 4),
            },
        }
