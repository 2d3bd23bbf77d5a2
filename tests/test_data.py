"""Example building (serial == parallel), the Arrow cache, collation and resumable streams."""

from __future__ import annotations

import numpy as np
import pytest
from ernie_cl.data.example_store import write_set
from ernie_cl.data.examples import ExampleStream, IGNORE, build_examples, cached_examples, collate, eval_indices
from ernie_cl.errors import CorpusError
from pretrain_tasks import get_task_class


@pytest.fixture
def masking(tokenizer):
    return get_task_class("knowledge_masking")(tokenizer, 64)


def test_parallel_build_equals_serial_build(masking, many_documents):
    serial = build_examples(masking, many_documents[:30], seed=4, workers=1)
    parallel = build_examples(masking, many_documents[:30], seed=4, workers=2)
    assert serial == parallel and len(serial["input_ids"]) >= 30


def test_build_depends_on_seed_not_on_document_order(masking, many_documents):
    docs = many_documents[:10]
    forward = build_examples(masking, docs, seed=1)
    backward = build_examples(masking, docs[::-1], seed=1)
    # per-document RNG: each document's examples are the same whatever the order
    assert sorted(map(tuple, forward["input_ids"])) == sorted(map(tuple, backward["input_ids"]))
    assert build_examples(masking, docs, seed=2)["input_ids"] != forward["input_ids"]


def test_examples_are_cached_and_reloaded(masking, many_documents, tmp_path):
    kwargs = dict(split="train", seed=0, corpus_fingerprint="c1", cache_dir=tmp_path)
    first = cached_examples(masking, many_documents[:8], **kwargs)
    folders = list((tmp_path / "examples" / "knowledge_masking").iterdir())
    # same key: loaded from disk, even though there are no documents left to build from
    again = cached_examples(masking, [], **kwargs)
    assert again["input_ids"] == first["input_ids"] and list((tmp_path / "examples" / "knowledge_masking").iterdir()) == folders
    with pytest.raises(CorpusError, match="built no train examples"):
        cached_examples(masking, [], **{**kwargs, "corpus_fingerprint": "c2"})


def test_collate_pads_ids_and_labels():
    rows = {"input_ids": [[2, 7, 3], [2, 8, 9, 9, 3]], "token_type_ids": [[0, 0, 0], [0, 0, 1, 1, 1]],
            "labels": [[IGNORE, 7, IGNORE], [IGNORE, IGNORE, 9, IGNORE, IGNORE]]}
    batch = collate(rows, pad_id=0, sentence_level=False, labels_of={"labels": "t"}, pad_to_multiple=8)
    assert batch["input_ids"].shape == (2, 8)
    assert batch["input_ids"][0].tolist() == [2, 7, 3, 0, 0, 0, 0, 0]
    assert batch["attention_mask"][0].tolist() == [1, 1, 1, 0, 0, 0, 0, 0]
    assert batch["labels"]["t"][1].tolist() == [IGNORE, IGNORE, 9] + [IGNORE] * 5
    sentence = collate({**rows, "labels": [[2], [0]]}, pad_id=0, sentence_level=True, labels_of={"labels": "s"})
    assert sentence["labels"]["s"].tolist() == [[2], [0]]


def test_stream_visits_every_example_once_per_epoch_and_resumes_exactly(tmp_path):
    data = write_set(tmp_path, {"input_ids": [[i, i] for i in range(10)], "token_type_ids": [[0, 0]] * 10,
                                "labels": [[i] for i in range(10)]}, sep_id=99)
    stream = ExampleStream(data, batch_size=4, seed=1, task_name="t", pad_id=0, sentence_level=True)
    seen = [stream.next_batch()["labels"]["t"][:, 0].tolist() for _ in range(5)]  # 20 examples = 2 epochs
    flat = [x for batch in seen for x in batch]
    assert sorted(flat[:10]) == list(range(10)) and sorted(flat[10:]) == list(range(10))
    assert flat[:10] != flat[10:]  # each epoch has its own order
    resumed = ExampleStream(data, batch_size=4, seed=1, task_name="t", pad_id=0, sentence_level=True)
    resumed.load_state_dict({"position": 8})
    assert [resumed.next_batch()["labels"]["t"][:, 0].tolist() for _ in range(3)] == seen[2:]


def test_length_grouping_regroups_the_same_examples_within_each_window_and_resumes_exactly(tmp_path):
    lengths = [(i * 7) % 13 + 1 for i in range(40)]
    data = write_set(tmp_path, {"input_ids": [[5] * n for n in lengths], "token_type_ids": [[0] * n for n in lengths],
                                "labels": [[i] for i in range(40)]}, sep_id=99)
    plain = ExampleStream(data, batch_size=4, seed=2, task_name="t", pad_id=0, sentence_level=True)
    grouped = ExampleStream(data, batch_size=4, seed=2, task_name="t", pad_id=0, sentence_level=True, group=3)
    plain_batches = [plain.next_batch() for _ in range(12)]
    grouped_batches = [grouped.next_batch() for _ in range(12)]
    ids = lambda batches: [x for b in batches for x in b["labels"]["t"][:, 0].tolist()]
    for w in range(4):  # windows of 3 batches: the same 12 examples, regrouped
        window = slice(3 * w, 3 * w + 3)
        assert sorted(ids(grouped_batches[window])) == sorted(ids(plain_batches[window]))
    assert ids(grouped_batches) != ids(plain_batches)
    padded = lambda batches: sum(b["input_ids"].numel() for b in batches)
    assert padded(grouped_batches) < padded(plain_batches)  # the point of it: less padding
    for b in grouped_batches:  # sorted inside each window: a batch spans a narrow length range
        n = b["attention_mask"].sum(1)
        assert int(n.max() - n.min()) <= 8
    resumed = ExampleStream(data, batch_size=4, seed=2, task_name="t", pad_id=0, sentence_level=True, group=3)
    resumed.load_state_dict({"position": 20})  # mid-window
    assert ids([resumed.next_batch() for _ in range(7)]) == ids(grouped_batches[5:])


def test_eval_subset_is_spread_over_the_whole_set():
    assert eval_indices(5, 10) == [0, 1, 2, 3, 4]
    chosen = eval_indices(1000, 10)
    assert len(chosen) == 10 and chosen[0] == 0 and chosen[-1] == 999 and np.all(np.diff(chosen) > 50)


def test_fused_examples_carry_every_members_labels_on_the_masked_input(tokenizer, many_documents, tmp_path):
    from pretrain_tasks._packed import FusedPackedTasks

    masking = get_task_class("knowledge_masking")(tokenizer, 64)
    caps = get_task_class("capitalization")(tokenizer, 64)
    fused = FusedPackedTasks([caps, masking])
    assert fused.name == "capitalization+knowledge_masking"
    built = build_examples(fused, many_documents[:5], seed=0)
    assert set(built) == {"input_ids", "token_type_ids", "labels:capitalization", "labels:knowledge_masking"}
    alone = build_examples(caps, many_documents[:5], seed=0)
    assert len(built["input_ids"]) == len(alone["input_ids"])  # every chunk has capitalization targets
    for ids, km, cap, plain, cap_alone in zip(built["input_ids"], built["labels:knowledge_masking"],
                                              built["labels:capitalization"], alone["input_ids"], alone["labels"]):
        assert cap == cap_alone  # the same words, labelled the same
        targets = [i for i, label in enumerate(km) if label != IGNORE]
        assert targets and all(km[i] == plain[i] for i in targets)  # masking targets are the original ids
        assert any(ids[i] == tokenizer.mask_id for i in targets) or len(targets) < 3
        assert all(ids[i] == plain[i] for i in range(len(ids)) if km[i] == IGNORE)  # only targets corrupted
    stream = ExampleStream(write_set(tmp_path, built, tokenizer.sep_id), batch_size=3, seed=0, task_name=fused.name, pad_id=0, sentence_level=False)
    assert set(stream.next_batch()["labels"]) == {"capitalization", "knowledge_masking"}
