"""Training faults: NaN losses are skipped and counted, too many in a row stop the run with the last
good checkpoint intact, and a full disk while saving leaves the previous checkpoints intact. Real
runs of the CLI, faults injected with ERNIE_CL_FAULT (ernie_cl/faults.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

ROOT = Path(__file__).resolve().parent.parent
MICRO_MODEL = {"model_type": "bert", "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
               "intermediate_size": 64, "max_position_embeddings": 128}


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("faults")
    (folder / "micro.yaml").write_text(yaml.safe_dump(MICRO_MODEL))
    schedule = {
        "name": "faults", "seed": 4, "model": "micro.yaml", "deepspeed": "zero0",
        "corpus": {"source": "bundled", "max_documents": 40, "eval_fraction": 0.1},
        "tokenizer": {"vocab_size": 1000},
        "training": {"batch_size": 4, "seq_len": 64, "lr": 2e-3, "warmup_steps": 2, "eval_examples": 16,
                     "eval_batch_size": 16, "threads": 1, "checkpoint_every": 3, "max_nonfinite_steps": 3},
        "tasks": {"knowledge_masking": {"iterations": 12}},
        "stages": [{"name": "km", "tasks": ["knowledge_masking"]}],
    }
    (folder / "s.yaml").write_text(yaml.safe_dump(schedule))
    return {"schedule": folder / "s.yaml", "cache": folder / "cache"}


def run(setup, run_dir: Path, fault: str = "", *extra: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "ERNIE_CL_FAULT"}
    if fault:
        env["ERNIE_CL_FAULT"] = fault
    return subprocess.run([sys.executable, "-m", "ernie_cl.cli", "train", str(setup["schedule"]), "--run-dir", str(run_dir),
                           "--cache-dir", str(setup["cache"]), "--wandb", "disabled", "--no-progress", *extra],
                          capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)


def rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def all_finite(checkpoint: Path) -> bool:
    module = torch.load(checkpoint / "mp_rank_00_model_states.pt", weights_only=True)["module"]
    return all(bool(torch.isfinite(v).all()) for v in module.values() if isinstance(v, torch.Tensor))


def test_a_nan_loss_skips_that_step_and_is_counted(setup, tmp_path):
    result = run(setup, tmp_path / "run", "nan@loss:5")
    assert result.returncode == 0, result.stderr
    logged = rows(tmp_path / "run")
    assert [r["step"] for r in logged if r["skipped"]] == [5]
    state = json.loads((tmp_path / "run" / "checkpoints" / "stage-01-km" / "trainer_state.json").read_text())
    assert state["counters"]["nonfinite_steps"] == 1
    assert all_finite(tmp_path / "run" / "checkpoints" / "stage-01-km")


def test_nan_losses_in_a_row_stop_the_run_with_the_last_good_checkpoint_intact(setup, tmp_path):
    run_dir = tmp_path / "run"
    result = run(setup, run_dir, "nan@loss:7,nan@loss:8,nan@loss:9")
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "NaN or infinite in 3 steps in a row" in lines[0] and "step-0000006" in lines[0]
    assert "Traceback" not in result.stderr
    checkpoints = sorted(p.name for p in (run_dir / "checkpoints").iterdir() if p.is_dir())
    assert checkpoints == ["step-0000003", "step-0000006"]  # nothing written after the bad steps
    assert all(all_finite(run_dir / "checkpoints" / name) for name in checkpoints)
    # the run continues from the last good checkpoint once the cause is gone
    assert run(setup, run_dir, "", "--resume", "auto").returncode == 0


def test_a_full_disk_while_saving_keeps_the_previous_checkpoints(setup, tmp_path):
    run_dir = tmp_path / "run"
    result = run(setup, run_dir, "enospc@checkpoint-files:step-0000006")
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "could not write checkpoint step-0000006: No space left on device" in lines[0]
    assert "previous checkpoints" in lines[0] and "--resume auto" in lines[0]
    ckpts = run_dir / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir() if p.is_dir()) == ["step-0000003"]  # no half-written one
    assert (ckpts / "latest").read_text() == "step-0000003"
    resumed = run(setup, run_dir, "", "--resume", "auto")
    assert resumed.returncode == 0 and f"resumed from {ckpts / 'step-0000003'}" in resumed.stdout
