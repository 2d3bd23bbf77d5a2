"""Sentence distance (ERNIE 2.0): are two sentences adjacent, in the same document, or not?

Input: ``[CLS] s1 [SEP] s2 [SEP]`` (segment ids 0 then 1), predicted from [CLS].

Label construction. A document's sentences in reading order (across paragraphs and sections,
empty ones dropped) are s_0 .. s_{L-1}. A document with L >= 3 sentences gives ``pairs_per_sentence
* L`` examples (a fraction is rounded up with that probability, so the mean is exact). Their classes
cycle 0, 1, 2, 0, ... from a random first class (then the order is shuffled), so every document
contributes each class equally to within one: the split is balanced by construction, not only in
expectation.

- 0 adjacent: (s_i, s_{i+1}), i uniform in 0..L-2: s2 directly follows s1;
- 1 same document, not adjacent: (s_i, s_j), the pair {i < j, j - i >= 2} uniform among all such
  pairs; s1 comes first in the document, as in class 0, so only the distance tells 0 from 1;
- 2 different documents: (s_i, t), i uniform in 0..L-1 and t a uniformly random sentence of the
  split's OTHER documents.

Documents with fewer than 3 sentences give no example (they cannot offer class 1); their sentences
still serve as class-2 partners; ``fit`` counts these documents (``skipped_documents``) and logs the
count once per split. ``fit`` builds that pool of sentences and needs at least two documents with
text, one of them with 3 or more sentences.
"""

from __future__ import annotations

import random
from array import array
from typing import Any, ClassVar, Sequence

import numpy as np

from ernie_cl.corpus.document import Document
from ernie_cl.corpus.store import id_hash
from ernie_cl.errors import ConfigError, CorpusError

from ._segments import SentenceTask, join_segments, split_segments
from .base import register_task

CLASS_NAMES = ("adjacent", "same document, not adjacent", "different documents")


def texts_of(doc: Document) -> list[str]:
    return [s.text for s in doc.sentences() if s.text.strip()]


@register_task
class SentenceDistance(SentenceTask):
    """Adjacent / same document / different documents; see the module docstring."""

    name = "sentence_distance"
    version: ClassVar[int] = 2
    default_options: ClassVar[dict[str, Any]] = {"pairs_per_sentence": 1.0}

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        # the split's sentences, set by fit: UTF-8 text, sentence offsets, sorted id hashes, their runs
        self._text, self._offsets = bytearray(), np.zeros(1, dtype=np.int64)
        self._hashes, self._runs = np.zeros(0, dtype=np.uint64), np.zeros((0, 2), dtype=np.int64)

    def validate_options(self) -> None:
        rate = self.options["pairs_per_sentence"]
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 < rate <= 10:
            raise ConfigError(f"task 'sentence_distance': pairs_per_sentence must be a number in (0, 10], got {rate!r}")

    @property
    def num_labels(self) -> int:
        return 3

    def label_name(self, label: int) -> str:
        return CLASS_NAMES[label]

    def fit(self, documents: Sequence[Document]) -> None:
        # Every sentence of the split, document after document, in one UTF-8 buffer with offsets (no
        # Python object per sentence: about a byte a character, and forked workers share its pages
        # instead of copying them as reference counts change); a document's own sentences are the
        # run [start, end) of its id, so drawing "another document's sentence" needs no retries.
        self._text, offsets = bytearray(), array("q", [0])
        hashes, starts, ends = array("Q"), array("q"), array("q")
        long_docs = with_text = 0
        for doc in documents:
            texts = texts_of(doc)
            if texts:
                with_text += 1
                hashes.append(id_hash(doc.id))
                starts.append(len(offsets) - 1)
                for text in texts:
                    self._text += text.encode("utf-8")
                    offsets.append(len(self._text))
                ends.append(len(offsets) - 1)
            long_docs += len(texts) >= 3
        if with_text < 2 or long_docs < 1:
            raise CorpusError(
                f"task 'sentence_distance' needs at least 2 documents with text, one of them with 3 or more sentences; "
                f"this split has {with_text} document(s) with text, {long_docs} with 3+ sentences: "
                "use a larger corpus (or a larger eval_fraction for the held-out split)"
            )
        self._offsets = np.frombuffer(offsets, dtype=np.int64)
        order = np.argsort(np.frombuffer(hashes, dtype=np.uint64), kind="stable")
        self._hashes = np.frombuffer(hashes, dtype=np.uint64)[order]
        self._runs = np.stack([np.frombuffer(starts, dtype=np.int64), np.frombuffer(ends, dtype=np.int64)], 1)[order]
        self.report_skipped(len(documents) - long_docs, len(documents),
                            "have fewer than 3 sentences (their sentences still serve as different-document partners)")

    @property
    def _pool_size(self) -> int:
        return len(self._offsets) - 1

    def _sentence(self, index: int) -> str:
        return self._text[self._offsets[index]: self._offsets[index + 1]].decode("utf-8")

    def _run_of(self, doc_id: str) -> tuple[int, int]:
        """The pool positions [start, end) of the document's own sentences ((0, 0) if it has none)."""
        key = np.uint64(id_hash(doc_id))
        at = int(np.searchsorted(self._hashes, key))
        if at < len(self._hashes) and self._hashes[at] == key:
            return int(self._runs[at, 0]), int(self._runs[at, 1])
        return 0, 0

    def other_document_sentence(self, doc_id: str, rng: random.Random) -> str:
        start, end = self._run_of(doc_id)
        k = rng.randrange(self._pool_size - (end - start))
        return self._sentence(k + (end - start) if k >= start else k)  # skip over the document's own run

    def build_examples(self, doc: Document, rng: random.Random) -> list[dict[str, list[int]]]:
        if not self._pool_size:
            raise RuntimeError("task 'sentence_distance': call fit(documents) on the split before build_examples")
        sentences = texts_of(doc)
        n = len(sentences)
        if n < 3:
            return []
        expected = self.options["pairs_per_sentence"] * n
        count = int(expected) + (rng.random() < expected - int(expected))
        first_class = rng.randrange(3)
        labels = [(first_class + k) % 3 for k in range(count)]
        rng.shuffle(labels)  # balanced counts, but no fixed class rhythm in the example order
        pairs: list[tuple[int, int, int]] = []  # (s1, s2, label); s2 >= n points into `others`
        others: list[str] = []
        for label in labels:
            if label == 0:
                i = rng.randrange(n - 1)
                pairs.append((i, i + 1, 0))
            elif label == 1:
                while True:  # uniform over pairs at distance >= 2; accepts >= 2/9 of the draws
                    i, j = rng.randrange(n), rng.randrange(n)
                    if abs(i - j) >= 2:
                        break
                pairs.append((min(i, j), max(i, j), 1))
            else:
                pairs.append((rng.randrange(n), n + len(others), 2))
                others.append(self.other_document_sentence(doc.id, rng))
        # One tokenizer call per document; each of its sentences is tokenized once.
        encoded = [e.ids for e in self.tokenizer.encode_batch(sentences + others)]
        examples = []
        for first, second, label in pairs:
            ids, types = join_segments(self.tokenizer, [encoded[first], encoded[second]], self.seq_len)
            examples.append({"input_ids": ids, "token_type_ids": types, "labels": [label]})
        return examples

    def describe_example(self, example: dict[str, list[int]]) -> str:
        first, second = (self.tokenizer.decode(s) for s in split_segments(self.tokenizer, example["input_ids"]))
        label = example["labels"][0]
        return f"  s1: {first}\n  s2: {second}\n  label: {label} ({self.label_name(label)})"
