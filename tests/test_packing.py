"""Packing a document into chunks: filled chunks (the default, ``training.fill_chunks``) cut the
sentence that does not fit at a word boundary and lose nothing; whole-sentence chunks keep the
earlier behaviour. Words keep pointing at the right characters of the right sentence."""

from __future__ import annotations

import random

import pytest

from ernie_cl.corpus.document import Document, Section, Sentence
from pretrain_tasks import get_task_class
from pretrain_tasks._packed import FusedPackedTasks
from pretrain_tasks.packing import pack_document
from ernie_cl.errors import ConfigError

from conftest import random_document


def sentence_tokens(doc: Document, tokenizer) -> list[list[int]]:
    sentences = [s for s in doc.sentences() if s.text.strip()]
    return [enc.ids for enc in tokenizer.encode_batch([s.text for s in sentences])]


def word_starts(doc: Document, tokenizer) -> set[int]:
    """Positions, in the document's concatenated tokens, where a word begins."""
    starts, offset = set(), 0
    sentences = [s for s in doc.sentences() if s.text.strip()]
    for enc in tokenizer.encode_batch([s.text for s in sentences]):
        ids = enc.word_ids
        starts |= {offset + i for i in range(len(ids)) if i == 0 or ids[i] is None or ids[i] != ids[i - 1]}
        offset += len(ids)
    return starts


@pytest.mark.parametrize("seq_len", [12, 24, 64])
def test_filled_chunks_lose_nothing_are_full_and_cut_between_words(tokenizer, seq_len):
    rng = random.Random(seq_len)
    for index in range(15):
        doc = random_document(rng, f"d{index}", paragraphs=2, sentences=4)
        chunks = pack_document(doc, tokenizer, seq_len)
        assert [i for c in chunks for i in c.ids] == [i for ids in sentence_tokens(doc, tokenizer) for i in ids]
        starts, cut, longest_word = word_starts(doc, tokenizer), 0, 0
        for chunk in chunks:
            assert 0 < len(chunk.ids) <= seq_len - 2
            assert cut in starts  # a chunk starts with a whole word
            cut += len(chunk.ids)
            longest_word = max([longest_word] + [w.token_end - w.token_start for w in chunk.words])
        for chunk in chunks[:-1]:  # full, up to the part of a word that did not fit
            assert len(chunk.ids) > seq_len - 2 - longest_word


def test_words_of_a_cut_sentence_point_at_their_own_text(tokenizer, rich_document):
    chunks = pack_document(rich_document, tokenizer, 24)
    cut_sentences = 0
    for k, chunk in enumerate(chunks):
        assert [w.token_start for w in chunk.words] == sorted(w.token_start for w in chunk.words)
        covered = [p for w in chunk.words for p in range(w.token_start, w.token_end)]
        assert covered == list(range(len(chunk.ids)))  # words partition the chunk's tokens
        for word in chunk.words:
            text = chunk.sentences[word.sentence].text[word.char_start:word.char_end].lower()
            pieces = [tokenizer.id_to_token(i).removeprefix("##") for i in chunk.ids[word.token_start:word.token_end]]
            assert "".join(pieces) == text
        if k and chunks[k - 1].sentences[-1] is chunk.sentences[0]:
            cut_sentences += 1
    assert cut_sentences > 0  # the document did have sentences going on into the next chunk


def test_a_sentence_longer_than_a_chunk_goes_on_instead_of_being_cut_off(tokenizer):
    text = " ".join(["the old bridge crossed the river"] * 8) + "."
    doc = Document("d", "t", [Section("", [[Sentence(text)]])])
    filled = pack_document(doc, tokenizer, 16)
    whole = pack_document(doc, tokenizer, 16, fill=False)
    total = len(tokenizer.encode_batch([text])[0].ids)
    assert sum(len(c.ids) for c in filled) == total > 14
    assert len(whole) == 1 and len(whole[0].ids) == 14  # the old rule: cut at the limit


def test_whole_sentence_chunks_end_where_the_next_sentence_does_not_fit(tokenizer, rich_document):
    chunks = pack_document(rich_document, tokenizer, 64, fill=False)
    sentences = [s for s in rich_document.sentences() if s.text.strip()]
    assert [s for c in chunks for s in c.sentences] == sentences  # each sentence exactly once, whole
    lengths = [len(ids) for ids in sentence_tokens(rich_document, tokenizer)]
    first = 0
    for chunk in chunks[:-1]:
        count = len(chunk.sentences)
        assert sum(lengths[first:first + count]) == len(chunk.ids)
        assert len(chunk.ids) + lengths[first + count] > 62  # the next sentence did not fit
        first += count


def test_fill_chunks_is_part_of_the_example_fingerprint_and_fused_members_must_agree(tokenizer, rich_document):
    task_class = get_task_class("knowledge_masking")
    filled, whole = task_class(tokenizer, 64), task_class(tokenizer, 64)
    whole.fill_chunks = False
    assert filled.fingerprint_data() != whole.fingerprint_data()
    a = [e["input_ids"] for e in filled.build_examples(rich_document, random.Random(0))]
    b = [e["input_ids"] for e in whole.build_examples(rich_document, random.Random(0))]
    assert [len(x) for x in a] != [len(x) for x in b]
    capitalization = get_task_class("capitalization")(tokenizer, 64)
    with pytest.raises(ConfigError, match="fill_chunks"):
        FusedPackedTasks([whole, capitalization])
