"""Sentence reordering (ERNIE 2.0): which permutation shuffled a paragraph's segments.

Input: ``[CLS] seg_a [SEP] seg_b [SEP] ... [SEP]`` (segment ids alternating), predicted from [CLS].

Label construction, per paragraph:

1. Skip paragraphs of one sentence. Take consecutive sentences from a random start (early enough
   that m sentences can follow), as many as fit in ``seq_len`` (at least one; a sentence too long
   for ``seq_len`` is cut).
2. Draw n uniformly from 1..min(m, number of those sentences), ``m = max_segments`` (default 3),
   and cut the sentences into n contiguous segments at sentence boundaries, at random cut points.
3. Draw a uniformly random permutation ``perm`` of range(n) and show the segments in the order
   ``segments[perm[0]], segments[perm[1]], ...``: ``perm[i]`` is the original index of the segment
   shown at position i.
4. label = (1! + 2! + ... + (n-1)!) + the lexicographic rank of ``perm`` among the n! orders.
   With m segments at most there are k = 1! + ... + m! classes (m=3: 9, m=4: 33, m=5: 153);
   ``decode_label`` inverts ``encode_label``. Class 0 is "one segment" (nothing to reorder).

The trivial baseline is the most frequent class, "one segment": drawn for 1/min(m, sentences) of
the paragraphs; a model that only counts segments already beats it.
"""

from __future__ import annotations

import math
import random
from typing import Any, ClassVar, Sequence

from ernie_cl.corpus.document import Document
from ernie_cl.errors import ConfigError

from ._segments import SentenceTask, join_segments, split_segments
from .base import register_task


def _offset(n: int) -> int:
    return sum(math.factorial(k) for k in range(1, n))


def encode_label(perm: Sequence[int]) -> int:
    """Class id of a permutation of range(n): the offset of its size plus its lexicographic rank."""
    remaining = sorted(perm)
    rank = 0
    for position, value in enumerate(perm):
        index = remaining.index(value)
        rank += index * math.factorial(len(perm) - 1 - position)
        remaining.pop(index)
    return _offset(len(perm)) + rank


def decode_label(label: int) -> tuple[int, ...]:
    """The permutation a class id stands for (inverse of ``encode_label``)."""
    if label < 0:
        raise ValueError(f"label {label} is negative")
    n = 1
    while label >= _offset(n + 1):
        n += 1
    rank = label - _offset(n)
    remaining = list(range(n))
    perm = []
    for position in range(n):
        block = math.factorial(n - 1 - position)
        perm.append(remaining.pop(rank // block))
        rank %= block
    return tuple(perm)


@register_task
class SentenceReordering(SentenceTask):
    """Predict the permutation that shuffled a paragraph's segments; see the module docstring."""

    name = "sentence_reordering"
    version: ClassVar[int] = 2  # part of the example-cache key: bump when the construction changes
    default_options: ClassVar[dict[str, Any]] = {"max_segments": 3}

    def validate_options(self) -> None:
        m = self.options["max_segments"]
        if not isinstance(m, int) or isinstance(m, bool) or not 1 <= m <= 6:
            raise ConfigError(f"task 'sentence_reordering': max_segments must be an integer from 1 to 6, got {m!r}")

    @property
    def num_labels(self) -> int:
        return _offset(self.options["max_segments"] + 1)

    def build_examples(self, doc: Document, rng: random.Random) -> list[dict[str, list[int]]]:
        examples = []
        for paragraph in doc.paragraphs():
            texts = [s.text for s in paragraph if s.text.strip()]
            if len(texts) < 2:
                continue  # one sentence: nothing to reorder at sentence boundaries
            encoded = [e.ids for e in self.tokenizer.encode_batch(texts)]
            # start where the window can still hold max_segments sentences (else late starts would
            # leave one-sentence windows and make "one segment" the dominant class)
            start = rng.randrange(max(1, len(encoded) - self.options["max_segments"] + 1))
            window, used = [], 0
            budget = self.seq_len - 1 - self.options["max_segments"]  # room for [CLS] and the [SEP]s
            for ids in encoded[start:]:
                if window and used + len(ids) > budget:
                    break
                window.append(ids)
                used += len(ids)
            n = rng.randint(1, min(self.options["max_segments"], len(window)))
            cuts = sorted(rng.sample(range(1, len(window)), n - 1))
            bounds = [0, *cuts, len(window)]
            segments = [[t for ids in window[a:b] for t in ids] for a, b in zip(bounds, bounds[1:])]
            perm = list(range(n))
            rng.shuffle(perm)
            ids, types = join_segments(self.tokenizer, [segments[p] for p in perm], self.seq_len)
            examples.append({"input_ids": ids, "token_type_ids": types, "labels": [encode_label(perm)]})
        return examples

    def label_name(self, label: int) -> str:
        return "order " + " ".join(str(i) for i in decode_label(label))

    def describe_example(self, example: dict[str, list[int]]) -> str:
        perm = decode_label(example["labels"][0])
        shown = split_segments(self.tokenizer, example["input_ids"])
        lines = [f"  shown {i} (originally segment {perm[i]}): {self.tokenizer.decode(seg)}" for i, seg in enumerate(shown)]
        return "\n".join(lines + [f"  label: {example['labels'][0]} = permutation {perm}"])
