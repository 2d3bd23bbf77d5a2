"""Data preparation at scale: a single large file is cut into parse parts; a prepare killed at any
point and run again reuses what it finished and ends identical; damaged shards are rebuilt; bad
input leaves nothing half-written in the cache."""

from __future__ import annotations

import json
import logging
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import random_document
from ernie_cl.corpus import load_corpus
from ernie_cl.errors import CorpusError

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "ernie_cl.cli"]


def write_jsonl(path: Path, documents: int = 60, seed: int = 5) -> Path:
    """Generated English documents, one JSON object a line, without ids (ids are line numbers), with
    blank lines between some of them."""
    rng = random.Random(seed)
    lines = []
    for i in range(documents):
        doc = random_document(rng, f"d{i}", paragraphs=3, sentences=4)
        text = "\n\n".join(" ".join(s.text for s in paragraph) for paragraph in doc.paragraphs())
        lines.append(json.dumps({"title": f"Document {i}", "text": text}))
        if i % 7 == 0:
            lines.append("")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def corpus_of(path: Path, cache: Path, **options):
    return load_corpus("jsonl", path, cache_dir=cache, eval_fraction=0.1, show_progress=False, **options)


def test_a_single_large_jsonl_is_parsed_in_several_parts_with_the_same_result(tmp_path, monkeypatch):
    import ernie_cl.corpus.parts as parts

    source = write_jsonl(tmp_path / "corpus.jsonl")
    whole = corpus_of(source, tmp_path / "whole", workers=1)
    assert len(whole.documents.store.shards) == 1
    monkeypatch.setattr(parts, "PART_BYTES", 4_000)
    ranges = list(parts.line_parts("jsonl", source, ("text", "title")))
    assert len(ranges) > 5 and ranges[0].start == 0 and ranges[-1].end == source.stat().st_size
    assert all(a.end == b.start for a, b in zip(ranges, ranges[1:]))  # contiguous, cut after newlines
    split = corpus_of(source, tmp_path / "split", workers=2)
    assert len(split.documents.store.shards) == len(ranges)
    assert list(split.documents) == list(whole.documents) and split.stats == whole.stats
    # ids are line numbers of the whole file even though each worker reads its own range
    numbers = [i + 1 for i, line in enumerate(source.read_text().splitlines()) if line]
    assert [d.id for d in split.documents] == [str(n) for n in numbers]


def test_a_wiki_dump_is_parsed_in_page_ranges(tmp_path, monkeypatch):
    from collections import Counter

    import ernie_cl.corpus.parts as parts
    from ernie_cl.corpus.readers import bundled_paths

    monkeypatch.setattr(parts, "PART_BYTES", 200_000)
    pages = list(parts.wiki_parts(bundled_paths()[0], Counter()))
    assert len(pages) > 10 and len({p.pages[0][0] for p in pages}) == len(pages)


def test_a_bad_line_in_a_later_part_names_its_line_and_leaves_no_partial_cache(tmp_path, monkeypatch):
    import ernie_cl.corpus.parts as parts

    monkeypatch.setattr(parts, "PART_BYTES", 4_000)
    source = write_jsonl(tmp_path / "corpus.jsonl")
    lines = source.read_text().splitlines()
    lines[50] = '{"title": "broken", "text": '
    source.write_text("\n".join(lines) + "\n")
    with pytest.raises(CorpusError, match="corpus.jsonl line 51 is not valid JSON"):
        corpus_of(source, tmp_path / "cache", workers=2)
    assert list((tmp_path / "cache" / "corpus").iterdir()) == []  # nothing half-written stays


def test_a_duplicate_id_in_another_part_is_refused(tmp_path, monkeypatch):
    import ernie_cl.corpus.parts as parts

    monkeypatch.setattr(parts, "PART_BYTES", 2_000)
    rows = [{"id": f"doc-{i}", "text": f"Sentence number {i} is here. And one more."} for i in range(30)] + [{"id": "doc-3", "text": "A second document with the id doc-3. It is refused."}]
    source = tmp_path / "dup.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(CorpusError, match="duplicate document id 'doc-3' in the corpus .documents 4 and 31"):
        corpus_of(source, tmp_path / "cache", workers=2, phrases=False)
    assert list((tmp_path / "cache" / "corpus").iterdir()) == []


KILLED_PARSE = """
import sys
sys.path.insert(0, {tests!r})
import ernie_cl.corpus.parts as parts
parts.PART_BYTES = 4_000
from test_prepare_resume import corpus_of
from pathlib import Path
corpus_of(Path({source!r}), Path({cache!r}), workers=1)
"""


def test_a_parse_killed_between_shards_reuses_them_and_a_damaged_one_is_rebuilt(tmp_path, monkeypatch, caplog):
    import ernie_cl.corpus.parts as parts

    source = write_jsonl(tmp_path / "corpus.jsonl")
    script = KILLED_PARSE.format(tests=str(ROOT / "tests"), source=str(source), cache=str(tmp_path / "cache"))
    env = {**os.environ, "ERNIE_CL_FAULT": "kill@corpus-shard:pass1:4"}
    killed = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, cwd=ROOT)
    assert killed.returncode == -9, killed.stderr[-2000:]
    staging = next((tmp_path / "cache" / "corpus").glob(".*.partial"))
    assert sorted(p.name for p in (staging / "pass1").glob("*.done.json")) == [
        f"docs-{i:05d}.done.json" for i in range(5)]
    torn = staging / "pass1" / "docs-00002.arrow"
    torn.write_bytes(torn.read_bytes()[:200])  # a torn write the marker's sha256 does not match
    monkeypatch.setattr(parts, "PART_BYTES", 4_000)
    with caplog.at_level(logging.WARNING, logger="ernie_cl.corpus.loader"):
        resumed = corpus_of(source, tmp_path / "cache", workers=2)
    assert "reused 4 of" in caplog.text and "1 damaged shard(s) were built again" in caplog.text
    uninterrupted = corpus_of(source, tmp_path / "fresh", workers=2)
    assert list(resumed.documents) == list(uninterrupted.documents) and resumed.stats == uninterrupted.stats
    assert not staging.exists() and not list(resumed.cache_path.glob("*.done.json"))


SCHEDULE = """
name: resume
seed: 3
model: tiny
corpus:
  source: jsonl
  path: {source}
  eval_fraction: 0.2
  phrase_min_count: 2
tokenizer:
  pretrained: {tokenizer}
training:
  batch_size: 4
  seq_len: 64
tasks:
  knowledge_masking: {{iterations: 4}}
  sentence_reordering: {{iterations: 4}}
  sentence_distance: {{iterations: 4}}
stages:
  - name: one
    tasks: [knowledge_masking, sentence_reordering, sentence_distance]
"""


def _hashes(schedule_file: Path, cache: Path) -> dict[str, str]:
    """Content hash of every example set and of the corpus, loaded from a finished cache."""
    from ernie_cl.config.schedule import load_model_config, load_schedule
    from ernie_cl.data.preparation import prepare

    schedule = load_schedule(schedule_file)
    prepared = prepare(schedule, load_model_config(schedule.model, schedule_file.parent), cache, show_progress=False,
                       workers=1)
    out = {f"train/{k}": v.content_hash() for k, v in prepared.train_sets.items()}
    out |= {f"heldout/{k}": v.content_hash() for k, v in prepared.eval_sets.items()}
    out["corpus"] = str(hash(tuple(json.dumps(d.to_dict(), sort_keys=True) for d in prepared.corpus.documents)))
    return out


def test_a_prepare_killed_in_the_corpus_and_in_the_examples_ends_identical(tmp_path, tokenizer):
    tokenizer.hf.save_pretrained(str(tmp_path / "tok"))
    source = write_jsonl(tmp_path / "corpus.jsonl", documents=80)
    schedule = tmp_path / "resume.yaml"
    schedule.write_text(SCHEDULE.format(source=source, tokenizer=tmp_path / "tok"))

    def run(cache: str, workers: int, fault: str | None = None) -> subprocess.CompletedProcess:
        env = {k: v for k, v in os.environ.items() if k != "ERNIE_CL_FAULT"} | ({"ERNIE_CL_FAULT": fault} if fault else {})
        return subprocess.run(CLI + ["prepare", str(schedule), "--cache-dir", str(tmp_path / cache), "--workers",
                                     str(workers), "--no-progress"], env=env, capture_output=True, text=True, cwd=ROOT)

    first = run("killed", 1, "kill@corpus-shard:final:0")  # after parsing, in the phrase-span pass
    assert first.returncode == -9, first.stderr[-2000:]
    second = run("killed", 1, "kill@example-shard:sentence_distance/train:3")
    assert second.returncode == -9, second.stderr[-2000:]
    assert "reused 1 of 1 shards" in second.stderr  # the phrase pass's finished shard
    third = run("killed", 2)
    assert third.returncode == 0, third.stderr[-2000:]
    assert "reusing 4 of" in third.stderr  # the sentence_distance shards of the killed run
    fresh = run("fresh", 2)
    assert fresh.returncode == 0, fresh.stderr[-2000:]
    assert _hashes(schedule, tmp_path / "killed") == _hashes(schedule, tmp_path / "fresh")
    assert not list((tmp_path / "killed" / "corpus").glob(".*"))  # no staging folder left


def test_a_parse_worker_that_dies_is_one_line_and_its_finished_shards_are_kept(tmp_path, monkeypatch, caplog):
    import ernie_cl.corpus.parts as parts
    from ernie_cl.errors import DataBuildError

    source = write_jsonl(tmp_path / "corpus.jsonl")
    monkeypatch.setattr(parts, "PART_BYTES", 4_000)
    monkeypatch.setenv("ERNIE_CL_FAULT", "kill@corpus-shard:pass1:3")  # SIGKILL of the worker, as by the OOM killer
    with pytest.raises(DataBuildError, match="a corpus parsing worker process died .* the finished shards are kept"):
        corpus_of(source, tmp_path / "cache", workers=2)
    monkeypatch.delenv("ERNIE_CL_FAULT")
    with caplog.at_level(logging.WARNING, logger="ernie_cl.corpus.loader"):
        again = corpus_of(source, tmp_path / "cache", workers=2)
    assert "reused" in caplog.text
    assert list(again.documents) == list(corpus_of(source, tmp_path / "fresh", workers=1).documents)


def test_the_tokenizer_sample_is_spread_over_the_corpus_and_only_taken_when_it_is_large(tmp_path):
    from ernie_cl.data.preparation import tokenizer_sample

    corpus = corpus_of(write_jsonl(tmp_path / "corpus.jsonl", documents=400), tmp_path / "cache", workers=1)
    total = int(corpus.train.char_counts().sum())
    whole, name = tokenizer_sample(corpus.train, total)
    assert whole is corpus.train and name is None
    sample, name = tokenizer_sample(corpus.train, total // 4)
    again, _ = tokenizer_sample(corpus.train, total // 4)
    assert name and [d.id for d in sample] == [d.id for d in again]  # the same documents every time
    assert 0.15 < sample.char_counts().sum() / total < 0.35
    positions = np.nonzero(np.isin(corpus.train.indices, sample.indices))[0]
    assert positions.min() < len(corpus.train) * 0.2 and positions.max() > len(corpus.train) * 0.8  # not a prefix


def test_a_reader_of_the_cache_says_in_one_line_what_is_missing_and_builds_nothing(tmp_path, tokenizer):
    """What a training rank other than 0 does: read the prepared cache, never build it."""
    import shutil

    from ernie_cl.config.schedule import load_model_config, load_schedule
    from ernie_cl.data.preparation import prepare
    from ernie_cl.errors import CacheMissingError

    tokenizer.hf.save_pretrained(str(tmp_path / "tok"))
    schedule_file = tmp_path / "resume.yaml"
    schedule_file.write_text(SCHEDULE.format(source=write_jsonl(tmp_path / "corpus.jsonl"), tokenizer=tmp_path / "tok"))
    schedule = load_schedule(schedule_file)
    model = load_model_config(schedule.model, schedule_file.parent)
    with pytest.raises(CacheMissingError, match="no parsed corpus for this schedule in"):
        prepare(schedule, model, tmp_path / "cache", show_progress=False, workers=1, build=False)
    assert not (tmp_path / "cache" / "corpus").exists() or not list((tmp_path / "cache" / "corpus").iterdir())
    built = prepare(schedule, model, tmp_path / "cache", show_progress=False, workers=1)
    again = prepare(schedule, model, tmp_path / "cache", show_progress=False, workers=1, build=False)
    assert {k: v.content_hash() for k, v in again.train_sets.items()} == {
        k: v.content_hash() for k, v in built.train_sets.items()}
    shutil.rmtree(built.train_sets["sentence_distance"].folder)
    with pytest.raises(CacheMissingError, match="task 'sentence_distance': .* train example shard.s. are not in"):
        prepare(schedule, model, tmp_path / "cache", show_progress=False, workers=1, build=False)
    assert not list(built.train_sets["sentence_distance"].folder.glob("shard-*"))  # nothing was built
