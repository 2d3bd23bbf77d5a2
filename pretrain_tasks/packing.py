"""Packing a document's consecutive sentences into full-length token sequences, with a word map.

Token-level tasks (knowledge masking, capitalization, token-document relation) all read the same
kind of input: ``[CLS] sentence sentence ... [SEP]`` filled up to ``seq_len`` so little compute is
spent on padding (a sentence that does not fit goes on in the next chunk). Each chunk keeps, for
every word, where its sub-tokens sit and which characters of which sentence it covers, so tasks can
label words and map entity/phrase spans onto tokens.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ernie_cl.corpus.document import Document, Sentence
from ernie_cl.data.tokenizer import TextTokenizer


@dataclass(slots=True)  # slots: a chunk holds a Word per word, made and read in the hot loop
class Word:
    token_start: int  # position of the first sub-token in the chunk's ``ids`` (no [CLS] offset)
    token_end: int  # exclusive
    sentence: int  # index into the chunk's ``sentences``
    char_start: int  # character span in that sentence's text
    char_end: int


@dataclass
class Chunk:
    ids: list[int] = field(default_factory=list)
    words: list[Word] = field(default_factory=list)
    sentences: list[Sentence] = field(default_factory=list)


def pack_document(doc: Document, tokenizer: TextTokenizer, seq_len: int, fill: bool = True) -> list[Chunk]:
    """Pack a document's consecutive sentences into chunks of at most ``seq_len - 2`` sub-tokens
    (room for [CLS] and [SEP]).

    ``fill`` (``training.fill_chunks``, the default): every chunk but a document's last is full; the
    sentence that does not fit is cut at a word boundary and goes on in the next chunk, as run_mlm's
    blocks cut text anywhere. Without it, sentences stay whole: a chunk ends where the next sentence
    does not fit (on the bundled corpus 15% of the positions of a batch were padding), and a sentence
    longer than a chunk is cut at the limit."""
    budget = seq_len - 2
    sentences = [s for s in doc.sentences() if s.text.strip()]
    encodings = tokenizer.encode_batch([s.text for s in sentences])
    chunks: list[Chunk] = []
    current = Chunk()
    for sentence, enc in zip(sentences, encodings):
        word_ids = enc.word_ids
        n = len(enc.ids) if fill else min(len(enc.ids), budget)
        start = 0  # first token of the sentence not yet packed
        while start < n:
            room = budget - len(current.ids)
            end = n if n - start <= room else (_word_cut(word_ids, start, start + room) if fill else start)
            if end == start:  # not even the next word fits: a new chunk (a word longer than a chunk is cut)
                if not current.ids:
                    end = start + room
                else:
                    chunks.append(current)
                    current = Chunk()
                    continue
            _append_piece(current, sentence, enc, start, end)
            start = end
    if current.ids:
        chunks.append(current)
    return chunks


def _word_cut(word_ids: list, start: int, limit: int) -> int:
    """The last position in (start, limit] where a word begins (or ``start``: none does), so a cut
    there leaves every word whole."""
    for cut in range(limit, start, -1):
        if word_ids[cut] is None or word_ids[cut] != word_ids[cut - 1]:
            return cut
    return start


def _append_piece(chunk: Chunk, sentence: Sentence, enc, start: int, end: int) -> None:
    """Append tokens ``start:end`` of one sentence's encoding to ``chunk``, with their words."""
    base = len(chunk.ids) - start
    s_index = len(chunk.sentences)
    chunk.sentences.append(sentence)
    chunk.ids.extend(enc.ids[start:end])
    words, word_ids, offsets = chunk.words, enc.word_ids, enc.offsets
    last_word, word = None, None
    for pos in range(start, end):
        wid = word_ids[pos]
        first, last = offsets[pos]
        if wid is not None and wid == last_word:  # another sub-token of the same word
            word.token_end = base + pos + 1
            if last > word.char_end:
                word.char_end = last
        else:
            word = Word(base + pos, base + pos + 1, s_index, first, last)
            words.append(word)
        last_word = wid


def span_word_groups(chunk: Chunk, spans_of: str) -> list[list[int]]:
    """Indices of the chunk's words covered by each entity (``spans_of="entities"``) or phrase
    span; spans that cover no whole word are dropped."""
    groups: list[list[int]] = []
    words = chunk.words
    first = 0  # a sentence's words are a contiguous run of the chunk's words
    for s_index, sentence in enumerate(chunk.sentences):
        last = first
        while last < len(words) and words[last].sentence == s_index:
            last += 1
        for start, end in getattr(sentence, spans_of):
            inside = [i for i in range(first, last) if words[i].char_start >= start and words[i].char_end <= end]
            if inside:
                groups.append(inside)
        first = last
    return groups
