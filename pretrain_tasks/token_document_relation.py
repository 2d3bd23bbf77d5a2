"""Token-document relation (ERNIE 2.0): does this token also occur in another segment of its document?

Input: a packed chunk ``[CLS] sentence sentence ... [SEP]`` (the same packing as knowledge masking
and capitalization, so the three can share one forward pass), token_type_ids all 0.

Segments: a document's segments are its packed chunks (``packing.pack_document``: consecutive
sentences filling ``seq_len - 2`` sub-tokens), i.e. exactly the units the examples are made of. A
chunk's own text never counts as "elsewhere"; the other chunks of the same document do.

Label construction, per chunk (``targets`` option):

- ``"words"`` (default): a target per word (the sub-tokens of one tokenizer word) that contains a
  letter or digit, on its FIRST sub-token: 1 if the same word (the same sequence of vocabulary ids)
  is a word of at least one OTHER chunk of the document, else 0. Other sub-tokens, punctuation and
  [UNK] words are ``IGNORE``. Why: sub-word pieces (``##s``) and punctuation occur in nearly every
  chunk, so as targets they are almost always 1 and only inflate the majority baseline; a word's
  identity is what "appears in other segments of the document" means for English text.
- ``"tokens"``: every non-special token is a target: 1 if its vocabulary id occurs anywhere in
  another chunk, else 0 (the most literal reading of the paper).

[CLS]/[SEP] (and any special id) are never targets. As in ERNIE 2.0 there is no TF-IDF or stop-word
filtering: frequent words are mostly 1, and the informative part is telling a document's recurring
(topic) words from words that appear in one place only. A document that fits in one chunk has no
other segment, so it gives no example (when fused with other token tasks its chunk carries only
``IGNORE`` for this task).
"""

from __future__ import annotations

import random
from collections import Counter
from typing import Any, ClassVar, Hashable, Sequence

from torch import nn

from ernie_cl.corpus.document import Document
from ernie_cl.errors import ConfigError

from ._packed import HeadTransform, PackedTokenTask
from .base import IGNORE, register_task
from .packing import Chunk

TARGETS = ("words", "tokens")


def relation_labels(units: list[list[tuple[int, Hashable]]], length_of: list[int]) -> list[list[int]]:
    """Labels per chunk from its ``(position, key)`` units: 1 where the key is also a unit of
    another chunk. Counting each key once per chunk makes "another chunk" a subtraction."""
    keys = [{k for _, k in chunk_units} for chunk_units in units]
    chunks_with: Counter[Hashable] = Counter(key for own in keys for key in own)
    labels = []
    for chunk_units, own, length in zip(units, keys, length_of):
        row = [IGNORE] * length
        for position, key in chunk_units:
            row[position] = 1 if chunks_with[key] - (key in own) > 0 else 0
        labels.append(row)
    return labels


@register_task
class TokenDocumentRelation(PackedTokenTask):
    """Per word (or token): does it also appear in another segment of the document; see the module docstring."""

    name = "token_document_relation"
    version: ClassVar[int] = 2
    default_options: ClassVar[dict[str, Any]] = {"targets": "words"}

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._wordlike: frozenset[int] | None = None

    def validate_options(self) -> None:
        if self.options["targets"] not in TARGETS:
            raise ConfigError(f"task 'token_document_relation': targets must be one of {', '.join(TARGETS)}, "
                              f"got {self.options['targets']!r}")

    def fit(self, documents: Sequence[Document]) -> None:
        self.wordlike_ids()  # once, before example building forks its workers

    def wordlike_ids(self) -> frozenset[int]:
        """Ids that can start a target word: a letter or digit in the piece, not special or [UNK]."""
        if self._wordlike is None:  # built on first use: constructing a task stays cheap
            pieces = self.tokenizer.hf.convert_ids_to_tokens(list(range(self.tokenizer.vocab_size)))
            self._wordlike = frozenset(i for i, piece in enumerate(pieces)
                                       if i not in self.tokenizer.special_ids and any(ch.isalnum() for ch in piece))
        return self._wordlike

    @property
    def num_labels(self) -> int:
        return 2

    def label_name(self, label: int) -> str:
        return "elsewhere in document" if label == 1 else "only in this segment"

    def units(self, chunk: Chunk) -> list[tuple[int, Hashable]]:
        """(position, key) of every target of a chunk: words keyed by their id tuple, or tokens by id."""
        ids = chunk.ids
        if self.options["targets"] == "tokens":
            special = self.tokenizer.special_ids
            return [(p, t) for p, t in enumerate(ids) if t not in special]
        wordlike = self.wordlike_ids()
        # A one-piece word is keyed by its id, a longer one by its id tuple (an int never equals a tuple).
        return [(w.token_start, ids[w.token_start] if w.token_end - w.token_start == 1 else tuple(ids[w.token_start:w.token_end]))
                for w in chunk.words if ids[w.token_start] in wordlike]

    def label_chunks(self, chunks: list[Chunk], rng: random.Random) -> list[tuple[list[int], list[int]]]:
        if len(chunks) < 2:  # no other segment: nothing to relate to
            return [(list(c.ids), [IGNORE] * len(c.ids)) for c in chunks]
        labels = relation_labels([self.units(c) for c in chunks], [len(c.ids) for c in chunks])
        return [(list(c.ids), row) for c, row in zip(chunks, labels)]

    def make_head(self, hidden_size: int, input_embeddings: nn.Embedding) -> nn.Module:
        return nn.Sequential(HeadTransform(hidden_size, hidden_size), nn.Linear(hidden_size, self.num_labels))
