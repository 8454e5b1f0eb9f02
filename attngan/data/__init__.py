"""The data layer: captions to word ids, images to [-1, 1] pyramids (docs/DESIGN.md).

- `vocab`: `tokenize`, `Vocabulary` (index 0 `<end>` padding, stable `fingerprint`).
- `cub`: the CUB-200-2011 layout of AttnGAN (birds and the synthetic shapes set).
- `coco`: MS-COCO 2014 with its caption annotation files.
- `synthetic`: `make_synthetic`, the colored-shapes set with templated captions.
- `dataset`: `build_dataset`, `TextImageDataset`, `collate`, and `prepare` (`attngan prepare`).
- `errors`: `DataError`, raised for every bad input with the file or word and the fix.
"""
from attngan.data.dataset import TextImageDataset, build_dataset, collate, prepare
from attngan.data.errors import DataError
from attngan.data.synthetic import make_synthetic
from attngan.data.vocab import Vocabulary, tokenize

__all__ = ["DataError", "TextImageDataset", "Vocabulary", "build_dataset", "collate",
           "make_synthetic", "prepare", "tokenize"]
