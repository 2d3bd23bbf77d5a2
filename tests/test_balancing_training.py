"""Every loss-balancing method in real training on the DeepSpeed engine: the weights it logs move,
and a run SIGKILLed mid-stage and resumed continues bitwise (model, optimizer and the balancer's own
state: windows, moving averages, GradNorm's weights and Adam moments, uncertainty's log-variances)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from ernie_cl.training.trainer import train

ROOT = Path(__file__).resolve().parent.parent
MICRO_MODEL = {"model_type": "bert", "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
               "intermediate_size": 64, "max_position_embeddings": 128}
METHODS = {
    "fixed": {"method": "fixed", "weights": {"capitalization": 2.0}},
    "uncertainty": {"method": "uncertainty"},
    "dwa": {"method": "dwa", "window": 1},
    "gradnorm": {"method": "gradnorm"},
    "dtp": {"method": "dtp"},
}


def write_schedule(folder: Path, balancing: dict) -> Path:
    (folder / "micro.yaml").write_text(yaml.safe_dump(MICRO_MODEL))
    schedule = {
        "name": "balance", "seed": 2, "model": "micro.yaml", "deepspeed": "zero0", "allocation": "explicit",
        "corpus": {"source": "bundled", "max_documents": 40, "eval_fraction": 0.1},
        "tokenizer": {"vocab_size": 1000},
        "training": {"batch_size": 4, "seq_len": 64, "lr": 2e-3, "warmup_steps": 2, "eval_examples": 16,
                     "eval_batch_size": 16, "threads": 1, "checkpoint_every": 2},
        "tasks": {"knowledge_masking": {}, "capitalization": {}},
        # stage 2: 8 fused steps, both tasks in every one, so there is something to balance
        "stages": [{"name": "km", "tasks": {"knowledge_masking": 4}},
                   {"name": "both", "tasks": {"knowledge_masking": 8, "capitalization": 8}, "balancing": balancing}],
    }
    path = folder / "s.yaml"
    path.write_text(yaml.safe_dump(schedule))
    return path


def rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def final_state(run_dir: Path) -> dict:
    return torch.load(run_dir / "checkpoints" / "stage-02-both" / "mp_rank_00_model_states.pt", weights_only=True)["module"]


def same(a, b) -> bool:
    return torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b


@pytest.mark.parametrize("method", list(METHODS))
def test_a_balanced_run_logs_moving_weights_and_resumes_bitwise(method, tmp_path):
    schedule = write_schedule(tmp_path, METHODS[method])
    cache = tmp_path / "cache"
    full = tmp_path / "full"
    train(schedule, full, wandb_mode="disabled", cache_dir=cache, show_progress=False)
    stage2 = [r for r in rows(full) if r["stage"] == "both"]
    assert len(stage2) == 8 and all(r["tasks"] == ["knowledge_masking", "capitalization"] for r in stage2)
    weights = [(r["knowledge_masking/weight"], r["capitalization/weight"]) for r in stage2]
    if method == "fixed":
        assert set(weights) == {(1.0, 2.0)}
    else:
        assert len(set(weights)) > 1, weights  # the method reacts to the losses / accuracies it sees
    state = final_state(full)
    extra = {k: v for k, v in state.items() if k.startswith("balancers.1.")}
    assert extra, "the stage's balancer state must be in the checkpoint"
    if method == "uncertainty":
        assert not torch.equal(state["balancers.1.log_vars"], torch.zeros_like(state["balancers.1.log_vars"]))

    resumed = tmp_path / "resumed"
    env = {**os.environ, "ERNIE_CL_FAULT": "kill@step:11"}
    killed = subprocess.run([sys.executable, "-m", "ernie_cl.cli", "train", str(schedule), "--run-dir", str(resumed),
                             "--cache-dir", str(cache), "--wandb", "disabled", "--no-progress"],
                            capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    train(schedule, resumed, resume="auto", wandb_mode="disabled", cache_dir=cache, show_progress=False)
    volatile = ("tokens_per_s", "step_time_s", "data_wait_s")  # wall-clock measurements
    assert [{k: v for k, v in r.items() if k not in volatile} for r in rows(resumed)] == \
        [{k: v for k, v in r.items() if k not in volatile} for r in rows(full)]
    got = final_state(resumed)
    assert state.keys() == got.keys() and all(same(state[k], got[k]) for k in state)
