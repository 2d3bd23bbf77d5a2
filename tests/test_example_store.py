"""Example sets on disk: exact read-back, compact columns, the same result whatever the workers or
shard size, and builds that survive being killed or finding a damaged shard."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest

from ernie_cl.data.example_store import ExampleSet, write_set
from ernie_cl.data.examples import build_examples, cached_example_sets, cached_examples
from ernie_cl.data.tokenizer import load_tokenizer
from pretrain_tasks import get_task_class

ROOT = Path(__file__).resolve().parent.parent


def build(task, documents, cache, **options):
    return cached_examples(task, documents, split="train", seed=3, corpus_fingerprint="corpus", cache_dir=cache, **options)


def shard_schema(example_set: ExampleSet, index: int = 0) -> pa.Schema:
    with pa.memory_map(str(example_set.folder / f"shard-{index:05d}.arrow")) as source:
        return pa.ipc.open_file(source).schema


@pytest.mark.parametrize("name", ["knowledge_masking", "sentence_reordering"])
def test_a_stored_set_reads_back_exactly_what_the_task_built(name, tokenizer, many_documents, tmp_path):
    docs = many_documents[:40]
    task = get_task_class(name)(tokenizer, 64)
    in_memory = build_examples(task, docs, seed=3)
    stored = build(task, docs, tmp_path, shard_chars=5000)
    assert len(stored.manifest["shards"]) > 2  # the set really is cut into several shards
    assert len(stored) == len(in_memory["input_ids"]) > 40
    assert stored[list(range(len(stored)))] == in_memory  # every column, segment ids included
    assert stored[5] == {c: v[5] for c, v in in_memory.items()}


def test_the_examples_do_not_depend_on_workers_or_shard_size(tokenizer, many_documents, tmp_path):
    task = get_task_class("knowledge_masking")(tokenizer, 64)
    one = build(task, many_documents, tmp_path / "a", workers=1, shard_chars=10**9)
    two = build(task, many_documents, tmp_path / "b", workers=2, shard_chars=4000)
    assert len(one.manifest["shards"]) == 1 and len(two.manifest["shards"]) > 10
    assert one.content_hash() == two.content_hash()
    other_seed = cached_examples(task, many_documents, split="train", seed=4, corpus_fingerprint="corpus",
                                 cache_dir=tmp_path / "c")
    assert other_seed.content_hash() != one.content_hash()  # the hash does see the examples


def test_sets_built_in_one_pass_equal_sets_built_alone_and_tokenize_each_sentence_once(tokenizer, many_documents,
                                                                                      tmp_path, monkeypatch):
    names = ["knowledge_masking", "sentence_reordering", "sentence_distance"]
    alone = {n: build(get_task_class(n)(tokenizer, 64), many_documents, tmp_path / "alone", shard_chars=4000)
             for n in names}
    encoded = []
    real = tokenizer._encode
    monkeypatch.setattr(tokenizer, "_encode", lambda batch: encoded.extend(batch) or real(batch))
    together = cached_example_sets({n: get_task_class(n)(tokenizer, 64) for n in names}, many_documents, split="train",
                                   seed=3, corpus_fingerprint="corpus", cache_dir=tmp_path / "together",
                                   shard_chars=4000, workers=1)
    assert {n: s.content_hash() for n, (s, _) in together.items()} == {n: s.content_hash() for n, s in alone.items()}
    sentences = [s.text for d in many_documents for s in d.sentences()]
    # every sentence once; what else is encoded is sentence_distance's partners from other documents
    assert len(encoded) - len(sentences) < len(sentences) / 2 and set(sentences) <= set(encoded)
    assert all(seconds > 0 for _, seconds in together.values())


def test_ids_and_labels_are_stored_in_the_smallest_types_and_segment_ids_are_derived(tokenizer, many_documents,
                                                                                    tmp_path):
    masking = build(get_task_class("knowledge_masking")(tokenizer, 64), many_documents[:20], tmp_path)
    schema = shard_schema(masking)
    assert schema.names == ["input_ids", "labels"]  # token_type_ids follow from the [SEP] positions
    assert schema.field("input_ids").type.value_type == pa.uint16()
    assert schema.field("labels").type.value_type == pa.int16()  # -100 and ~500 token ids
    caps = build(get_task_class("capitalization")(tokenizer, 64), many_documents[:20], tmp_path)
    assert shard_schema(caps).field("labels").type.value_type == pa.int8()
    pairs = build(get_task_class("sentence_reordering")(tokenizer, 64), many_documents[:20], tmp_path)
    assert shard_schema(pairs).names == ["input_ids", "labels"]
    assert any(1 in row for row in pairs["token_type_ids"])  # segments alternate: derived, not all zeros


def test_segment_ids_that_do_not_follow_the_sep_positions_are_kept(tmp_path):
    follows = {"input_ids": [[2, 5, 3, 6, 3]], "token_type_ids": [[0, 0, 0, 1, 1]], "labels": [[1]]}
    breaks = {"input_ids": [[2, 5, 3, 6, 3]], "token_type_ids": [[0, 0, 0, 0, 0]], "labels": [[1]]}
    kept = write_set(tmp_path / "breaks", breaks, sep_id=3)
    assert "token_type_ids" in shard_schema(kept).names and kept[0] == {k: v[0] for k, v in breaks.items()}
    derived = write_set(tmp_path / "follows", follows, sep_id=3)
    assert "token_type_ids" not in shard_schema(derived).names and derived[0] == {k: v[0] for k, v in follows.items()}



def test_rows_gathered_in_machine_integer_columns_are_written_as_the_same_file(tmp_path):
    """What a worker gathers (RowColumn) and the lists a task returns give the same bytes on disk."""
    from ernie_cl.data.example_store import RowColumn, column_types, write_shard

    rows = {"input_ids": [[2, 700, 3], [2, 5, 3, 6, 3], []], "token_type_ids": [[0, 0, 0], [0, 0, 0, 1, 1], []],
            "labels": [[-100, 7, -100], [1, 2, 3, 4, 5], []]}
    compact = {}
    for column, values in rows.items():
        compact[column] = RowColumn()
        for row in values:
            compact[column].append(row)
    types = column_types(list(rows), 1000, {"labels": 8})
    for name, columns in (("lists", rows), ("compact", compact)):
        (tmp_path / name).mkdir()
        write_shard(tmp_path / name, 0, columns, types, sep_id=3)
    assert (tmp_path / "lists" / "shard-00000.arrow").read_bytes() == (tmp_path / "compact" / "shard-00000.arrow").read_bytes()
    assert len(compact["labels"]) == 3

KILLED_BUILD = """
import random, sys
sys.path.insert(0, {tests!r})
from conftest import random_document
from ernie_cl.data.examples import cached_examples
from ernie_cl.data.tokenizer import load_tokenizer
from pretrain_tasks import get_task_class
rng = random.Random(2)
docs = [random_document(rng, f"d{{i}}", paragraphs=4, sentences=5) for i in range(120)]
task = get_task_class("knowledge_masking")(load_tokenizer({tokenizer!r}), 64)
cached_examples(task, docs, split="train", seed=3, corpus_fingerprint="corpus", cache_dir={cache!r}, workers=1,
                shard_chars=4000)
"""


def test_a_build_killed_between_shards_continues_and_ends_identical(tokenizer, many_documents, tmp_path, caplog):
    tokenizer.hf.save_pretrained(str(tmp_path / "tok"))  # one tokenizer for both processes
    saved = load_tokenizer(tmp_path / "tok")
    script = KILLED_BUILD.format(tests=str(ROOT / "tests"), tokenizer=str(tmp_path / "tok"), cache=str(tmp_path / "cache"))
    env = {**os.environ, "ERNIE_CL_FAULT": "kill@example-shard:knowledge_masking/train:4"}
    killed = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, cwd=ROOT)
    assert killed.returncode == -9, killed.stderr[-2000:]
    folder = next((tmp_path / "cache" / "examples" / "knowledge_masking").iterdir())
    assert sorted(p.name for p in folder.glob("*.done")) == [f"shard-{i:05d}.done" for i in range(5)]
    assert not (folder / "manifest.json").exists()
    task = get_task_class("knowledge_masking")(saved, 64)
    with caplog.at_level(logging.WARNING, logger="ernie_cl.data.example_store"):
        resumed = build(task, many_documents, tmp_path / "cache", shard_chars=4000)
    assert "reusing 5 of" in caplog.text
    uninterrupted = build(task, many_documents, tmp_path / "fresh", shard_chars=4000)
    assert resumed.content_hash() == uninterrupted.content_hash()
    assert not list(folder.glob(".*.tmp"))  # nothing half-written left behind


def test_a_damaged_shard_is_rebuilt_with_a_warning(tokenizer, many_documents, tmp_path, caplog):
    task = get_task_class("knowledge_masking")(tokenizer, 64)
    first = build(task, many_documents, tmp_path, shard_chars=4000)
    expected = first.content_hash()
    torn = first.folder / "shard-00002.arrow"
    torn.write_bytes(torn.read_bytes()[:100])  # a torn write
    (first.folder / "shard-00005.arrow").unlink()  # a lost file
    with caplog.at_level(logging.WARNING, logger="ernie_cl.data.example_store"):
        again = build(task, many_documents, tmp_path, shard_chars=4000)
    assert "2 damaged example shard(s) will be built again" in caplog.text
    assert again.content_hash() == expected and again.damaged_shards() == []


@pytest.mark.parametrize("name", ["sentence_distance", "discourse_relation", "ir_relevance"])
def test_a_fit_read_by_worker_processes_gives_the_examples_of_a_serial_fit(name, tokenizer, many_documents):
    import random

    from ernie_cl.corpus.workers import use_workers

    serial, parallel = (get_task_class(name)(tokenizer, 64) for _ in range(2))
    serial.fit(many_documents)
    with use_workers(2):  # as inside `prepare --workers 2`: map_ranges reads the split in forked workers
        parallel.fit(many_documents)
    built = [[task.build_examples(d, random.Random(d.id)) for d in many_documents] for task in (serial, parallel)]
    assert built[0] == built[1] and sum(map(len, built[0])) > 20
