"""Downstream evaluation on a real micro checkpoint (trained once per module): rebuilding the model
from the checkpoint alone, frozen features, the stratified linear probe, GLUE-style task reading,
fine-tuning (classification and regression), and the ``ernie-cl finetune`` command."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from ernie_cl.cli import main
from ernie_cl.errors import CheckpointError, ConfigError, CorpusError
from ernie_cl.evaluation import downstream, finetune, glue_tasks
from ernie_cl.training.trainer import train

ROOT = Path(__file__).resolve().parent.parent
MICRO_MODEL = {"model_type": "bert", "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
               "intermediate_size": 64, "max_position_embeddings": 128}
TASKS = ["knowledge_masking", "sentence_reordering"]  # a token-level and a sentence-level head
POSITIVE, NEGATIVE = ["good", "great", "fine", "nice"], ["bad", "poor", "awful", "terrible"]
FILLERS = ["the film was", "a story that is", "this war was", "the city looked", "his work was"]
FAST = {"epochs": 5, "lr": 3e-3, "batch_size": 16}  # a 32-wide model needs large steps to move in 50 steps


@pytest.fixture(autouse=True)
def one_thread():
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def schedule_file(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("schedule")
    (folder / "micro.yaml").write_text(yaml.safe_dump(MICRO_MODEL))
    schedule = {
        "name": "downstream", "seed": 3, "model": "micro.yaml", "deepspeed": "zero0",
        "corpus": {"source": "bundled", "max_documents": 40, "eval_fraction": 0.1},
        "tokenizer": {"vocab_size": 1000},
        "training": {"batch_size": 4, "seq_len": 64, "lr": 2e-3, "warmup_steps": 2, "eval_examples": 16,
                     "eval_batch_size": 16, "threads": 1, "data_workers": 1, "checkpoint_every": 0},
        "tasks": {"knowledge_masking": {"iterations": 4}, "sentence_reordering": {"iterations": 2}},
        "stages": [{"name": "both", "tasks": TASKS}],
    }
    (folder / "micro-run.yaml").write_text(yaml.safe_dump(schedule))
    return folder / "micro-run.yaml"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, schedule_file, cache_dir) -> Path:
    torch.set_num_threads(1)
    run = tmp_path_factory.mktemp("runs") / "micro"
    train(schedule_file, run, wandb_mode="disabled", cache_dir=cache_dir, show_progress=False)
    return run


@pytest.fixture(scope="module")
def checkpoint(run_dir) -> Path:
    return run_dir / "checkpoints" / "stage-01-both"


@pytest.fixture(scope="module")
def loaded(checkpoint, cache_dir):
    return downstream.load_encoder(checkpoint, cache_dir, device="cpu")


def sentiment_rows(n: int, seed: int) -> list[tuple[str, int]]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        label = rng.randint(0, 1)
        word = rng.choice(POSITIVE if label else NEGATIVE)
        rows.append((f"{rng.choice(FILLERS)} {word} and {rng.choice(FILLERS)}", label))
    return rows


def write_tsv(path: Path, header: list[str], rows: list[tuple]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\t".join(header) + "\n" + "".join("\t".join(map(str, r)) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def sentiment_task(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("tasks") / "good-bad"
    write_tsv(folder / "train.tsv", ["sentence", "label"], sentiment_rows(160, 0))
    write_tsv(folder / "dev.tsv", ["sentence", "label"], sentiment_rows(60, 1))
    return folder


# --- loading -------------------------------------------------------------------------------------

def test_load_encoder_rebuilds_the_trained_model_exactly(loaded, checkpoint, run_dir, schedule_file, cache_dir):
    encoder, tokenizer, info = loaded
    saved = {k: v for k, v in torch.load(checkpoint / downstream.WEIGHTS_FILE, weights_only=True)["module"].items()
             if not k.startswith("balancers.")}  # pre-training's loss balancers are not part of the encoder
    state = encoder.state_dict()
    assert state.keys() == saved.keys() and all(torch.equal(state[k], saved[k]) for k in saved)
    assert info["tasks"] == TASKS and info["global_step"] == 6 and not encoder.training
    # The held-out losses the trainer recorded after the stage come out again from the loaded model,
    # its heads and the cheaply loaded tokenizer (they differ from the untrained ones: not vacuous).
    from ernie_cl.config.schedule import load_model_config, load_schedule
    from ernie_cl.data.preparation import prepare
    from ernie_cl.training.heldout_eval import evaluate, trivial_baselines

    schedule = load_schedule(schedule_file)
    prepared = prepare(schedule, load_model_config(schedule.model, schedule_file.parent), cache_dir, show_progress=False)
    assert prepared.tokenizer.fingerprint == tokenizer.fingerprint == info["tokenizer"]
    summary = json.loads((run_dir / "summary.json").read_text())
    recorded = summary["stages"][-1]["eval"]
    assert any(recorded[t]["loss"] != summary["init_eval"][t]["loss"] for t in TASKS)
    baselines = trivial_baselines(prepared.tasks, prepared.eval_sets, 16)
    again = evaluate(encoder, prepared.tasks, prepared.eval_sets, baselines, 16, 16, tokenizer.pad_id, torch.device("cpu"))
    for task in TASKS:
        assert again[task]["loss"] == pytest.approx(recorded[task]["loss"], rel=1e-5)
        assert again[task]["metric"] == pytest.approx(recorded[task]["metric"])


def test_load_encoder_takes_a_run_folder_and_leaves_the_global_rng_alone(run_dir, checkpoint, cache_dir):
    before = torch.get_rng_state()
    _, _, info = downstream.load_encoder(run_dir, cache_dir, device="cpu")
    assert info["checkpoint"] == str(checkpoint)
    assert torch.equal(before, torch.get_rng_state())


def test_missing_or_incomplete_checkpoints_are_one_line_errors(checkpoint, cache_dir, tmp_path):
    with pytest.raises(CheckpointError, match="does not exist") as missing:
        downstream.load_encoder(tmp_path / "nope", cache_dir)
    broken = tmp_path / "broken"
    shutil.copytree(checkpoint, broken)
    (broken / "trainer_state.json").unlink()
    with pytest.raises(CheckpointError, match="no readable trainer_state.json") as incomplete:
        downstream.load_encoder(broken, cache_dir)
    truncated = tmp_path / "truncated"
    shutil.copytree(checkpoint, truncated)
    (truncated / downstream.WEIGHTS_FILE).write_bytes(b"\0" * 10)
    with pytest.raises(CheckpointError, match="bytes") as short:
        downstream.load_encoder(truncated, cache_dir)
    assert all("\n" not in str(e.value) for e in (missing, incomplete, short))


# --- features and the linear probe ---------------------------------------------------------------

def test_sentence_features_do_not_depend_on_batching_or_padding(loaded):
    encoder, tokenizer, _ = loaded
    texts = ["a short one .", "the old museum near the quiet river was built in 1900 by the city .", ("a question", "an answer")]
    together = downstream.sentence_features(encoder, tokenizer, texts, batch_size=8)
    alone = torch.cat([downstream.sentence_features(encoder, tokenizer, [t], batch_size=1) for t in texts])
    assert together.shape == (3, 32) and torch.allclose(together, alone, atol=1e-5)
    cls = downstream.sentence_features(encoder, tokenizer, texts, pooling="cls")
    assert not torch.allclose(cls, together)
    encoder.train()
    downstream.sentence_features(encoder, tokenizer, texts[:1])
    assert encoder.training  # the caller's mode comes back
    encoder.eval()
    with pytest.raises(ConfigError, match="pooling 'max'"):
        downstream.sentence_features(encoder, tokenizer, texts, pooling="max")


def test_stratified_folds_keep_class_shares_and_follow_the_seed():
    labels = ["a"] * 60 + ["b"] * 30 + ["c"] * 10
    folds = downstream.stratified_folds(labels, 5, seed=7)
    assert sorted(i for f in folds for i in f) == list(range(100))
    for fold in folds:
        assert [sum(labels[i] == c for i in fold) for c in "abc"] == [12, 6, 2]
    assert downstream.stratified_folds(labels, 5, seed=7) == folds
    assert downstream.stratified_folds(labels, 5, seed=8) != folds
    uneven = downstream.stratified_folds([0] * 7 + [1] * 4, 3, seed=0)
    assert sorted(len(f) for f in uneven) == [3, 4, 4]


def test_linear_probe_finds_a_separating_direction_and_is_at_chance_on_random_labels():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 16))
    separable = (x @ rng.normal(size=16) > 0).astype(int)
    result = downstream.linear_probe(x, separable.tolist(), folds=5, seed=0)
    assert result["accuracy"] >= 0.95 and result["folds"] == 5 and result["n"] == 200
    assert result["accuracy"] == pytest.approx(np.mean(result["fold_accuracies"]))
    assert downstream.linear_probe(x, separable.tolist(), folds=5, seed=0) == result  # deterministic
    noise = rng.integers(0, 2, size=200).tolist()
    at_chance = downstream.linear_probe(x, noise, folds=5, seed=0)
    assert 0.35 <= at_chance["accuracy"] <= 0.65 and at_chance["std"] > 0
    with pytest.raises(CorpusError, match="2 or more classes"):
        downstream.linear_probe(x[:10], [1] * 10)


def test_pang_lee_polarity_is_the_200_sentences_gensim_ships():
    texts, labels = downstream.pang_lee_polarity()
    assert len(texts) == 200 and labels.count(0) == labels.count(1) == 100
    assert texts[0] == "simplistic , silly and tedious ." and labels[0] == 0
    assert not any("__label__" in t for t in texts) and any("\u2014" in t for t in texts)  # cp1252 dashes decoded


def test_probe_pang_lee_on_the_micro_checkpoint(loaded):
    result = downstream.probe_pang_lee(loaded)
    assert result["n"] == 200 and result["folds"] == 5 and len(result["fold_accuracies"]) == 5
    assert 0.0 <= result["accuracy"] <= 1.0 and result["pooling"] == "mean"
    assert all(a * 40 == round(a * 40) for a in result["fold_accuracies"])  # 40 sentences per fold


# --- GLUE-style task reading ---------------------------------------------------------------------

def test_glue_columns_labels_and_splits_are_detected(tmp_path):
    pairs = tmp_path / "qnli.csv"
    pairs.write_text("idx,question,sentence,label\n" + "".join(
        f'{i},"what, {i}?",sentence {i},{"entailment" if i % 3 else "not_entailment"}\n' for i in range(30)))
    task = glue_tasks.load_glue_task(pairs, seed=0)
    assert task.text_columns == ["question", "sentence"] and task.label_column == "label"
    assert task.kind == "classification" and task.label_names == ["entailment", "not_entailment"]
    assert ("what, 3?", "sentence 3") in task.train_texts + task.dev_texts  # a quoted comma is text
    # 80/20, stratified: 20 + 10 rows -> dev holds 4 + 2
    assert len(task.dev_labels) == 6 and task.dev_labels.count(1) == 2
    assert "20% of" in task.dev_source and "stratified" in task.dev_source

    folder = tmp_path / "sts"
    header = ["index", "sentence1", "sentence2", "score"]
    write_tsv(folder / "train.tsv", header, [(i, 'a "b', "c", f"{i % 5}.000") for i in range(8)])
    write_tsv(folder / "validation.tsv", header, [(0, "x", "y", "2.500"), (1, "z", "w", "4")])
    sts = glue_tasks.load_glue_task(folder)
    assert sts.kind == "regression" and sts.dev_labels == [2.5, 4.0] and sts.dev_source == "dev split"
    assert sts.train_texts[1] == ('a "b', "c")  # GLUE TSVs: quotes are text

    jsonl = tmp_path / "own.jsonl"
    jsonl.write_text("".join(json.dumps({"body": f"text {i}", "y": i % 2}) + "\n" for i in range(20)))
    own = glue_tasks.load_glue_task(jsonl, text_columns=["body"], label_column="y")
    assert own.kind == "classification" and own.label_names == ["0", "1"] and len(own.train_labels) == 16
    forced = glue_tasks.load_glue_task(jsonl, text_columns=["body"], label_column="y", task_type="regression")
    assert forced.kind == "regression" and set(forced.train_labels + forced.dev_labels) == {0.0, 1.0}


def test_a_dataset_saved_with_save_to_disk_is_read_with_its_validation_split(tmp_path):
    import datasets

    datasets.disable_progress_bars()
    splits = {"train": {"premise": ["p1", "p2", "p3"], "hypothesis": ["h1", "h2", "h3"], "label": [0, 2, 1]},
              "validation": {"premise": ["p4", "p5"], "hypothesis": ["h4", "h5"], "label": [2, 0]},
              "test": {"premise": ["p6"], "hypothesis": ["h6"], "label": [-1]}}
    datasets.DatasetDict({k: datasets.Dataset.from_dict(v) for k, v in splits.items()}).save_to_disk(str(tmp_path / "nli"))
    task = glue_tasks.load_glue_task(tmp_path / "nli")
    assert task.text_columns == ["premise", "hypothesis"] and task.train_texts[1] == ("p2", "h2")
    assert task.dev_texts == [("p4", "h4"), ("p5", "h5")] and task.dev_labels == [2, 0]  # never the test split


def test_finetune_learns_a_good_versus_bad_task_and_is_deterministic(loaded, sentiment_task):
    result = finetune.finetune(loaded, sentiment_task, **FAST)
    assert result["task"] == "good-bad" and result["metric_name"] == "accuracy"
    assert result["train_examples"] == 160 and result["dev_examples"] == 60
    assert result["value"] == result["accuracy"] >= 0.8
    assert result["value"] >= result["majority_baseline"] + 0.25
    assert result["settings"]["max_len"] == 64  # the pre-training length: longer positions were never trained
    again = finetune.finetune(loaded, sentiment_task, **FAST)
    assert again["per_epoch"] == result["per_epoch"]
    # the encoder handed in was copied, not trained
    saved = torch.load(Path(loaded[2]["checkpoint"]) / downstream.WEIGHTS_FILE, weights_only=True)["module"]
    assert all(torch.equal(value, saved[name]) for name, value in loaded[0].state_dict().items())


def test_finetune_regression_reports_pearson_and_spearman(loaded, tmp_path):
    rng = random.Random(2)
    lines = []
    for _ in range(150):
        k = rng.randint(0, 3)
        words = [rng.choice(POSITIVE) for _ in range(k)] + [rng.choice(NEGATIVE) for _ in range(3 - k)]
        rng.shuffle(words)
        lines.append(json.dumps({"text": f"the film was {' and '.join(words)}", "score": k + 0.5}))
    path = tmp_path / "scores.jsonl"
    path.write_text("\n".join(lines) + "\n")
    result = finetune.finetune(loaded, path, **FAST)
    assert result["kind"] == "regression" and result["metric_name"] == "pearson" and result["labels"] is None
    assert result["value"] == result["pearson"] and -1 <= result["spearman"] <= 1
    assert result["pearson"] > 0.5 and result["train_examples"] == 120 and result["dev_examples"] == 30


def test_spearman_ranks_average_ties():
    assert finetune._ranks(np.array([3.0, 1.0, 2.0, 2.0])).tolist() == [3.0, 0.0, 1.5, 1.5]
    assert finetune._correlation(np.array([1.0, 1.0]), np.array([0.0, 1.0])) is None


# --- the command ---------------------------------------------------------------------------------

def test_cli_finetune_runs_end_to_end_and_writes_json(checkpoint, cache_dir, sentiment_task, tmp_path):
    out = tmp_path / "result.json"
    result = subprocess.run(
        [sys.executable, "-m", "ernie_cl.cli", "finetune", str(checkpoint), "--task", str(sentiment_task / "train.tsv"),
         "--epochs", "2", "--lr", "3e-3", "--batch-size", "16", "--cache-dir", str(cache_dir), "--out", str(out), "--no-progress"],
        capture_output=True, text=True, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr
    written = json.loads(out.read_text())
    assert written["task"] == "train" and written["metric_name"] == "accuracy" and 0 <= written["value"] <= 1
    assert written["train_examples"] == 128 and written["dev_examples"] == 32 and len(written["per_epoch"]) == 2
    assert f"accuracy {written['value']:.4f} on 32 dev examples" in result.stdout


@pytest.fixture
def bad_inputs(tmp_path) -> dict[str, tuple[str, str]]:
    no_label = write_tsv(tmp_path / "no_label.tsv", ["sentence", "verdict"], [(f"s {i}", i % 2) for i in range(20)])
    (tmp_path / "notes.txt").write_text("sentence\tlabel\na\t1\n")
    few = write_tsv(tmp_path / "few.tsv", ["sentence", "label"], [("a", 0), ("b", 1), ("c", 0)])
    return {  # --task value, what the message must say
        "missing file": (str(tmp_path / "missing.tsv"), "does not exist"),
        "no label column": (str(no_label), "found no label column"),
        "unknown format": (str(tmp_path / "notes.txt"), "unknown format '.txt'"),
        "too few examples": (str(few), "too few examples"),
        "dataset not in the local cache": ("no-such-org/no-such-dataset", "offline"),
    }


@pytest.mark.parametrize("case", ["missing file", "no label column", "unknown format", "too few examples",
                                  "dataset not in the local cache"])
def test_cli_bad_inputs_are_one_line_errors_with_exit_code_2(case, bad_inputs, checkpoint, capsys):
    task, expected = bad_inputs[case]
    code = main(["finetune", str(checkpoint), "--task", task, "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("ernie-cl: error: ") and expected in err[0]


def test_cli_bad_checkpoint_is_a_one_line_error(sentiment_task, tmp_path, capsys):
    code = main(["finetune", str(tmp_path / "nowhere"), "--task", str(sentiment_task)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "does not exist" in err[0]


def test_finetune_help_explains_the_accepted_formats(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["finetune", "--help"])
    text = capsys.readouterr().out
    assert stop.value.code == 0
    for needle in ("train.tsv", "dev.*", ".jsonl", "80/20", "--config", "sentence1+sentence2", "offline", "--out"):
        assert needle in text
