"""Baseline derivation of ``ernie-cl compare``: every strategy gets the same per-task iterations and
the same total optimizer steps, for several schedules (the shipped ones and hand-made ones)."""

from __future__ import annotations

from pathlib import Path

import json

import pytest
import yaml

from ernie_cl.config.budgets import plan_stages
from ernie_cl.config.schedule import load_schedule
from ernie_cl.evaluation.compare import STRATEGIES, derive_schedule, strategy_stages, task_budgets
from ernie_cl.training.curriculum import Curriculum

ROOT = Path(__file__).resolve().parent.parent


def derived(schedule_path: Path, strategy: str, tmp_path: Path, seed: int = 7):
    schedule = load_schedule(schedule_path)
    data = derive_schedule(schedule, strategy, seed, schedule_path.parent)
    path = tmp_path / f"{strategy}.yaml"
    path.write_text(yaml.safe_dump(data))
    return load_schedule(path)


def spent_per_task(schedule) -> tuple[dict[str, int], int]:
    """Iterations per task and optimizer steps, counted from the curriculum's actual plan."""
    stages = plan_stages(schedule)
    curriculum = Curriculum(stages, schedule.seed)
    counts: dict[str, int] = {}
    for stage in stages:
        for step_tasks in curriculum.plan(stage.index):
            for task in step_tasks:
                counts[task] = counts.get(task, 0) + 1
    return counts, curriculum.total_steps


@pytest.mark.parametrize("name", ["demo", "ernie2_en", "ernie2_full", "continual", "joint"])
def test_every_strategy_spends_the_same_budget_per_task_and_the_same_steps(name, tmp_path):
    path = ROOT / "schedules" / f"{name}.yaml"
    budgets = task_budgets(load_schedule(path))
    for strategy in STRATEGIES:
        schedule = derived(path, strategy, tmp_path)
        counts, steps = spent_per_task(schedule)
        assert counts == budgets, strategy
        assert steps == sum(budgets.values()), strategy  # fusion off: one task per step everywhere
        assert schedule.seed == 7 and schedule.training.fuse_token_tasks is False


def test_explicit_allocation_schedules_keep_their_per_task_totals(tmp_path):
    schedule = {
        "name": "x", "allocation": "explicit", "tasks": {"knowledge_masking": {}, "capitalization": {}, "sentence_distance": {}},
        "stages": [{"name": "a", "tasks": {"knowledge_masking": 30}},
                   {"name": "b", "tasks": {"knowledge_masking": 10, "capitalization": 25}},
                   {"name": "c", "tasks": {"capitalization": 5, "sentence_distance": 17}}],
    }
    path = tmp_path / "x.yaml"
    path.write_text(yaml.safe_dump(schedule))
    assert task_budgets(load_schedule(path)) == {"knowledge_masking": 40, "capitalization": 30, "sentence_distance": 17}
    for strategy in STRATEGIES:
        counts, steps = spent_per_task(derived(path, strategy, tmp_path))
        assert counts == {"knowledge_masking": 40, "capitalization": 30, "sentence_distance": 17}
        assert steps == 87


def test_strategy_stages_follow_the_definitions():
    tasks = ["A", "B", "C"]
    sequential = [["A"], ["A", "B"], ["A", "B", "C"]]
    assert strategy_stages("sequential", tasks, sequential) == sequential
    assert strategy_stages("continual", tasks, sequential) == [["A"], ["B"], ["C"]]
    assert strategy_stages("joint", tasks, sequential) == [["A", "B", "C"]]
    # ERNIE 2.0's figure: (A)(B)(C), then (A,B)(B,C)(A,C), then (A,B,C)
    pairwise = strategy_stages("pairwise", tasks, sequential)
    assert pairwise[:3] == [["A"], ["B"], ["C"]]
    assert [set(p) for p in pairwise[3:6]] == [{"A", "B"}, {"B", "C"}, {"A", "C"}]
    assert pairwise[6] == ["A", "B", "C"]
    # five tasks: each takes part in 4 stages (alone, two cyclic pairs, all)
    five = strategy_stages("pairwise", list("ABCDE"), [])
    assert len(five) == 11 and all(sum(t in s for s in five) == 4 for t in "ABCDE")


def test_the_continual_strategy_gives_each_task_its_whole_budget_in_its_own_stage(tmp_path):
    path = ROOT / "schedules" / "ernie2_en.yaml"
    schedule = derived(path, "continual", tmp_path)
    stages = plan_stages(schedule)
    budgets = task_budgets(load_schedule(path))
    assert [s.budgets for s in stages] == [{t: n} for t, n in budgets.items()]


MICRO_MODEL = {"model_type": "bert", "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
               "intermediate_size": 64, "max_position_embeddings": 128}


def test_a_small_comparison_writes_results_report_and_plots_and_reuses_its_runs(tmp_path):
    from ernie_cl.evaluation.compare import run_comparison

    (tmp_path / "micro.yaml").write_text(yaml.safe_dump(MICRO_MODEL))
    schedule = {
        "name": "cmp", "seed": 1, "model": "micro.yaml", "deepspeed": "zero0",
        "corpus": {"source": "bundled", "max_documents": 40, "eval_fraction": 0.1},
        "tokenizer": {"vocab_size": 1000},
        "training": {"batch_size": 4, "seq_len": 64, "lr": 2e-3, "warmup_steps": 2, "eval_examples": 16,
                     "eval_batch_size": 16, "threads": 1, "checkpoint_every": 0},
        "tasks": {"knowledge_masking": {"iterations": 6}, "capitalization": {"iterations": 4}},
        "stages": [{"name": "km", "tasks": ["knowledge_masking"]},
                   {"name": "km+cap", "tasks": ["knowledge_masking", "capitalization"]}],
    }
    path = tmp_path / "cmp.yaml"
    path.write_text(yaml.safe_dump(schedule))
    task_file = tmp_path / "sentiment.tsv"  # a GLUE-style task that compare fine-tunes every final checkpoint on
    rows = [("a good and fine film", 1), ("a bad and dull film", 0)] * 10
    task_file.write_text("sentence\tlabel\n" + "".join(f"{text}\t{label}\n" for text, label in rows))
    out, logs = tmp_path / "out", []
    # the downstream suite's smallest task keeps the test short; references: random init (no pretrained start here)
    results = run_comparison(path, out, seeds=2, strategies=("sequential", "joint"), finetune_tasks=(str(task_file),),
                             bench_tasks=("bbc_topics",), wandb_mode="offline", cache_dir=tmp_path / "cache",
                             show_progress=False, log=logs.append, command="ernie-cl compare s.yaml --seeds 2 --bench-tasks bbc_topics")
    assert results["seeds"] == [1, 2] and set(results["strategies"]) == {"sequential", "joint"}
    for name, n_stages in (("sequential", 2), ("joint", 1)):
        entry = results["strategies"][name]
        assert entry["total_steps"] == 10 and entry["budgets"] == {"knowledge_masking": 6, "capitalization": 4}
        for seed in ("1", "2"):
            run = entry["runs"][seed]
            assert len(run["R"]) == n_stages and all(len(row) == 2 for row in run["R"])
            probe = run["downstream"]["probe:bbc_topics"]
            assert 0.0 <= probe["accuracy"] <= 1.0 and probe["seeds"] == [int(seed)]
            assert probe["train_size"] + probe["dev_size"] == 2225
            assert run["downstream"][str(task_file)]["metric_name"] == "accuracy"
            assert 0.0 <= run["downstream"][str(task_file)]["value"] <= 1.0
            assert run["tokens_seen"] > 0 and run["wall_time_s"] > 0 and run["loss_curve"]
            metrics = [json.loads(line) for line in (Path(run["run_dir"]) / "metrics.jsonl").read_text().splitlines()]
            assert len(metrics) == 10 and all(len(m["tasks"]) == 1 for m in metrics)  # no fused steps
    # different seeds really are different runs
    seq = results["strategies"]["sequential"]["runs"]
    assert seq["1"]["loss_curve"] != seq["2"]["loss_curve"]
    assert json.loads((out / "results.json").read_text()) == json.loads(json.dumps(results))
    report = (out / "report.md").read_text()
    assert "sequential" in report and "joint" in report and "±" in report and "accuracy" in report
    # the suite: one value per seed for each strategy (the same as its runs'), and a per-seed random-init reference
    suite = results["downstream_suite"]
    assert list(suite["models"]) == ["sequential", "joint", "random init"] and suite["seeds"] == [1, 2]
    assert suite["models"]["joint"]["tasks"]["bbc_topics"]["probe"]["values"] == [
        results["strategies"]["joint"]["runs"][s]["downstream"]["probe:bbc_topics"]["accuracy"] for s in ("1", "2")]
    assert suite["models"]["joint"]["tasks"]["bbc_topics"]["probe"]["seeds"] == [1, 2]  # paired with the references by seed
    assert suite["models"]["random init"]["kind"] == "reference"
    assert len(suite["models"]["random init"]["tasks"]["bbc_topics"]["probe"]["values"]) == 2
    assert "## Downstream suite" in report and (out / "downstream" / "report.md").is_file()
    # both reports show the command as it was given, flags included
    assert "`ernie-cl compare s.yaml --seeds 2 --bench-tasks bbc_topics`" in report
    assert "`ernie-cl compare s.yaml --seeds 2 --bench-tasks bbc_topics`" in (out / "downstream" / "report.md").read_text()
    assert (out / "heatmap_sequential.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # one wandb group holds every run of the comparison
    run_files = list(out.glob("runs/*/*/wandb/offline-run-*/run-*.wandb"))
    assert len(run_files) == 4 and all(results["wandb_group"].encode() in f.read_bytes() for f in run_files)
    # re-invoking reuses every finished run instead of training again
    logs.clear()
    again = run_comparison(path, out, seeds=2, strategies=("sequential", "joint"), finetune_tasks=(str(task_file),),
                           bench_tasks=("bbc_topics",), wandb_mode="offline", cache_dir=tmp_path / "cache",
                           show_progress=False, log=logs.append)
    assert sum("reusing" in line for line in logs) == 4 and not any("training" in line for line in logs)
    assert not any("scoring the reference" in line for line in logs)  # references.json is reused too
    assert again["strategies"]["sequential"]["runs"]["1"]["R"] == seq["1"]["R"]
