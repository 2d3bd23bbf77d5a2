"""Turn a reader's raw text into a Document: paragraphs, collapsed whitespace, sentences, spans.

Every reader yields a RawDocument: sections whose ``text`` holds paragraphs separated by blank
lines, with entity spans as character offsets into that text. This module is the only place that
splits text, so every source gets the same paragraph, whitespace and sentence rules, and spans
are re-mapped (never re-searched) through each step. A span that crosses a paragraph or sentence
boundary is dropped, because a task could not use it inside one sentence anyway.

Long sentences: text without sentence punctuation (a log dump, a table flattened into one line, a
50 MB line) would otherwise become one huge "sentence" that every task tokenizes in full and then
truncates to ``seq_len`` tokens. A sentence longer than ``MAX_SENTENCE_CHARS`` (5,000 characters,
about 1,000 tokens: twice the largest position table shipped in configs/model) is therefore cut at
spaces into pieces of at most that length (at the limit itself when a piece has no space), counted
as ``long_sentences_cut`` in the corpus stats. Spans crossing a cut are dropped like any span that
crosses a sentence boundary. The splitter itself is linear: a 50 MB line takes about 6 s to split.
"""

from __future__ import annotations

import bisect
import re
from collections import Counter
from dataclasses import dataclass, field

import sentencex

from ernie_cl.corpus.document import Document, Section, Sentence, Span

_PARAGRAPH_BREAK = re.compile(r"\n[^\S\n]*\n\s*")
_NON_SPACE = re.compile(r"\S+")
_HAS_WORD = re.compile(r"[^\W_]")
MAX_SENTENCE_CHARS = 5_000


@dataclass
class RawSection:
    heading: str
    text: str  # paragraphs separated by blank lines; any other whitespace is collapsed later
    entities: list[Span] = field(default_factory=list)  # offsets into ``text``
    level: int = 0  # heading depth (wiki "==" is 2); 0 for the lead section and flat sources


@dataclass
class RawDocument:
    id: str
    title: str
    sections: list[RawSection] = field(default_factory=list)


def _inside(spans: list[Span], start: int, end: int) -> list[Span]:
    """Spans fully inside [start, end), shifted to start at 0."""
    return [(a - start, b - start) for a, b in spans if start <= a and b <= end]


def _rebuild(text: str, segments: list[Span], sep: str, spans: list[Span]) -> tuple[str, list[Span]]:
    """Join the kept ``segments`` of ``text`` with ``sep``, moving spans along.

    A span start in a dropped gap moves forward to the next kept segment, a span end backward to
    the previous one, so spans never begin or end in dropped text; spans left empty are dropped.
    """
    segments = [(a, b) for a, b in segments if a < b]
    if not segments:
        return "", []
    new_starts, position = [], 0
    for a, b in segments:
        new_starts.append(position)
        position += (b - a) + len(sep)
    rebuilt = sep.join(text[a:b] for a, b in segments)
    old_starts = [a for a, _ in segments]

    def map_start(x: int) -> int:
        i = bisect.bisect_right(old_starts, x) - 1
        if i >= 0 and x < segments[i][1]:
            return new_starts[i] + x - segments[i][0]
        return new_starts[i + 1] if i + 1 < len(segments) else len(rebuilt)

    def map_end(x: int) -> int:
        i = bisect.bisect_left(old_starts, x) - 1  # last segment starting before x
        return new_starts[i] + min(x, segments[i][1]) - segments[i][0] if i >= 0 else 0

    mapped = [(map_start(a), map_end(b)) for a, b in spans]
    return rebuilt, [(a, b) for a, b in mapped if a < b]


def collapse_whitespace(text: str, spans: list[Span]) -> tuple[str, list[Span]]:
    """Join the non-space runs of ``text`` with single spaces, moving spans along."""
    runs = _NON_SPACE.findall(text)
    if " ".join(runs) == text and all(a < b and not text[a].isspace() and not text[b - 1].isspace() for a, b in spans):
        return text, spans  # already collapsed (most text), no span touching a space: _rebuild would change nothing
    return _rebuild(text, [(m.start(), m.end()) for m in _NON_SPACE.finditer(text)], " ", spans)


def delete_matches(text: str, spans: list[Span], pattern: re.Pattern[str]) -> tuple[str, list[Span]]:
    """Remove every match of ``pattern`` from ``text``, moving spans along."""
    kept, position = [], 0
    for match in pattern.finditer(text):
        kept.append((position, match.start()))
        position = match.end()
    if position == 0:
        return text, spans
    kept.append((position, len(text)))
    return _rebuild(text, kept, "", spans)


def split_paragraphs(text: str, spans: list[Span]) -> list[tuple[str, list[Span]]]:
    """Blank-line separated paragraphs with collapsed whitespace; empty ones are skipped."""
    paragraphs, start = [], 0
    bounds = [(m.start(), m.end()) for m in _PARAGRAPH_BREAK.finditer(text)] + [(len(text), len(text))]
    for break_start, break_end in bounds:
        para, para_spans = collapse_whitespace(text[start:break_start], _inside(spans, start, break_start))
        if para:
            paragraphs.append((para, para_spans))
        start = break_end
    return paragraphs


def cut_long(text: str, limit: int = MAX_SENTENCE_CHARS) -> list[Span]:
    """[start, end) pieces of ``text`` of at most ``limit`` characters, cut at the last space before
    the limit (the space itself is dropped), or at the limit when there is no space to cut at."""
    pieces, start = [], 0
    while len(text) - start > limit:
        cut = text.rfind(" ", start + 1, start + limit + 1)
        if cut <= start:
            pieces.append((start, start + limit))
            start += limit
        else:
            pieces.append((start, cut))
            start = cut + 1
    pieces.append((start, len(text)))
    return pieces


def _pieces(text: str, spans: list[Span], stats: Counter | None) -> list[tuple[str, list[Span]]]:
    """A sentence, or the pieces of a sentence longer than MAX_SENTENCE_CHARS, with their spans."""
    if len(text) <= MAX_SENTENCE_CHARS:
        return [(text, spans)]
    if stats is not None:
        stats["long_sentences_cut"] += 1
    spans = sorted(spans)
    starts = [a for a, _ in spans]
    out = []
    for a, b in cut_long(text):
        first, last = bisect.bisect_left(starts, a), bisect.bisect_left(starts, b)
        out.append((text[a:b], [(x - a, y - a) for x, y in spans[first:last] if y <= b]))
    return out


def split_sentences(paragraph: str, spans: list[Span], language: str = "en",
                    stats: Counter | None = None) -> list[Sentence]:
    """Sentences of one collapsed paragraph, each stripped, with spans re-mapped into it.

    sentencex keeps trailing whitespace so its pieces usually concatenate back to the input, but
    it can drop whitespace-only pieces; locating each stripped piece from a cursor is exact
    either way. Sentences without a single letter or digit (e.g. a lone "." left behind by a
    removed template) are dropped.
    """
    sentences, cursor = [], 0
    for piece in sentencex.segment(language, paragraph):
        stripped = piece.strip()
        if not stripped:
            continue
        start = paragraph.find(stripped, cursor)
        own_spans: list[Span] = []
        if start >= 0:  # else sentencex altered the text: keep its piece, lose its spans
            cursor = start + len(stripped)
            own_spans = _inside(spans, start, cursor)
        for text, text_spans in _pieces(stripped, own_spans, stats):
            if _HAS_WORD.search(text):
                sentences.append(Sentence(text=text, entities=text_spans))
    return sentences


def _keep_sections(raw: list[RawSection], sentence_counts: list[int]) -> list[bool]:
    """Keep sections with sentences, and headings whose subsections have sentences (outline)."""
    keep = []
    for i, section in enumerate(raw):
        keep_it = sentence_counts[i] > 0
        if not keep_it and section.heading:
            for j in range(i + 1, len(raw)):
                if raw[j].level <= section.level:
                    break
                if sentence_counts[j] > 0:
                    keep_it = True
                    break
        keep.append(keep_it)
    return keep


def build_document(raw: RawDocument, language: str = "en", stats: Counter | None = None) -> Document:
    """Split a RawDocument into a Document; the result has no sentences if the text was empty.
    ``stats`` counts ``long_sentences_cut``."""
    built: list[Section] = []
    for section in raw.sections:
        paragraphs = []
        for para, spans in split_paragraphs(section.text, section.entities):
            sentences = split_sentences(para, spans, language, stats)
            if sentences:
                paragraphs.append(sentences)
        built.append(Section(heading=section.heading, paragraphs=paragraphs))
    counts = [sum(len(p) for p in s.paragraphs) for s in built]
    keep = _keep_sections(raw.sections, counts)
    sections = [s for s, k in zip(built, keep, strict=True) if k]
    return Document(id=raw.id, title=raw.title, sections=sections)
