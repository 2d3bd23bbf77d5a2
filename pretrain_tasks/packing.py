"""Packing a document's consecutive sentences into full-length token sequences, with a word map.

Token-level tasks (knowledge masking, capitalization, token-document relation) all read the same
kind of input: ``[CLS] sentence sentence ... [SEP]`` filled up to ``seq_len`` so no compute is
spent on padding. Each chunk keeps, for every word, where its sub-tokens sit and which characters
of which sentence it covers, so tasks can label words and map entity/phrase spans onto tokens.
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


def pack_document(doc: Document, tokenizer: TextTokenizer, seq_len: int) -> list[Chunk]:
    """Greedily pack consecutive sentences into chunks of at most ``seq_len - 2`` sub-tokens
    (room for [CLS] and [SEP]). A sentence longer than that is cut at the limit."""
    budget = seq_len - 2
    sentences = [s for s in doc.sentences() if s.text.strip()]
    encodings = tokenizer.encode_batch([s.text for s in sentences])
    chunks: list[Chunk] = []
    current = Chunk()
    for sentence, enc in zip(sentences, encodings):
        n = min(len(enc.ids), budget)
        if n == 0:
            continue
        if current.ids and len(current.ids) + n > budget:
            chunks.append(current)
            current = Chunk()
        base = len(current.ids)
        s_index = len(current.sentences)
        current.sentences.append(sentence)
        current.ids.extend(enc.ids[:n])
        words, word_ids, offsets = current.words, enc.word_ids, enc.offsets
        last_word, word = None, None
        for pos in range(n):
            wid = word_ids[pos]
            start, end = offsets[pos]
            if wid is not None and wid == last_word:  # another sub-token of the same word
                word.token_end = base + pos + 1
                if end > word.char_end:
                    word.char_end = end
            else:
                word = Word(base + pos, base + pos + 1, s_index, start, end)
                words.append(word)
            last_word = wid
    if current.ids:
        chunks.append(current)
    return chunks


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
