"""sentence_distance: every label checked against where its two sentences really are, classes
balanced by construction, and the refusals of a split too small for the task."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ernie_cl.corpus.document import Document, Section, Sentence
from ernie_cl.errors import ConfigError, CorpusError
from pretrain_tasks import get_task_class
from pretrain_tasks._segments import split_segments

WORDS = ["paris", "london", "river", "museum", "bridge", "garden", "letter", "painting", "harbour", "school"]


def numbered_document(doc_id: str, paragraphs: list[int], rng: random.Random) -> Document:
    """Sentences that start with their document and position ("d2 s7 ..."), so examples can be traced back."""
    sentences, k = [], 0
    for size in paragraphs:
        paragraph = []
        for _ in range(size):
            paragraph.append(Sentence(f"{doc_id} s{k} " + " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 6))) + "."))
            k += 1
        sentences.append(paragraph)
    return Document(doc_id, f"Title {doc_id}", [Section("", sentences)])


def fitted(tokenizer, docs: list[Document], **options) -> object:
    task = get_task_class("sentence_distance")(tokenizer, 128, options)
    task.fit(docs)
    return task


def located_pair(tokenizer, example) -> tuple[tuple[str, int], tuple[str, int]]:
    """(document id, sentence index) of both sentences of an example, read from their text."""
    found = []
    for segment in split_segments(tokenizer, example["input_ids"]):
        doc_id, position = tokenizer.decode(segment).split()[:2]
        found.append((doc_id, int(position[1:])))
    return found[0], found[1]


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10**6), docs=st.lists(st.lists(st.integers(1, 5), min_size=1, max_size=3), min_size=2, max_size=5),
       rate=st.sampled_from([0.3, 1.0, 2.5]))
def test_labels_agree_with_the_true_positions_of_the_sentences(tokenizer, seed, docs, rate):
    rng = random.Random(seed)
    corpus = [numbered_document(f"d{i}", paragraphs, rng) for i, paragraphs in enumerate(docs)]
    if not any(doc.num_sentences() >= 3 for doc in corpus):
        with pytest.raises(CorpusError):
            fitted(tokenizer, corpus)
        return
    task = fitted(tokenizer, corpus, pairs_per_sentence=rate)
    for doc in corpus:
        examples = task.build_examples(doc, random.Random(f"{seed}:{doc.id}"))
        n = doc.num_sentences()
        if n < 3:
            assert examples == []
            continue
        assert int(rate * n) <= len(examples) <= int(rate * n) + 1
        for example in examples:
            (doc1, i), (doc2, j) = located_pair(tokenizer, example)
            assert doc1 == doc.id
            expected = 2 if doc2 != doc1 else 0 if j == i + 1 else 1 if j >= i + 2 else None
            assert example["labels"] == [expected], f"{doc1} s{i} / {doc2} s{j}"


def test_classes_are_balanced_within_every_document(tokenizer, many_documents):
    task = fitted(tokenizer, many_documents)
    total: Counter[int] = Counter()
    for doc in many_documents:
        counts = Counter(ex["labels"][0] for ex in task.build_examples(doc, random.Random(doc.id)))
        assert sum(counts.values()) == doc.num_sentences()  # pairs_per_sentence 1.0
        assert max(counts[c] for c in range(3)) - min(counts[c] for c in range(3)) <= 1
        total += counts
    assert sum(total.values()) == 2400 and all(abs(total[c] / 2400 - 1 / 3) < 0.01 for c in range(3))


def test_a_three_sentence_document_offers_every_class(tokenizer):
    docs = [numbered_document("a", [3], random.Random(0)), numbered_document("b", [1], random.Random(1))]
    task = fitted(tokenizer, docs, pairs_per_sentence=4)
    pairs = Counter()
    for seed in range(10):
        for example in task.build_examples(docs[0], random.Random(seed)):
            (_, i), (doc2, j) = located_pair(tokenizer, example)
            pairs[(example["labels"][0], i, doc2, j)] += 1
    # class 1 has one pair only (s0, s2); class 2 one partner only (b's single sentence)
    assert {key for key in pairs if key[0] == 1} == {(1, 0, "a", 2)}
    assert {key[2:] for key in pairs if key[0] == 2} == {("b", 0)}
    assert {key for key in pairs if key[0] == 0} == {(0, 0, "a", 1), (0, 1, "a", 2)}


def test_other_document_partners_are_uniform_over_the_other_documents_sentences(tokenizer):
    docs = [numbered_document(f"d{i}", [size], random.Random(i)) for i, size in enumerate([30, 2, 4])]
    task = fitted(tokenizer, docs)
    partners = Counter(task.other_document_sentence(task._runs.get("d0"), random.Random(k)).split()[0] for k in range(3000))
    assert set(partners) == {"d1", "d2"} and abs(partners["d2"] / 3000 - 4 / 6) < 0.04


def test_the_same_seed_gives_the_same_examples(tokenizer, many_documents):
    task = fitted(tokenizer, many_documents[:20])
    doc = many_documents[3]
    assert task.build_examples(doc, random.Random(5)) == task.build_examples(doc, random.Random(5))
    assert task.build_examples(doc, random.Random(5)) != task.build_examples(doc, random.Random(6))


def test_one_document_is_too_few(tokenizer):
    with pytest.raises(CorpusError, match=r"task 'sentence_distance' needs at least 2 documents with text, one of them "
                                          r"with 3 or more sentences; this split has 1 document\(s\) with text, 1 with 3\+"):
        fitted(tokenizer, [numbered_document("only", [5], random.Random(0))])


def test_documents_all_shorter_than_three_sentences_are_too_few(tokenizer):
    short = [numbered_document(f"d{i}", [2], random.Random(i)) for i in range(4)]
    with pytest.raises(CorpusError, match=r"this split has 4 document\(s\) with text, 0 with 3\+ sentences"):
        fitted(tokenizer, short)


def test_building_before_fit_is_an_error(tokenizer, rich_document):
    with pytest.raises(RuntimeError, match="call fit"):
        get_task_class("sentence_distance")(tokenizer, 128).build_examples(rich_document, random.Random(0))


def test_describe_example_shows_both_sentences_and_the_class(tokenizer, many_documents):
    task = fitted(tokenizer, many_documents[:5])
    example = next(ex for ex in task.build_examples(many_documents[0], random.Random(0)) if ex["labels"] == [1])
    text = task.describe_example(example)
    assert "s1: " in text and "s2: " in text and "label: 1 (same document, not adjacent)" in text


@pytest.mark.parametrize("bad", [0, -1, 11, True, "1"])
def test_a_bad_pairs_per_sentence_is_refused(tokenizer, bad):
    with pytest.raises(ConfigError, match=r"task 'sentence_distance': pairs_per_sentence must be a number in \(0, 10\]"):
        get_task_class("sentence_distance")(tokenizer, 128, {"pairs_per_sentence": bad})


@given(st.lists(st.integers(0, 60), min_size=1, max_size=5), st.integers(-2, 150))
@settings(max_examples=500, deadline=None)
def test_segments_are_cut_as_cutting_the_first_longest_one_token_at_a_time_would(lengths, budget):
    from pretrain_tasks._segments import fit_segments

    expected = list(lengths)  # the rule itself, one token at a time
    while sum(expected) > budget and max(expected) > 1:
        expected[max(range(len(expected)), key=lambda i: expected[i])] -= 1
    segments = [list(range(100, 100 + n)) for n in lengths]
    assert fit_segments(segments, budget) == [s[:n] for s, n in zip(segments, expected)]
