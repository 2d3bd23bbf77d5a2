"""Shared machinery of the token-level tasks that read packed chunks (``[CLS] chunk [SEP]``).

Knowledge masking and capitalization prediction (and any other word-aware task) differ only in how
they turn one packed chunk into (input ids, labels); the packing, the ``[CLS]``/``[SEP]`` framing,
the segment ids and the rule "an example without a target is not worth a forward pass" live here.
The module name starts with ``_`` so registry discovery does not import it as a task.
"""

from __future__ import annotations

import random
from typing import Any, ClassVar, Sequence

from torch import nn

from ernie_cl.errors import ConfigError

from ernie_cl.corpus.document import Document

from .base import IGNORE, PretrainTask
from .packing import Chunk, pack_document


class PackedTokenTask(PretrainTask):
    """A token-level task whose examples are packed document chunks, one example per chunk.

    Subclasses implement :meth:`label_chunk`; this class frames its output and drops chunks that
    yield no target. It is not registered itself (it has no ``name``)."""

    level = "token"
    #: True when the task's input ids differ from the text's (masking); at most one such task can
    #: be fused with others, which then label that same corrupted input.
    corrupts_input: ClassVar[bool] = False

    #: fill every chunk, cutting the sentence that does not fit (``packing.pack_document``); preparation
    #: sets it per task from ``training.fill_chunks``
    fill_chunks: bool = True

    def fingerprint_data(self) -> dict[str, Any]:
        return {**super().fingerprint_data(), "fill_chunks": self.fill_chunks}

    def chunks(self, doc: Document) -> list[Chunk]:
        return pack_document(doc, self.tokenizer, self.seq_len, self.fill_chunks)

    def label_chunk(self, chunk: Chunk, rng: random.Random) -> tuple[list[int], list[int]]:
        """Input ids and labels aligned with ``chunk.ids`` (no [CLS]/[SEP]); ``IGNORE`` = no target."""
        raise NotImplementedError

    def label_chunks(self, chunks: list[Chunk], rng: random.Random) -> list[tuple[list[int], list[int]]]:
        """(ids, labels) for every chunk of one document. Override when a chunk's labels depend on
        the document's other chunks."""
        return [self.label_chunk(chunk, rng) for chunk in chunks]

    def build_examples(self, doc: Document, rng: random.Random) -> list[dict[str, list[int]]]:
        chunks = self.chunks(doc)
        examples = []
        for ids, labels in self.label_chunks(chunks, rng):
            if all(label == IGNORE for label in labels):
                continue  # nothing to learn from: don't spend a sequence of compute on it
            examples.append({**frame(self.tokenizer.cls_id, self.tokenizer.sep_id, ids), "labels": [IGNORE, *labels, IGNORE]})
        return examples


def frame(cls_id: int, sep_id: int, ids: list[int]) -> dict[str, list[int]]:
    """``[CLS] ids [SEP]`` with one segment: the packed text."""
    return {"input_ids": [cls_id, *ids, sep_id], "token_type_ids": [0] * (len(ids) + 2)}


class FusedPackedTasks:
    """Several packed token-level tasks labelled on one shared input, for one shared forward pass.

    Every chunk of a document gets each member's labels (column ``labels:<task>``); the input ids
    are the masking task's corrupted ids if a member corrupts its input, else the text's ids. A
    member labels the input it actually sees, so e.g. capitalization is also predicted for masked
    words, from context. Each member draws from its own RNG, seeded from the document's RNG.
    """

    def __init__(self, members: list[PackedTokenTask]):
        corrupting = [m.name for m in members if m.corrupts_input]
        if len(corrupting) > 1:
            raise ConfigError(f"tasks {', '.join(corrupting)} both corrupt their input and cannot share a forward pass; "
                              "set training.fuse_token_tasks: false")
        self.members = sorted(members, key=lambda m: not m.corrupts_input)  # the corrupting one first
        self.name = "+".join(m.name for m in members)
        self.tokenizer = members[0].tokenizer
        self.seq_len = members[0].seq_len
        if len({m.fill_chunks for m in members}) > 1:
            raise ConfigError(f"tasks {', '.join(m.name for m in members)} share a forward pass but not fill_chunks")
        self.label_columns = tuple(f"labels:{m.name}" for m in members)

    def fit(self, documents: Sequence[Document]) -> None:
        for member in self.members:
            member.fit(documents)

    def fingerprint_data(self) -> dict[str, Any]:
        return {"fused": [m.fingerprint_data() for m in self.members]}

    def build_examples(self, doc: Document, rng: random.Random) -> list[dict[str, list[int]]]:
        chunks = self.members[0].chunks(doc)
        per_member = [m.label_chunks(chunks, random.Random(rng.getrandbits(64))) for m in self.members]
        examples = []
        for index, chunk in enumerate(chunks):
            labelled = {m.name: per_member[k][index] for k, m in enumerate(self.members)}
            if all(label == IGNORE for _, labels in labelled.values() for label in labels):
                continue
            ids = labelled[self.members[0].name][0] if self.members[0].corrupts_input else list(chunk.ids)
            example = frame(self.tokenizer.cls_id, self.tokenizer.sep_id, ids)
            for name, (_, labels) in labelled.items():
                example[f"labels:{name}"] = [IGNORE, *labels, IGNORE]
            examples.append(example)
        return examples


class HeadTransform(nn.Sequential):
    """BERT's prediction-head transform: Linear, GELU, LayerNorm. It gives the head a little
    capacity of its own, so the encoder's last layer is not forced into the head's output space."""

    def __init__(self, in_size: int, out_size: int):
        super().__init__(nn.Linear(in_size, out_size), nn.GELU(), nn.LayerNorm(out_size))
