"""Label constructions of token_document_relation, sentence_reordering and sentence_distance,
pinned with property-based tests against brute-force recomputations."""

from __future__ import annotations

import itertools
import math
import random
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ernie_cl.corpus.document import Document, Section, Sentence
from ernie_cl.errors import ConfigError, CorpusError
from pretrain_tasks import IGNORE, get_task_class
from pretrain_tasks._segments import split_segments
from pretrain_tasks.packing import pack_document
from pretrain_tasks.sentence_reordering import decode_label, encode_label

WORDS = ["paris", "london", "river", "museum", "bridge", "garden", "letter", "painting", "harbour", "school",
         "lake", "machine", "palace", "boat", "library", "street", "visited", "built", "crossed", "studied"]


def numbered_document(doc_id: str, paragraphs: list[int], rng: random.Random) -> Document:
    """Sentences that name their own position ("s3 ..."), so examples can be traced back."""
    sentences, k = [], 0
    for size in paragraphs:
        para = []
        for _ in range(size):
            para.append(Sentence(f"{doc_id} s{k} " + " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 8))) + "."))
            k += 1
        sentences.append(para)
    return Document(doc_id, f"Title {doc_id}", [Section("", sentences)])


# --- sentence_reordering ------------------------------------------------------------------------
@pytest.mark.parametrize("m, size", [(1, 1), (3, 9), (4, 33), (5, 153)])
def test_reordering_label_space_has_the_stated_size(tokenizer, m, size):
    assert get_task_class("sentence_reordering")(tokenizer, 128, {"max_segments": m}).num_labels == size


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5])
def test_every_permutation_round_trips_through_its_label(n):
    labels = [encode_label(p) for p in itertools.permutations(range(n))]
    offset = sum(math.factorial(k) for k in range(1, n))
    assert sorted(labels) == list(range(offset, offset + math.factorial(n)))  # n! distinct ids, one block
    assert all(decode_label(encode_label(p)) == p for p in itertools.permutations(range(n)))


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10**6), sizes=st.lists(st.integers(1, 7), min_size=1, max_size=4), m=st.integers(1, 4))
def test_unshuffling_by_the_decoded_label_restores_the_paragraph_order(tokenizer, seed, sizes, m):
    task = get_task_class("sentence_reordering")(tokenizer, 128, {"max_segments": m})
    doc = numbered_document("d", sizes, random.Random(seed))
    for example in task.build_examples(doc, random.Random(seed)):
        perm = decode_label(example["labels"][0])
        assert 0 <= example["labels"][0] < task.num_labels and len(perm) <= m
        shown = split_segments(tokenizer, example["input_ids"])
        assert len(shown) == len(perm)
        original = [None] * len(perm)
        for position, source in enumerate(perm):
            original[source] = shown[position]
        text = " ".join(tokenizer.decode(seg) for seg in original)
        positions = [int(w[1:]) for w in text.split() if w.startswith("s") and w[1:].isdigit()]
        assert positions == sorted(positions) and positions == list(range(positions[0], positions[0] + len(positions)))


def test_reordering_rejects_a_bad_option(tokenizer):
    with pytest.raises(ConfigError, match="max_segments"):
        get_task_class("sentence_reordering")(tokenizer, 128, {"max_segments": 0})


# --- sentence_distance --------------------------------------------------------------------------
def position_of(text: str) -> tuple[str, int]:
    doc_id, number = text.split()[:2]
    return doc_id, int(number[1:])


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10**6), sizes=st.lists(st.integers(1, 12), min_size=2, max_size=6))
def test_distance_labels_agree_with_the_true_positions(tokenizer, seed, sizes):
    rng = random.Random(seed)
    docs = [numbered_document(f"d{i}", [size], rng) for i, size in enumerate(sizes)]
    if not any(size >= 3 for size in sizes):
        return
    task = get_task_class("sentence_distance")(tokenizer, 128, {"pairs_per_sentence": 2})
    task.fit(docs)
    for doc in docs:
        for example in task.build_examples(doc, random.Random(seed)):
            first, second = (tokenizer.decode(s) for s in split_segments(tokenizer, example["input_ids"]))
            (doc1, i), (doc2, j) = position_of(first), position_of(second)
            assert doc1 == doc.id
            expected = 2 if doc1 != doc2 else (0 if j == i + 1 else 1)
            assert example["labels"] == [expected] and (expected == 2 or abs(i - j) >= 1)


def test_a_three_sentence_document_gives_every_class(tokenizer):
    docs = [numbered_document("a", [3], random.Random(0)), numbered_document("b", [4], random.Random(1))]
    task = get_task_class("sentence_distance")(tokenizer, 128, {"pairs_per_sentence": 10})
    task.fit(docs)
    labels = Counter(ex["labels"][0] for seed in range(20) for ex in task.build_examples(docs[0], random.Random(seed)))
    assert set(labels) == {0, 1, 2} and sum(labels.values()) == 600


def test_distance_classes_are_balanced(tokenizer, many_documents):
    task = get_task_class("sentence_distance")(tokenizer, 128)
    task.fit(many_documents)
    counts = Counter(ex["labels"][0] for doc in many_documents for ex in task.build_examples(doc, random.Random(doc.id)))
    total = sum(counts.values())
    assert total > 1000 and all(abs(counts[c] / total - 1 / 3) < 0.03 for c in range(3))


def test_distance_needs_two_documents(tokenizer):
    task = get_task_class("sentence_distance")(tokenizer, 128)
    with pytest.raises(CorpusError, match="task 'sentence_distance' needs at least 2 documents"):
        task.fit([numbered_document("only", [5], random.Random(0))])


# --- token_document_relation --------------------------------------------------------------------
@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10**6), sizes=st.lists(st.integers(1, 9), min_size=1, max_size=5))
def test_token_document_labels_equal_a_brute_force_count(tokenizer, seed, sizes):
    doc = numbered_document("d", sizes, random.Random(seed))
    task = get_task_class("token_document_relation")(tokenizer, 32)
    chunks = pack_document(doc, tokenizer, 32)
    examples = task.build_examples(doc, random.Random(seed))
    if len(chunks) < 2:
        assert examples == []
        return
    assert len(examples) == len(chunks)
    for index, (chunk, example) in enumerate(zip(chunks, examples)):
        assert example["input_ids"][1:-1] == chunk.ids
        for token, label in zip(chunk.ids, example["labels"][1:-1]):
            elsewhere = sum(token in other.ids for k, other in enumerate(chunks) if k != index)
            assert label == (1 if elsewhere > 0 else 0)
        assert example["labels"][0] == example["labels"][-1] == IGNORE
