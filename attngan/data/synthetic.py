"""The synthetic shapes data set (docs/DESIGN.md): colored shapes with templated captions.

CUB and COCO cannot be downloaded here, and a GAN's progress is invisible without an objective
measure; this set gives both. Each image is a black canvas with 1..max_objects objects (a
circle, square or triangle; small or large; each in its own cell of a 3x3 grid with a little
jitter; objects of one image have different colors). Ten captions per image come from templates
with synonyms ("there is a tiny red square on the top left"), at most 18 tokens.
`attngan.metrics.shapes_checker` reads the same attributes back from any image.

Geometry (fractions of the canvas side): a small object has "radius" 0.09 and a large one 0.15:
the circle's radius, half the square's side, half the triangle's base and height (apex up), so
every shape's box is 2r x 2r and the checker can read size from the box alone. Objects are
drawn at 4x and box-filtered down: antialiased edges mix the color with black, which keeps its
hue. The class of an image is (color, shape) of its first object, so DAMSM's same-class masking
has work; pairs in `held_out` ("green triangle") never appear in a training image, and every one
of them is the first object of one of the first test images (a generalization probe).

`make_synthetic` writes the CUB layout that `attngan.data.cub` reads (docs/DESIGN.md):
CUB_200_2011/images/<NNN.color_shape>/<split>_<i>.png with images.txt and bounding_boxes.txt
(the box is the whole canvas: the objects' own boxes are in scenes.json, and a crop around an
object would move it out of its named cell, so data.bbox_crop changes nothing here), text/,
train|test/filenames.pickle and class_info.pickle (protocol 2, readable by Python 2),
captions.pickle, and scenes.json with every object's ground truth. Images are PNG, not JPEG: the
set is exact (no compression noise for the GAN to learn or the checker to misread) and the
reader takes each file name from images.txt. The same config gives byte-identical files; the
folder is written beside the target and renamed into place, so a failed run leaves no half set.
"""

from __future__ import annotations

import io
import json
import os
import random
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from PIL import Image, ImageDraw

from attngan.config import SyntheticConfig
from attngan.data.cub import prepare_captions
from attngan.data.errors import DataError
from attngan.data.records import save_pickle, split_keys_file
from attngan.data.vocab import tokenize
from attngan.files import default_permissions, remove_leftovers, require_writable, temporary_prefix

PALETTE = {
    "red": (220, 30, 30),
    "yellow": (230, 220, 30),
    "green": (30, 190, 30),
    "blue": (40, 80, 255),
    "purple": (160, 50, 230),
    "white": (235, 235, 235),
}
SHAPES = ("circle", "square", "triangle")
SIZE_RADIUS = {"small": 0.09, "large": 0.15}
SIZE_WORDS = {"small": ("small", "little", "tiny"), "large": ("large", "big", "huge")}
POSITION_NAMES = {
    (0, 0): "top left",
    (0, 1): "top",
    (0, 2): "top right",
    (1, 0): "left",
    (1, 1): "center",
    (1, 2): "right",
    (2, 0): "bottom left",
    (2, 1): "bottom",
    (2, 2): "bottom right",
}
CAPTIONS_PER_IMAGE = 10
MAX_TOKENS = 18
JITTER = 0.05  # of the side: objects stay near their cell's centre
GAP = 0.02  # of the side: boxes of one image never touch
SUPERSAMPLE = 4
_FRAMES = ((), ("there", "is"), ("the", "image", "shows"))
_SYNONYMS = {"center": ("center", "middle")}


@dataclass(frozen=True)
class SceneObject:
    """One drawn object; centre and radius are fractions of the canvas side."""

    color: str
    shape: str
    size: str
    cell: tuple[int, int]  # (row, column) of the 3x3 grid
    center: tuple[float, float]  # (x, y)
    radius: float

    @property
    def position(self) -> str:
        return POSITION_NAMES[self.cell]

    def box(self, canvas: int) -> tuple[float, float, float, float]:
        """(x, y, w, h) in pixels of a `canvas`-sized image."""
        x, y, r = self.center[0] * canvas, self.center[1] * canvas, self.radius * canvas
        return (x - r, y - r, 2 * r, 2 * r)


def render_scene(objects: list[SceneObject], canvas: int) -> Image.Image:
    """The RGB image of `objects` on a black `canvas` x `canvas` square."""
    big = canvas * SUPERSAMPLE
    image = Image.new("RGB", (big, big))
    draw = ImageDraw.Draw(image)
    for obj in objects:
        x, y, r = obj.center[0] * big, obj.center[1] * big, obj.radius * big
        # Pixel i covers [i, i + 1): the right/bottom edge of the box is the last pixel + 1.
        left, top, right, bottom = x - r, y - r, x + r - 1, y + r - 1
        color = PALETTE[obj.color]
        if obj.shape == "circle":
            draw.ellipse([left, top, right, bottom], fill=color)
        elif obj.shape == "square":
            draw.rectangle([left, top, right, bottom], fill=color)
        else:
            draw.polygon([(x - 0.5, top), (left, bottom), (right, bottom)], fill=color)
    return image.resize((canvas, canvas), Image.BOX)


def describe(objects: list[SceneObject], rng: random.Random) -> str:
    """One caption of `objects` with random synonyms, glue and object order (<= 18 tokens)."""
    phrases = []
    for obj in objects:
        position = [rng.choice(_SYNONYMS.get(word, (word,))) for word in obj.position.split()]
        phrases.append(
            [
                rng.choice(("a", "one")),
                rng.choice(SIZE_WORDS[obj.size]),
                obj.color,
                obj.shape,
                rng.choice(("at", "on", "in")),
                "the",
                *position,
            ]
        )
    rng.shuffle(phrases)
    body = [word for i, phrase in enumerate(phrases) for word in (["and"] if i else []) + phrase]
    frames = [frame for frame in _FRAMES if len(frame) + len(body) <= MAX_TOKENS]
    return " ".join([*rng.choice(frames), *body])


def _check(cfg: SyntheticConfig) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """Validate `cfg`; return (pairs drawn in train, held-out pairs)."""
    where = "data.synthetic"
    if cfg.num_train < 1 or cfg.num_test < 1:
        raise DataError(
            f"{where}.num_train and num_test must be at least 1, got "
            f"{cfg.num_train} and {cfg.num_test}"
        )
    if cfg.canvas < 16:
        raise DataError(f"{where}.canvas must be at least 16 pixels, got {cfg.canvas}")
    if cfg.max_objects not in (1, 2):
        raise DataError(
            f"{where}.max_objects must be 1 or 2 (three objects with all their "
            f"attributes do not fit a caption of {MAX_TOKENS} words), got "
            f"{cfg.max_objects}"
        )
    unknown = [c for c in cfg.colors if c not in PALETTE]
    if unknown or not cfg.colors or len(set(cfg.colors)) != len(cfg.colors):
        raise DataError(
            f"{where}.colors must be distinct names from {', '.join(PALETTE)}; got "
            f"{list(cfg.colors)}"
        )
    if len(cfg.colors) < cfg.max_objects:
        raise DataError(
            f"{where}.colors has {len(cfg.colors)} colors but objects of one image "
            f"have different colors and max_objects is {cfg.max_objects}; add colors"
        )
    held = []
    for text in cfg.held_out:
        parts = tokenize(text)
        if len(parts) != 2 or parts[0] not in cfg.colors or parts[1] not in SHAPES:
            raise DataError(
                f"{where}.held_out entry {text!r} must be '<color> <shape>' with a "
                f"color of {list(cfg.colors)} and a shape of {list(SHAPES)}"
            )
        held.append((parts[0], parts[1]))
    train_pairs = [(c, s) for c in cfg.colors for s in SHAPES if (c, s) not in held]
    if not train_pairs:
        raise DataError(
            f"{where}.held_out removes every color-shape pair from training; hold out fewer pairs"
        )
    if cfg.num_test < len(held):
        raise DataError(
            f"{where}.num_test ({cfg.num_test}) must be at least the number of "
            f"held-out pairs ({len(held)}) so that each appears in test"
        )
    return train_pairs, held


def _scene(
    rng: random.Random,
    pairs: list[tuple[str, str]],
    num_objects: int,
    first: tuple[str, str] | None,
) -> list[SceneObject]:
    cells = rng.sample(sorted(POSITION_NAMES), num_objects)
    objects: list[SceneObject] = []
    for cell in cells:
        free = [p for p in pairs if p[0] not in {o.color for o in objects}]
        if not free:
            break
        color, shape = first if first is not None and not objects else rng.choice(free)
        size = rng.choice(sorted(SIZE_RADIUS))
        r = SIZE_RADIUS[size]
        base = ((cell[1] + 0.5) / 3, (cell[0] + 0.5) / 3)
        for attempt in range(20):
            # Zero jitter last: adjacent cell centres are 1/3 apart > 2 * 0.15 + GAP.
            jitter = JITTER if attempt < 19 else 0.0
            center = tuple(min(max(c + rng.uniform(-jitter, jitter), r), 1 - r) for c in base)
            if all(
                max(abs(center[0] - o.center[0]), abs(center[1] - o.center[1]))
                >= r + o.radius + GAP
                for o in objects
            ):
                break
        objects.append(
            SceneObject(color, shape, size, cell, (round(center[0], 4), round(center[1], 4)), r)
        )
    return objects


def _captions(objects: list[SceneObject], rng: random.Random) -> list[str]:
    captions: list[str] = []
    for _ in range(CAPTIONS_PER_IMAGE):
        for _attempt in range(50):  # prefer ten different captions; repeat one if it must
            caption = describe(objects, rng)
            if caption not in captions:
                break
        captions.append(caption)
    return captions


SET_ENTRIES = ("CUB_200_2011", "text", "train", "test", "captions.pickle", "scenes.json")


def _prepare_target(out: Path, force: bool) -> None:
    """Refuse to replace a folder that is not an earlier synthetic set, an earlier set unless
    `force` (runs trained on it would meet other images), or a set's folder that also holds
    files of the user's (replacing the set deletes the whole folder)."""
    if not out.exists() or (out.is_dir() and not any(out.iterdir())):
        return
    if not (out / "scenes.json").is_file():
        raise DataError(
            f"{out} exists and is not a synthetic shapes set (no scenes.json); "
            "choose an empty or new folder for `attngan make-synthetic`"
        )
    if not force:
        raise DataError(
            f"{out} already holds a synthetic shapes set; runs trained on it "
            "refuse another one, so it is kept: pass --force to replace it, or "
            "choose another folder"
        )
    others = sorted(entry.name for entry in out.iterdir() if entry.name not in SET_ENTRIES)
    if others:
        listed = ", ".join(others[:5]) + (f" and {len(others) - 5} more" if len(others) > 5 else "")
        raise DataError(
            f"{out} holds an earlier synthetic set and also {listed}, which "
            "replacing the set would delete; move them out of the folder or choose "
            "another folder for `attngan make-synthetic`"
        )


def make_synthetic(out_dir: str | Path, cfg: SyntheticConfig, force: bool = False) -> Path:
    """Write the shapes data set of `cfg` to `out_dir` (CUB layout, see above); return it.

    An earlier synthetic set in `out_dir` is replaced only with `force`; any other non-empty
    folder, or a set's folder that holds anything else, is refused.
    """
    train_pairs, held = _check(cfg)
    out = Path(out_dir)
    _prepare_target(out, force)
    require_writable(out.parent, "output folder")
    remove_leftovers(out)  # a set half written by a killed run
    work = Path(tempfile.mkdtemp(dir=out.parent, prefix=temporary_prefix(out)))
    try:
        _write(work, cfg, train_pairs, held)
        os.chmod(work, default_permissions(0o777))  # mkdtemp's folder is its owner's only
        _prepare_target(out, force)
        if out.exists():
            shutil.rmtree(out)
        os.replace(work, out)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return out


def _write(
    root: Path,
    cfg: SyntheticConfig,
    train_pairs: list[tuple[str, str]],
    held: list[tuple[str, str]],
) -> None:
    all_pairs = [(c, s) for c in cfg.colors for s in SHAPES]
    class_of = {pair: index + 1 for index, pair in enumerate(all_pairs)}
    images_dir, text_dir = root / "CUB_200_2011" / "images", root / "text"
    for color, shape in all_pairs:
        name = f"{class_of[(color, shape)]:03d}.{color}_{shape}"
        (images_dir / name).mkdir(parents=True)
        (text_dir / name).mkdir(parents=True)
    listing, boxes, scenes = [], [], {}
    for split, count, pairs in (
        ("train", cfg.num_train, train_pairs),
        ("test", cfg.num_test, all_pairs),
    ):
        rng = random.Random(f"attngan-shapes:{cfg.seed}:{split}")
        keys, class_ids = [], []
        for i in range(count):
            first = held[i] if split == "test" and i < len(held) else None
            objects = _scene(rng, pairs, rng.randint(1, cfg.max_objects), first)
            class_id = class_of[(objects[0].color, objects[0].shape)]
            key = f"{class_id:03d}.{objects[0].color}_{objects[0].shape}/{split}_{i:05d}"
            captions = _captions(objects, rng)
            buffer = io.BytesIO()
            render_scene(objects, cfg.canvas).save(buffer, format="PNG")
            (images_dir / f"{key}.png").write_bytes(buffer.getvalue())
            (text_dir / f"{key}.txt").write_text("\n".join(captions) + "\n")
            listing.append(f"{len(listing) + 1} {key}.png")
            boxes.append(f"{len(boxes) + 1} 0.0 0.0 {cfg.canvas:.1f} {cfg.canvas:.1f}")
            scenes[key] = {
                "split": split,
                "class_id": class_id,
                "captions": captions,
                "objects": [
                    dict(
                        asdict(o), position=o.position, box=[round(v, 3) for v in o.box(cfg.canvas)]
                    )
                    for o in objects
                ],
            }
            keys.append(key)
            class_ids.append(class_id)
        save_pickle(split_keys_file(root, split), keys)
        save_pickle(root / split / "class_info.pickle", class_ids)
    (root / "CUB_200_2011" / "images.txt").write_text("\n".join(listing) + "\n")
    (root / "CUB_200_2011" / "bounding_boxes.txt").write_text("\n".join(boxes) + "\n")
    meta = {
        "config": asdict(cfg),
        "canvas": cfg.canvas,
        "palette": PALETTE,
        "size_radius": SIZE_RADIUS,
        "captions_per_image": CAPTIONS_PER_IMAGE,
        "held_out": [" ".join(pair) for pair in held],
        "images": scenes,
    }
    text = json.dumps(meta, sort_keys=True, separators=(",", ":"))
    (root / "scenes.json").write_text(text + "\n")
    prepare_captions(
        root, CAPTIONS_PER_IMAGE, rebuild=True, fix=f"run `attngan make-synthetic {root}`"
    )
