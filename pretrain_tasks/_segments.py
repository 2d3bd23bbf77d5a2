"""Shared machinery of the sentence-level tasks: segments joined with [SEP], predicted from [CLS].

Layout: ``[CLS] seg_0 [SEP] seg_1 [SEP] ... seg_k [SEP]`` with segment ids alternating 0, 1, 0, ...
per segment (BERT-style encoders have two segment types; the alternation still tells a segment
from its neighbours). When the whole does not fit in ``seq_len``, the currently longest segment is
cut by one token at a time from its end, so every segment keeps as much of itself as it can and
none disappears. The module name starts with ``_`` so registry discovery skips it.
"""

from __future__ import annotations

import logging
from typing import Sequence

from torch import nn

from ernie_cl.data.tokenizer import TextTokenizer

from .base import PretrainTask

logger = logging.getLogger("pretrain_tasks")


def fit_segments(segments: list[list[int]], budget: int) -> list[list[int]]:
    """Cut the longest segment until the total length fits ``budget`` (each keeps >= 1 token;
    of equally long ones the first is cut first)."""
    return [s[:n] for s, n in zip(segments, fitted_lengths([len(s) for s in segments], budget))]


def fitted_lengths(lengths: list[int], budget: int) -> list[int]:
    """The lengths that cutting one token at a time from the (first) longest segment reaches, in
    closed form: with ``level`` the largest cap under which the total fits, every longer segment
    is cut to the level, and the last of them keep one token more while the budget allows (the
    loop cuts the first of equally long segments first). Never below 1 token."""
    if sum(lengths) <= budget or max(lengths) <= 1:
        return list(lengths)
    capped_total = lambda cap: sum(min(n, cap) for n in lengths)  # noqa: E731
    if capped_total(1) > budget:
        return [min(n, 1) for n in lengths]
    low, high = 1, max(lengths) - 1  # capped_total(low) <= budget < capped_total(max(lengths))
    while low < high:
        mid = (low + high + 1) // 2
        low, high = (mid, high) if capped_total(mid) <= budget else (low, mid - 1)
    longer = [i for i, n in enumerate(lengths) if n > low]
    keep_one_more = set(longer[len(longer) - (budget - capped_total(low)):]) if budget > capped_total(low) else set()
    return [low + (i in keep_one_more) if n > low else n for i, n in enumerate(lengths)]


def join_segments(tokenizer: TextTokenizer, segments: Sequence[Sequence[int]], seq_len: int) -> tuple[list[int], list[int]]:
    """(input_ids, token_type_ids) for already-tokenized segments (ids without special tokens)."""
    kept = fit_segments([list(s) for s in segments], seq_len - 1 - len(segments))
    ids, types = [tokenizer.cls_id], [0]
    for index, segment in enumerate(kept):
        ids += segment + [tokenizer.sep_id]
        types += [index % 2] * (len(segment) + 1)
    return ids, types


def encode_segments(tokenizer: TextTokenizer, texts: Sequence[str], seq_len: int) -> tuple[list[int], list[int]]:
    """Tokenize texts and join them as segments (see ``join_segments``)."""
    return join_segments(tokenizer, [e.ids for e in tokenizer.encode_batch(list(texts))], seq_len)


def split_segments(tokenizer: TextTokenizer, input_ids: Sequence[int]) -> list[list[int]]:
    """The segments of an example again (for ``describe_example``)."""
    segments, current = [], []
    for token in list(input_ids)[1:]:
        if token == tokenizer.sep_id:
            segments.append(current)
            current = []
        else:
            current.append(token)
    return segments


class SentenceTask(PretrainTask):
    """Base of sentence-level tasks: the [CLS] head and a readable example rendering."""

    level = "sentence"
    #: documents of the last split seen by ``fit`` that give no example (too few sentences)
    skipped_documents: int = 0

    def report_skipped(self, skipped: int, total: int, reason: str) -> None:
        """Count, and log once per split, the documents this task cannot use (one-sentence documents...)."""
        self.skipped_documents = skipped
        if skipped:
            logger.warning("%s: %d of %d document(s) in this split %s and give no examples",
                           self.name, skipped, total, reason)

    def make_head(self, hidden_size: int, input_embeddings: nn.Embedding) -> nn.Module:
        # BERT's pooler (dense + tanh) then a classifier, owned by the task.
        return nn.Sequential(nn.Linear(hidden_size, hidden_size), nn.Tanh(), nn.Linear(hidden_size, self.num_labels))

    def describe_example(self, example: dict[str, list[int]]) -> str:
        lines = [f"  segment {i}: {self.tokenizer.decode(seg)}" for i, seg in enumerate(split_segments(self.tokenizer, example["input_ids"]))]
        label = example["labels"][0]
        return "\n".join(lines + [f"  label: {label} ({self.label_name(label)})"])
