"""Public functional API of the hot ops, one file per op (docs/DESIGN.md, "Layout").

- `damsm_word_similarity`, `damsm_word_loss`, `damsm_sentence_loss` (`damsm.py`): DAMSM
  matching of all (image, caption) pairs (docs/DESIGN.md, "DAMSM word similarity").
- `word_attention` (`word_attention.py`): the generator's word-region attention ("Word attention").
Each takes `impl="auto"` and runs exactly one implementation chosen by `attngan.backend`.
"""

from attngan.ops.damsm import damsm_sentence_loss, damsm_word_loss, damsm_word_similarity
from attngan.ops.word_attention import word_attention

__all__ = ["damsm_word_similarity", "damsm_word_loss", "damsm_sentence_loss", "word_attention"]
