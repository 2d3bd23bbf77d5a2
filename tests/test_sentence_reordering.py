"""sentence_reordering: the label space, the permutation code's round trip, and built examples that
un-shuffle (by their decoded label) back into the paragraph's text, cut where the rules say."""

from __future__ import annotations

import itertools
import math
import random
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ernie_cl.corpus.document import Document, Section, Sentence
from ernie_cl.errors import ConfigError
from pretrain_tasks import get_task_class
from pretrain_tasks._segments import split_segments
from pretrain_tasks.sentence_reordering import cut_window, decode_label, encode_label

WORDS = ["paris", "london", "river", "museum", "bridge", "garden", "letter", "painting", "harbour", "school",
         "lake", "machine", "palace", "boat", "library", "street", "visited", "built", "crossed", "studied"]


def make_document(rng: random.Random, paragraphs: list[int], doc_id: str = "d", min_words: int = 1) -> Document:
    sections = [[Sentence(" ".join(rng.choice(WORDS) for _ in range(rng.randint(min_words, 8))) + ".") for _ in range(size)]
                for size in paragraphs]
    return Document(doc_id, "T", [Section("", sections[:1]), Section("History", sections[1:])])


def unshuffle(shown: list[list[int]], perm: tuple[int, ...]) -> list[list[int]]:
    original: list[list[int]] = [[] for _ in perm]
    for position, source in enumerate(perm):
        original[source] = shown[position]
    return original


# --- the label code -----------------------------------------------------------------------------
@pytest.mark.parametrize("m, size", [(1, 1), (2, 3), (3, 9), (4, 33), (5, 153)])
def test_label_space_is_the_sum_of_factorials(tokenizer, m, size):
    assert get_task_class("sentence_reordering")(tokenizer, 128, {"max_segments": m}).num_labels == size


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5])
def test_permutations_of_n_fill_one_block_in_lexicographic_order(n):
    offset = sum(math.factorial(k) for k in range(1, n))
    # itertools yields permutations in lexicographic order: their labels must count up from the offset
    assert [encode_label(p) for p in itertools.permutations(range(n))] == list(range(offset, offset + math.factorial(n)))


def test_a_few_labels_by_hand():
    assert encode_label((0,)) == 0
    assert (encode_label((0, 1)), encode_label((1, 0))) == (1, 2)
    assert (encode_label((0, 1, 2)), encode_label((0, 2, 1)), encode_label((2, 1, 0))) == (3, 4, 8)
    assert decode_label(9) == (0, 1, 2, 3) and decode_label(32) == (3, 2, 1, 0)


@settings(max_examples=50, deadline=None)
@given(perm=st.integers(1, 6).flatmap(lambda n: st.permutations(list(range(n)))))
def test_a_permutation_round_trips_through_its_label(perm):
    assert decode_label(encode_label(perm)) == tuple(perm)


def test_every_label_of_m_5_round_trips():
    assert all(encode_label(decode_label(label)) == label for label in range(153))


@pytest.mark.parametrize("bad", [(), (1,), (0, 0), (0, 2)])
def test_encode_refuses_what_is_not_a_permutation(bad):
    with pytest.raises(ValueError, match="not a permutation"):
        encode_label(bad)


# --- built examples -----------------------------------------------------------------------------
@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10**6), sizes=st.lists(st.integers(1, 7), min_size=1, max_size=4),
       m=st.integers(1, 5), seq_len=st.sampled_from([24, 64, 128]))
def test_unshuffling_by_the_decoded_label_restores_the_paragraph_text(tokenizer, seed, sizes, m, seq_len):
    task = get_task_class("sentence_reordering")(tokenizer, seq_len, {"max_segments": m})
    doc = make_document(random.Random(seed), sizes)
    restored = []
    for example in task.build_examples(doc, random.Random(seed)):
        label = example["labels"][0]
        assert 0 <= label < task.num_labels and len(example["input_ids"]) <= seq_len
        perm = decode_label(label)
        shown = split_segments(tokenizer, example["input_ids"])
        assert len(shown) == len(perm) <= m and all(shown)
        restored += [t for segment in unshuffle(shown, perm) for t in segment]
    # Windows cover each paragraph once, in order: un-shuffled, the examples ARE the document's text.
    sentences = [s.text for p in doc.paragraphs() for s in p]
    assert restored == [t for enc in tokenizer.encode_batch(sentences) for t in enc.ids]


@settings(max_examples=50, deadline=None)
@given(seed=st.integers(0, 10**6), lengths=st.lists(st.integers(1, 9), min_size=1, max_size=5), n=st.integers(1, 6))
def test_cuts_fall_on_sentence_boundaries_first_then_on_word_boundaries(tokenizer, seed, lengths, n):
    rng = random.Random(seed)
    window = tokenizer.encode_batch([" ".join(rng.choice(WORDS) for _ in range(k)) for k in lengths])
    segments = cut_window(window, n, random.Random(seed))
    assert [t for s in segments for t in s] == [t for enc in window for t in enc.ids] and all(segments)
    cuts = set(itertools.accumulate(len(s) for s in segments[:-1]))
    sentence_starts = set(itertools.accumulate(len(enc.ids) for enc in window[:-1]))
    word_starts = {start + p for start, enc in zip([0, *itertools.accumulate(len(e.ids) for e in window)], window)
                   for p in range(len(enc.ids)) if p == 0 or enc.word_ids[p] != enc.word_ids[p - 1]}
    assert len(segments) == min(n, len(word_starts))  # n is lowered only when there are too few words
    if len(window) >= n:
        assert cuts <= sentence_starts
    else:
        assert sentence_starts <= cuts <= word_starts


def test_segment_counts_are_uniform_even_with_one_sentence_paragraphs(tokenizer):
    task = get_task_class("sentence_reordering")(tokenizer, 128)
    docs = [make_document(random.Random(i), [1, 1, 2, 5, 1], doc_id=f"d{i}", min_words=2) for i in range(120)]
    labels = [ex["labels"][0] for doc in docs for ex in task.build_examples(doc, random.Random(doc.id))]
    segments = Counter(len(decode_label(label)) for label in labels)
    assert len(labels) == 600 and all(abs(segments[n] / 600 - 1 / 3) < 0.06 for n in (1, 2, 3))
    assert set(labels) == set(range(9))


def test_the_same_seed_gives_the_same_examples(tokenizer, rich_document):
    task = get_task_class("sentence_reordering")(tokenizer, 64, {"max_segments": 4})
    first = task.build_examples(rich_document, random.Random(7))
    assert first == task.build_examples(rich_document, random.Random(7))
    assert first != task.build_examples(rich_document, random.Random(8))


def test_describe_example_shows_the_segments_and_the_permutation(tokenizer, rich_document):
    task = get_task_class("sentence_reordering")(tokenizer, 128)
    example = next(ex for ex in task.build_examples(rich_document, random.Random(0)) if len(decode_label(ex["labels"][0])) == 3)
    text = task.describe_example(example)
    assert "shown 2 = original segment" in text and f"permutation {decode_label(example['labels'][0])}" in text
    assert task.label_name(example["labels"][0]).startswith("order ")


@pytest.mark.parametrize("bad", [0, 7, True, "3", 2.0])
def test_a_bad_max_segments_is_refused(tokenizer, bad):
    with pytest.raises(ConfigError, match="task 'sentence_reordering': max_segments must be an integer from 1 to 6"):
        get_task_class("sentence_reordering")(tokenizer, 128, {"max_segments": bad})


def test_a_seq_len_too_short_for_the_segments_is_refused(tokenizer):
    with pytest.raises(ConfigError, match="seq_len 8 leaves no room for 4 segments"):
        get_task_class("sentence_reordering")(tokenizer, 8, {"max_segments": 4})
