"""Tokenizer and vocabulary of the captions (docs/DESIGN.md, "Data").

Text is lowercased and split into `\\w+` runs; non-ASCII characters are dropped from each token
(as the original AttnGAN's `t.encode('ascii', 'ignore')`), and a token left empty disappears.
The pair of replacement characters that CUB's text files contain in place of apostrophes
separates words. A byte that is not UTF-8 (a Latin-1 "\xe9" in "r\xe9d"), in a file or in a
command-line argument, is read as the Latin-1 letter it most likely is, so it stays inside its
word ("rd") instead of splitting it ("r", "d"). Index 0 is `<end>`, the padding slot of every
caption tensor.

A vocabulary is the ordered word list `ixtoword`; its `fingerprint` is a hash of that list, so a
checkpoint can prove it was trained with the same word indices as the data it meets (released
encoders need the released vocabulary: the readers never rebuild it once `captions.pickle`
exists).
"""

from __future__ import annotations

import codecs
import difflib
import hashlib
import json
import re
from pathlib import Path
from typing import Iterable, Mapping, Sequence, Union

from attngan.data.errors import DataError

PAD = "<end>"
_WORD = re.compile(r"\w+")


LATIN1_FALLBACK = "attngan-latin1"
codecs.register_error(
    LATIN1_FALLBACK,
    lambda error: (error.object[error.start : error.end].decode("latin-1"), error.end),
)


def decode_utf8(raw: bytes) -> str:
    """UTF-8 text, each byte that is not UTF-8 read as Latin-1."""
    return raw.decode("utf-8", errors=LATIN1_FALLBACK)


def tokenize(text: str) -> list[str]:
    """Lowercase word tokens of `text`: `\\w+` runs with non-ASCII characters removed."""
    text = text.replace("\ufffd\ufffd", " ").lower()
    if text.isascii():
        return _WORD.findall(text)
    # bytes of a command line that were not UTF-8 arrive as surrogate escapes (PEP 383)
    text = decode_utf8(text.encode("utf-8", errors="surrogateescape"))
    tokens = (token.encode("ascii", "ignore").decode("ascii") for token in _WORD.findall(text))
    return [token for token in tokens if token]


class Vocabulary:
    """Word <-> index maps; index 0 is the padding word `<end>`.

    Build one with `Vocabulary.build(tokenized captions)` (sorted, so the same captions give the
    same indices in every process) or from the maps stored in a `captions.pickle`
    (`Vocabulary.from_maps`).
    """

    def __init__(
        self, ixtoword: Sequence[str], source: str = "the vocabulary", fix: str = "it is damaged"
    ):
        """`source` and `fix` name where the words came from and what to do if they are not a
        vocabulary."""
        words = list(ixtoword)
        if not words or words[0] != PAD:
            raise DataError(
                f"{source} must start with the padding word '{PAD}' at index 0; "
                f"got {words[:1]!r}: {fix}"
            )
        wordtoix = {}
        for index, word in enumerate(words):
            if not isinstance(word, str) or not word:
                raise DataError(f"{source}: entry {index} is {word!r}, not a word: {fix}")
            if word in wordtoix:
                raise DataError(
                    f"{source}: the word '{word}' appears twice (indices "
                    f"{wordtoix[word]} and {index}): {fix}"
                )
            wordtoix[word] = index
        self.ixtoword: list[str] = words
        self.wordtoix: dict[str, int] = wordtoix

    @classmethod
    def build(cls, token_lists: Iterable[Sequence[str]]) -> "Vocabulary":
        """Every word of the given tokenized captions, sorted, after `<end>`."""
        words = sorted({word for tokens in token_lists for word in tokens} - {PAD})
        return cls([PAD] + words)

    @classmethod
    def from_maps(
        cls,
        ixtoword: Union[Mapping[int, str], Sequence[str]],
        wordtoix: Mapping[str, int] | None = None,
        source: str = "captions.pickle",
    ) -> "Vocabulary":
        """The vocabulary of a `captions.pickle`: `ixtoword` as the original's dict or a list.

        Indices must run 0..V-1 without gaps, and `wordtoix`, when given, must agree.
        """
        fix = (
            f"the file is damaged; delete it and run `attngan prepare {Path(source).parent}` "
            "(this makes a new vocabulary: released encoders will not match it)"
        )
        if isinstance(ixtoword, Mapping):
            if sorted(ixtoword) != list(range(len(ixtoword))):
                raise DataError(f"{source}: ixtoword indices are not 0..{len(ixtoword) - 1}: {fix}")
            words = [ixtoword[index] for index in range(len(ixtoword))]
        elif isinstance(ixtoword, (list, tuple)):
            words = list(ixtoword)
        else:
            raise DataError(
                f"{source}: ixtoword is a {type(ixtoword).__name__}, not a list or "
                f"dict of words: {fix}"
            )
        vocab = cls(words, source, fix)
        if wordtoix is not None and (
            not isinstance(wordtoix, Mapping) or dict(wordtoix) != vocab.wordtoix
        ):
            raise DataError(f"{source}: wordtoix disagrees with ixtoword: {fix}")
        return vocab

    def to_maps(self) -> tuple[dict[int, str], dict[str, int]]:
        """(ixtoword, wordtoix) as the original's `captions.pickle` stores them: two dicts."""
        return dict(enumerate(self.ixtoword)), dict(self.wordtoix)

    def __len__(self) -> int:
        return len(self.ixtoword)

    def __contains__(self, word: str) -> bool:
        return word in self.wordtoix

    def closest(self, word: str) -> str | None:
        """The known word most like `word` (difflib's closest match), or None if none is close."""
        close = difflib.get_close_matches(word, self.ixtoword[1:], n=1)
        return close[0] if close else None

    def encode_tokens(self, tokens: Sequence[str], text: str | None = None) -> list[int]:
        """Indices of already tokenized words; unknown words or no words raise `DataError`."""
        shown = repr(text if text is not None else " ".join(tokens))
        if not tokens:
            raise DataError(
                f"caption {shown} has no words (after lowercasing and dropping "
                "punctuation and non-ASCII); write at least one word"
            )
        unknown = [word for word in dict.fromkeys(tokens) if word not in self.wordtoix]
        if unknown:
            hints = []
            for word in unknown:
                close = self.closest(word)
                hints.append(f"'{word}'" + (f" (did you mean '{close}'?)" if close else ""))
            raise DataError(
                f"caption {shown} has words the vocabulary ({len(self)} words of the "
                f"training data) does not know: {', '.join(hints)}. Rephrase with "
                "known words; the model cannot read new ones"
            )
        return [self.wordtoix[word] for word in tokens]

    def encode(self, text: str) -> list[int]:
        """Word indices of `text`; unknown words or an empty caption raise `DataError`."""
        return self.encode_tokens(tokenize(text), text)

    def decode(self, ids: Iterable[int]) -> str:
        """Words of the indices joined by spaces; padding (index 0) is skipped."""
        words = []
        for index in ids:
            index = int(index)
            if index == 0:
                continue
            if not 0 < index < len(self.ixtoword):
                raise DataError(
                    f"word index {index} is outside this vocabulary of {len(self)} "
                    "words; the ids come from another vocabulary"
                )
            words.append(self.ixtoword[index])
        return " ".join(words)

    def fingerprint(self) -> str:
        """A hex SHA-256 (first 16 digits) of the word list: equal iff the indices mean the same."""
        payload = json.dumps(self.ixtoword, ensure_ascii=True, separators=(",", ":"))
        return hashlib.sha256(payload.encode("ascii")).hexdigest()[:16]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocabulary) and other.ixtoword == self.ixtoword

    def __hash__(self) -> int:
        return hash(tuple(self.ixtoword))

    def __repr__(self) -> str:
        return f"Vocabulary({len(self)} words, fingerprint {self.fingerprint()})"
