"""Sentence distance (ERNIE 2.0): how far apart two sentences are.

Input: ``[CLS] s1 [SEP] s2 [SEP]`` (segment ids 0 then 1), predicted from [CLS].

Label construction: the sentences of a document in reading order (across paragraphs and sections)
are s_0 .. s_{L-1}. For ``pairs_per_sentence`` x L anchors s_i (i drawn uniformly) of a document
with L >= 3 sentences, the class is drawn uniformly from three, so the classes are balanced by
construction:

- 0 adjacent: s2 = s_{i+1} (for the last sentence, s1 = s_{i-1} and s2 = s_i: the pair is in order);
- 1 same document, not adjacent: s2 = s_j with |i - j| >= 2, j uniform among those;
- 2 different documents: s2 is a uniformly random sentence of another document of the split.

Documents with fewer than 3 sentences give no anchors (they cannot offer class 1); their sentences
still serve as class-2 partners. ``fit`` builds that pool, and needs at least two documents, one of
them with 3 or more sentences.
"""

from __future__ import annotations

import random
from typing import Any, ClassVar, Sequence

from ernie_cl.corpus.document import Document
from ernie_cl.errors import ConfigError, CorpusError

from ._segments import SentenceTask, join_segments
from .base import register_task

CLASS_NAMES = ("adjacent", "same document", "different documents")


@register_task
class SentenceDistance(SentenceTask):
    """Adjacent / same document / different documents; see the module docstring."""

    name = "sentence_distance"
    default_options: ClassVar[dict[str, Any]] = {"pairs_per_sentence": 0.5}

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
        self._pool = [(doc.id, s.text) for doc in documents for s in doc.sentences() if s.text.strip()]
        ids = {doc_id for doc_id, _ in self._pool}
        long_docs = sum(1 for doc in documents if doc.num_sentences() >= 3)
        if len(ids) < 2 or long_docs < 1:
            raise CorpusError(
                f"task 'sentence_distance' needs at least 2 documents with text, one of them with 3 or more "
                f"sentences; this split has {len(ids)} document(s), {long_docs} with 3+ sentences: use a larger corpus"
            )

    def _other_document_sentence(self, doc_id: str, rng: random.Random) -> str:
        while True:  # fit guarantees another document exists
            other_id, text = self._pool[rng.randrange(len(self._pool))]
            if other_id != doc_id:
                return text

    def build_examples(self, doc: Document, rng: random.Random) -> list[dict[str, list[int]]]:
        sentences = [s.text for s in doc.sentences() if s.text.strip()]
        n = len(sentences)
        if n < 3:
            return []
        rate = self.options["pairs_per_sentence"]
        count = int(n * rate) + (1 if rng.random() < n * rate - int(n * rate) else 0)
        pairs: list[tuple[str, str, int]] = []
        for _ in range(count):
            i, label = rng.randrange(n), rng.randrange(3)
            if label == 0:
                first, second = (i, i + 1) if i + 1 < n else (i - 1, i)
                pairs.append((sentences[first], sentences[second], 0))
            elif label == 1:
                if n - 1 - i < 2 and i < 2:  # the middle of three sentences has no distant partner
                    i = rng.choice((0, n - 1))
                j = rng.choice([j for j in range(n) if abs(j - i) >= 2])
                pairs.append((sentences[i], sentences[j], 1))
            else:
                pairs.append((sentences[i], self._other_document_sentence(doc.id, rng), 2))
        encoded = self.tokenizer.encode_batch([text for first, second, _ in pairs for text in (first, second)])
        examples = []
        for k, (_, _, label) in enumerate(pairs):  # one tokenizer call per document, not per pair
            ids, types = join_segments(self.tokenizer, [encoded[2 * k].ids, encoded[2 * k + 1].ids], self.seq_len)
            examples.append({"input_ids": ids, "token_type_ids": types, "labels": [label]})
        return examples
