"""Sentence reordering (ERNIE 2.0): which permutation shuffled a paragraph's segments.

Input: ``[CLS] seg_a [SEP] seg_b [SEP] ... [SEP]`` (segment ids alternating), predicted from [CLS].

Label construction, per paragraph (one paragraph of a section, as in the paper):

1. The paragraph's sentences are cut into consecutive windows, greedily, each as many whole
   sentences as fit in ``seq_len - 1 - m`` sub-tokens (room for [CLS] and up to m [SEP]s); a
   sentence longer than that is cut at the limit. Every window gives one example, so all of the
   paragraph's text is used once and nothing is truncated later.
2. n is drawn uniformly from 1..m, ``m = max_segments`` (default 3), and the window is cut into n
   contiguous, non-empty segments: at n-1 of its sentence boundaries (uniformly chosen) when it has
   at least n sentences; otherwise at all of its sentence boundaries plus uniformly chosen word
   boundaries inside sentences (a segment may then be a part of a sentence: the paper's unit is a
   "segment", and one-sentence paragraphs are common). Only when the window has fewer than n words
   is n lowered to its word count. So n stays (nearly) uniform, whatever the paragraph lengths.
3. A uniformly random permutation ``perm`` of range(n) is drawn and the segments are shown in the
   order ``segments[perm[0]], segments[perm[1]], ...``: ``perm[i]`` is the ORIGINAL index of the
   segment shown at position i.
4. label = (1! + 2! + ... + (n-1)!) + the lexicographic rank of ``perm`` among the n! orders. With m
   segments at most there are k = 1! + ... + m! classes (m=3: 9, m=4: 33, m=5: 153);
   ``decode_label`` inverts ``encode_label``. Class 0 is "one segment" (nothing to reorder).

The trivial baseline is the most frequent class: n = 1 is drawn for 1/m of the windows, so it is
about 1/m; a model that only counts segments already beats it.
"""

from __future__ import annotations

import math
import random
from typing import Any, ClassVar, Sequence

from ernie_cl.corpus.document import Document
from ernie_cl.data.tokenizer import EncodedText
from ernie_cl.errors import ConfigError

from ._segments import SentenceTask, join_segments, split_segments
from .base import register_task

MAX_SEGMENTS_LIMIT = 6  # 6! = 720 orders, 873 classes: beyond that the head is mostly unused rows


def _offset(n: int) -> int:
    """Class id of the first permutation of n segments: 1! + ... + (n-1)!."""
    return sum(math.factorial(k) for k in range(1, n))


def encode_label(perm: Sequence[int]) -> int:
    """Class id of a permutation of range(n): the offset of its size plus its lexicographic rank."""
    if sorted(perm) != list(range(len(perm))) or not perm:
        raise ValueError(f"{tuple(perm)} is not a permutation of range(n), n >= 1")
    remaining = list(range(len(perm)))
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


def paragraph_windows(encoded: list[EncodedText], budget: int) -> list[list[EncodedText]]:
    """Consecutive sentences packed greedily into windows of at most ``budget`` sub-tokens."""
    windows: list[list[EncodedText]] = []
    current: list[EncodedText] = []
    used = 0
    for enc in encoded:
        n = min(len(enc.ids), budget)
        if current and used + n > budget:
            windows.append(current)
            current, used = [], 0
        current.append(EncodedText(enc.ids[:n], enc.offsets[:n], enc.word_ids[:n]))
        used += n
    if current:
        windows.append(current)
    return windows


def cut_window(window: list[EncodedText], n: int, rng: random.Random) -> list[list[int]]:
    """Cut a window into n contiguous segments (fewer if it has fewer words), at sentence
    boundaries first and word boundaries inside sentences only for the cuts still missing."""
    starts = [0]  # token position where each sentence begins, in the window's concatenation
    for enc in window[:-1]:
        starts.append(starts[-1] + len(enc.ids))
    cuts = set(starts[1:])
    if len(window) >= n:
        cuts = set(rng.sample(sorted(cuts), n - 1))
    else:
        inner = [start + p for start, enc in zip(starts, window)
                 for p in range(1, len(enc.ids)) if enc.word_ids[p] != enc.word_ids[p - 1]]
        cuts |= set(rng.sample(inner, min(n - 1 - len(cuts), len(inner))))
    ids = [t for enc in window for t in enc.ids]
    bounds = [0, *sorted(cuts), len(ids)]
    return [ids[a:b] for a, b in zip(bounds, bounds[1:])]


@register_task
class SentenceReordering(SentenceTask):
    """Predict the permutation that shuffled a paragraph's segments; see the module docstring."""

    name = "sentence_reordering"
    version: ClassVar[int] = 2
    default_options: ClassVar[dict[str, Any]] = {"max_segments": 3}

    def validate_options(self) -> None:
        m = self.options["max_segments"]
        if not isinstance(m, int) or isinstance(m, bool) or not 1 <= m <= MAX_SEGMENTS_LIMIT:
            raise ConfigError(f"task 'sentence_reordering': max_segments must be an integer from 1 to {MAX_SEGMENTS_LIMIT}, got {m!r}")
        if self.seq_len < 2 * m + 1:
            raise ConfigError(f"task 'sentence_reordering': seq_len {self.seq_len} leaves no room for {m} segments; "
                              f"use seq_len >= {2 * m + 1} or a smaller max_segments")

    @property
    def num_labels(self) -> int:
        return _offset(self.options["max_segments"] + 1)

    def build_examples(self, doc: Document, rng: random.Random) -> list[dict[str, list[int]]]:
        m = self.options["max_segments"]
        paragraphs = [[s.text for s in p if s.text.strip()] for p in doc.paragraphs()]
        encoded = iter(self.tokenizer.encode_batch([t for p in paragraphs for t in p]))  # one call per document
        examples = []
        for texts in paragraphs:
            sentences = [enc for enc in (next(encoded) for _ in texts) if enc.ids]
            for window in paragraph_windows(sentences, self.seq_len - 1 - m):
                segments = cut_window(window, rng.randint(1, m), rng)
                perm = list(range(len(segments)))
                rng.shuffle(perm)
                ids, types = join_segments(self.tokenizer, [segments[p] for p in perm], self.seq_len)
                examples.append({"input_ids": ids, "token_type_ids": types, "labels": [encode_label(perm)]})
        return examples

    def label_name(self, label: int) -> str:
        return "order " + " ".join(str(i) for i in decode_label(label))

    def describe_example(self, example: dict[str, list[int]]) -> str:
        label = example["labels"][0]
        perm = decode_label(label)
        shown = split_segments(self.tokenizer, example["input_ids"])
        lines = [f"  shown {i} = original segment {perm[i]}: {self.tokenizer.decode(seg)}" for i, seg in enumerate(shown)]
        return "\n".join(lines + [f"  label: {label} = permutation {perm} (shown position -> original segment)"])
