"""Tokenizer and vocabulary (docs/DESIGN.md, "Data"): tokens, padding index, errors, fingerprint."""

import subprocess
import sys

import pytest

from attngan.data.errors import DataError
from attngan.data.vocab import PAD, Vocabulary, tokenize


def test_tokenize_lowercases_splits_on_word_runs_and_drops_non_ascii():
    assert tokenize("A small, RED bird -- with_a beak!") == [
        "a",
        "small",
        "red",
        "bird",
        "with_a",
        "beak",
    ]
    assert tokenize("Café naïve 2 birds") == ["caf", "nave", "2", "birds"]
    assert tokenize("the bird\ufffd\ufffds wing") == ["the", "bird", "s", "wing"]
    assert tokenize("日本 ...") == []
    assert tokenize("") == []


def test_build_sorts_words_after_padding():
    vocab = Vocabulary.build([["the", "red", "bird"], ["a", "bird"]])
    assert vocab.ixtoword == [PAD, "a", "bird", "red", "the"]
    assert vocab.wordtoix == {PAD: 0, "a": 1, "bird": 2, "red": 3, "the": 4}
    assert len(vocab) == 5
    assert "bird" in vocab and "cat" not in vocab


def test_encode_decode_round_trip_skips_padding():
    vocab = Vocabulary.build([tokenize("the red bird has a black beak")])
    ids = vocab.encode("The RED bird, a black beak.")
    assert ids == [vocab.wordtoix[w] for w in ["the", "red", "bird", "a", "black", "beak"]]
    assert 0 not in ids
    assert vocab.decode(ids + [0, 0]) == "the red bird a black beak"


def test_unknown_words_are_named_with_a_suggestion():
    vocab = Vocabulary.build([tokenize("the red bird has a black beak")])
    with pytest.raises(DataError) as info:
        vocab.encode("the blue brid has a beak")
    message = str(info.value)
    assert "'blue'" in message and "'brid'" in message and "did you mean 'bird'" in message
    assert "'the'" not in message.split("know:")[1]


def test_all_unknown_caption_raises():
    vocab = Vocabulary.build([["bird"]])
    with pytest.raises(DataError, match="'cat'"):
        vocab.encode("cat")


@pytest.mark.parametrize("text", ["", "   ", "?!...", "日本"])
def test_empty_caption_raises(text):
    vocab = Vocabulary.build([["bird"]])
    with pytest.raises(DataError, match="has no words"):
        vocab.encode(text)


def test_decode_rejects_foreign_ids():
    vocab = Vocabulary.build([["bird"]])
    with pytest.raises(DataError, match="outside this vocabulary"):
        vocab.decode([1, 7])


def test_constructor_checks_padding_and_duplicates():
    with pytest.raises(DataError, match="padding word"):
        Vocabulary(["bird", PAD])
    with pytest.raises(DataError, match="appears twice"):
        Vocabulary([PAD, "bird", "bird"])


def test_from_maps_accepts_the_original_dicts_and_lists():
    vocab = Vocabulary.build([["red", "bird"]])
    ixtoword, wordtoix = vocab.to_maps()
    assert isinstance(ixtoword, dict) and ixtoword[0] == PAD
    assert Vocabulary.from_maps(ixtoword, wordtoix) == vocab
    assert Vocabulary.from_maps(vocab.ixtoword) == vocab
    with pytest.raises(DataError, match="not 0..2"):
        Vocabulary.from_maps({0: PAD, 1: "red", 3: "bird"})
    with pytest.raises(DataError, match="disagrees"):
        Vocabulary.from_maps(ixtoword, {PAD: 0, "bird": 2, "red": 1})


def test_fingerprint_is_stable_across_processes_and_tracks_order():
    words = [PAD, "a", "bird", "red"]
    vocab = Vocabulary(words)
    code = f"from attngan.data.vocab import Vocabulary; print(Vocabulary({words!r}).fingerprint())"
    other = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONHASHSEED": "123"},
    ).stdout.strip()
    assert other == vocab.fingerprint()
    assert len(other) == 16
    assert Vocabulary([PAD, "a", "red", "bird"]).fingerprint() != vocab.fingerprint()
    assert Vocabulary([PAD, "a", "bird"]).fingerprint() != vocab.fingerprint()
