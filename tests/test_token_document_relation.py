"""token_document_relation: labels pinned against a brute-force recount over the document's other
segments (its packed chunks), in both target modes, plus the one-chunk rule and fusion."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ernie_cl.corpus.document import Document, Section, Sentence
from ernie_cl.errors import ConfigError
from pretrain_tasks import IGNORE, get_task_class
from pretrain_tasks._packed import FusedPackedTasks
from pretrain_tasks.packing import Chunk, pack_document

SEQ_LEN = 32  # short chunks, so small documents already have several segments
# Known words, made-up words (split into several sub-tokens), numbers and punctuation.
WORDS = ["paris", "london", "river", "museum", "bridge", "garden", "letter", "harbour", "visited", "the", "a",
         "tromlebast", "podinguer", "1921", "42", ",", ";", "(", ")"]


def word_document(rng: random.Random, paragraphs: list[int]) -> Document:
    sentences = [[Sentence(" ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 9))) + ".") for _ in range(size)]
                 for size in paragraphs]
    return Document("d", "Title", [Section("", sentences)])


def word_texts(chunk: Chunk) -> list[tuple[int, str]]:
    """(first sub-token position, lowercased text) of every word of a chunk, read from the original text."""
    return [(w.token_start, chunk.sentences[w.sentence].text[w.char_start:w.char_end].lower()) for w in chunk.words]


def brute_force_labels(chunks: list[Chunk], index: int, targets: str, special: frozenset[int]) -> list[int]:
    """Recount, independently of the task: targets and their labels for chunk ``index``."""
    chunk = chunks[index]
    labels = [IGNORE] * len(chunk.ids)
    others = [c for k, c in enumerate(chunks) if k != index]
    if targets == "tokens":
        for position, token in enumerate(chunk.ids):
            if token not in special:
                labels[position] = int(any(token in other.ids for other in others))
        return labels
    for position, text in word_texts(chunk):
        if any(ch.isalnum() for ch in text):
            labels[position] = int(any(text == other_text for other in others for _, other_text in word_texts(other)))
    return labels


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10**6), sizes=st.lists(st.integers(1, 6), min_size=1, max_size=4),
       targets=st.sampled_from(["words", "tokens"]))
def test_labels_equal_a_brute_force_count_over_the_other_segments(tokenizer, seed, sizes, targets):
    doc = word_document(random.Random(seed), sizes)
    task = get_task_class("token_document_relation")(tokenizer, SEQ_LEN, {"targets": targets})
    chunks = pack_document(doc, tokenizer, SEQ_LEN)
    examples = task.build_examples(doc, random.Random(seed))
    if len(chunks) < 2:
        assert examples == []  # no other segment to relate to
        return
    expected = [brute_force_labels(chunks, k, targets, tokenizer.special_ids) for k in range(len(chunks))]
    kept = [k for k in range(len(chunks)) if any(label != IGNORE for label in expected[k])]
    assert len(examples) == len(kept)
    for k, example in zip(kept, examples):
        assert example["input_ids"] == [tokenizer.cls_id, *chunks[k].ids, tokenizer.sep_id]
        assert example["labels"] == [IGNORE, *expected[k], IGNORE]


def test_a_word_repeated_inside_one_segment_only_is_not_elsewhere(tokenizer):
    sentences = ["paris visited paris the river.", "london garden.", "the bridge.", "london harbour."]
    doc = Document("d", "T", [Section("", [[Sentence(t) for t in sentences]])])
    task = get_task_class("token_document_relation")(tokenizer, 12)
    task.fill_chunks = False  # whole sentences, so the segments are the ones asserted below
    chunks = pack_document(doc, tokenizer, 12, fill=False)
    assert [[s.text for s in c.sentences] for c in chunks] == [sentences[:2], sentences[2:]]
    labelled: dict[str, set[int]] = {}
    for chunk, example in zip(chunks, task.build_examples(doc, random.Random(0))):
        for position, text in word_texts(chunk):
            if example["labels"][position + 1] != IGNORE:
                labelled.setdefault(text, set()).add(example["labels"][position + 1])
    assert labelled == {"paris": {0}, "visited": {0}, "river": {0}, "garden": {0}, "bridge": {0}, "harbour": {0},
                        "the": {1}, "london": {1}}  # punctuation is never a word target


def test_words_mode_labels_only_the_first_sub_token_of_words_with_a_letter_or_digit(tokenizer, rich_document):
    task = get_task_class("token_document_relation")(tokenizer, SEQ_LEN)
    examples = task.build_examples(rich_document, random.Random(0))
    chunks = pack_document(rich_document, tokenizer, SEQ_LEN)
    assert len(examples) == len(chunks) > 2
    for chunk, example in zip(chunks, examples):
        starts = {w.token_start for w in chunk.words}
        for position, label in enumerate(example["labels"][1:-1]):
            if label != IGNORE:
                assert position in starts and tokenizer.id_to_token(chunk.ids[position]).isalnum()
        assert example["labels"][0] == example["labels"][-1] == IGNORE


def test_a_one_chunk_document_gives_no_example(tokenizer):
    doc = Document("d", "T", [Section("", [[Sentence("paris visited london."), Sentence("london visited paris.")]])])
    task = get_task_class("token_document_relation")(tokenizer, 128)
    assert len(pack_document(doc, tokenizer, 128)) == 1
    assert task.build_examples(doc, random.Random(0)) == []


def test_fused_with_capitalization_the_labels_are_the_same(tokenizer, rich_document):
    tdr = get_task_class("token_document_relation")(tokenizer, SEQ_LEN)
    fused = FusedPackedTasks([get_task_class("capitalization")(tokenizer, SEQ_LEN), tdr])
    alone = tdr.build_examples(rich_document, random.Random(3))
    together = fused.build_examples(rich_document, random.Random(3))
    assert [ex["labels:token_document_relation"] for ex in together] == [ex["labels"] for ex in alone]


def test_labels_are_deterministic_and_both_classes_occur(tokenizer, many_documents):
    task = get_task_class("token_document_relation")(tokenizer, 64)
    first = [ex for doc in many_documents[:10] for ex in task.build_examples(doc, random.Random(doc.id))]
    again = [ex for doc in many_documents[:10] for ex in task.build_examples(doc, random.Random("other"))]
    assert first == again  # the labels need no randomness at all
    labels = [label for ex in first for label in ex["labels"] if label != IGNORE]
    assert 0 < sum(labels) < len(labels)


@pytest.mark.parametrize("bad", ["subwords", None, 1])
def test_an_unknown_targets_option_is_refused(tokenizer, bad):
    with pytest.raises(ConfigError, match="task 'token_document_relation': targets must be one of words, tokens"):
        get_task_class("token_document_relation")(tokenizer, 128, {"targets": bad})
