"""Extra span sources: gensim collocation phrases, and spaCy named entities when asked for.

Phrases are learned from the corpus itself (ERNIE's phrase-level masking needs multi-word
units, not a fixed lexicon): a gensim ``Phrases`` model is trained on lowercased word tokens of
every sentence, then each detected multi-word phrase becomes a phrase span in character offsets.

A word is a run of letters/digits joined through single inner apostrophes, hyphens, periods or
slashes, and digit groups through commas ("Lincoln's", "self-governed", "U.S", "1,000"), so
possessives and abbreviations are not mistaken for two-word phrases. Underscores (gensim's
phrase delimiter) never occur in a word, so a detected phrase's word count is its number of
``_``-joined parts. Phrases made only of stop
words ("it is", "such as", "has been" - gensim's STOPWORDS list) are discarded: they are frequent
collocations but not the multi-word units phrase masking is meant to teach.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from ernie_cl.corpus.document import Document, Sentence, Span
from ernie_cl.errors import CorpusError

_WORD = re.compile(r"[^\W_]+(?:(?:['’./-]|(?<=\d),(?=\d))[^\W_]+)*")


def word_spans(text: str) -> list[Span]:
    return [(m.start(), m.end()) for m in _WORD.finditer(text)]


def _sentence_tokens(sentence: Sentence) -> tuple[list[str], list[Span]]:
    spans = word_spans(sentence.text)
    return [sentence.text[a:b].lower() for a, b in spans], spans


PHRASE_VOCAB_LIMIT = 2_000_000  # gensim prunes its word + bigram counts beyond this (its default: 40M)
_COUNT_BATCH = 50_000  # sentences counted together (gensim merges each batch's counts into the model)


class PhraseCounter:
    """Word and bigram counts of a stream of documents (gensim ``Phrases``), merged batch by batch.

    The counts are bounded by the vocabulary, not by the corpus: whenever the table passes
    ``vocab_limit`` entries gensim drops the rarest ones (``prune_vocab``), as it does in one pass.
    Without pruning, counting in batches gives exactly the counts of one pass over everything."""

    def __init__(self, min_count: int, threshold: float, vocab_limit: int = PHRASE_VOCAB_LIMIT):
        from gensim.models.phrases import ENGLISH_CONNECTOR_WORDS, Phrases  # heavy: import on use

        self.model = Phrases(min_count=min_count, threshold=threshold, connector_words=ENGLISH_CONNECTOR_WORDS,
                             max_vocab_size=vocab_limit)
        self._pending: list[list[str]] = []

    def add(self, document: Document) -> None:
        for sentence in document.sentences():  # the words of _sentence_tokens, without their spans
            self._pending.append([word.lower() for word in _WORD.findall(sentence.text)])
        if len(self._pending) >= _COUNT_BATCH:
            self._count()

    def _count(self) -> None:
        if self._pending:
            self.model.add_vocab(self._pending)
            self._pending = []

    def counts(self) -> tuple[dict[str, int], int, int]:
        """(word and bigram counts, words seen, gensim's pruning level): what a worker sends back."""
        self._count()
        return self.model.vocab, self.model.corpus_word_count, self.model.min_reduce

    def merge(self, vocab: dict[str, int], words: int, min_reduce: int) -> None:
        """Add another counter's ``counts()``, the way gensim's ``add_vocab`` merges a batch."""
        from gensim.utils import prune_vocab

        model = self.model
        self._count()
        model.corpus_word_count += words
        if not model.vocab:
            model.vocab = dict(vocab)
            return
        model.min_reduce = max(model.min_reduce, min_reduce)
        for word, count in vocab.items():
            model.vocab[word] = model.vocab.get(word, 0) + count
        if len(model.vocab) > model.max_vocab_size:
            prune_vocab(model.vocab, model.min_reduce)
            model.min_reduce += 1

    def frozen(self) -> Any:
        """The phrase model to apply (gensim's frozen form keeps only the found phrases)."""
        self._count()
        return self.model.freeze()


def annotate_phrases(document: Document, frozen: Any) -> int:
    """Set every sentence's phrase spans from the frozen model; returns their count."""
    from gensim.parsing.preprocessing import STOPWORDS

    delimiter, total = frozen.delimiter, 0
    for sentence in document.sentences():
        tokens, spans = _sentence_tokens(sentence)
        found, index = [], 0
        for item, score in frozen.analyze_sentence(tokens):
            length = item.count(delimiter) + 1 if score is not None else 1
            if score is not None and not all(word in STOPWORDS for word in item.split(delimiter)):
                found.append((spans[index][0], spans[index + length - 1][1]))
            index += length
        sentence.phrases = found
        total += len(found)
    return total


def add_phrase_spans(documents: list[Document], min_count: int, threshold: float) -> int:
    """Learn phrases from ``documents`` and set every sentence's phrase spans; returns their count."""
    counter = PhraseCounter(min_count, threshold)
    for document in documents:
        counter.add(document)
    frozen = counter.frozen()
    return sum(annotate_phrases(document, frozen) for document in documents)


def load_spacy(model_name: str) -> Any:
    """The spaCy pipeline ``model_name``, or a one-line CorpusError saying what to install."""
    try:
        import spacy
    except ImportError:
        raise CorpusError(
            f"spacy_model='{model_name}' needs spaCy, which is not installed; run "
            f"`pip install spacy && python -m spacy download {model_name}`, or set spacy_model to null"
        ) from None
    try:
        return spacy.load(model_name, disable=["parser", "lemmatizer", "tagger"])
    except OSError:
        raise CorpusError(
            f"spaCy model '{model_name}' is not installed; run `python -m spacy download "
            f"{model_name}`, or set spacy_model to null"
        ) from None


def add_spacy_entities(documents: Iterable[Document], nlp: Any, batch_size: int = 256) -> int:
    """Add spaCy NER spans to each sentence's entities; returns how many were added.

    NER entities are *added* to the existing (e.g. wiki link) entities; one that overlaps an
    existing entity is skipped, so link anchors win and spans never overlap.
    """
    sentences = [s for doc in documents for s in doc.sentences()]
    added = 0
    parsed_texts = nlp.pipe((s.text for s in sentences), batch_size=batch_size)
    for sentence, parsed in zip(sentences, parsed_texts, strict=True):
        spans = list(sentence.entities)
        for ent in parsed.ents:
            start, end = int(ent.start_char), int(ent.end_char)
            if start < end and all(end <= a or b <= start for a, b in spans):
                spans.append((start, end))
                added += 1
        sentence.entities = sorted(spans)
    return added
