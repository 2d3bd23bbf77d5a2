"""Reading a downstream-suite results dict (the form ``ernie-cl bench`` writes; see ``bench_report``):
which modes and tasks it holds, a model's per-seed values and their summary, and the task facts
(metric name, sizes, majority baseline) the models' entries carry."""

from __future__ import annotations

import math
from typing import Any

from ernie_cl.evaluation.stats import summarize_scores

MODE_ORDER = ("probe", "finetune")


def suite_modes(results: dict[str, Any]) -> list[str]:
    found = {mode for m in results["models"].values() for t in m.get("tasks", {}).values() for mode in t}
    return [m for m in MODE_ORDER if m in found] + sorted(found - set(MODE_ORDER))


def suite_tasks(results: dict[str, Any], mode: str) -> list[str]:
    """Tasks with a result in ``mode``: the ``tasks`` block's order first, then first appearance."""
    order = list(results.get("tasks", {}))
    for model in results["models"].values():
        order += [t for t in model.get("tasks", {}) if t not in order]
    return [t for t in order if any(suite_entry(m, t, mode) for m in results["models"].values())]


def suite_entry(model: dict[str, Any], task: str, mode: str) -> dict[str, Any] | None:
    return model.get("tasks", {}).get(task, {}).get(mode)


def values_by_seed(entry: dict[str, Any] | None, seeds: list[Any]) -> dict[Any, float]:
    """Seed -> value; a missing (None/NaN) value drops its seed rather than failing the report."""
    if not entry:
        return {}
    values = entry.get("values", [])
    keys = entry.get("seeds") or (seeds if len(seeds) == len(values) else list(range(len(values))))
    return {k: float(v) for k, v in zip(keys, values) if v is not None and math.isfinite(float(v))}


def model_summary(results: dict[str, Any], model: str, task: str, mode: str) -> dict[str, Any] | None:
    values = list(values_by_seed(suite_entry(results["models"][model], task, mode), results.get("seeds", [])).values())
    return summarize_scores(values) if values else None


def task_fact(results: dict[str, Any], task: str, mode: str, key: str) -> list[Any]:
    """Distinct values of ``key`` over the models' entries (they should agree; the report shows it if not)."""
    seen = [suite_entry(m, task, mode).get(key) for m in results["models"].values() if suite_entry(m, task, mode)]
    return list(dict.fromkeys(v for v in seen if v is not None))


def metric_name(results: dict[str, Any], task: str, mode: str) -> str:
    return (task_fact(results, task, mode, "metric_name") or ["value"])[0]
