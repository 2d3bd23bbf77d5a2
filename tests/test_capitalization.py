"""Capitalization prediction: per-word labels from the original cased text, on the first
sub-token only, on an input that carries no case; refused with a cased tokenizer."""

from __future__ import annotations

import random

import pytest
import torch
from torch import nn

from ernie_cl.corpus.document import Document, Section, Sentence
from ernie_cl.errors import ConfigError
from pretrain_tasks import IGNORE
from pretrain_tasks.capitalization import Capitalization
from pretrain_tasks.packing import pack_document

SEQ_LEN = 64


def doc_of(*texts: str) -> Document:
    return Document("d", "t", [Section("", [[Sentence(t) for t in texts]])])


def word_labels(task: Capitalization, doc: Document) -> list[tuple[str, int | None]]:
    """(word as written, its label) for every word of the single example; checks on the way that
    only a word's first sub-token may carry a label."""
    (example,) = task.build_examples(doc, random.Random(0))
    (chunk,) = pack_document(doc, task.tokenizer, SEQ_LEN)
    labels = example["labels"][1:-1]  # drop [CLS] and [SEP]
    assert example["labels"][0] == example["labels"][-1] == IGNORE
    result = []
    for w in chunk.words:
        assert all(label == IGNORE for label in labels[w.token_start + 1 : w.token_end])
        first = labels[w.token_start]
        result.append((chunk.sentences[w.sentence].text[w.char_start : w.char_end], None if first == IGNORE else first))
    return result


def test_labels_mark_capitalized_words(tokenizer):
    task = Capitalization(tokenizer, SEQ_LEN)
    assert word_labels(task, doc_of("Barack Obama visited Paris in May.")) == [
        ("Barack", 1), ("Obama", 1), ("visited", 0), ("Paris", 1), ("in", 0), ("May", 1), (".", None),
    ]


def test_a_word_of_several_sub_tokens_is_labelled_on_its_first_only(tokenizer):
    task = Capitalization(tokenizer, SEQ_LEN)
    pieces = tokenizer.encode_batch(["Parisians"])[0].ids
    assert len(pieces) > 1 and tokenizer.unk_id not in pieces  # the fixture's precondition
    doc = doc_of("Parisians admired the bridge.")
    (example,) = task.build_examples(doc, random.Random(0))
    assert example["labels"][1 : 1 + len(pieces)] == [1] + [IGNORE] * (len(pieces) - 1)
    assert word_labels(task, doc)[:2] == [("Parisians", 1), ("admired", 0)]


def test_numbers_and_punctuation_are_not_targets(tokenizer):
    task = Capitalization(tokenizer, SEQ_LEN)
    assert word_labels(task, doc_of("87 people from Tokyo wrote to Alan Turing, in 1999.")) == [
        ("87", None), ("people", 0), ("from", 0), ("Tokyo", 1), ("wrote", 0), ("to", 0), ("Alan", 1),
        ("Turing", 1), (",", None), ("in", 0), ("1999", None), (".", None),
    ]


def test_each_word_is_read_in_its_own_sentence(tokenizer):
    task = Capitalization(tokenizer, SEQ_LEN)
    labels = word_labels(task, doc_of("paris is big.", "Paris is big."))
    assert labels == [("paris", 0), ("is", 0), ("big", 0), (".", None), ("Paris", 1), ("is", 0), ("big", 0), (".", None)]


def test_the_input_carries_no_case(tokenizer):
    task = Capitalization(tokenizer, SEQ_LEN)
    (cased,) = task.build_examples(doc_of("Barack Obama visited PARIS."), random.Random(0))
    (lower,) = task.build_examples(doc_of("barack obama visited paris."), random.Random(0))
    assert cased["input_ids"] == lower["input_ids"]
    assert cased["labels"] != lower["labels"]
    assert cased["input_ids"][0] == tokenizer.cls_id and cased["input_ids"][-1] == tokenizer.sep_id
    assert all(t == t.lower() for t in map(tokenizer.id_to_token, cased["input_ids"][1:-1]))


def test_a_chunk_without_words_gives_no_example(tokenizer):
    task = Capitalization(tokenizer, SEQ_LEN)
    assert task.build_examples(doc_of("1999, 2000.", "42 !"), random.Random(0)) == []


def test_a_cased_tokenizer_is_refused(cased_tokenizer):
    with pytest.raises(ConfigError, match="lowercasing"):
        Capitalization(cased_tokenizer, SEQ_LEN)


def test_head_gives_two_logits(tokenizer):
    task = Capitalization(tokenizer, SEQ_LEN)
    head = task.make_head(16, nn.Embedding(tokenizer.vocab_size, 16))
    assert task.num_labels == 2
    assert head(torch.randn(3, 16)).shape == (3, 2)
