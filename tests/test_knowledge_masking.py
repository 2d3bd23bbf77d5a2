"""Knowledge masking: unit choice and replacement statistics, whole-unit masking at the word,
phrase and entity levels, determinism, label values, option validation and the tied head."""

from __future__ import annotations

import random

import pytest
import torch
from torch import nn

from ernie_cl.corpus.document import Document, Section
from ernie_cl.errors import ConfigError
from pretrain_tasks import IGNORE
from pretrain_tasks.knowledge_masking import KnowledgeMasking, chunk_units, mask_units
from pretrain_tasks.packing import pack_document, span_word_groups

SEQ_LEN = 64
MASK_ID = 4
RANDOM_IDS = list(range(5, 500))


def one_doc(*sentences) -> Document:
    return Document("d", "t", [Section("", [list(sentences)])])


@pytest.fixture(scope="module")
def masked_sample():
    """20,000 units of 1-4 tokens (about 50k tokens) masked once with a fixed seed."""
    rng = random.Random(123)
    units, ids = [], []
    for _ in range(20_000):
        size = rng.randint(1, 4)
        units.append(list(range(len(ids), len(ids) + size)))
        ids.extend(rng.choice(RANDOM_IDS) for _ in range(size))
    masked, labels, chosen = mask_units(ids, units, random.Random(7), mask_id=MASK_ID, random_ids=RANDOM_IDS)
    return ids, units, masked, labels, chosen


def test_fifteen_percent_of_units_are_chosen(masked_sample):
    _, units, _, _, chosen = masked_sample
    assert abs(len(chosen) / len(units) - 0.15) < 0.01


def test_target_tokens_are_80_percent_mask_10_random_10_kept(masked_sample):
    ids, _, masked, labels, _ = masked_sample
    targets = [i for i, label in enumerate(labels) if label != IGNORE]
    as_mask = sum(masked[i] == MASK_ID for i in targets) / len(targets)
    as_random = sum(masked[i] not in (MASK_ID, ids[i]) for i in targets) / len(targets)
    kept = sum(masked[i] == ids[i] for i in targets) / len(targets)
    assert len(targets) > 7000
    assert abs(as_mask - 0.8) < 0.015
    assert abs(as_random - 0.1) < 0.01
    assert abs(kept - 0.1) < 0.01  # includes the rare random draw of the original id (1/495)
    assert all(masked[i] in RANDOM_IDS for i in targets if masked[i] != MASK_ID)


def test_chosen_units_are_masked_whole_and_nothing_else_is_a_target(masked_sample):
    ids, units, masked, labels, chosen = masked_sample
    chosen_positions = {pos for u in chosen for pos in units[u]}
    assert {i for i, label in enumerate(labels) if label != IGNORE} == chosen_positions
    assert all(labels[i] == ids[i] for i in chosen_positions)
    assert all(masked[i] == ids[i] for i in range(len(ids)) if i not in chosen_positions)
    assert any(len(units[u]) == 4 for u in chosen)  # multi-token units were among the chosen


def test_one_unit_is_chosen_when_the_draw_chooses_none():
    units = [[0], [1, 2], [3]]
    for seed in range(20):
        _, labels, chosen = mask_units([10, 11, 12, 13], units, random.Random(seed), mask_id=MASK_ID,
                                       random_ids=RANDOM_IDS, mask_prob=1e-9)
        assert len(chosen) == 1
        assert [i for i, label in enumerate(labels) if label != IGNORE] == units[chosen[0]]


@pytest.mark.parametrize("level", ["word", "phrase", "entity"])
def test_units_partition_the_chunk_and_follow_the_level(tokenizer, rich_document, level):
    spans_of = {"phrase": "phrases", "entity": "entities"}.get(level)
    for chunk in pack_document(rich_document, tokenizer, SEQ_LEN):
        units = chunk_units(chunk, [level] * len(chunk.sentences))
        assert sorted(pos for u in units for pos in u) == list(range(len(chunk.ids)))
        word_tokens = [list(range(w.token_start, w.token_end)) for w in chunk.words]
        if spans_of is None:
            assert units == word_tokens  # whole-word units
        else:
            groups = span_word_groups(chunk, spans_of)
            for group in groups:
                tokens = [pos for w in group for pos in word_tokens[w]]
                assert tokens in units  # the span is one unit, not one unit per word
            if any(len(group) > 1 for group in groups):
                assert len(units) < len(word_tokens)


def test_overlapping_spans_keep_the_longest_and_still_partition(tokenizer, annotated):
    sentence = annotated("Marie Curie crossed the new bridge near Paris.", phrases=["the new bridge", "new bridge near Paris"])
    (chunk,) = pack_document(one_doc(sentence), tokenizer, SEQ_LEN)
    units = chunk_units(chunk, ["phrase"])
    words = [chunk.sentences[0].text[w.char_start:w.char_end] for w in chunk.words]
    unit_words = [[words[i] for i, w in enumerate(chunk.words) if w.token_start in u] for u in units]
    assert ["new", "bridge", "near", "Paris"] in unit_words
    assert ["the"] in unit_words
    assert sorted(pos for u in units for pos in u) == list(range(len(chunk.ids)))


@pytest.mark.parametrize("level", ["word", "phrase", "entity"])
def test_target_token_share_is_fifteen_percent_at_every_level(tokenizer, many_documents, level):
    task = KnowledgeMasking(tokenizer, SEQ_LEN, {"levels": {level: 1.0}})
    spans_of = {"phrase": "phrases", "entity": "entities"}.get(level)
    rng = random.Random(5)
    targets = tokens = whole_multiword = 0
    for doc in many_documents:
        examples = task.build_examples(doc, rng)
        chunks = pack_document(doc, tokenizer, SEQ_LEN)
        assert len(examples) == len(chunks)  # every chunk yields an example (at least one target)
        for example, chunk in zip(examples, chunks):
            is_target = [label != IGNORE for label in example["labels"][1:-1]]
            targets += sum(is_target)
            tokens += len(chunk.ids)
            for group in span_word_groups(chunk, spans_of) if spans_of else []:
                flags = {is_target[p] for w in group for p in range(chunk.words[w].token_start, chunk.words[w].token_end)}
                assert len(flags) == 1, "a phrase/entity was masked in part"
                whole_multiword += flags == {True} and len(group) > 1
    assert tokens > 25_000
    assert abs(targets / tokens - 0.15) < 0.01
    if spans_of:
        assert whole_multiword > 100  # multi-word units were really masked, all their tokens at once


def test_sentence_levels_follow_the_shares(tokenizer, rich_document):
    task = KnowledgeMasking(tokenizer, SEQ_LEN)
    (chunk, *_) = pack_document(rich_document, tokenizer, SEQ_LEN)
    rng = random.Random(3)
    drawn = [lvl for _ in range(5000) for lvl in task.sentence_levels(chunk, rng)]
    for level, share in {"word": 0.4, "phrase": 0.3, "entity": 0.3}.items():
        assert abs(drawn.count(level) / len(drawn) - share) < 0.02


def test_labels_are_original_ids_and_untargeted_inputs_are_unchanged(tokenizer, rich_document):
    task = KnowledgeMasking(tokenizer, SEQ_LEN)
    examples = task.build_examples(rich_document, random.Random(0))
    chunks = pack_document(rich_document, tokenizer, SEQ_LEN)
    for example, chunk in zip(examples, chunks):
        original = [tokenizer.cls_id, *chunk.ids, tokenizer.sep_id]
        assert example["token_type_ids"] == [0] * len(original)
        for pos, (shown, label) in enumerate(zip(example["input_ids"], example["labels"])):
            if label == IGNORE:
                assert shown == original[pos]
            else:
                assert label == original[pos]
        assert example["labels"][0] == example["labels"][-1] == IGNORE


def test_same_seed_gives_the_same_examples(tokenizer, rich_document):
    task = KnowledgeMasking(tokenizer, SEQ_LEN)
    first = task.build_examples(rich_document, random.Random(42))
    assert first == task.build_examples(rich_document, random.Random(42))
    assert first != task.build_examples(rich_document, random.Random(43))


def test_head_decoder_weight_is_the_embedding_weight(tokenizer):
    task = KnowledgeMasking(tokenizer, SEQ_LEN)
    embeddings = nn.Embedding(tokenizer.vocab_size + 12, 16)  # padded rows are not scored
    head = task.make_head(16, embeddings)
    assert head.decoder.weight is embeddings.weight
    hidden = torch.randn(5, 16)
    logits = head(hidden)
    assert logits.shape == (5, tokenizer.vocab_size)
    task.loss(logits, torch.tensor([5, 6, 7, 8, 9])).backward()
    assert embeddings.weight.grad is not None and embeddings.weight.grad[5:10].abs().sum() > 0
    with pytest.raises(ConfigError, match="resize the encoder's embeddings"):
        task.make_head(16, nn.Embedding(tokenizer.vocab_size - 1, 16))


@pytest.mark.parametrize(
    "options, message",
    [
        ({"levels": {"word": -0.1, "entity": 1}}, "levels.word must be a non-negative number"),
        ({"levels": {"sentence": 1}}, "unknown masking level"),
        ({"levels": {"word": 0, "phrase": 0}}, "sum to 0"),
        ({"levels": "word"}, "must map levels to shares"),
        ({"mask_prob": 0}, "mask_prob must be > 0"),
        ({"mask_prob": 1.5}, "mask_prob must be a number in"),
        ({"mask_token_prob": 0.95, "random_token_prob": 0.1}, "at most 1"),
    ],
)
def test_bad_options_are_refused_with_a_message(tokenizer, options, message):
    with pytest.raises(ConfigError, match=message):
        KnowledgeMasking(tokenizer, SEQ_LEN, options)


def test_describe_example_shows_targets_in_braces(tokenizer):
    task = KnowledgeMasking(tokenizer, SEQ_LEN)
    the, bridge = tokenizer.encode_batch(["the bridge"])[0].ids
    example = {
        "input_ids": [tokenizer.cls_id, tokenizer.mask_id, bridge, tokenizer.sep_id],
        "token_type_ids": [0, 0, 0, 0],
        "labels": [IGNORE, the, IGNORE, IGNORE],
    }
    assert task.describe_example(example) == "[CLS] [MASK]{the} bridge [SEP]"
