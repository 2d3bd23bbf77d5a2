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
from typing import Any, ClassVar, Sequence

import numpy as np

from ernie_cl.corpus.document import Document
from ernie_cl.corpus.workers import map_ranges
from ernie_cl.errors import ConfigError, CorpusError

from ._segments import SentenceTask, join_segments, split_segments
from ._text_table import RunsById, TextTable, encode_texts
from .base import register_task

CLASS_NAMES = ("adjacent", "same document, not adjacent", "different documents")


def texts_of(doc: Document) -> list[str]:
    return [s.text for s in doc.sentences() if s.text.strip()]


def sentences_by_document(documents: Sequence[Document]) -> tuple[list[str], list[int], bytes, np.ndarray]:
    """What ``fit`` needs of a range of documents, read in a worker: their ids, their numbers of
    non-empty sentences, and those sentences encoded for ``TextTable.extend`` (one bytes object,
    not a string per sentence: the parent appends them without making an object per sentence)."""
    per_document = [texts_of(doc) for doc in documents]
    data, ends = encode_texts([text for texts in per_document for text in texts])
    return [doc.id for doc in documents], [len(texts) for texts in per_document], data, ends


@register_task
class SentenceDistance(SentenceTask):
    """Adjacent / same document / different documents; see the module docstring."""

    name = "sentence_distance"
    version: ClassVar[int] = 2
    default_options: ClassVar[dict[str, Any]] = {"pairs_per_sentence": 1.0}

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._pool, self._runs = TextTable(), RunsById()  # the split's sentences, set by fit

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
        # Every sentence of the split, document after document (a compact TextTable); a document's
        # own sentences are its run, so drawing "another document's sentence" needs no retries.
        # Workers read the documents (map_ranges); here their sentences are only appended.
        self._pool, self._runs = TextTable(), RunsById()
        long_docs = 0
        for doc_ids, counts, data, ends in map_ranges(sentences_by_document, documents):
            start = len(self._pool)
            self._pool.extend(data, ends)
            for doc_id, count in zip(doc_ids, counts):
                if count:
                    self._runs.add(doc_id, start, start + count)
                    start += count
                long_docs += count >= 3
        self._pool.flush()
        self._runs.freeze()
        if len(self._runs) < 2 or long_docs < 1:
            raise CorpusError(
                f"task 'sentence_distance' needs at least 2 documents with text, one of them with 3 or more sentences; "
                f"this split has {len(self._runs)} document(s) with text, {long_docs} with 3+ sentences: "
                "use a larger corpus (or a larger eval_fraction for the held-out split)"
            )
        self.report_skipped(len(documents) - long_docs, len(documents),
                            "have fewer than 3 sentences (their sentences still serve as different-document partners)")

    def other_document_sentence(self, own: range, rng: random.Random) -> str:
        """A uniformly random sentence of the pool outside ``own``, the document's run."""
        k = rng.randrange(len(self._pool) - len(own))
        return self._pool[k + len(own) if k >= own.start else k]  # skip over the document's own run

    def build_examples(self, doc: Document, rng: random.Random) -> list[dict[str, list[int]]]:
        if not len(self._pool):
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
        own = None
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
                own = self._runs.get(doc.id) if own is None else own  # found once a document
                others.append(self.other_document_sentence(own, rng))
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
