"""The Ray engine of data preparation: the same stage functions as Ray tasks over shard ids give the
same corpus store and the same examples as one process or forked workers; Ray task failures come
back as a forked worker's would; a bad --ray-address is one line with exit code 2. Ray is started
here, locally with 2 CPUs, and shut down again."""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import pickle
import random
import shutil
import subprocess
import sys
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import pytest
import yaml

from conftest import random_document
from ernie_cl.cli import main
from ernie_cl.config.schedule import load_model_config, load_schedule
from ernie_cl.corpus.workers import engine_name, ordered_map, use_engine
from ernie_cl.data.preparation import prepare
from ernie_cl.errors import ConfigError

ray = pytest.importorskip("ray")

PREFIX = "ernie-cl: error: "
TASKS = ["knowledge_masking", "capitalization", "sentence_distance", "ir_relevance"]


def write_jsonl(path: Path, documents: int = 50, seed: int = 3) -> Path:
    rng = random.Random(seed)
    lines = []
    for i in range(documents):
        doc = random_document(rng, f"d{i}", paragraphs=4, sentences=4)
        text = "\n\n".join(" ".join(s.text for s in paragraph) for paragraph in doc.paragraphs())
        lines.append(json.dumps({"id": f"doc-{i}", "title": f"Document {i}", "text": text}))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def schedule_file(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("schedule")
    data = {
        "name": "ray-engine", "seed": 7, "model": "tiny",
        "corpus": {"source": "jsonl", "path": str(write_jsonl(folder / "corpus.jsonl")), "phrases": True,
                   "phrase_min_count": 2, "eval_fraction": 0.2},
        "tokenizer": {"vocab_size": 400},
        "training": {"seq_len": 64, "data_workers": 1},
        "tasks": {name: {"iterations": 10} for name in TASKS},
        "stages": [{"name": "first", "tasks": ["knowledge_masking", "sentence_distance"]},
                   {"name": "second", "tasks": TASKS}],
    }
    path = folder / "schedule.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


@pytest.fixture()
def several_parts(monkeypatch):
    """The source in several parse parts (the cut happens on the driver, so patching it here is enough)."""
    try:
        import ernie_cl.corpus.parts as parts

        monkeypatch.setattr(parts, "PART_BYTES", 8_000)
    except ImportError:  # the corpus path before parse parts: batches of raw documents
        import ernie_cl.corpus.loader as loader

        monkeypatch.setattr(loader, "PARSE_BATCH_CHARS", 8_000)


def cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    return code, out.getvalue(), err.getvalue()


def one_error_line(result: tuple[int, str, str], exit_code: int) -> str:
    code, _, err = result
    lines = [line for line in err.splitlines() if line.startswith(PREFIX)]
    assert code == exit_code and len(lines) == 1 and "Traceback" not in err, err
    return lines[0][len(PREFIX):]


def fingerprint(prepared) -> dict:
    """What a prepare produced, by content: the corpus store and every example set's hash."""
    corpus = prepared.corpus
    return {
        "corpus": (corpus.fingerprint, corpus.stats, [(s["documents"]) for s in corpus.documents.store.shards]),
        "train": {name: (len(s), s.content_hash()) for name, s in prepared.train_sets.items()},
        "heldout": {name: (len(s), s.content_hash()) for name, s in prepared.eval_sets.items()},
    }


def test_one_process_forked_workers_and_ray_prepare_the_same_data(schedule_file, tmp_path, several_parts, capfd):
    schedule = load_schedule(schedule_file)
    model = load_model_config(schedule.model, schedule_file.parent)
    one = prepare(schedule, model, tmp_path / "one", show_progress=False, workers=1)
    # The WordPiece trainer of HF tokenizers is not deterministic (huggingface/tokenizers#1794): the
    # trained tokenizer (built once, on the driver, whatever the engine) is shared, the rest is compared.
    for name in ("forked", "ray"):
        shutil.copytree(tmp_path / "one" / "tokenizers", tmp_path / name / "tokenizers")
    forked = prepare(schedule, model, tmp_path / "forked", show_progress=False, workers=2)
    capfd.readouterr()
    on_ray = prepare(schedule, model, tmp_path / "ray", show_progress=False, workers=2, engine="ray")
    err = capfd.readouterr().err
    assert not ray.is_initialized() and engine_name() == "local"  # started by prepare, shut down by it
    assert "WARNING" not in err and "Traceback" not in err, err  # Ray's own chatter stays out of the output
    expected = fingerprint(one)
    assert len(one.corpus.documents.store.shards) > 3  # several parse parts, so the parse ran as several tasks
    # capitalization trains only fused with knowledge_masking (stage 2): no training set of its own;
    # knowledge_masking also trains alone (stage 1), so it keeps one
    assert set(expected["train"]) == {"knowledge_masking+capitalization", "knowledge_masking", "sentence_distance",
                                      "ir_relevance"}
    assert set(expected["heldout"]) == set(TASKS)
    assert fingerprint(forked) == expected
    assert fingerprint(on_ray) == expected
    assert list(on_ray.corpus.documents) == list(one.corpus.documents)
    assert all(len(s.manifest["shards"]) > 1 for s in on_ray.train_sets.values())  # built as several shard tasks


def test_ray_tasks_fail_like_forked_workers_and_a_second_driver_joins_by_address(schedule_file, tmp_path):
    with use_engine("ray", num_cpus=2):
        assert ray.is_initialized() and engine_name() == "ray"
        with use_engine("ray"):  # nested: uses the running Ray and leaves it running
            pids = list(ordered_map(os.readlink, ["/proc/self"] * 6, 2, in_flight=3))
        assert ray.is_initialized()
        assert os.getpid() not in {int(p) for p in pids}  # ran in Ray's worker processes
        assert list(ordered_map(math.sqrt, [4.0, 9.0, 16.0, 25.0], 2)) == [2.0, 3.0, 4.0, 5.0]  # in order
        with pytest.raises(ValueError, match="math domain error"):  # the task's own exception type
            list(ordered_map(math.sqrt, [4.0, -1.0, 9.0], 2))
        with pytest.raises(BrokenProcessPool, match="Ray worker died"):  # as a forked worker that dies
            list(ordered_map(os._exit, [3, 3], 2))
        # `ernie-cl prepare --ray-address` in another process runs its tasks on this Ray "cluster"
        # and leaves it running: it only disconnects.
        address = ray.get_runtime_context().gcs_address
        small = yaml.safe_load(schedule_file.read_text())
        small["corpus"].update(path=str(write_jsonl(tmp_path / "small.jsonl", documents=24)), phrases=False)
        small["tasks"], small["stages"] = {"capitalization": {"iterations": 5}}, [{"name": "one", "tasks": ["capitalization"]}]
        (tmp_path / "small.yaml").write_text(yaml.safe_dump(small), encoding="utf-8")
        done = subprocess.run([sys.executable, "-m", "ernie_cl.cli", "prepare", str(tmp_path / "small.yaml"), "--cache-dir",
                               str(tmp_path / "joined"), "--engine", "ray", "--ray-address", address, "--workers", "2",
                               "--no-progress"], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0 and done.stdout.startswith("ernie-cl: prepared 1 training and 1 held-out"), done.stderr
        assert "WARNING" not in done.stderr and "Traceback" not in done.stderr, done.stderr
        assert list(ordered_map(math.sqrt, [1.0, 4.0], 2)) == [1.0, 2.0]
    assert not ray.is_initialized() and engine_name() == "local"


def test_a_document_store_pickles_as_its_folder(schedule_file, tmp_path):
    from ernie_cl.corpus.loader import load_corpus

    corpus = load_corpus("jsonl", load_schedule(schedule_file).corpus.path, cache_dir=tmp_path, phrases=False,
                         eval_fraction=0.2, show_progress=False, workers=1)
    view = corpus.heldout
    list(view)  # the shards are memory-mapped now
    assert view.store._tables
    copy = pickle.loads(pickle.dumps(view))
    assert len(pickle.dumps(view)) < 4_000 and not copy.store._tables  # no table travels
    assert copy == view and list(copy) == list(view) and copy.store.folder == view.store.folder


def test_an_unreachable_ray_address_is_one_line_with_exit_code_2(schedule_file, tmp_path):
    common = ("prepare", str(schedule_file), "--cache-dir", str(tmp_path / "cache"), "--no-progress")
    message = one_error_line(cli(*common, "--engine", "ray", "--ray-address", "127.0.0.1:1"), exit_code=2)
    assert message.startswith("cannot reach the Ray cluster at --ray-address 127.0.0.1:1 (")
    assert "ray start --head" in message
    message = one_error_line(cli(*common, "--engine", "ray", "--ray-address", "nonsense"), exit_code=2)
    assert message.startswith("--ray-address 'nonsense' is not HOST:PORT")
    message = one_error_line(cli(*common, "--ray-address", "127.0.0.1:6379"), exit_code=2)
    assert message == "--ray-address needs --engine ray (the local engine runs on this machine only)"
    assert not (tmp_path / "cache").exists() and not ray.is_initialized()  # nothing was started or written
    with pytest.raises(ConfigError, match="unknown data engine 'spark'"):
        with use_engine("spark"):
            pass


def test_the_local_engine_never_imports_ray():
    code = ("import sys, math; from ernie_cl.corpus.workers import ordered_map, use_engine\n"
            "with use_engine('local'):\n"
            "    assert list(ordered_map(math.sqrt, [1.0, 4.0, 9.0], 2)) == [1.0, 2.0, 3.0]\n"
            "assert 'ray' not in sys.modules, 'ray imported'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
