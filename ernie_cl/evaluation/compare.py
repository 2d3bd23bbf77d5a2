"""``ernie-cl compare``: did the curriculum pay off? The sequential schedule against its baselines.

From one sequential schedule (tasks A, B, C, ... in order of first appearance, each with a total
budget N_t) the strategies are derived with the same per-task budgets:

- ``sequential``: the schedule as written (ERNIE 2.0: A, then A+B, then A+B+C, ...);
- ``continual``: one task per stage, in the same order: (A)(B)(C), each with all of its N_t;
- ``joint``: all tasks in one stage: (A,B,C);
- ``pairwise``: every task alone, then every cyclically adjacent pair (A,B)(B,C)(C,A), then all
  together (for three tasks exactly ERNIE 2.0's figure: (A)(B)(C), (A,B)(B,C)(A,C), (A,B,C)).

Budgets of the derived stages are allocated the ERNIE 2.0 way (``allocation: ernie2``), which
spends each task's N_t exactly over the stages it takes part in. Shared forward passes are turned
off in every strategy: a fused step spends one iteration of several tasks, so fusion would give the
strategies different step counts; without it every strategy takes exactly sum_t N_t optimizer
steps, each training one task. (Fusion is a speed feature; the comparison is about the order.)

Every strategy is trained with every seed into ``OUT/runs/<strategy>/seed-<s>/`` and evaluated on
the held-out examples of every task after every stage (the accuracy matrix R), then on downstream
tasks. Re-invoking with the same ``--out`` reuses finished runs and resumes interrupted ones from
their checkpoints. ``OUT/results.json`` holds everything; ``OUT/report.md`` and the PNG plots are
drawn from it (``ernie_cl/evaluation/report.py``).

``--balancing`` trains every strategy once per loss-weighting method. Balancing acts only on steps
that train several tasks, which are the fused steps, so shared forward passes then stay as the
schedule sets them: the methods of one strategy take equal steps, strategies may not.
"""

from __future__ import annotations

import functools
import json
import time
from pathlib import Path
from typing import Any, Callable, Optional

import yaml

from ernie_cl.config.budgets import allocate_budgets, plan_stages
from ernie_cl.config.schedule import ScheduleConfig, load_schedule, resolve_config_file
from ernie_cl.corpus.durable import write_json_durably
from ernie_cl.errors import ConfigError
from ernie_cl.evaluation.continual_metrics import summarize

STRATEGIES = ("sequential", "continual", "joint", "pairwise")


def task_budgets(schedule: ScheduleConfig) -> dict[str, int]:
    """Each task's total iterations over the whole schedule, in task order."""
    totals = {t: 0 for t in schedule.task_names()}
    for stage in allocate_budgets(schedule):
        for task, n in stage.budgets.items():
            totals[task] += n
    return totals


def strategy_stages(strategy: str, tasks: list[str], sequential: list[list[str]]) -> list[list[str]]:
    """The task lists of a strategy's stages."""
    if strategy == "sequential":
        return sequential
    if strategy == "continual":
        return [[t] for t in tasks]
    if strategy == "joint":
        return [list(tasks)]
    if strategy == "pairwise":
        if len(tasks) < 3:
            return [[t] for t in tasks] + [list(tasks)]
        pairs = [[tasks[i], tasks[(i + 1) % len(tasks)]] for i in range(len(tasks))]
        return [[t] for t in tasks] + pairs + [list(tasks)]
    raise ConfigError(f"unknown strategy '{strategy}'; choose from {', '.join(STRATEGIES)}")


def derive_schedule(schedule: ScheduleConfig, strategy: str, seed: int, base_dir: Path, fuse: bool = False) -> dict[str, Any]:
    """The strategy's schedule as a plain dict (to be written as YAML), with the same per-task
    budgets, the given seed, config paths made absolute, and shared forward passes off (or as the
    schedule sets them, with ``fuse``)."""
    budgets = task_budgets(schedule)
    tasks = list(budgets)
    stages = strategy_stages(strategy, tasks, [s.task_names for s in schedule.stages])
    data = schedule.model_dump(mode="json")
    data.update(name=f"{schedule.name}-{strategy}", seed=seed, allocation="ernie2")
    data["model"] = str(resolve_config_file(schedule.model, "model", ".yaml", base_dir).resolve())
    data["deepspeed"] = str(resolve_config_file(schedule.deepspeed, "deepspeed", ".json", base_dir).resolve())
    if data["corpus"].get("path"):
        data["corpus"]["path"] = str(Path(data["corpus"]["path"]).resolve())
    data["training"]["fuse_token_tasks"] = bool(fuse and schedule.training.fuse_token_tasks)
    data["tasks"] = {t: {**data["tasks"].get(t, {}), "iterations": budgets[t]} for t in tasks}
    names = [f"{i + 1:02d}-{'+'.join(s)}" if strategy != "sequential" else schedule.stages[i].name
             for i, s in enumerate(stages)]
    data["stages"] = [{"name": name, "tasks": s} for name, s in zip(names, stages)]
    return data


def _loss_curve(run_dir: Path, points: int = 200) -> list[list[float]]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    width = max(1, len(rows) // points)
    return [[rows[i + width - 1]["step"], sum(r["loss"] for r in rows[i:i + width]) / width]
            for i in range(0, len(rows) - width + 1, width)]


def _run_record(run_dir: Path, tasks: list[str], stage_tasks: list[list[str]]) -> dict[str, Any]:
    """R, baselines and continual-learning metrics of one finished run, from its summary.json."""
    summary = json.loads((run_dir / "summary.json").read_text())
    R = [[stage["eval"][t]["metric"] for t in tasks] for stage in summary["stages"]]
    return {
        "run_dir": str(run_dir),
        "R": R,
        "R_init": [summary["init_eval"][t]["metric"] for t in tasks],
        "baselines": {t: summary["init_eval"][t]["baseline"] for t in tasks},
        "metric_names": {t: summary["init_eval"][t]["metric_name"] for t in tasks},
        "metrics": summarize(R, stage_tasks, tasks),
        "loss_curve": _loss_curve(run_dir),
    }


def _mean_step_time(run_dir: Path) -> float:
    """Mean optimizer-step time over the run's logged steps (the cost of a balancing method shows here)."""
    times = [json.loads(line).get("step_time_s") for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    times = [t for t in times if t is not None]
    return sum(times) / len(times) if times else float("nan")


def _finished(run_dir: Path, n_stages: int) -> bool:
    try:
        return len(json.loads((run_dir / "summary.json").read_text())["stages"]) == n_stages
    except (OSError, ValueError, KeyError):
        return False


def run_comparison(
    schedule_path: str | Path,
    out_dir: str | Path,
    seeds: int = 1,
    strategies: tuple[str, ...] = STRATEGIES,
    finetune_tasks: tuple[str, ...] = (),
    bench_tasks: Optional[tuple[str, ...]] = None,
    bench_finetune: tuple[str, ...] = (),
    bench_options: Optional[dict[str, Any]] = None,
    references: bool = True,
    extra_references: tuple[str, ...] = (),
    balancing: tuple[str, ...] = (),
    wandb_mode: str = "offline",
    cache_dir: Optional[str | Path] = None,
    show_progress: bool = True,
    log: Callable[[str], None] = print,
    command: Optional[str] = None,
) -> dict[str, Any]:
    """Train and evaluate every strategy with every seed; write results.json, report.md, plots.

    Downstream, every final checkpoint is probed on ``bench_tasks`` (default: the whole suite) and
    fine-tuned on ``bench_finetune``, with the bench seed equal to the run's seed, so strategies are
    compared pairwise on the same splits. ``references``: also score a random-init encoder of the
    same shape and, when the schedule starts from a pretrained encoder, that encoder itself;
    ``extra_references``: more model folders scored the same way (e.g. all-MiniLM-L6-v2 beside a
    from-scratch schedule). ``command``: the command line, as the reports show it (default: one
    rebuilt from the schedule and ``out_dir``)."""
    for strategy in strategies:
        if strategy not in STRATEGIES:
            raise ConfigError(f"unknown strategy '{strategy}'; choose from {', '.join(STRATEGIES)}")
    if not strategies:
        raise ConfigError("--strategies is empty; name at least one of " + ", ".join(STRATEGIES))
    from ernie_cl.model.balancing import validate_balancing

    for method in balancing:
        validate_balancing({"method": method})
    from ernie_cl.evaluation.bench import BENCH_TASKS
    from ernie_cl.evaluation.finetune import finetune
    from ernie_cl.evaluation.report import write_report
    from ernie_cl.training.trainer import train

    schedule_path, out_dir = Path(schedule_path), Path(out_dir)
    schedule = load_schedule(schedule_path)
    budgets = task_budgets(schedule)
    tasks = list(budgets)
    base_seed = schedule.seed
    group = f"compare-{out_dir.resolve().name}"
    results: dict[str, Any] = {"schedule": str(schedule_path), "tasks": tasks, "seeds": [base_seed + i for i in range(seeds)],
                               "budgets": budgets, "wandb_group": group, "strategies": {}}
    if command:
        results["command"] = command
    suite = {"tasks": tuple(BENCH_TASKS if bench_tasks is None else bench_tasks), "finetune": tuple(bench_finetune),
             "options": dict(bench_options or {}), "cache_dir": cache_dir, "show_progress": show_progress}
    # with --balancing, every strategy is trained once per loss-weighting method: "sequential+dwa", ...
    variants = [(s, m) for s in strategies for m in (balancing or (None,))]
    results["balancing"] = list(balancing) if balancing else "as in the schedule"
    for strategy, method in variants:
        variant = f"{strategy}+{method}" if method else strategy
        entry: dict[str, Any] = {"runs": {}, "strategy": strategy, "balancing": method}
        for seed in results["seeds"]:
            # Balancing only acts on steps that train several tasks, i.e. fused steps: with --balancing
            # sharing stays as the schedule sets it (the methods of one strategy still take equal steps).
            derived = derive_schedule(schedule, strategy, seed, schedule_path.parent, fuse=bool(balancing))
            if method:
                derived["stages"] = [{**s, "balancing": {"method": method}} for s in derived["stages"]]
            stage_tasks = [s["tasks"] for s in derived["stages"]]
            run_dir = out_dir / "runs" / variant / f"seed-{seed}"
            run_dir.mkdir(parents=True, exist_ok=True)
            derived_path = run_dir / "schedule.yaml"
            derived_path.write_text(yaml.safe_dump(derived, sort_keys=False))
            timing_file = run_dir / "compare_run.json"
            timing = json.loads(timing_file.read_text()) if timing_file.is_file() else {"wall_time_s": 0.0}
            if _finished(run_dir, len(stage_tasks)):
                log(f"ernie-cl compare: {variant}, seed {seed}: reusing the finished run in {run_dir}")
            else:
                log(f"ernie-cl compare: training {variant}, seed {seed} ({len(stage_tasks)} stages) in {run_dir}")
                started = time.perf_counter()
                train(derived_path, run_dir, resume="auto", wandb_mode=wandb_mode, cache_dir=cache_dir,
                      show_progress=show_progress, wandb_group=group)
                timing["wall_time_s"] += time.perf_counter() - started
                timing_file.write_text(json.dumps(timing))
            record = _run_record(run_dir, tasks, stage_tasks)
            final = sorted((run_dir / "checkpoints").glob("stage-*"))[-1]
            state = json.loads((final / "trainer_state.json").read_text())
            record.update(wall_time_s=timing["wall_time_s"], tokens_seen=state["counters"]["tokens_seen"],
                          mean_step_time_s=_mean_step_time(run_dir),
                          downstream=_downstream(run_dir, final, finetune_tasks, seed, suite, finetune))
            entry["runs"][str(seed)] = record
            steps = [stage.steps for stage in plan_stages(load_schedule(derived_path))]
            entry["stages"] = [{"name": s["name"], "tasks": s["tasks"], "steps": n} for s, n in zip(derived["stages"], steps)]
            entry["total_steps"] = sum(stage["steps"] for stage in entry["stages"])
        entry["budgets"] = budgets
        results["strategies"][variant] = entry
        write_json_durably(out_dir / "results.json", results)  # partial results survive an interruption
    results["downstream_suite"] = downstream_suite(results, schedule, schedule_path, out_dir, suite, references,
                                                   extra_references, log)
    write_json_durably(out_dir / "results.json", results)
    write_report(results, out_dir)
    return results


def _downstream(run_dir: Path, checkpoint: Path, finetune_tasks: tuple[str, ...], seed: int, suite: dict[str, Any],
                finetune) -> dict:
    """Downstream scores of a run's final checkpoint (the suite with bench seed = the run's seed,
    and any GLUE-style ``finetune_tasks``), cached in RUN/downstream.json."""
    from ernie_cl.evaluation.bench import bench_model
    from ernie_cl.evaluation.model_sources import load_model

    cache_file = run_dir / "downstream.json"
    scores = json.loads(cache_file.read_text()) if cache_file.is_file() else {}
    if scores.get("suite_options") != suite["options"]:  # scored with other settings: score the suite again
        scores = {k: v for k, v in scores.items() if ":" not in k}
        scores["suite_options"] = suite["options"]
    loaded: list = []  # the checkpoint, loaded once for all tasks

    def load(_seed: int):
        if not loaded:
            loaded.append(load_model(checkpoint, suite["cache_dir"]))
        return loaded[0]

    for mode, tasks in (("probe", suite["tasks"]), ("finetune", suite["finetune"])):
        missing = [t for t in tasks if f"{mode}:{t}" not in scores]
        if missing:
            scored = bench_model(load, missing, [seed], [mode], show_progress=suite["show_progress"], **suite["options"])
            for task in missing:
                entry = scored[task][mode]
                scores[f"{mode}:{task}"] = {"accuracy": entry["values"][0], **{k: v for k, v in entry.items() if k != "values"}}
            write_json_durably(cache_file, scores)
    for spec in finetune_tasks:
        if spec not in scores:
            scores[spec] = finetune(checkpoint, spec, seed=seed, cache_dir=suite["cache_dir"])
    write_json_durably(cache_file, scores)
    return scores


def downstream_suite(results: dict[str, Any], schedule: ScheduleConfig, schedule_path: Path, out_dir: Path,
                     suite: dict[str, Any], references: bool, extra_references: tuple[str, ...],
                     log: Callable[[str], None]) -> dict[str, Any]:
    """The strategies' suite scores (one value per seed, from their runs) and the references',
    in the form ``bench_report`` renders. References are scored once per seed and cached in
    OUT/references.json."""
    from ernie_cl.config.schedule import load_model_config
    from ernie_cl.evaluation.bench import BenchModel, machine, run_bench, task_notes
    from ernie_cl.evaluation.model_sources import load_model, random_init_like

    modes = [m for m, tasks in (("probe", suite["tasks"]), ("finetune", suite["finetune"])) if tasks]
    models: dict[str, Any] = {}
    infos: dict[str, dict[str, Any]] = {}
    for name, entry in results["strategies"].items():
        runs = [entry["runs"][str(seed)] for seed in results["seeds"] if str(seed) in entry["runs"]]
        tasks: dict[str, Any] = {}
        for mode in modes:
            for task in suite["tasks"] if mode == "probe" else suite["finetune"]:
                cells = [run["downstream"].get(f"{mode}:{task}") for run in runs]
                if all(cells):
                    # one value per run; "seeds" lists the runs' seeds (each cell's own list has just its seed)
                    tasks.setdefault(task, {})[mode] = {**{k: v for k, v in cells[0].items() if k != "accuracy"},
                                                        "values": [c["accuracy"] for c in cells],
                                                        "seeds": [seed for c in cells for seed in c["seeds"]],
                                                        "seconds": round(sum(c["seconds"] for c in cells), 1)}
        models[name] = {"kind": "strategy", "source": str(out_dir / "runs" / name), "corpus_source": schedule.corpus.source,
                        "tasks": tasks}
        infos[name] = {"corpus_source": schedule.corpus.source}
    if (references or extra_references) and results["strategies"]:
        cache_file = out_dir / "references.json"
        cached = json.loads(cache_file.read_text()) if cache_file.is_file() else {}
        wanted: dict[str, BenchModel] = {}
        if references:
            first_run = next(iter(results["strategies"].values()))["runs"][str(results["seeds"][0])]["run_dir"]
            # the first run's model, loaded once and only if the reference is not cached (as `ernie-cl bench` does)
            template = functools.lru_cache(maxsize=1)(lambda: load_model(first_run, suite["cache_dir"], device="cpu"))
            wanted["random init"] = BenchModel(lambda seed: random_init_like(template(), seed), kind="reference",
                                               per_seed=True)
            pretrained = load_model_config(schedule.model, schedule_path.parent).get("pretrained")
            if pretrained:
                wanted[f"{_model_name(pretrained)} (start)"] = BenchModel(lambda seed: load_model(pretrained), kind="reference")
        for path in extra_references:
            wanted[_model_name(path)] = BenchModel(lambda seed, path=path: load_model(path), kind="reference")
        key = json.dumps([results["seeds"], list(suite["tasks"]), list(suite["finetune"]), suite["options"]])
        for name, spec in wanted.items():
            if cached.get(name, {}).get("key") != key:
                log(f"ernie-cl compare: scoring the reference '{name}' on the downstream suite")
                scored = {}
                for mode in modes:
                    part = run_bench({name: spec}, suite["tasks"] if mode == "probe" else suite["finetune"], results["seeds"],
                                     [mode], show_progress=suite["show_progress"], log=log, **suite["options"])
                    for task, by_mode in part["models"][name]["tasks"].items():
                        scored.setdefault(task, {}).update(by_mode)
                cached[name] = {"key": key, "tasks": scored, "source": part["models"][name]["source"]}
                write_json_durably(cache_file, cached)
            models[name] = {"kind": "reference", "source": cached[name].get("source", name), "corpus_source": None,
                            "tasks": cached[name]["tasks"]}
    return {"title": f"Downstream suite: {schedule.name}", "seeds": results["seeds"], "modes": modes, "models": models,
            "tasks": task_notes(list(dict.fromkeys([*suite["tasks"], *suite["finetune"]])), infos),
            "machine": machine(), "commands": [results.get("command", f"ernie-cl compare {schedule_path} --out {out_dir}")],
            "options": suite["options"]}


def _model_name(path: str | Path) -> str:
    """A readable name for a model folder: all-MiniLM-L6-v2's wheel keeps it in .../<package>/model."""
    path = Path(path)
    return path.parent.name if path.name == "model" else path.name
