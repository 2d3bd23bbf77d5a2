"""Token-document relation (ERNIE 2.0): does this token also occur elsewhere in its document?

Input: a packed chunk ``[CLS] sentence sentence ... [SEP]`` (the same packing as knowledge masking
and capitalization, so the three can share one forward pass), token_type_ids all 0.

Label construction: the document's segments are its packed chunks (consecutive sentences filling
``seq_len``). Every non-special token of a chunk is a target: 1 if its vocabulary id occurs in at
least one OTHER chunk of the same document, else 0 ([CLS]/[SEP] are never targets). As in ERNIE 2.0
there is no TF-IDF or stop-word filtering: frequent tokens are mostly 1, and the informative part
is telling a document's recurring (key)words from tokens that appear in one place only. A document
that fits in one chunk has no other segment and gives no example.
"""

from __future__ import annotations

import random
from collections import Counter
from typing import Any, ClassVar

from torch import nn

from ._packed import HeadTransform, PackedTokenTask
from .base import register_task
from .packing import Chunk


def document_token_labels(chunks: list[Chunk]) -> list[list[int]]:
    """Per chunk, per token: 1 if the token id occurs in another chunk of the document, else 0."""
    chunks_with = Counter(token for chunk in chunks for token in set(chunk.ids))
    labels = []
    for chunk in chunks:
        own = set(chunk.ids)
        labels.append([1 if chunks_with[t] - (1 if t in own else 0) > 0 else 0 for t in chunk.ids])
    return labels


@register_task
class TokenDocumentRelation(PackedTokenTask):
    """Per token: does it also appear in another segment of the document; see the module docstring."""

    name = "token_document_relation"
    default_options: ClassVar[dict[str, Any]] = {}

    @property
    def num_labels(self) -> int:
        return 2

    def label_name(self, label: int) -> str:
        return "elsewhere in document" if label == 1 else "only here"

    def label_chunks(self, chunks: list[Chunk], rng: random.Random) -> list[tuple[list[int], list[int]]]:
        if len(chunks) < 2:
            return [(list(c.ids), [-100] * len(c.ids)) for c in chunks]  # no other segment: no target
        return [(list(c.ids), labels) for c, labels in zip(chunks, document_token_labels(chunks))]

    def make_head(self, hidden_size: int, input_embeddings: nn.Embedding) -> nn.Module:
        return nn.Sequential(HeadTransform(hidden_size, hidden_size), nn.Linear(hidden_size, self.num_labels))
