"""Capitalization prediction (ERNIE 2.0): is this word capitalized in the original text?

Input: a packed chunk ``[CLS] sentence sentence ... [SEP]`` as the lowercasing tokenizer gives it
(unmasked), token_type_ids all 0. The input carries no case, so the label must be inferred from
context (names, sentence starts, acronyms).

Label construction, per word of the chunk (a word = the sub-tokens of one tokenizer word):

- the word's characters are read from the ORIGINAL cased sentence text through its char offsets
  (``chunk.sentences[word.sentence].text[word.char_start:word.char_end]``);
- a word with no letter at all (punctuation, numbers) is not a target: ``IGNORE``;
- otherwise the label sits on the word's FIRST sub-token: 1 if the word's first character is
  uppercase, else 0 (so "iPhone" and "3D" are 0: they do not start with a capital);
- every other sub-token, and [CLS]/[SEP], is ``IGNORE``.

A chunk with no labelled word yields no example. With a cased tokenizer the input already shows
the answer, so the task refuses to run (ConfigError) instead of reporting a meaningless accuracy.
"""

from __future__ import annotations

import random
from typing import Any, ClassVar

from torch import nn

from ernie_cl.errors import ConfigError

from ._packed import HeadTransform, PackedTokenTask
from .base import IGNORE, register_task
from .packing import Chunk


def capitalization_labels(chunk: Chunk) -> list[int]:
    """One label per position of ``chunk.ids``; see the module docstring."""
    labels = [IGNORE] * len(chunk.ids)
    texts = [s.text for s in chunk.sentences]
    for word in chunk.words:
        text = texts[word.sentence]
        first = text[word.char_start] if word.char_end > word.char_start else ""
        if first.isalpha():  # the common case, without slicing the word
            labels[word.token_start] = int(first.isupper())
        elif any(ch.isalpha() for ch in text[word.char_start : word.char_end]):
            labels[word.token_start] = 0  # a word that starts with no letter ("3rd") starts lowercase
    return labels


@register_task
class Capitalization(PackedTokenTask):
    """Binary per-word capitalization prediction on uncased input; see the module docstring."""

    name = "capitalization"
    level = "token"
    version: ClassVar[int] = 1
    default_options: ClassVar[dict[str, Any]] = {}

    def validate_options(self) -> None:
        if not self.tokenizer.lowercase:
            raise ConfigError(
                "task 'capitalization' needs a lowercasing (uncased) tokenizer: with a cased one the input "
                "shows the answer; train the tokenizer with lowercase: true or load an uncased one"
            )

    @property
    def num_labels(self) -> int:
        return 2

    def label_name(self, label: int) -> str:
        return "Capitalized" if label == 1 else "lowercase"

    def label_chunk(self, chunk: Chunk, rng: random.Random) -> tuple[list[int], list[int]]:
        return list(chunk.ids), capitalization_labels(chunk)

    def make_head(self, hidden_size: int, input_embeddings: nn.Embedding) -> nn.Module:
        return nn.Sequential(HeadTransform(hidden_size, hidden_size), nn.Linear(hidden_size, self.num_labels))
