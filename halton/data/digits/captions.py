"""Captions of the embedded digits, for the text-to-image demo: each image gets one phrasing of its digit, in
words or numerals ("a handwritten seven", "the digit 7", "7", ...), drawn per image with a fixed seed.

Two disjoint sets of phrasings: :data:`TRAIN_PHRASINGS` caption the training (and validation) images;
:data:`UNSEEN_PHRASINGS` are never used in training, to ask whether a model follows a phrasing it has not seen.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np

WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
# {word}: "seven", {a_word}: "a seven" / "an eight", {numeral}: "7"
TRAIN_PHRASINGS = (
    "a handwritten {word}",
    "the digit {numeral}",
    "number {numeral}",
    "a picture of {a_word}",
    "{numeral}",
    "the number {word}",
    "handwritten {numeral}",
    "{word}",
)
UNSEEN_PHRASINGS = (
    "an image showing the numeral {numeral}",
    "{word}, written by hand",
    "a scribbled {word}",
    "the figure {numeral} in ink",
)


def _fill(phrasing: str, digit: int) -> str:
    word = WORDS[digit]
    return phrasing.format(word=word, a_word=("an " if word[0] in "aeio" else "a ") + word, numeral=str(digit))


def _table(phrasings: tuple[str, ...]) -> np.ndarray:
    """[10, phrasings] object array of every caption, so captioning a split is one numpy gather."""
    table = np.empty((len(WORDS), len(phrasings)), dtype=object)
    table[:] = [[_fill(p, d) for p in phrasings] for d in range(len(WORDS))]
    return table


TRAIN_TABLE, UNSEEN_TABLE = _table(TRAIN_PHRASINGS), _table(UNSEEN_PHRASINGS)
# Part of a captioned split's description: changing the phrasings makes its shards stale (they are made again).
PHRASINGS_ID = hashlib.sha256(json.dumps([TRAIN_PHRASINGS, UNSEEN_PHRASINGS]).encode()).hexdigest()[:12]


def _check_digits(labels: np.ndarray) -> None:
    bad = labels[(labels < 0) | (labels > 9)]
    if bad.size:
        raise ValueError(f"digit {int(bad[0])} is out of range; allowed: 0 to 9")


def digit_caption(label: int, phrasing_index: int, seen: bool = True) -> str:
    """Phrasing ``phrasing_index`` of :data:`TRAIN_PHRASINGS` (``seen``) or :data:`UNSEEN_PHRASINGS` for ``label``."""
    table = TRAIN_TABLE if seen else UNSEEN_TABLE
    _check_digits(np.asarray([label]))
    if not 0 <= phrasing_index < table.shape[1]:
        raise ValueError(f"phrasing_index={phrasing_index} is out of range; allowed: 0 to {table.shape[1] - 1}")
    return table[label, phrasing_index]


def captions_for(labels, rng: np.random.Generator) -> np.ndarray:
    """One training phrasing per image, drawn uniformly with ``rng``: a 1-D object array of strings."""
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    _check_digits(labels)
    return TRAIN_TABLE[labels, rng.integers(0, TRAIN_TABLE.shape[1], len(labels))]


def prompts(digit: int, seen: bool = True) -> list[str]:
    """Every phrasing of ``digit``: the training ones (``seen``) or the held-out ones."""
    _check_digits(np.asarray([digit]))
    return list((TRAIN_TABLE if seen else UNSEEN_TABLE)[digit])


def evaluation_prompts(count: int, seen: bool = True) -> list[str]:
    """``count`` prompts cycling through the ten digits, and for each digit through its phrasings (training ones
    when ``seen``): every digit equally often, and every batch of ten balanced."""
    table = TRAIN_TABLE if seen else UNSEEN_TABLE
    index = np.arange(count)
    return table[index % 10, (index // 10) % table.shape[1]].tolist()
