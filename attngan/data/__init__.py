"""The data layer: captions to word ids, images to uint8 pyramids (docs/DESIGN.md), and the
path into training.

- `vocab`: `tokenize`, `Vocabulary` (index 0 `<end>` padding, stable `fingerprint`).
- `cub`: the CUB-200-2011 layout of AttnGAN (birds and the synthetic shapes set).
- `coco`: MS-COCO 2014 with its caption annotation files.
- `synthetic`: `make_synthetic`, the colored-shapes set with templated captions.
- `dataset`: `build_dataset`, `TextImageDataset`, `collate`, and `prepare` (`attngan prepare`).
- `image_cache`: the decoded-image cache of a split (`attngan prepare --image-cache`).
- `loader`: worker count, batch order, copies to the device, `float_images` (uint8 to [-1, 1]
  on the training device).
- `errors`: `DataError`, raised for every bad input with the file or word and the fix.
"""

from attngan.data.dataset import TextImageDataset, build_dataset, collate, prepare
from attngan.data.errors import DataError
from attngan.data.synthetic import make_synthetic
from attngan.data.vocab import Vocabulary, tokenize

__all__ = [
    "DataError",
    "TextImageDataset",
    "Vocabulary",
    "build_dataset",
    "collate",
    "make_synthetic",
    "prepare",
    "tokenize",
]
