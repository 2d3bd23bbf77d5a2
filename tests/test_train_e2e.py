"""A tiny two-stage run on the bundled corpus through the real DeepSpeed engine and offline wandb,
its outputs (summary.json, metrics.jsonl, stage checkpoints), and resuming from a stage checkpoint
after a crash in stage 2 — compared with the uninterrupted run, with a negative control."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from conftest import wandb_run_ids
from ernie_cl.training.trainer import train

ROOT = Path(__file__).resolve().parent.parent
MICRO_MODEL = {"model_type": "bert", "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
               "intermediate_size": 64, "max_position_embeddings": 128}
TASKS = ["knowledge_masking", "capitalization"]


@pytest.fixture(scope="module")
def schedule_file(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("schedule")
    (folder / "micro.yaml").write_text(yaml.safe_dump(MICRO_MODEL))
    schedule = {
        "name": "e2e", "seed": 3, "model": "micro.yaml", "deepspeed": "zero0",
        "corpus": {"source": "bundled", "max_documents": 40, "eval_fraction": 0.1},
        "tokenizer": {"vocab_size": 1000},
        "training": {"batch_size": 4, "seq_len": 64, "lr": 2e-3, "warmup_steps": 2,
                     "eval_examples": 16, "eval_batch_size": 16, "threads": 2},
        # 2 stages -> 3 units: knowledge_masking 6 + 3, capitalization 6 in stage 2, where the two
        # token-level tasks share forward passes: 6 fused steps, masking in 3 of them
        "tasks": {"knowledge_masking": {"iterations": 9}, "capitalization": {"iterations": 6}},
        "stages": [{"name": "km", "tasks": ["knowledge_masking"]},
                   {"name": "km+cap", "tasks": ["knowledge_masking", "capitalization"]}],
    }
    path = folder / "e2e.yaml"
    path.write_text(yaml.safe_dump(schedule))
    return path


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def full_run(schedule_file, cache_dir, tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("runs") / "full"
    train(schedule_file, run_dir, wandb_mode="offline", cache_dir=cache_dir, show_progress=False)
    return run_dir


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def untimed(summary: dict) -> dict:
    return {k: v for k, v in summary.items() if k != "timing"}  # wall-clock, differs between runs


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    state = torch.load(run_dir / "checkpoints" / "stage-02-km-cap" / "mp_rank_00_model_states.pt", weights_only=True)
    return {k: v for k, v in state["module"].items() if isinstance(v, torch.Tensor)}  # balancer state: JSON


def crash_during_stage_2(full: Path, target: Path) -> Path:
    """A copy of the finished run as it would look after dying in stage 2: stage-2 checkpoint
    gone, metrics.jsonl already holding lines past the stage-1 checkpoint."""
    shutil.copytree(full, target)
    shutil.rmtree(target / "checkpoints" / "stage-02-km-cap")
    return target


def test_summary_follows_the_contract(full_run, schedule_file):
    summary = json.loads((full_run / "summary.json").read_text())
    assert summary["schedule"] == str(schedule_file)
    assert [s["name"] for s in summary["stages"]] == ["km", "km+cap"]
    assert [s["end_step"] for s in summary["stages"]] == [6, 12]
    for result in [summary["init_eval"], *(s["eval"] for s in summary["stages"])]:
        assert set(result) == set(TASKS)
        for task_result in result.values():
            assert set(task_result) == {"loss", "metric", "metric_name", "baseline"}
            assert task_result["metric_name"] == "accuracy" and 0 < task_result["baseline"] < 1
            assert 0 <= task_result["metric"] <= 1 and task_result["loss"] > 0
    # masking loss starts near log(vocab) and must drop after training on it
    assert summary["stages"][-1]["eval"]["knowledge_masking"]["loss"] < summary["init_eval"]["knowledge_masking"]["loss"]


def test_every_step_is_logged_with_its_stage_and_tasks(full_run):
    rows = metrics(full_run)
    assert [r["step"] for r in rows] == list(range(1, 13))
    assert all(r["tasks"] == ["knowledge_masking"] and r["stage"] == "km" for r in rows[:6])
    stage2 = [r["tasks"] for r in rows[6:]]
    assert all("capitalization" in t for t in stage2)  # the larger budget joins every fused step
    assert sum("knowledge_masking" in t for t in stage2) == 3
    for r in rows:
        assert r["lr"] > 0 and r["tokens_per_s"] > 0 and r["task"] == "+".join(r["tasks"])
        assert r["loss"] == pytest.approx(sum(r[f"{t}/loss"] for t in r["tasks"])) and r["loss"] > 0


def test_stage_checkpoints_and_offline_wandb_files_are_written(full_run):
    checkpoints = sorted(p.name for p in (full_run / "checkpoints").iterdir() if p.is_dir())
    assert checkpoints == ["stage-01-km", "stage-02-km-cap"]
    for name, step in (("stage-01-km", 6), ("stage-02-km-cap", 12)):
        state = json.loads((full_run / "checkpoints" / name / "trainer_state.json").read_text())
        assert state["global_step"] == step
    assert list((full_run / "wandb").glob("offline-run-*/run-*.wandb"))


def test_resume_after_a_crash_in_stage_2_matches_the_uninterrupted_run(full_run, schedule_file, cache_dir, tmp_path):
    resumed = crash_during_stage_2(full_run, tmp_path / "resumed")
    summary = train(schedule_file, resumed, resume="auto", wandb_mode="offline", cache_dir=cache_dir, show_progress=False)
    timed = ("tokens_per_s", "step_time_s", "data_wait_s")  # wall-clock measurements differ between runs
    assert metrics(resumed) == [{**r, **{k: m[k] for k in timed}} for r, m in zip(metrics(full_run), metrics(resumed))]
    assert untimed(summary) == untimed(json.loads((full_run / "summary.json").read_text()))
    expected, got = final_weights(full_run), final_weights(resumed)
    assert expected.keys() == got.keys()
    assert all(torch.equal(expected[k], got[k]) for k in expected)
    # the resumed run continued the same wandb run
    assert wandb_run_ids(resumed) == wandb_run_ids(full_run) and len(wandb_run_ids(full_run)) == 1


def test_negative_control_a_resume_that_loses_the_data_position_is_detected(full_run, schedule_file, cache_dir, tmp_path):
    broken = crash_during_stage_2(full_run, tmp_path / "broken")
    state_file = broken / "checkpoints" / "stage-01-km" / "trainer_state.json"
    state = json.loads(state_file.read_text())
    # a resume that gets the data position wrong: every stream one batch further than it was
    state["streams"] = {name: {"position": pos["position"] + 4} for name, pos in state["streams"].items()}
    state_file.write_text(json.dumps(state))
    train(schedule_file, broken, resume="auto", wandb_mode="disabled", cache_dir=cache_dir, show_progress=False)
    losses = [r["loss"] for r in metrics(broken)[6:]]
    assert losses != [r["loss"] for r in metrics(full_run)[6:]]
    assert any(not torch.equal(a, b) for a, b in zip(final_weights(full_run).values(), final_weights(broken).values()))


def test_resume_auto_on_a_finished_run_changes_nothing(full_run, schedule_file, cache_dir, tmp_path):
    again = tmp_path / "again"
    shutil.copytree(full_run, again)
    summary = train(schedule_file, again, resume="auto", wandb_mode="disabled", cache_dir=cache_dir, show_progress=False)
    assert summary == json.loads((full_run / "summary.json").read_text())
    assert metrics(again) == metrics(full_run)


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ernie_cl.cli", *args], capture_output=True, text=True, cwd=ROOT)


def test_resume_from_a_missing_checkpoint_is_one_line(schedule_file, tmp_path):
    result = run_cli("train", str(schedule_file), "--run-dir", str(tmp_path / "r"), "--resume", str(tmp_path / "nope"))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [f"ernie-cl: error: checkpoint '{tmp_path / 'nope'}' does not exist; "
                                                  "pass a folder under RUN/checkpoints/ or --resume auto"]


def test_an_empty_corpus_is_one_line_error(schedule_file, tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "empty.txt").write_text("\n\n   \n")
    schedule = yaml.safe_load(schedule_file.read_text())
    schedule["model"] = str(schedule_file.parent / "micro.yaml")
    schedule["corpus"] = {"source": "txt", "path": str(corpus)}
    path = tmp_path / "empty.yaml"
    path.write_text(yaml.safe_dump(schedule))
    result = run_cli("train", str(path), "--run-dir", str(tmp_path / "run"), "--cache-dir", str(tmp_path / "cache"), "--wandb", "disabled", "--no-progress")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "empty" in lines[0] and str(corpus) in lines[0]


def test_tasks_command_shows_decoded_examples_and_label_statistics(full_run, schedule_file, cache_dir):
    common = ["--schedule", str(schedule_file), "--cache-dir", str(cache_dir)]
    shown = run_cli("tasks", "knowledge_masking", "--examples", "2", *common)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.count("--- example") == 2 and "[MASK]{" in shown.stdout
    stats = run_cli("tasks", "capitalization", "--stats", *common)
    assert stats.returncode == 0, stats.stderr
    rows = [line.split() for line in stats.stdout.splitlines() if line.strip().startswith(("0 ", "1 "))]
    assert {r[1] for r in rows} == {"lowercase", "Capitalized"}
    shares = {r[1]: float(r[3].rstrip("%")) for r in rows}
    assert abs(sum(shares.values()) - 100) < 0.05 and shares["lowercase"] > shares["Capitalized"]
    baseline = float(stats.stdout.split("training set: ")[1].split()[0])
    assert abs(baseline - shares["lowercase"] / 100) < 1e-4


def test_data_wait_is_logged_per_step_and_its_share_in_the_summary(full_run):
    rows = metrics(full_run)
    assert all(0 <= r["data_wait_s"] <= r["step_time_s"] for r in rows)
    timing = json.loads((full_run / "summary.json").read_text())["timing"]
    assert timing["steps_timed"] == 12
    assert timing["step_time_s"] == pytest.approx(sum(r["step_time_s"] for r in rows), abs=0.01)
    assert timing["data_wait_s"] == pytest.approx(sum(r["data_wait_s"] for r in rows), abs=0.01)
    # the share is computed before the times are rounded to 3 decimals: compare it in seconds
    assert timing["data_wait_share"] * timing["step_time_s"] == pytest.approx(timing["data_wait_s"], abs=2e-3)
