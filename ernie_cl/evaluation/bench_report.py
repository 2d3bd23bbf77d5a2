"""The downstream-suite report: ``report.md``, a Markdown/terminal table per mode, and bar charts.

Input is a suite-results dict (``ernie-cl bench``): ``{"title", "seeds", "models": {name: {"kind":
"strategy" | "reference", "source", "tasks": {task: {mode: {"metric_name", "values", "train_size",
"dev_size", "majority_baseline", ...}}}}}, "tasks": {task: {"description", "licence",
"in_pretraining_corpus"}}, "machine", "commands", "wall_time_s"}``. Model order is display order.

A cell is ``mean ± std [95% CI]`` over seeds (``stats.summarize_scores``); one seed shows the value
alone. Models are compared seed by seed (``stats.paired_comparison``): values are paired by the
entries' ``"seeds"`` lists when both have one, else by position. Plots use matplotlib's Agg canvas
directly (no pyplot state), as ``report.py`` does, so reports can be written without a display.
"""

from __future__ import annotations

import itertools
import math
import re
from pathlib import Path
from typing import Any

from ernie_cl.evaluation.stats import all_pairs, format_p, paired_comparison, summarize_scores

MODE_ORDER = ("probe", "finetune")
MODE_TITLES = {"probe": "Linear probe (frozen features, logistic regression)",
               "finetune": "Fine-tuning (whole encoder plus a fresh head)"}
TEXT_ONLY = "yes: its texts (not labels) are in the pre-training corpus"


# --- reading the results --------------------------------------------------------------------------

def _modes(results: dict[str, Any]) -> list[str]:
    found = {mode for m in results["models"].values() for t in m.get("tasks", {}).values() for mode in t}
    return [m for m in MODE_ORDER if m in found] + sorted(found - set(MODE_ORDER))


def _tasks(results: dict[str, Any], mode: str) -> list[str]:
    """Tasks with a result in ``mode``: the ``tasks`` block's order first, then first appearance."""
    order = list(results.get("tasks", {}))
    for model in results["models"].values():
        order += [t for t in model.get("tasks", {}) if t not in order]
    return [t for t in order if any(_entry(m, t, mode) for m in results["models"].values())]


def _entry(model: dict[str, Any], task: str, mode: str) -> dict[str, Any] | None:
    return model.get("tasks", {}).get(task, {}).get(mode)


def _by_seed(entry: dict[str, Any] | None, seeds: list[Any]) -> dict[Any, float]:
    """Seed -> value; a missing (None/NaN) value drops its seed rather than failing the report."""
    if not entry:
        return {}
    values = entry.get("values", [])
    keys = entry.get("seeds") or (seeds if len(seeds) == len(values) else list(range(len(values))))
    return {k: float(v) for k, v in zip(keys, values) if v is not None and math.isfinite(float(v))}


def _summary(results: dict[str, Any], model: str, task: str, mode: str) -> dict[str, Any] | None:
    values = list(_by_seed(_entry(results["models"][model], task, mode), results.get("seeds", [])).values())
    return summarize_scores(values) if values else None


def _fact(results: dict[str, Any], task: str, mode: str, key: str) -> list[Any]:
    """Distinct values of ``key`` over the models' entries (they should agree; the report shows it if not)."""
    seen = [_entry(m, task, mode).get(key) for m in results["models"].values() if _entry(m, task, mode)]
    return list(dict.fromkeys(v for v in seen if v is not None))


def _metric(results: dict[str, Any], task: str, mode: str) -> str:
    return (_fact(results, task, mode, "metric_name") or ["value"])[0]


def _in_corpus(results: dict[str, Any], task: str) -> str:
    flag = results.get("tasks", {}).get(task, {}).get("in_pretraining_corpus")
    if flag is None:
        return "unknown"
    if flag is False:
        return "no"
    if flag is True:
        return "yes: texts and labels are in the pre-training corpus"
    return TEXT_ONLY if "text only" in str(flag) else f"yes: {flag}"


# --- tables -----------------------------------------------------------------------------------------

def _cell(s: dict[str, Any] | None, n_seeds: int) -> str:
    if s is None:
        return "n/a"
    text = f"{s['mean']:.3f}"
    if s["std"] is not None:
        text += f" ± {s['std']:.3f} [{s['ci95'][0]:.3f}, {s['ci95'][1]:.3f}]"
    return text + (f" (n={s['n']})" if s["n"] != n_seeds else "")


def _joined(values: list[Any], fmt: str) -> str:
    # Models should agree on a task's facts; if they do not, show every value rather than pick one.
    if not values:
        return "n/a"
    return ", ".join(fmt.format(v) for v in values) + (" (differs by model)" if len(values) > 1 else "")


def _rows(results: dict[str, Any], mode: str) -> tuple[list[str], list[list[str]], list[list[str]]]:
    """Header, one row per model, and the two footer rows (majority baseline, train/dev sizes)."""
    tasks, n = _tasks(results, mode), len(results.get("seeds", []))
    marked = {t: " †" if _in_corpus(results, t).startswith("yes") else "" for t in tasks}
    header = ["model", "kind"] + [f"{t} ({_metric(results, t, mode)}){marked[t]}" for t in tasks]
    rows = [[name, m.get("kind", "?")] + [_cell(_summary(results, name, t, mode), n) for t in tasks]
            for name, m in results["models"].items()]
    sizes = []
    for t in tasks:
        train, dev = _fact(results, t, mode, "train_size"), _fact(results, t, mode, "dev_size")
        sizes.append(f"{_joined(train, '{}')} / {_joined(dev, '{}')}")
    baselines = [_joined(_fact(results, t, mode, "majority_baseline"), "{:.3f}") for t in tasks]
    footer = [["majority baseline", ""] + baselines, ["train / dev size", ""] + sizes]
    return header, rows, footer


def _note(results: dict[str, Any], mode: str) -> str:
    n = len(results.get("seeds", []))
    text = ("One seed: each cell is that seed's value; no spread, interval or test is possible." if n == 1 else
            f"Cells: mean ± sample std (ddof=1) [95% Student t interval] over {n} seeds; (n=k) marks fewer seeds.")
    if any(_in_corpus(results, t).startswith("yes") for t in _tasks(results, mode)):
        text += " † the task's texts are in the pre-training corpus (see the task table)."
    return text


def _md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows]


def suite_table(results: dict[str, Any], mode: str) -> str:
    """Markdown table for ``mode``: a row per model, a column per task, then the majority-baseline
    and train/dev-size rows. Cells ``"0.612 ± 0.015 [0.575, 0.649]"``; one seed: ``"0.612"``; ``"n/a"``."""
    header, rows, footer = _rows(results, mode)
    footer = [[f"*{r[0]}*"] + r[1:] for r in footer]
    return "\n".join(_md_table(header, rows + footer))


def print_suite_table(results: dict[str, Any], mode: str) -> str:
    """The same table as aligned plain text for a terminal (no pipes); returned, not printed."""
    header, rows, footer = _rows(results, mode)
    widths = [max(len(r[i]) for r in [header] + rows + footer) for i in range(len(header))]

    def line(row: list[str]) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip()

    rule = "  ".join("-" * w for w in widths)
    title = f"{results.get('title', 'Downstream suite')}: {mode}"
    return "\n".join([title, line(header), rule] + [line(r) for r in rows] + [rule] + [line(r) for r in footer]
                     + [_note(results, mode)])


# --- paired comparisons -----------------------------------------------------------------------------

def _paired(results: dict[str, Any], a: str, b: str, task: str, mode: str) -> tuple[list[float], list[float]]:
    """Both models' values on the seeds they share, in ``a``'s seed order."""
    seeds, models = results.get("seeds", []), results["models"]
    va, vb = _by_seed(_entry(models[a], task, mode), seeds), _by_seed(_entry(models[b], task, mode), seeds)
    common = [s for s in va if s in vb]
    return [va[s] for s in common], [vb[s] for s in common]


def _pair_rows(comparisons: list[dict[str, Any]]) -> list[list[str]]:
    rows = []
    for c in comparisons:
        if c.get("unpaired"):
            rows.append([f"{c['a']} vs {c['b']}", "n/a", "n/a", "n/a", "n/a", c["verdict"]])
            continue
        ci = "n/a" if c["ci95"] is None else f"[{c['ci95'][0]:+.3f}, {c['ci95'][1]:+.3f}]"
        rows.append([f"{c['a']} vs {c['b']}", f"{c['mean_diff']:+.3f}", ci, format_p(c["p"]).removeprefix("p="),
                     f"{c['wins']}/{c['n']}", c["verdict"]])
    return rows


def _compare(results: dict[str, Any], a: str, b: str, task: str, mode: str) -> dict[str, Any]:
    va, vb = _paired(results, a, b, task, mode)
    if not va:
        who = [m for m in (a, b) if _summary(results, m, task, mode) is None]
        why = f"{' and '.join(who)} not scored" if who else "no seed scored for both"
        return {"a": a, "b": b, "unpaired": why, "verdict": f"{a} vs {b}: not compared ({why})"}
    return paired_comparison(va, vb, names=(a, b))


def _strategy_pairs(results: dict[str, Any], strategies: list[str], task: str, mode: str) -> list[dict[str, Any]]:
    """Every pair of strategies on one task: ``all_pairs`` when all were scored on the same seeds
    (the normal case), else each pair on the seeds it shares."""
    scored = {s: _by_seed(_entry(results["models"][s], task, mode), results.get("seeds", [])) for s in strategies}
    if len({frozenset(v) for v in scored.values()}) == 1 and next(iter(scored.values())):
        seeds = list(next(iter(scored.values())))
        return all_pairs({s: [v[k] for k in seeds] for s, v in scored.items()})
    return [_compare(results, a, b, task, mode) for a, b in itertools.combinations(strategies, 2)]


def _shown_lists(done: list[tuple[str, dict[str, Any]]]) -> list[str]:
    shown = [f"- {task}: {c['verdict']}" for task, c in done if ": shown" in c["verdict"]]
    rest = [f"- {task}: {c['verdict']}" for task, c in done if ": shown" not in c["verdict"] and not c.get("unpaired")]
    skipped = [f"{task}: {c['a']} vs {c['b']} ({c['unpaired']})" for task, c in done if c.get("unpaired")]
    return (["**Shown** (the 95% interval of the paired difference excludes 0):", ""] + (shown or ["- nothing"])
            + ["", "**Not shown** (no evidence either way at this number of seeds; not evidence of equality):", ""]
            + (rest or ["- nothing"]) + [""] + (["Not compared: " + "; ".join(skipped) + ".", ""] if skipped else []))


def _pairs_section(results: dict[str, Any], mode: str) -> list[str]:
    models = results["models"]
    strategies = [n for n, m in models.items() if m.get("kind") == "strategy"]
    references = [n for n, m in models.items() if m.get("kind") == "reference"]
    lines: list[str] = []
    header = ["pair (a vs b)", "mean diff (a − b)", "95% CI", "p", "wins (a > b)", "verdict"]
    if len(strategies) >= 2:
        lines += [f"### Paired comparisons between strategies ({mode})", "",
                  "Seed i of both models saw the same split and seed, so each pair is judged on the per-seed "
                  "differences: a two-sided paired t-test and the 95% t interval of the mean difference.", ""]
        done = []
        for task in _tasks(results, mode):
            comps = _strategy_pairs(results, strategies, task, mode)
            done += [(task, c) for c in comps]
            lines += [f"#### {task}", ""] + _md_table(header, _pair_rows(comps)) + [""]
        lines += _shown_lists(done)
        tested = sum(1 for _, c in done if not c.get("unpaired"))
        lines += [f"{tested} comparison{'s' if tested != 1 else ''} with no correction for multiple comparisons: "
                  "at p < 0.05 about one in twenty differences that do not exist would still read as shown.", ""]
    if strategies and references:
        lines += [f"### What pre-training bought ({mode})", "",
                  "Each reference against the best strategy on that task (highest mean), paired by seed.", ""]
        done = []
        for task in _tasks(results, mode):
            means = {s: summ["mean"] for s in strategies if (summ := _summary(results, s, task, mode))}
            if not means:
                continue
            best = max(means, key=lambda s: means[s])  # ties: the first in display order
            comps = [_compare(results, best, r, task, mode) for r in references]
            done += [(task, c) for c in comps]
            lines += [f"#### {task} (best strategy: {best})", ""] + _md_table(header, _pair_rows(comps)) + [""]
        lines += _shown_lists(done)
    return lines


# --- plots ------------------------------------------------------------------------------------------

def _file_name(mode: str, task: str) -> str:
    return f"{mode}_{re.sub(r'[^A-Za-z0-9_.-]+', '_', task)}.png"


def _figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # lazy: matplotlib is slow to import
    from matplotlib.figure import Figure
    fig = Figure(figsize=(width, height), dpi=120, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _colours(results: dict[str, Any]) -> dict[str, tuple[Any, str]]:
    """Model -> (face colour, hatch): strategies in shades of blue, references grey and hatched."""
    from matplotlib import colormaps
    strategies = [n for n, m in results["models"].items() if m.get("kind") != "reference"]
    blues = colormaps["Blues"]
    shades = {n: blues(0.85 - 0.4 * i / max(1, len(strategies) - 1)) for i, n in enumerate(strategies)}
    return {n: (shades[n], "") if n in shades else ("0.78", "//") for n in results["models"]}


def draw_task(ax: Any, results: dict[str, Any], mode: str, task: str) -> None:
    """One (mode, task) panel: a bar per model at its mean, the 95% CI as a whisker (none with one
    seed), each seed as a dot, the majority baseline as a dashed line."""
    colours, names = _colours(results), list(results["models"])
    tops, bottoms, labels = [0.0], [0.0], []
    for x, name in enumerate(names):
        s = _summary(results, name, task, mode)
        if s is None:
            ax.text(x, 0.0, "n/a", ha="center", va="bottom", fontsize=8, color="0.4")
            continue
        face, hatch = colours[name]
        ax.bar(x, s["mean"], width=0.7, color=face, hatch=hatch, edgecolor="0.3", linewidth=0.8, zorder=2)
        top = max(s["values"] + [s["mean"]])
        if s["ci95"] is not None:
            lo, hi = s["ci95"]
            ax.errorbar([x], [s["mean"]], yerr=[[s["mean"] - lo], [hi - s["mean"]]], fmt="none", ecolor="black",
                        capsize=4, linewidth=1.2, zorder=4)
            top, bottoms = max(top, hi), bottoms + [lo]
        offsets = [0.0] if s["n"] == 1 else [-0.2 + 0.4 * i / (s["n"] - 1) for i in range(s["n"])]
        ax.scatter([x + o for o in offsets], s["values"], s=14, color="black", edgecolors="white", linewidths=0.5,
                   zorder=5)
        labels.append((x, top, s["mean"]))
        tops.append(top)
        bottoms += s["values"]
    for baseline in _fact(results, task, mode, "majority_baseline"):
        ax.axhline(baseline, color="tab:red", linestyle="--", linewidth=1.0, zorder=3)
        tops.append(baseline)
    span = (max(tops) - min(bottoms)) or 1.0
    for x, top, mean in labels:
        ax.text(x, top + 0.02 * span, f"{mean:.3f}", ha="center", va="bottom", fontsize=7)
    ax.set_xlim(-0.6, len(names) - 0.4)  # keeps a trailing model without a bar (n/a) in view
    ax.set_ylim(min(bottoms) - (0.05 * span if min(bottoms) < 0 else 0.0), max(tops) + 0.14 * span)
    ax.set_xticks(range(len(names)), names, rotation=20 if max(map(len, names)) > 10 else 0,
                  ha="right" if max(map(len, names)) > 10 else "center", fontsize=8)
    ax.set_ylabel(_metric(results, task, mode))
    ax.set_title(f"{task} ({mode})", fontsize=10)


def _legend(fig: Any, results: dict[str, Any], width: float) -> None:
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch
    kinds, colours = [m.get("kind") for m in results["models"].values()], _colours(results)
    handles = [Patch(facecolor=colours[n][0], edgecolor="0.3", label="strategy")
               for n, kind in zip(results["models"], kinds) if kind != "reference"][:1]
    if "reference" in kinds:
        handles.append(Patch(facecolor="0.78", hatch="//", edgecolor="0.3", label="reference"))
    handles += [Line2D([], [], color="black", marker="o", linestyle="none", markersize=4, label="each seed")]
    if len(results.get("seeds", [])) > 1:
        handles.append(Line2D([], [], color="black", marker="_", markersize=10, linestyle="-", label="95% CI"))
    handles.append(Line2D([], [], color="tab:red", linestyle="--", label="majority baseline"))
    ncol = max(1, min(len(handles), int(width / 1.3)))  # wrap rather than overflow a narrow figure
    fig.legend(handles=handles, loc="outside lower center", ncol=ncol, fontsize=7, frameon=False)


def _plot(results: dict[str, Any], panels: list[tuple[str, str]], path: Path, title: str | None = None) -> None:
    ncols = min(3, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    width = max(4.2, 0.8 * len(results["models"]) + 1.6)
    fig = _figure(width * ncols, 3.4 * nrows + 0.6)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, (mode, task) in zip(axes, panels):
        draw_task(ax, results, mode, task)
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    if title:
        fig.suptitle(title)
    _legend(fig, results, width * ncols)
    fig.savefig(path)


# --- the report -------------------------------------------------------------------------------------

def _header(results: dict[str, Any]) -> list[str]:
    seeds = results.get("seeds", [])
    lines = [f"# {results.get('title', 'Downstream suite')}", "", "## What was run", "",
             f"- Seeds: {', '.join(map(str, seeds))} "
             + ("(one seed: no spread, intervals or tests)" if len(seeds) == 1 else f"({len(seeds)} seeds)"),
             "- Models (display order):"]
    lines += [f"  - **{n}** ({m.get('kind', '?')}): `{m.get('source', 'n/a')}`" for n, m in results["models"].items()]
    commands = results.get("commands") or []
    lines += ["- Commands:"] + [f"  - `{c}`" for c in commands] if commands else ["- Commands: n/a"]
    lines.append(f"- Machine: {results.get('machine', 'n/a')}")
    wall = results.get("wall_time_s")
    lines += [f"- Wall time: {wall:.0f} s ({wall / 60:.1f} min)" if wall is not None else "- Wall time: n/a", ""]
    return lines


def _task_table(results: dict[str, Any]) -> list[str]:
    modes = _modes(results)
    tasks = list(dict.fromkeys(list(results.get("tasks", {})) + [t for m in modes for t in _tasks(results, m)]))
    rows = []
    for t in tasks:
        info = results.get("tasks", {}).get(t, {})
        sizes = {}
        for key in ("train_size", "dev_size"):
            per_mode = {m: _joined(_fact(results, t, m, key), "{}") for m in modes if _fact(results, t, m, key)}
            # the same in every mode: say it once
            sizes[key] = ("n/a" if not per_mode else next(iter(per_mode.values())) if len(set(per_mode.values())) == 1
                          else "; ".join(f"{m}: {v}" for m, v in per_mode.items()))
        rows.append([t, info.get("description", "n/a"), info.get("licence", "n/a"), sizes["train_size"],
                     sizes["dev_size"], _in_corpus(results, t)])
    return ["## Tasks", ""] + _md_table(["task", "description", "licence", "train size", "dev size",
                                          "in pre-training corpus"], rows) + [""]


def write_suite_report(results: dict[str, Any], out_dir: Path, pairs: bool = True) -> Path:
    """Write ``out_dir/report.md``, ``out_dir/<mode>_<task>.png`` per (mode, task) and
    ``out_dir/suite.png`` (every panel in one figure); returns the report's path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    panels = [(mode, task) for mode in _modes(results) for task in _tasks(results, mode)]
    lines = _header(results)
    if panels:
        n = len(results.get("seeds", []))
        spread = "one seed" if n == 1 else f"bars: mean over {n} seeds, whiskers: 95% CI"
        _plot(results, panels, out_dir / "suite.png", title=f"{results.get('title', 'Downstream suite')} ({spread})")
        lines += ["![every task and mode](suite.png)", ""]
    for mode in _modes(results):
        lines += [f"## {MODE_TITLES.get(mode, mode)}", "", suite_table(results, mode), "", _note(results, mode), ""]
        for task in _tasks(results, mode):
            _plot(results, [(mode, task)], out_dir / _file_name(mode, task))
            lines += [f"![{task} ({mode})]({_file_name(mode, task)})", ""]
        if pairs:
            lines += _pairs_section(results, mode)
    lines += _task_table(results)
    report = out_dir / "report.md"
    report.write_text("\n".join(lines).rstrip() + "\n", encoding="utf-8")
    return report
