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

import itertools
import re
from collections import Counter
from collections.abc import Iterable
from typing import Any

from ernie_cl.corpus.document import Document, Span
from ernie_cl.errors import CorpusError

_WORD = re.compile(r"[^\W_]+(?:(?:['’./-]|(?<=\d),(?=\d))[^\W_]+)*")


def lowered_words(text: str) -> list[str]:
    """The words of ``text``, lowercased. ASCII text is lowercased first (one call, not one a word;
    the same words, since ASCII lowercasing keeps every character's length and class); other text
    word by word, since lowercasing may change its length (``İ`` becomes two characters)."""
    if text.isascii():
        return _WORD.findall(text.lower())
    return [word.lower() for word in _WORD.findall(text)]


def word_spans(text: str, count: int | None = None) -> list[Span]:
    """The character spans of the words of ``text`` (of its first ``count`` words)."""
    return [m.span() for m in itertools.islice(_WORD.finditer(text), count)]


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
        for sentence in document.sentences():  # the lowercased words, without their spans
            self._pending.append(lowered_words(sentence.text))
        if len(self._pending) >= _COUNT_BATCH:
            self._count()

    def _count(self) -> None:
        """Add the pending sentences' counts: what gensim's ``add_vocab`` adds, counted with
        ``count_words`` (several times faster than gensim's per-word loop); a batch large enough
        for gensim to prune while counting it is left to gensim, so the counts stay gensim's."""
        if not self._pending:
            return
        vocab, words = count_words(self._pending, self.model.delimiter, self.model.connector_words)
        if len(vocab) > self.model.max_vocab_size:
            self.model.add_vocab(self._pending)
        else:
            self._merge_counts(vocab, words, 1)  # min_reduce 1: gensim would not have pruned this batch
        self._pending = []

    def counts(self) -> tuple[dict[str, int], int, int]:
        """(word and bigram counts, words seen, gensim's pruning level): what a worker sends back."""
        self._count()
        return self.model.vocab, self.model.corpus_word_count, self.model.min_reduce

    def merge(self, vocab: dict[str, int], words: int, min_reduce: int) -> None:
        """Add another counter's ``counts()``, the way gensim's ``add_vocab`` merges a batch."""
        self._count()
        self._merge_counts(dict(vocab), words, min_reduce)

    def _merge_counts(self, vocab: dict[str, int], words: int, min_reduce: int) -> None:
        """gensim's ``add_vocab`` merge of one batch's counts (``vocab`` is taken over, not copied)."""
        from gensim.utils import prune_vocab

        model = self.model
        model.corpus_word_count += words
        if not model.vocab:
            model.vocab = vocab
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


def count_words(sentences: list[list[str]], delimiter: str, connectors: frozenset[str]) -> tuple[dict[str, int], int]:
    """(counts, words) of gensim's ``Phrases._learn_vocab`` for sentences it would not prune: every
    non-connector word, and every run from one non-connector word to the next with the connector
    words between them (``new_york``, ``bank_of_america``), joined by ``delimiter``."""
    counts: Counter[str] = Counter()
    total = 0
    for start in range(0, len(sentences), 256):  # one Counter update for many sentences (each call costs)
        words_and_pairs: list[str] = []
        for words in sentences[start:start + 256]:
            total += len(words)
            kept = [i for i, word in enumerate(words) if word not in connectors]
            words_and_pairs += [words[i] for i in kept]
            words_and_pairs += [delimiter.join(words[a : b + 1]) for a, b in zip(kept, kept[1:])]
        counts.update(words_and_pairs)
    return dict(counts), total


class PhraseMatcher:
    """gensim's frozen phrase detection (``FrozenPhrases.analyze_sentence``) as character spans,
    without its per-word generator: a sentence with no word that can begin a phrase is done after
    one set test, and the others follow gensim's greedy left-to-right rule. Phrases made of stop
    words only still take their words (as gensim's do) but give no span."""

    def __init__(self, frozen: Any):
        from gensim.parsing.preprocessing import STOPWORDS

        self.delimiter = frozen.delimiter
        self.phrases = frozenset(p for p, score in frozen.phrasegrams.items() if score > frozen.threshold)
        self.kept = frozenset(p for p in self.phrases if not all(w in STOPWORDS for w in p.split(self.delimiter)))
        self.starters = frozenset(p.split(self.delimiter)[0] for p in self.phrases)
        self.connectors = frozenset(frozen.connector_words)

    def spans(self, text: str) -> list[Span]:
        words = lowered_words(text)
        if self.starters.isdisjoint(words):
            return []
        starters, phrases, delimiter = self.starters, self.phrases, self.delimiter
        found, start, starting = [], 0, False  # starting: the candidate's first word can begin a phrase
        # connector words are skipped: before a phrase's first word a word of its own, after it part of the candidate
        for i in [i for i, word in enumerate(words) if word not in self.connectors]:
            if starting:
                phrase = delimiter.join(words[start : i + 1])
                if phrase in phrases:
                    if phrase in self.kept:
                        found.append((start, i))
                    starting = False
                    continue
            start, starting = i, words[i] in starters
        if not found:
            return []
        spans = word_spans(text, found[-1][1] + 1)  # up to the last phrase's last word
        return [(spans[a][0], spans[b][1]) for a, b in found]


def annotate_phrases(document: Document, matcher: PhraseMatcher) -> int:
    """Set every sentence's phrase spans from the phrase model; returns their count."""
    total = 0
    for sentence in document.sentences():
        sentence.phrases = matcher.spans(sentence.text)
        total += len(sentence.phrases)
    return total


def add_phrase_spans(documents: list[Document], min_count: int, threshold: float) -> int:
    """Learn phrases from ``documents`` and set every sentence's phrase spans; returns their count."""
    counter = PhraseCounter(min_count, threshold)
    for document in documents:
        counter.add(document)
    matcher = PhraseMatcher(counter.frozen())
    return sum(annotate_phrases(document, matcher) for document in documents)


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
