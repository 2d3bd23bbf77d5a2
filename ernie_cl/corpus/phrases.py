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


def add_phrase_spans(documents: list[Document], min_count: int, threshold: float,
                     progress: Any = None) -> int:
    """Train Phrases on ``documents`` and set every sentence's phrase spans; returns their count."""
    from gensim.models.phrases import ENGLISH_CONNECTOR_WORDS, Phrases  # heavy: import on use
    from gensim.parsing.preprocessing import STOPWORDS

    sentences = [s for doc in documents for s in doc.sentences()]
    tokenized = [_sentence_tokens(s) for s in sentences]
    model = Phrases(
        (tokens for tokens, _ in tokenized),
        min_count=min_count,
        threshold=threshold,
        connector_words=ENGLISH_CONNECTOR_WORDS,
    ).freeze()  # the frozen model only keeps found phrases: much faster to apply
    delimiter = model.delimiter
    total = 0
    for sentence, (tokens, spans) in zip(sentences, tokenized, strict=True):
        found, index = [], 0
        for item, score in model.analyze_sentence(tokens):
            length = item.count(delimiter) + 1 if score is not None else 1
            if score is not None and not all(word in STOPWORDS for word in item.split(delimiter)):
                found.append((spans[index][0], spans[index + length - 1][1]))
            index += length
        sentence.phrases = found
        total += len(found)
        if progress is not None:
            progress.update(1)
    return total


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
