"""Shared machinery of the token-level tasks that read packed chunks (``[CLS] chunk [SEP]``).

Knowledge masking and capitalization prediction (and any other word-aware task) differ only in how
they turn one packed chunk into (input ids, labels); the packing, the ``[CLS]``/``[SEP]`` framing,
the segment ids and the rule "an example without a target is not worth a forward pass" live here.
The module name starts with ``_`` so registry discovery does not import it as a task.
"""

from __future__ import annotations

import random

from torch import nn

from ernie_cl.corpus.document import Document

from .base import IGNORE, PretrainTask
from .packing import Chunk, pack_document


class PackedTokenTask(PretrainTask):
    """A token-level task whose examples are packed document chunks, one example per chunk.

    Subclasses implement :meth:`label_chunk`; this class frames its output and drops chunks that
    yield no target. It is not registered itself (it has no ``name``)."""

    level = "token"

    def label_chunk(self, chunk: Chunk, rng: random.Random) -> tuple[list[int], list[int]]:
        """Input ids and labels aligned with ``chunk.ids`` (no [CLS]/[SEP]); ``IGNORE`` = no target."""
        raise NotImplementedError

    def build_examples(self, doc: Document, rng: random.Random) -> list[dict[str, list[int]]]:
        examples = []
        for chunk in pack_document(doc, self.tokenizer, self.seq_len):
            ids, labels = self.label_chunk(chunk, rng)
            if all(label == IGNORE for label in labels):
                continue  # nothing to learn from: don't spend a sequence of compute on it
            examples.append(
                {
                    "input_ids": [self.tokenizer.cls_id, *ids, self.tokenizer.sep_id],
                    "token_type_ids": [0] * (len(ids) + 2),  # one segment: the packed text
                    "labels": [IGNORE, *labels, IGNORE],
                }
            )
        return examples


class HeadTransform(nn.Sequential):
    """BERT's prediction-head transform: Linear, GELU, LayerNorm. It gives the head a little
    capacity of its own, so the encoder's last layer is not forced into the head's output space."""

    def __init__(self, in_size: int, out_size: int):
        super().__init__(nn.Linear(in_size, out_size), nn.GELU(), nn.LayerNorm(out_size))
