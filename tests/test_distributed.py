"""Two processes on CPU (gloo) under ZeRO-2, started by the real torchrun: disjoint example shards,
one curriculum, metrics over both ranks, checkpoint and exact resume, and refusals.

The run logs, per rank, the example-set rows it trained on at every step (``ERNIE_CL_LOG_EXAMPLES=1``,
``RUN/examples/rank-NN.jsonl``); the disjointness test compares those rows, not the sharding formula.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

ROOT = Path(__file__).resolve().parent.parent
MICRO_MODEL = {"model_type": "bert", "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
               "intermediate_size": 64, "max_position_embeddings": 128}
FINAL = "stage-02-km-cap"
BATCH = 4


def write_schedule(folder: Path, deepspeed: str, **training) -> Path:
    (folder / "micro.yaml").write_text(yaml.safe_dump(MICRO_MODEL))
    schedule = {
        "name": "dist", "seed": 5, "model": "micro.yaml", "deepspeed": deepspeed,
        "corpus": {"source": "bundled", "max_documents": 40, "eval_fraction": 0.1},
        "tokenizer": {"vocab_size": 1000},
        "training": {"batch_size": BATCH, "seq_len": 64, "lr": 2e-3, "warmup_steps": 2, "eval_examples": 16,
                     "eval_batch_size": 16, "threads": 1, "checkpoint_every": 3, "keep_checkpoints": 2,
                     "data_workers": 1, **training},
        # stage 1: 6 masking steps; stage 2: 6 fused masking+capitalization steps
        "tasks": {"knowledge_masking": {"iterations": 9}, "capitalization": {"iterations": 6}},
        "stages": [{"name": "km", "tasks": ["knowledge_masking"]},
                   {"name": "km+cap", "tasks": ["knowledge_masking", "capitalization"]}],
    }
    path = folder / f"{deepspeed}.yaml"
    path.write_text(yaml.safe_dump(schedule))
    return path


def shared_cache(tmp_path_factory) -> Path:
    """One cache for the test modules of this session that train on the same corpus and tokenizer."""
    return tmp_path_factory.getbasetemp() / "ernie-cl-cache"


def train(schedule: Path, run_dir: Path, cache: Path, *extra: str, nproc: int = 2) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc-per-node N -m ernie_cl.cli train ...`` (one plain process for N = 1)."""
    env = {k: v for k, v in os.environ.items() if k != "ERNIE_CL_FAULT"}
    env["ERNIE_CL_LOG_EXAMPLES"] = "1"
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"] if nproc > 1 else [sys.executable]
    command = [*launcher, "-m", "ernie_cl.cli", "train", str(schedule), "--run-dir", str(run_dir), "--cache-dir", str(cache),
               "--wandb", "disabled", "--no-progress", *extra]
    return subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)


@pytest.fixture(scope="module")
def full(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("dist")
    paths = {"schedule": write_schedule(folder, "zero2"), "cache": shared_cache(tmp_path_factory), "run": folder / "full"}
    result = train(paths["schedule"], paths["run"], paths["cache"])
    assert result.returncode == 0, result.stderr[-3000:]
    return paths


def example_log(run_dir: Path, rank: int) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "examples" / f"rank-{rank:02d}.jsonl").read_text().splitlines()]


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def weights(run_dir: Path, tag: str = FINAL) -> dict[str, torch.Tensor]:
    module = torch.load(run_dir / "checkpoints" / tag / "mp_rank_00_model_states.pt", weights_only=True)["module"]
    return {k: v for k, v in module.items() if isinstance(v, torch.Tensor)}


def test_ranks_train_on_disjoint_examples_in_the_same_curriculum(full):
    logs = [example_log(full["run"], rank) for rank in (0, 1)]
    # the same task (stream) at every step on both ranks: the curriculum agreed
    assert [(x["step"], x["stream"]) for x in logs[0]] == [(x["step"], x["stream"]) for x in logs[1]]
    assert [x["step"] for x in logs[0]] == list(range(1, 13))
    for stream in {x["stream"] for x in logs[0]}:
        rows = [[r for x in log if x["stream"] == stream for r in x["rows"]] for log in logs]
        steps = sum(x["stream"] == stream for x in logs[0])
        assert [len(r) for r in rows] == [steps * BATCH] * 2
        assert len(set(rows[0])) == len(rows[0])  # within the first epoch of the shard: no repeats
        assert not set(rows[0]) & set(rows[1]), f"{stream}: both ranks trained on rows {sorted(set(rows[0]) & set(rows[1]))}"


def test_metrics_are_written_once_and_count_both_ranks_tokens(full):
    rows = metrics(full["run"])
    assert [r["step"] for r in rows] == list(range(1, 13))  # rank 0 alone writes: no duplicated lines
    logs = [example_log(full["run"], rank) for rank in (0, 1)]
    seen = 0
    for record, x0, x1 in zip(rows, *logs):
        seen += x0["tokens"] + x1["tokens"]
        assert record["tokens_seen"] == seen
    summary = json.loads((full["run"] / "summary.json").read_text())
    assert [s["end_step"] for s in summary["stages"]] == [6, 12]


def test_checkpoint_holds_one_optimizer_shard_and_rng_state_per_rank(full):
    folder = full["run"] / "checkpoints" / FINAL
    names = {p.name for p in folder.iterdir()}
    assert {"rng-rank-00.json", "rng-rank-01.json", "zero_pp_rank_0_mp_rank_00_optim_states.pt",
            "zero_pp_rank_1_mp_rank_00_optim_states.pt"} <= names
    assert json.loads((folder / "trainer_state.json").read_text())["world_size"] == 2


def test_resume_with_two_ranks_reproduces_the_uninterrupted_run(full, tmp_path):
    """Resumed mid-stage 2 (from step 9): the same per-step losses, the same rows on each rank and
    bitwise the same final weights as the uninterrupted 2-process run."""
    run = tmp_path / "resumed"
    shutil.copytree(full["run"], run)
    shutil.rmtree(run / "checkpoints" / FINAL)  # the newest left is step-0000009
    result = train(full["schedule"], run, full["cache"], "--resume", "auto")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resumed from" in result.stdout and "step-0000009" in result.stdout
    assert [(r["step"], r["loss"]) for r in metrics(run)] == [(r["step"], r["loss"]) for r in metrics(full["run"])]
    for rank in (0, 1):
        assert example_log(run, rank) == example_log(full["run"], rank)
    expected, got = weights(full["run"]), weights(run)
    assert expected.keys() == got.keys() and all(torch.equal(expected[k], got[k]) for k in expected)
    summaries = [json.loads((r / "summary.json").read_text()) for r in (full["run"], run)]
    assert summaries[0]["init_eval"] == summaries[1]["init_eval"] and summaries[0]["stages"] == summaries[1]["stages"]


def test_resume_with_another_number_of_processes_is_refused_in_one_line(full):
    result = train(full["schedule"], full["run"], full["cache"], "--resume", "auto", nproc=1)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"ernie-cl: error: checkpoint '{full['run'] / 'checkpoints' / FINAL}' was written by 2 process(es) but this run has 1; "
        "resume with 2 (torchrun --nproc-per-node 2 -m ernie_cl.cli train ...)"]


# --- pieces, with a real gloo process group --------------------------------------------------------

def test_stream_shards_are_disjoint_and_cover_the_set(tmp_path):
    from ernie_cl.data.example_store import write_set
    from ernie_cl.data.examples import ExampleStream

    data = write_set(tmp_path, {"input_ids": [[2, i, 3] for i in range(10)], "token_type_ids": [[0, 0, 0]] * 10,
                                "labels": [[-100, 1, -100]] * 10}, sep_id=3)
    shards = [ExampleStream(data, 5, 0, "t", 0, False, rank=r, world=2).indices(0, 5) for r in (0, 1)]
    assert sorted(shards[0] + shards[1]) == list(range(10))
    control = [ExampleStream(data, 5, 0, "t", 0, False).indices(0, 5) for _ in (0, 1)]  # unsharded: both the same
    assert control[0] == control[1]
    assert ExampleStream(data, 5, 0, "t", 0, False).indices(0, 10) == ExampleStream(data, 5, 0, "t", 0, False, rank=0, world=1).indices(0, 10)


def _global_view_worker(rank: int, port: int, out: str) -> None:
    import torch.distributed as dist

    from ernie_cl.training import distributed

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    weight = torch.tensor(2.0, requires_grad=True)
    local = weight * (1.0 + rank)  # rank 0: 2, rank 1: 4
    losses, accuracy, tokens = distributed.global_view({"t": local}, {"t": 0.5 * rank}, 10 + rank)
    losses["t"].backward()
    nonfinite = distributed.global_view({"t": weight * (float("nan") if rank else 1.0)}, {"t": 0.0}, 0)[0]["t"]
    result = {"loss": float(losses["t"]), "grad": float(weight.grad), "accuracy": accuracy["t"], "tokens": tokens,
              "finite": bool(torch.isfinite(nonfinite)), "stop": distributed.any_rank(rank == 1)}
    Path(out, f"{rank}.json").write_text(json.dumps(result))
    dist.destroy_process_group()


def test_global_view_averages_values_keeps_local_gradients_and_agrees_on_skips(tmp_path):
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_global_view_worker, args=(port, str(tmp_path)), nprocs=2)
    results = [json.loads((tmp_path / f"{rank}.json").read_text()) for rank in (0, 1)]
    for rank, r in enumerate(results):
        assert r["loss"] == 3.0  # mean of 2 and 4, the same on both ranks
        assert r["grad"] == 1.0 + rank  # d(local)/d(weight): this rank's own gradient
        assert r["accuracy"] == 0.25 and r["tokens"] == 21
        assert r["finite"] is False  # NaN on rank 1 only: both ranks see it and skip together
        assert r["stop"] is True  # a signal on rank 1 stops rank 0 as well


@pytest.mark.parametrize("path", sorted((ROOT / "configs" / "deepspeed").glob("*.json")), ids=lambda p: p.name)
def test_shipped_deepspeed_configs_load_and_merge(path):
    from ernie_cl.config.schedule import TrainingConfig, load_deepspeed_config
    from ernie_cl.errors import ConfigError
    from ernie_cl.training.engine import merged_ds_config

    config = load_deepspeed_config(str(path))
    assert config["zero_optimization"]["stage"] == int(path.stem[4])
    if config.get("bf16", {}).get("enabled") and not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no GPU"):
            merged_ds_config(config, TrainingConfig())
    else:
        assert merged_ds_config(config, TrainingConfig())["train_micro_batch_size_per_gpu"] == TrainingConfig().batch_size
