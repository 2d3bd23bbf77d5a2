"""Staged pre-training on the DeepSpeed engine.

One loop level per stage (on stage start the task mixture and budgets change; nothing else does),
one optimizer step per curriculum step. Before training and after every stage all tasks of the
schedule are evaluated on held-out examples, a stage checkpoint is written and ``summary.json``
is rewritten. Every step goes to ``metrics.jsonl``, the progress bar and wandb.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import time
from pathlib import Path
from typing import Any, Optional

import torch

from ernie_cl.config.schedule import load_deepspeed_config, load_model_config, load_schedule
from ernie_cl.corpus.durable import write_json_durably
from ernie_cl.data.examples import ExampleStream, to_device
from ernie_cl.data.preparation import default_cache_dir, prepare
from ernie_cl.errors import CacheMissingError, CheckpointError, TrainingError
from ernie_cl.model import dropout, fused_blocks
from ernie_cl.model.balancing import balancer_from_spec
from ernie_cl.model.encoder import ErnieEncoder, build_backbone, compile_backbone
from ernie_cl.model.extras import restore_extras
from ernie_cl.progress import progress_bar
from ernie_cl import faults
from ernie_cl.training import checkpoint as ckpt, distributed
from ernie_cl.training.curriculum import Curriculum, Step
from ernie_cl.training.allocator import TRIM_EVERY_STEPS, keep_freed_memory, release_free_memory
from ernie_cl.training.engine import create_engine, name_accelerator, release_engine
from ernie_cl.training.heldout_eval import evaluate, trivial_baselines
from ernie_cl.training.metric_sinks import MetricsLog, WandbSink, print_eval_table
from ernie_cl.training.stopping import GracefulStop, StopRequested


def train(
    schedule_path: str | os.PathLike,
    run_dir: str | os.PathLike,
    resume: Optional[str] = None,
    wandb_mode: str = "offline",
    cache_dir: Optional[str | os.PathLike] = None,
    show_progress: bool = True,
    allow_config_change: bool = False,
    wandb_group: Optional[str] = None,
    data_engine: str = "local",
    ray_address: Optional[str] = None,
) -> dict[str, Any]:
    """Run (or resume) a schedule; returns the summary also written to ``RUN/summary.json``.
    ``data_engine`` / ``ray_address``: how rank 0 builds missing data caches (see ``prepare``); the other
    ranks read what rank 0 built, on the local engine. However it ends, the run's engine is released
    (``release_engine``), so a caller that trains again in this process does not keep the last model."""
    with contextlib.ExitStack() as cleanup:
        return _train(schedule_path, run_dir, resume, wandb_mode, cache_dir, show_progress, allow_config_change,
                      wandb_group, data_engine, ray_address, cleanup)


def _train(schedule_path, run_dir, resume, wandb_mode, cache_dir, show_progress, allow_config_change, wandb_group,
           data_engine, ray_address, cleanup: contextlib.ExitStack) -> dict[str, Any]:
    name_accelerator()
    schedule_path = Path(schedule_path)
    schedule = load_schedule(schedule_path)
    model_cfg = load_model_config(schedule.model, schedule_path.parent)
    ds_cfg = load_deepspeed_config(schedule.deepspeed, schedule_path.parent)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    training = schedule.training
    distributed.start()  # before anything that reads or writes shared files: ranks take turns below
    distributed.check_schedule(schedule)
    torch.set_num_threads(training.threads or distributed.cores_per_process())
    # what the run computes: the schedule, and the model and DeepSpeed configs by content (their file
    # paths are where they lie, not what they say: a moved checkout still resumes)
    identity = {"schedule": schedule.model_dump(mode="json"), "model": model_cfg, "deepspeed": copy.deepcopy(ds_cfg)}

    resume_from = ckpt.resolve_resume(resume, run_dir) if resume else None
    if resume == "auto" and resume_from is None:
        print(f"ernie-cl: no complete checkpoint in {run_dir}; starting from the beginning")

    with distributed.main_first():  # rank 0 builds the caches, the other ranks then read them
        main = distributed.is_main()
        cache = Path(cache_dir or default_cache_dir())
        try:  # only rank 0 builds: the others read what it (or `ernie-cl prepare`) left in the cache
            prepared = prepare(schedule, model_cfg, cache, show_progress=show_progress and main,
                               engine=data_engine if main else "local", ray_address=ray_address if main else None,
                               build=main)
        except CacheMissingError as err:
            raise CacheMissingError(f"rank {distributed.rank()}: the prepared data is missing ({err}); put --cache-dir on "
                              f"storage every node sees (it is {cache}) and run `ernie-cl prepare` there before "
                              "launching the ranks") from None
    tokenizer, tasks = prepared.tokenizer, prepared.tasks
    model = build_model(schedule, model_cfg, prepared)
    curriculum = Curriculum(prepared.stages, schedule.seed)
    engine = create_engine(model, ds_cfg, training, curriculum.total_steps)
    cleanup.callback(release_engine, engine)
    device = engine.device
    # one stream per task, and one per fused group of token-level tasks (its name: "a+b+c")
    streams = {
        name: ExampleStream(dataset, training.batch_size, schedule.seed, name, tokenizer.pad_id,
                            name in tasks and tasks[name].level == "sentence", distributed.rank(), distributed.world_size(),
                            group=training.length_grouping)
        for name, dataset in prepared.train_sets.items()
    }
    baselines = trivial_baselines(tasks, prepared.eval_sets, training.eval_examples)

    def run_eval() -> dict[str, Any]:
        return evaluate(engine.module, tasks, prepared.eval_sets, baselines, training.eval_examples,
                        training.eval_batch_size, tokenizer.pad_id, device)

    counters = {"tokens_seen": 0}
    summary: dict[str, Any] = {"schedule": str(schedule_path), "init_eval": {}, "stages": []}
    wandb_id = None
    if resume_from is not None:
        state = ckpt.load_checkpoint(engine, resume_from)
        _check_same_run(state, identity, resume_from, allow_config_change)
        curriculum.load_state_dict(state["curriculum"])
        for name, stream in streams.items():
            stream.load_state_dict(state["streams"][name])
        counters = state["counters"]
        summary = state["summary"]
        wandb_id = state.get("wandb_run_id")
        print(f"ernie-cl: resumed from {resume_from} at step {state['global_step']}")

    main = distributed.is_main()  # only rank 0 reports; every rank trains, evaluates and checkpoints
    metrics = MetricsLog(run_dir / "metrics.jsonl", keep_until_step=curriculum.global_step) if main else distributed.NullLog()
    sink = WandbSink(wandb_mode if main else "disabled", run_dir, schedule, run_id=wandb_id, group=wandb_group)
    example_log = distributed.ExampleLog(run_dir, curriculum.global_step, streams)
    if not summary["init_eval"]:
        summary["init_eval"] = run_eval()
        print_eval_table("before training", summary["init_eval"])
        sink.log_eval(summary["init_eval"], step=0)
        _write_summary(run_dir, summary)

    def save(tag: str, stage_end: bool) -> Path:
        if not all(bool(torch.isfinite(p).all()) for p in engine.module.parameters()):
            raise TrainingError(f"the weights hold NaN or inf at step {curriculum.global_step}; not writing checkpoint {tag}; "
                                f"the last good checkpoint ({_newest(run_dir)}) is intact; lower training.lr and resume with --resume auto")
        state = {
            "global_step": curriculum.global_step, "curriculum": curriculum.state_dict(),
            "budget_spent": curriculum.budget_spent(),
            "streams": {n: s.state_dict() for n, s in streams.items()}, "counters": counters,
            "summary": summary, "wandb_run_id": sink.run_id, "identity": identity,
        }
        return ckpt.save_checkpoint(engine, run_dir, tag, state, stage_end=stage_end, keep=training.keep_checkpoints)

    progress = _progress_bar(curriculum, show_progress and main)
    with GracefulStop() as stop:
        while not curriculum.finished:
            stage = curriculum.current_stage
            distributed.check_same(curriculum.plan(stage.index), f"plan of stage '{stage.name}'")
            for step in curriculum.stage_steps():
                record = _train_step(engine, step, streams, tasks, counters, device)
                if counters.get("nonfinite_in_a_row", 0) >= training.max_nonfinite_steps:
                    metrics.write(record)
                    raise TrainingError(
                        f"the loss was NaN or infinite in {counters['nonfinite_in_a_row']} steps in a row (up to step "
                        f"{step.global_step}; those steps were skipped); stopping with the last good checkpoint "
                        f"({_newest(run_dir)}) intact; lower training.lr or check the data, then resume with --resume auto")
                last_in_stage = step.step_in_stage == stage.steps - 1
                if step.global_step % training.log_every == 0 or last_in_stage:
                    metrics.write(record)
                    sink.log_step(record)
                progress.update(1)
                progress.set_postfix(stage=stage.name, task=step.task, loss=f"{record['loss']:.3f}",
                                     tok_s=f"{record['tokens_per_s']:.0f}", refresh=False)
                example_log.after_step(step.global_step)
                faults.inject(f"step:{step.global_step}")
                if training.reuse_heap and step.global_step % TRIM_EVERY_STEPS == 0:
                    release_free_memory()  # what the kept heap piled up as batch shapes varied (allocator.py)
                if last_in_stage:
                    break  # the stage-end checkpoint below covers this step
                every = training.checkpoint_every
                stopping = distributed.any_rank(stop.requested)  # all ranks stop at the same step
                if stopping or (every and step.global_step % every == 0):
                    saved = save(f"step-{step.global_step:07d}", stage_end=False)
                    if stopping:
                        _stop(stop, saved, progress, metrics, sink, schedule_path, run_dir)
            curriculum.next_stage()
            result = run_eval()
            summary["stages"].append({"name": stage.name, "end_step": curriculum.global_step, "eval": result})
            summary["timing"] = _timing(counters)
            progress.clear()
            print_eval_table(f"after stage '{stage.name}' (step {curriculum.global_step})", result)
            sink.log_eval(result, step=curriculum.global_step)
            saved = save(f"stage-{stage.index + 1:02d}-{_slug(stage.name)}", stage_end=True)
            _write_summary(run_dir, summary)
            if distributed.any_rank(stop.requested) and not curriculum.finished:
                _stop(stop, saved, progress, metrics, sink, schedule_path, run_dir)
    progress.close()
    metrics.close()
    example_log.close()
    sink.finish(summary)
    if "timing" in summary:
        t = summary["timing"]
        print(f"ernie-cl: {t['steps_timed']} steps in {t['step_time_s']:.1f} s; the data pipeline took "
              f"{t['data_wait_share']:.1%} of step time")
    return summary


def _stop(stop: GracefulStop, saved: Path, progress, metrics: MetricsLog, sink: WandbSink,
          schedule_path: Path, run_dir: Path) -> None:
    progress.close()
    metrics.close()
    sink.close()
    raise StopRequested(f"stopped by {stop.signal_name} after step {ckpt.read_state(saved)['global_step']}; "
                        f"checkpoint {saved}; continue with: ernie-cl train {schedule_path} --run-dir {run_dir} "
                        "--resume auto", stop.exit_code)


def _train_step(engine, step: Step, streams: dict[str, ExampleStream], tasks: dict[str, Any],
                counters: dict[str, int], device) -> dict[str, Any]:
    """One optimizer step on the step's task, or on its fused token-level tasks sharing one batch;
    the task losses are combined by the stage's balancer."""
    started = time.perf_counter()
    fused = bool(step.stage.fused) and step.tasks[0] in step.stage.fused
    stream = streams["+".join(step.stage.fused) if fused else step.task]
    batch = to_device(stream.next_batch(), device)
    data_wait = time.perf_counter() - started  # the loop waited this long for its batch
    batch["labels"] = {t: batch["labels"][t] for t in step.tasks}  # members not in this step sit out
    outputs = engine(**batch)
    accuracy = {}
    for name, (_, logits, targets) in outputs.items():
        correct, total = tasks[name].metric_counts(logits.detach(), targets)
        accuracy[name] = correct / max(total, 1)
    balancer = engine.module.balancers[step.stage.index]
    shared = engine.module.last_shared_parameters() if balancer.method == "gradnorm" else None
    losses = {name: out[0] for name, out in outputs.items()}
    tokens = int(batch["attention_mask"].sum())
    # several processes: mean losses/accuracies and summed tokens over the ranks (gradients stay this
    # rank's), so balancers weigh alike and a non-finite loss anywhere skips the step on every rank
    losses, accuracy, tokens = distributed.global_view(losses, accuracy, tokens)
    finite = all(bool(torch.isfinite(value)) for value in losses.values())
    if finite:
        with _engine_allows_autograd(engine, enabled=shared is not None):
            loss, weights = balancer.combine(losses, accuracies=accuracy, shared_params=shared)
        if faults.action_at(f"loss:{step.global_step}") == "nan":
            loss = loss * float("nan")
        finite = bool(torch.isfinite(loss))
    if finite:
        engine.backward(loss)
        engine.step()
        counters["nonfinite_in_a_row"] = 0
    else:  # skip the update: no backward, no optimizer step; the batch is spent, the weights stay clean
        loss, weights = sum(losses.values()) * float("nan"), {name: float("nan") for name in losses}
        counters["nonfinite_steps"] = counters.get("nonfinite_steps", 0) + 1
        counters["nonfinite_in_a_row"] = counters.get("nonfinite_in_a_row", 0) + 1
    counters["tokens_seen"] += tokens
    elapsed = time.perf_counter() - started
    counters["step_time_s"] = counters.get("step_time_s", 0.0) + elapsed
    counters["steps_timed"] = counters.get("steps_timed", 0) + 1
    counters["data_wait_s"] = counters.get("data_wait_s", 0.0) + data_wait
    record: dict[str, Any] = {"step": step.global_step, "stage": step.stage.name, "stage_index": step.stage.index,
                              "task": step.task, "tasks": list(step.tasks),
                              "loss": float(sum(value.detach() for value in losses.values())),  # unweighted: comparable
                              "weighted_loss": float(loss.detach()), "skipped": not finite}
    for name, task_loss in losses.items():
        record[f"{name}/loss"] = float(task_loss.detach())
        record[f"{name}/train_accuracy"] = accuracy[name]
        record[f"{name}/weight"] = weights[name]
    record.update(lr=engine.get_lr()[0], tokens_per_s=tokens / elapsed, step_time_s=elapsed, data_wait_s=data_wait,
                  tokens_seen=counters["tokens_seen"])
    return record


@contextlib.contextmanager
def _engine_allows_autograd(engine, enabled: bool):
    """GradNorm's torch.autograd.grad runs through the forward graph, whose DeepSpeed hooks refuse any
    backward pass outside engine.backward (ZeRO-0); the engine's own flag for "inside engine.backward"
    is raised for that call only. No .grad is written, so the engine's step is unaffected. Checked on
    ZeRO-0 (tests/test_balancing_training.py); other ZeRO stages are not tested with GradNorm."""
    if not enabled or not hasattr(engine, "_running_engine_backward"):
        yield
        return
    previous = engine._running_engine_backward
    engine._running_engine_backward = True
    try:
        yield
    finally:
        engine._running_engine_backward = previous


def build_model(schedule, model_cfg: dict[str, Any], prepared) -> ErnieEncoder:
    """The model a run trains, seeded: backbone + task embeddings + heads (an export's restored),
    one loss balancer per stage, the cheap dropout masks on CPU, compiled if asked."""
    training = schedule.training
    if training.reuse_heap:  # before the model's first parallel op starts torch's OpenMP workers (allocator.py)
        keep_freed_memory()
    torch.manual_seed(schedule.seed)
    model = ErnieEncoder(build_backbone(model_cfg, prepared.tokenizer, training.seq_len), prepared.tasks)
    restore_extras(model, model_cfg)  # continuing from an ernie-cl export: its task embeddings and heads
    # One loss balancer per stage, registered in the model so that the engine's optimizer steps
    # learned weights (uncertainty) and checkpoints carry every balancer's state.
    model.balancers = torch.nn.ModuleList(balancer_from_spec(s.balancing, s.task_names) for s in schedule.stages)
    if training.fast_dropout and not torch.cuda.is_available():  # GPUs' own dropout is fused and cheap
        dropout.install(model.backbone, fused_attention=training.fused_kernels)
        if training.fused_kernels:
            fused_blocks.install(model.backbone)
    if training.compile:
        compile_backbone(model)
    return model


# Settings that change how a run reports or paces itself, not what it computes: a resume may change them.
OPERATIONAL_KEYS = {"schedule.training.log_every", "schedule.training.checkpoint_every", "schedule.training.keep_checkpoints",
                    "schedule.training.threads", "schedule.training.data_workers", "schedule.training.eval_batch_size",
                    "schedule.training.compile", "schedule.training.fast_dropout", "schedule.training.fused_kernels",
                    "schedule.training.reuse_heap"}  # how it runs, not what it computes
# settings added after checkpoints were already being written: the value such a checkpoint ran with
EARLIER_BEHAVIOUR = {"schedule.training.fill_chunks": False}  # (a missing key; a changed default shows as a change)
# config file locations, compared by content instead (identity "model" and "deepspeed")
LOCATION_KEYS = {"schedule.model", "schedule.deepspeed"}


def config_changes(saved: dict[str, Any], current: dict[str, Any], prefix: str = "") -> list[str]:
    """``key.path: old -> new`` for every setting that differs (operational keys excepted)."""
    changes = []
    for key in sorted(set(saved) | set(current), key=str):
        path = f"{prefix}{key}"
        if path in LOCATION_KEYS or (path == "deepspeed" and key not in saved):  # older checkpoints: no content
            continue
        old, new = saved.get(key, EARLIER_BEHAVIOUR.get(path, "<unset>")), current.get(key, "<unset>")
        if isinstance(old, dict) and isinstance(new, dict):
            changes += config_changes(old, new, f"{path}.")
        elif old != new and path not in OPERATIONAL_KEYS:
            changes.append(f"{path}: {json.dumps(old)} -> {json.dumps(new)}")
    return changes


def _check_same_run(state: dict[str, Any], identity: dict[str, Any], where: Path, allow_change: bool) -> None:
    changes = config_changes(state.get("identity", {}), identity)
    if not changes:
        return
    shown = "; ".join(changes[:4]) + (f"; and {len(changes) - 4} more" if len(changes) > 4 else "")
    if not allow_change:
        raise CheckpointError(f"cannot resume from {where}: the config changed since it was written ({shown}); "
                              "restore it, use a new --run-dir, or pass --allow-config-change to resume anyway")
    print(f"ernie-cl: warning: resuming with a changed config ({shown})")


def _timing(counters: dict[str, Any]) -> dict[str, Any]:
    """Step time and how much of it the loop spent waiting for batches (all steps of the run,
    resumed parts included: the counters travel in checkpoints)."""
    step_time, wait = counters.get("step_time_s", 0.0), counters.get("data_wait_s", 0.0)
    return {"steps_timed": counters.get("steps_timed", 0), "step_time_s": round(step_time, 3),
            "data_wait_s": round(wait, 3), "data_wait_share": round(wait / step_time, 5) if step_time else 0.0}


def _newest(run_dir: Path) -> str:
    latest = ckpt.checkpoints_dir(run_dir) / ckpt.POINTER
    return str(latest.parent / latest.read_text().strip()) if latest.is_file() else "none written yet"


def _write_summary(run_dir: Path, summary: dict[str, Any]) -> None:
    if distributed.is_main():
        write_json_durably(run_dir / "summary.json", summary)


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "-" for c in name)[:40]


def _progress_bar(curriculum: Curriculum, enabled: bool):
    return progress_bar(total=curriculum.total_steps, initial=curriculum.global_step, desc="pre-training",
                        unit="step", disable=not enabled)
