"""Exact resume and crash-safe checkpoints, with real processes killed by real signals.

Every run here is the ``ernie-cl train`` CLI in a subprocess on a micro model (12 steps in two
stages, a checkpoint every 3 steps). Faults are armed with ``ERNIE_CL_FAULT`` (ernie_cl/faults.py):
SIGKILL at a step, at a stage boundary, or while a checkpoint is being written; SIGTERM for a
graceful stop. Each resumed run must reproduce the uninterrupted run's metrics.jsonl losses and its
final weights bitwise; a negative control shows the comparison catches a resume that skips the data
position.
"""

from __future__ import annotations

import json
import os
import pickle
import random
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from conftest import wandb_run_ids

ROOT = Path(__file__).resolve().parent.parent
MICRO_MODEL = {"model_type": "bert", "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
               "intermediate_size": 64, "max_position_embeddings": 128}
FINAL = "stage-02-km-cap"


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("resume")
    (folder / "micro.yaml").write_text(yaml.safe_dump(MICRO_MODEL))
    schedule = {
        "name": "resume", "seed": 5, "model": "micro.yaml", "deepspeed": "zero0",
        "corpus": {"source": "bundled", "max_documents": 40, "eval_fraction": 0.1},
        "tokenizer": {"vocab_size": 1000},
        "training": {"batch_size": 4, "seq_len": 64, "lr": 2e-3, "warmup_steps": 2, "eval_examples": 16,
                     "eval_batch_size": 16, "threads": 1, "checkpoint_every": 3, "keep_checkpoints": 2},
        # stage 1: 6 masking steps; stage 2: 6 fused masking+capitalization steps
        "tasks": {"knowledge_masking": {"iterations": 9}, "capitalization": {"iterations": 6}},
        "stages": [{"name": "km", "tasks": ["knowledge_masking"]},
                   {"name": "km+cap", "tasks": ["knowledge_masking", "capitalization"]}],
    }
    (folder / "s.yaml").write_text(yaml.safe_dump(schedule))
    paths = {"schedule": folder / "s.yaml", "cache": folder / "cache", "full": folder / "full"}
    result = train(paths, paths["full"])
    assert result.returncode == 0, result.stderr
    return paths


def train(paths: dict[str, Path], run_dir: Path, *extra: str, fault: str = "", schedule: Path | None = None):
    env = {**os.environ, "ERNIE_CL_FAULT": fault} if fault else {k: v for k, v in os.environ.items() if k != "ERNIE_CL_FAULT"}
    command = [sys.executable, "-m", "ernie_cl.cli", "train", str(schedule or paths["schedule"]), "--run-dir", str(run_dir),
               "--cache-dir", str(paths["cache"]), "--wandb", "offline", "--no-progress", *extra]
    return subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)


def losses(run_dir: Path) -> list[tuple[int, float]]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"]) for r in rows]


def weights(run_dir: Path, tag: str = FINAL) -> dict[str, torch.Tensor]:
    return {k: v for k, v in torch.load(run_dir / "checkpoints" / tag / "mp_rank_00_model_states.pt", weights_only=True)["module"].items() if isinstance(v, torch.Tensor)}  # balancer state: JSON


def assert_same_as_uninterrupted(paths: dict[str, Path], run_dir: Path) -> None:
    assert losses(run_dir) == losses(paths["full"])
    expected, got = weights(paths["full"]), weights(run_dir)
    assert expected.keys() == got.keys() and all(torch.equal(expected[k], got[k]) for k in expected)
    untimed = [{k: v for k, v in json.loads((d / "summary.json").read_text()).items() if k != "timing"}  # wall-clock
               for d in (run_dir, paths["full"])]
    assert untimed[0] == untimed[1]


def checkpoints(run_dir: Path) -> list[str]:
    return sorted(p.name for p in (run_dir / "checkpoints").iterdir() if p.is_dir())


def test_an_uninterrupted_run_keeps_stage_ends_and_the_newest_periodic_checkpoints(setup):
    # steps 3 and 9 are periodic, 6 and 12 stage ends; keep 2 newest (stage-02 at 12, step 9) + stage ends
    assert checkpoints(setup["full"]) == ["stage-01-km", FINAL, "step-0000009"]
    assert (setup["full"] / "checkpoints" / "latest").read_text() == FINAL
    state = json.loads((setup["full"] / "checkpoints" / "step-0000009" / "trainer_state.json").read_text())
    assert state["global_step"] == 9 and state["curriculum"] == {"stage_index": 1, "step_in_stage": 3, "seed": 5}
    # masking joins 3 of the 6 fused steps of stage 2, spread evenly: the 2nd, 4th and 6th
    assert state["budget_spent"] == {"knowledge_masking": 6 + 1, "capitalization": 3}
    assert set(state["files"]) >= {"mp_rank_00_model_states.pt", "rng-rank-00.json"}
    assert state["wandb_run_id"] and state["counters"]["tokens_seen"] > 0


@pytest.mark.parametrize("where", ["mid-stage", "stage boundary", "while writing a checkpoint"])
def test_sigkill_then_resume_auto_matches_the_uninterrupted_run(setup, tmp_path, where):
    fault = {
        "mid-stage": f"kill@step:{random.Random(os.environ.get('PYTEST_SEED', 11)).choice([4, 5, 7, 8, 10, 11])}",
        "stage boundary": "kill@checkpoint-done:stage-01-km",
        "while writing a checkpoint": "kill@checkpoint-files:step-0000009",
    }[where]
    run_dir = tmp_path / "run"
    killed = train(setup, run_dir, fault=fault)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    if where == "while writing a checkpoint":
        assert (run_dir / "checkpoints" / ".staging" / "step-0000009").is_dir()  # half-written, not in place
        assert "step-0000009" not in checkpoints(run_dir)
    resumed = train(setup, run_dir, "--resume", "auto")
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from" in resumed.stdout
    assert_same_as_uninterrupted(setup, run_dir)
    assert not (run_dir / "checkpoints" / ".staging").exists()
    # the resumed run continued the same wandb run
    assert len(wandb_run_ids(run_dir)) == 1


def test_negative_control_a_resume_that_skips_the_data_position_is_detected(setup, tmp_path):
    run_dir = tmp_path / "run"
    assert train(setup, run_dir, fault="kill@step:11").returncode == -signal.SIGKILL
    state_file = run_dir / "checkpoints" / "step-0000009" / "trainer_state.json"
    state = json.loads(state_file.read_text())
    state["streams"] = {name: {"position": 0} for name in state["streams"]}  # as if never restored
    state_file.write_text(json.dumps(state))
    assert train(setup, run_dir, "--resume", "auto").returncode == 0
    assert losses(run_dir)[:9] == losses(setup["full"])[:9]
    assert losses(run_dir)[9:] != losses(setup["full"])[9:]
    assert any(not torch.equal(a, b) for a, b in zip(weights(setup["full"]).values(), weights(run_dir).values()))


def test_damaged_checkpoints_are_skipped_with_a_warning_naming_them(setup, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(setup["full"], run_dir)
    ckpts = run_dir / "checkpoints"
    shutil.rmtree(ckpts / FINAL)  # as if killed in the last steps
    model_file = ckpts / "step-0000009" / "mp_rank_00_model_states.pt"
    data = bytearray(model_file.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte, same size
    model_file.write_bytes(bytes(data))
    result = train(setup, run_dir, "--resume", "auto")
    assert result.returncode == 0, result.stderr
    assert f"warning: skipping checkpoint {ckpts / 'step-0000009'}: mp_rank_00_model_states.pt is corrupted" in result.stdout
    assert f"resumed from {ckpts / 'stage-01-km'}" in result.stdout
    assert_same_as_uninterrupted(setup, run_dir)


def test_truncated_files_and_a_garbled_marker_fall_back_to_the_previous_checkpoint(setup, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(setup["full"], run_dir)
    ckpts = run_dir / "checkpoints"
    with open(ckpts / FINAL / "mp_rank_00_model_states.pt", "r+b") as handle:
        handle.truncate(100)
    (ckpts / "step-0000009" / "trainer_state.json").write_text('{"global_step": 9, "files"')
    result = train(setup, run_dir, "--resume", "auto")
    assert result.returncode == 0, result.stderr
    assert f"skipping checkpoint {ckpts / FINAL}: mp_rank_00_model_states.pt has 100 bytes" in result.stdout
    assert f"skipping checkpoint {ckpts / 'step-0000009'}: no readable trainer_state.json" in result.stdout
    assert f"resumed from {ckpts / 'stage-01-km'}" in result.stdout
    assert_same_as_uninterrupted(setup, run_dir)


def test_a_kill_while_a_checkpoint_is_rewritten_keeps_the_old_copy_and_resumes_from_it(setup, tmp_path):
    # A run resumed from an older checkpoint writes step-0000009 again over the existing one; it is
    # killed after the old copy was moved aside and before the new one is in place.
    run_dir = tmp_path / "run"
    shutil.copytree(setup["full"], run_dir)
    ckpts = run_dir / "checkpoints"
    shutil.rmtree(ckpts / FINAL)  # the run had reached step 9 only
    killed = train(setup, run_dir, "--resume", str(ckpts / "stage-01-km"), fault="kill@checkpoint-swap:step-0000009")
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert "step-0000009" not in checkpoints(run_dir)
    assert json.loads((ckpts / ".replaced-step-0000009" / "trainer_state.json").read_text())["global_step"] == 9
    resumed = train(setup, run_dir, "--resume", "auto")
    assert resumed.returncode == 0, resumed.stderr
    assert f"resumed from {ckpts / '.replaced-step-0000009'} at step 9" in resumed.stdout  # not from step 6
    assert_same_as_uninterrupted(setup, run_dir)
    assert checkpoints(run_dir) == ["stage-01-km", FINAL, "step-0000009"]  # the moved-aside copy is gone


def test_sigterm_finishes_the_step_checkpoints_and_says_how_to_resume(setup, tmp_path):
    run_dir = tmp_path / "run"
    stopped = train(setup, run_dir, fault="term@step:4")
    assert stopped.returncode == 128 + signal.SIGTERM
    last = stopped.stderr.strip().splitlines()[-1]
    assert "stopped by SIGTERM after step 4" in last and "--resume auto" in last and "Traceback" not in stopped.stderr
    assert "step-0000004" in checkpoints(run_dir)
    assert losses(run_dir) == losses(setup["full"])[:4]
    assert train(setup, run_dir, "--resume", "auto").returncode == 0
    assert_same_as_uninterrupted(setup, run_dir)


def test_a_changed_config_is_refused_unless_overridden(setup, tmp_path):
    run_dir = tmp_path / "run"
    assert train(setup, run_dir, fault="kill@step:8").returncode == -signal.SIGKILL
    schedule = yaml.safe_load(setup["schedule"].read_text())
    schedule["training"]["lr"] = 3e-3
    schedule["training"]["log_every"] = 2  # operational: allowed to change
    changed = setup["schedule"].with_name("changed.yaml")
    changed.write_text(yaml.safe_dump(schedule))
    refused = train(setup, run_dir, "--resume", "auto", schedule=changed)
    assert refused.returncode == 2
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1 and "schedule.training.lr: 0.002 -> 0.003" in lines[0] and "--allow-config-change" in lines[0]
    assert "log_every" not in lines[0]
    allowed = train(setup, run_dir, "--resume", "auto", "--allow-config-change", schedule=changed)
    assert allowed.returncode == 0 and "resuming with a changed config" in allowed.stdout


class _RunsCode:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_loading_a_checkpoint_never_runs_pickled_code(setup, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(setup["full"], run_dir)
    checkpoint = run_dir / "checkpoints" / "stage-01-km"
    marker = tmp_path / "code-ran"
    model_file = checkpoint / "mp_rank_00_model_states.pt"
    state = torch.load(model_file, weights_only=True)
    state["ds_config"] = _RunsCode(str(marker))
    torch.save(state, model_file, pickle_protocol=pickle.DEFAULT_PROTOCOL)
    # make the manifest agree, as an attacker would
    import hashlib
    trainer_state = json.loads((checkpoint / "trainer_state.json").read_text())
    trainer_state["files"]["mp_rank_00_model_states.pt"] = {
        "size": model_file.stat().st_size, "sha256": hashlib.sha256(model_file.read_bytes()).hexdigest()}
    (checkpoint / "trainer_state.json").write_text(json.dumps(trainer_state))
    result = train(setup, run_dir, "--resume", str(checkpoint))
    assert result.returncode != 0 and not marker.exists()
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr


def test_resume_from_a_bad_path_is_one_line(setup, tmp_path):
    result = train(setup, tmp_path / "r", "--resume", str(tmp_path / "nope"))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"ernie-cl: error: checkpoint '{tmp_path / 'nope'}' does not exist; "
                                                  "pass a folder under RUN/checkpoints/ or --resume auto"]
