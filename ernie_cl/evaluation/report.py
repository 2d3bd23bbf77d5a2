"""The comparison report: ``report.md`` and PNG plots from a ``compare`` run's ``results.json``.

Every number is a mean ± sample standard deviation (ddof=1) over seeds; with one seed only the mean
is shown. A difference between two strategies "exceeds" the seed spread when
``|mean_a - mean_b| > std_a + std_b``; this is a rough screen for a handful of seeds, not a test.
Metrics are higher-is-better. Plots use matplotlib's Agg canvas directly (no pyplot state), so
reports can be written from any thread and without a display.
"""

from __future__ import annotations

import itertools
import math
import re
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ernie_cl.evaluation.continual_metrics import summarize

NO_SPREAD = "no seed spread (one seed)"


def mean_std(values: Sequence[float | None]) -> tuple[float, float | None]:
    """Mean and sample std (ddof=1) of the finite values; std is None with fewer than two."""
    finite = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    if not finite:
        return float("nan"), None
    if len(finite) == 1:
        return finite[0], None
    return float(np.mean(finite)), float(np.std(finite, ddof=1))


def format_mean_std(values: Sequence[float | None], fmt: str = "{:.3f}") -> str:
    """``"0.812 ± 0.010"``; only the mean for one value; ``"n/a"`` for none."""
    mean, std = mean_std(values)
    if math.isnan(mean):
        return "n/a"
    return fmt.format(mean) if std is None else f"{fmt.format(mean)} ± {fmt.format(std)}"


def spread_verdict(a: Sequence[float], b: Sequence[float]) -> str:
    """"exceeds" when |mean_a - mean_b| > std_a + std_b, else "within seed spread"."""
    (mean_a, std_a), (mean_b, std_b) = mean_std(a), mean_std(b)
    if math.isnan(mean_a) or math.isnan(mean_b):
        return "n/a"
    if std_a is None or std_b is None:
        return NO_SPREAD
    return "exceeds" if abs(mean_a - mean_b) > std_a + std_b else "within seed spread"


def rank(values: dict[str, Sequence[float]]) -> list[tuple[str, float]]:
    """Strategies by mean, best first (ties keep the given order); strategies without a value go last."""
    means = [(name, mean_std(v)[0]) for name, v in values.items()]
    return sorted(means, key=lambda kv: (math.isnan(kv[1]), 0.0 if math.isnan(kv[1]) else -kv[1]))


def _runs(strategy: dict[str, Any]) -> list[dict[str, Any]]:
    """The strategy's runs in seed order ("10" after "9": JSON keys are strings)."""
    runs = strategy.get("runs", {})
    return [runs[k] for k in sorted(runs, key=lambda k: (0, int(k), k) if k.isdigit() else (1, 0, k))]


def _downstream(results: dict[str, Any]) -> dict[str, tuple[str, bool]]:
    """Downstream name -> (column label, is it a probe accuracy), in order of first appearance."""
    out: dict[str, tuple[str, bool]] = {}
    for strategy in results["strategies"].values():
        for run in _runs(strategy):
            for name, entry in run.get("downstream", {}).items():
                if name not in out and ("accuracy" in entry or "value" in entry):  # not the settings record
                    probe = "accuracy" in entry
                    out[name] = (f"{name} {'accuracy' if probe else entry.get('metric_name', 'value')}", probe)
    return out


def _collect(results: dict[str, Any], strategy: dict[str, Any]) -> dict[str, list[float]]:
    """Main-table column label -> one value per seed (NaN where a run lacks it)."""
    tasks, nan = results["tasks"], float("nan")
    cols: dict[str, list[float]] = {"average final": [], "BWT": [], "mean forgetting": []}
    cols.update({f"{t} final": [] for t in tasks})
    downstream = _downstream(results)
    cols.update({label: [] for label, _ in downstream.values()})
    cols.update({"wall time (s)": [], "step time (ms)": [], "tokens seen": []})
    for run in _runs(strategy):
        # Recompute from R only when compare.py did not store the metrics block.
        metrics = run.get("metrics") or summarize(run["R"], [s["tasks"] for s in strategy["stages"]], tasks)
        cols["average final"].append(metrics["average_final"])
        cols["BWT"].append(metrics["bwt"])
        cols["mean forgetting"].append(metrics["mean_forgetting"])
        for t, value in zip(tasks, run["R"][-1]):
            cols[f"{t} final"].append(nan if value is None else value)
        for name, (label, _) in downstream.items():
            entry = run.get("downstream", {}).get(name, {})
            cols[label].append(entry.get("accuracy", entry.get("value", nan)))
        cols["wall time (s)"].append(run.get("wall_time_s", nan))
        cols["step time (ms)"].append(1000 * run.get("mean_step_time_s", nan))
        cols["tokens seen"].append(run.get("tokens_seen", nan))
    if all(math.isnan(v) for v in cols["step time (ms)"]):
        del cols["step time (ms)"]  # results written before step times were recorded
    return cols


def _fmt_for(label: str) -> str:
    return {"wall time (s)": "{:.1f}", "step time (ms)": "{:.1f}", "tokens seen": "{:,.0f}"}.get(label, "{:.3f}")


def _nanmean_rows(rows: list[Any]) -> np.ndarray:
    """Element-wise mean over seeds of equally shaped arrays, skipping NaN (NaN where all are)."""
    stack = np.array(rows, dtype=float)
    counts = (~np.isnan(stack)).sum(axis=0)
    sums = np.nansum(stack, axis=0)
    return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


def mean_matrix(strategy: dict[str, Any], tasks: list[str]) -> dict[str, np.ndarray | None]:
    """Seed-mean ``R`` (stages x tasks), ``R_init`` and baselines (None where a run lacks them)."""
    runs = _runs(strategy)
    shapes = {np.array(r["R"], dtype=float).shape for r in runs}
    if len(shapes) != 1:
        raise ValueError(f"runs of one strategy have accuracy matrices of different shapes: {sorted(shapes)}")
    init = [r["R_init"] for r in runs if r.get("R_init") is not None]
    base = [[r["baselines"].get(t, math.nan) for t in tasks] for r in runs if r.get("baselines")]
    return {"R": _nanmean_rows([r["R"] for r in runs]),
            "init": _nanmean_rows(init) if init and len(init) == len(runs) else None,
            "baselines": _nanmean_rows(base) if base else None}


def _cell(value: float, fmt: str = "{:.3f}") -> str:
    return "n/a" if math.isnan(value) else fmt.format(value)


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows]


def _file_name(prefix: str, name: str) -> str:
    return f"{prefix}_{re.sub(r'[^A-Za-z0-9_.-]+', '_', name)}.png"


def _header(results: dict[str, Any], out_dir: Path) -> list[str]:
    names, seeds = list(results["strategies"]), results.get("seeds", [])
    command = results.get("command") or (f"ernie-cl compare {results.get('schedule', '?')} --out {out_dir} "
                                         f"--seeds {len(seeds)} --strategies {','.join(names)}")
    metric_names = next((r.get("metric_names", {}) for s in results["strategies"].values() for r in _runs(s)), {})
    lines = ["# Strategy comparison", "", f"- Command: `{command}`", f"- Schedule: `{results.get('schedule', '?')}`",
             f"- Seeds: {', '.join(map(str, seeds))} ({len(seeds)})", f"- Strategies: {', '.join(names)}",
             f"- Loss balancing: {results.get('balancing', 'n/a')}",
             "- Tasks (held-out metric): " + ", ".join(f"{t} ({metric_names.get(t, 'metric')})" for t in results["tasks"]),
             "", "## Budgets", "",
             "The comparison holds each task's iteration budget fixed; only the order and mixing of tasks differ.", ""]
    rows = []
    for name, s in results["strategies"].items():
        budgets = s.get("budgets", {})
        rows.append([name, str(len(s["stages"])), str(s.get("total_steps", sum(st["steps"] for st in s["stages"])))]
                    + [str(budgets.get(t, "n/a")) for t in results["tasks"]])
    lines += _table(["strategy", "stages", "total steps"] + [f"{t} budget" for t in results["tasks"]], rows)
    distinct = {tuple(sorted(s.get("budgets", {}).items())) for s in results["strategies"].values()}
    lines += ["", "Per-task budgets are equal across strategies." if len(distinct) == 1 else
              "**Per-task budgets differ across strategies: the comparison is not like for like.**"]
    return lines


def _comparison(results: dict[str, Any], columns: dict[str, dict[str, list[float]]]) -> list[str]:
    labels = next(iter(columns.values())).keys()
    lines = ["", "## Results (mean ± std over seeds)", "",
             "Std is the sample std over seeds (ddof=1); with one seed only the mean is shown. "
             "`<task> final` is the task's held-out metric after the last stage.", ""]
    lines += _table(["strategy"] + list(labels),
                    [[name] + [format_mean_std(cols[lb], _fmt_for(lb)) for lb in labels] for name, cols in columns.items()])
    headline = ["average final"] + [label for label, probe in _downstream(results).values() if probe]
    lines += ["", "## Ranking", ""]
    for label in headline:
        ranked = rank({name: cols[label] for name, cols in columns.items()})
        lines.append(f"By {label}: " + " > ".join(f"{n} ({_cell(m)})" for n, m in ranked))
        lines.append("")
    lines += ["## Differences beyond the seed spread", "",
              "Rule: a difference *exceeds* the seed spread when |mean_a − mean_b| > std_a + std_b; otherwise it is "
              "*within seed spread*. A rough screen over few seeds, not a significance test."]
    if any(len(_runs(s)) < 2 for s in results["strategies"].values()):
        lines.append("With one seed no seed spread is available, so no difference can be judged.")
    lines.append("")
    rows = []
    for a, b in itertools.combinations(columns, 2):
        cells = []
        for label in headline:
            diff = mean_std(columns[a][label])[0] - mean_std(columns[b][label])[0]
            cells.append(f"{_cell(diff, '{:+.3f}')}: {spread_verdict(columns[a][label], columns[b][label])}")
        rows.append([f"{a} vs {b}"] + cells)
    return lines + _table(["pair (a vs b)"] + [f"{label} (a − b)" for label in headline], rows)


def _matrices(results: dict[str, Any], mats: dict[str, dict[str, Any]]) -> list[str]:
    tasks = results["tasks"]
    lines = ["", "## Accuracy matrices (mean over seeds)", "",
             "Rows are stage ends, columns tasks; **bold** marks the tasks trained in that stage.", ""]
    for name, strategy in results["strategies"].items():
        m, end = mats[name], 0
        rows = []
        if m["init"] is not None:
            rows.append(["before training", "", "0"] + [_cell(v) for v in m["init"]])
        for stage, values in zip(strategy["stages"], m["R"]):
            end += stage["steps"]
            rows.append([stage["name"], "+".join(stage["tasks"]), str(end)]
                        + [f"**{_cell(v)}**" if t in stage["tasks"] else _cell(v) for t, v in zip(tasks, values)])
        if m["baselines"] is not None:
            rows.append(["trivial baseline", "", ""] + [_cell(v) for v in m["baselines"]])
        lines += [f"### {name}", ""] + _table(["stage", "trains", "end step"] + tasks, rows)
        lines += ["", f"![{name} accuracy matrix]({_file_name('heatmap', name)})", ""]
    return lines


def _figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # lazy: matplotlib is slow to import
    from matplotlib.figure import Figure
    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _plot_heatmap(name: str, strategy: dict[str, Any], m: dict[str, Any], tasks: list[str], seeds: int,
                  path: Path) -> None:
    shown = m["R"] - m["baselines"] if m["baselines"] is not None else m["R"]
    what = "held-out metric minus trivial baseline" if m["baselines"] is not None else "held-out metric"
    fig = _figure(1.3 * len(tasks) + 3, 0.55 * len(shown) + 2)
    ax = fig.add_subplot()
    finite = np.abs(shown[~np.isnan(shown)])
    lim = float(finite.max()) if finite.size and finite.max() > 0 else 1.0
    # Differences from the baseline diverge around 0; raw metrics get a sequential map.
    diverging = m["baselines"] is not None
    image = ax.imshow(shown, cmap="RdBu" if diverging else "viridis", aspect="auto",
                      vmin=-lim if diverging else None, vmax=lim if diverging else None)
    low, high = image.get_clim()
    for (i, j), v in np.ndenumerate(shown):
        # White text on the dark ends of the colour map, black elsewhere.
        dark = not math.isnan(v) and (abs(v) > 0.6 * lim if diverging else v < low + 0.5 * (high - low))
        ax.text(j, i, "n/a" if math.isnan(v) else (f"{v:+.3f}" if diverging else f"{v:.3f}"),
                ha="center", va="center", fontsize=8, color="white" if dark else "black")
    ax.set_xticks(range(len(tasks)), tasks, rotation=30, ha="right")
    ax.set_yticks(range(len(shown)), [s["name"] for s in strategy["stages"]])
    ax.set_xlabel("task")
    ax.set_ylabel("after stage")
    ax.set_title(f"{name}: {what}\n(mean over {seeds} seed{'s' if seeds != 1 else ''})", fontsize=10)
    fig.colorbar(image, ax=ax)
    fig.savefig(path)


def _plot_task_metrics(results: dict[str, Any], mats: dict[str, dict[str, Any]], path: Path) -> None:
    tasks = results["tasks"]
    ncols = min(3, len(tasks))
    nrows = math.ceil(len(tasks) / ncols)
    fig = _figure(4.2 * ncols, 3.2 * nrows)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for name, strategy in results["strategies"].items():
        m = mats[name]
        steps = np.cumsum([s["steps"] for s in strategy["stages"]], dtype=float)
        total = float(strategy.get("total_steps") or steps[-1] or 1.0)
        # Fraction of the strategy's total steps, so strategies with different stage counts line up.
        x, ys = list(steps / total), m["R"]
        if m["init"] is not None:
            x, ys = [0.0] + x, np.vstack([m["init"], ys])
        for j in range(len(tasks)):
            axes[j].plot(x, ys[:, j], marker="o", label=name)
    baselines = next((m["baselines"] for m in mats.values() if m["baselines"] is not None), None)
    for j, task in enumerate(tasks):
        if baselines is not None and not math.isnan(baselines[j]):
            axes[j].axhline(baselines[j], color="gray", linestyle="--", label="trivial baseline")
        axes[j].set_title(task)
        axes[j].set_xlabel("fraction of total steps done")
        axes[j].set_ylabel("held-out metric")
    for ax in axes[len(tasks):]:
        ax.set_visible(False)
    axes[0].legend(fontsize=8)
    fig.suptitle("Each task's held-out metric at every stage end (mean over seeds)")
    fig.savefig(path)


def _smooth(y: np.ndarray, window: int) -> np.ndarray:
    """Trailing moving average; the first points average over what exists so far."""
    sums = np.cumsum(np.insert(y, 0, 0.0))
    idx = np.arange(1, len(y) + 1)
    lo = np.maximum(idx - window, 0)
    return (sums[idx] - sums[lo]) / (idx - lo)


def _plot_loss_curves(results: dict[str, Any], path: Path) -> bool:
    """Seed-mean smoothed training loss per strategy; False (nothing written) when no run logged one."""
    fig = _figure(7, 4)
    ax = fig.add_subplot()
    drawn = False
    for name, strategy in results["strategies"].items():
        by_step: dict[float, list[float]] = {}
        for run in _runs(strategy):
            for step, loss in run.get("loss_curve", []):
                by_step.setdefault(step, []).append(loss)
        if not by_step:
            continue
        steps = sorted(by_step)
        mean = np.array([np.mean(by_step[s]) for s in steps], dtype=float)
        window = max(1, len(steps) // 50)  # ~2% of the logged points: smooths noise, keeps stage jumps
        ax.plot(steps, _smooth(mean, window), label=f"{name} (moving average of {window})")
        drawn = True
    if not drawn:
        return False
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.set_title("Training loss, mean over seeds, smoothed\n"
                 "(loss of whichever tasks a stage trains: jumps at stage boundaries are expected)", fontsize=9)
    ax.legend(fontsize=8)
    fig.savefig(path)
    return True


def write_report(results: dict[str, Any], out_dir: Path) -> list[Path]:
    """Write ``out_dir/report.md`` and its PNG plots; returns the written paths, report first."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    columns = {name: _collect(results, s) for name, s in results["strategies"].items()}
    mats = {name: mean_matrix(s, results["tasks"]) for name, s in results["strategies"].items()}
    plots = []
    for name, strategy in results["strategies"].items():
        plots.append(out_dir / _file_name("heatmap", name))
        _plot_heatmap(name, strategy, mats[name], results["tasks"], len(_runs(strategy)), plots[-1])
    plots.append(out_dir / "task_metrics_across_stages.png")
    _plot_task_metrics(results, mats, plots[-1])
    lines = _header(results, out_dir) + _comparison(results, columns) + _matrices(results, mats)
    lines += ["## Plots", "", f"![each task's metric across stages]({plots[-1].name})", ""]
    if _plot_loss_curves(results, out_dir / "loss_curves.png"):
        plots.append(out_dir / "loss_curves.png")
        lines += [f"![training loss curves]({plots[-1].name})", ""]
    if results.get("downstream_suite", {}).get("models"):
        from ernie_cl.evaluation.bench_report import suite_table, write_suite_report

        suite = results["downstream_suite"]
        suite_report = write_suite_report(suite, out_dir / "downstream")
        lines += ["## Downstream suite", "",
                  "Every final checkpoint scored on the offline downstream suite with the bench seed equal to its "
                  "pre-training seed (same splits across strategies), with references. Paired comparisons, plots and "
                  "the tasks' sources: [downstream/report.md](downstream/report.md).", ""]
        for mode in suite["modes"]:
            lines += [f"### {mode}", "", suite_table(suite, mode), ""]
        plots.append(suite_report)
    report = out_dir / "report.md"
    report.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return [report] + plots
