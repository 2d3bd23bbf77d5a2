"""The downstream-suite report: ``report.md``, a Markdown/terminal table per mode, and bar charts.

Input is a suite-results dict (``ernie-cl bench``): ``{"title", "seeds", "models": {name: {"kind":
"strategy" | "reference", "source", "tasks": {task: {mode: {"metric_name", "values", "train_size",
"dev_size", "majority_baseline", ...}}}}}, "tasks": {task: {"description", "licence",
"in_pretraining_corpus"}}, "machine", "commands", "wall_time_s"}``. Model order is display order.

A cell is ``mean ± std [95% CI]`` over seeds (``stats.summarize_scores``); one seed shows the value
alone. Models are compared seed by seed (``stats.paired_comparison``): values are paired by the
entries' ``"seeds"`` lists when both have one, else by position. Reading the dict is in
``bench_results``, the bar charts in ``bench_plots``.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

from ernie_cl.evaluation.bench_plots import plot_file_name, plot_panels
from ernie_cl.evaluation.bench_results import (metric_name, model_summary, suite_entry, suite_modes, suite_tasks,
                                               task_fact, values_by_seed)
from ernie_cl.evaluation.stats import all_pairs, format_p, paired_comparison
MODE_TITLES = {"probe": "Linear probe (frozen features, logistic regression)",
               "finetune": "Fine-tuning (whole encoder plus a fresh head)"}
TEXT_ONLY = "yes: its texts (not labels) are in the pre-training corpus"


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
    tasks, n = suite_tasks(results, mode), len(results.get("seeds", []))
    marked = {t: " †" if _in_corpus(results, t).startswith("yes") else "" for t in tasks}
    header = ["model", "kind"] + [f"{t} ({metric_name(results, t, mode)}){marked[t]}" for t in tasks]
    rows = [[name, m.get("kind", "?")] + [_cell(model_summary(results, name, t, mode), n) for t in tasks]
            for name, m in results["models"].items()]
    sizes = []
    for t in tasks:
        train, dev = task_fact(results, t, mode, "train_size"), task_fact(results, t, mode, "dev_size")
        sizes.append(f"{_joined(train, '{}')} / {_joined(dev, '{}')}")
    baselines = [_joined(task_fact(results, t, mode, "majority_baseline"), "{:.3f}") for t in tasks]
    footer = [["majority baseline", ""] + baselines, ["train / dev size", ""] + sizes]
    return header, rows, footer


def _note(results: dict[str, Any], mode: str) -> str:
    n = len(results.get("seeds", []))
    text = ("One seed: each cell is that seed's value; no spread, interval or test is possible." if n == 1 else
            f"Cells: mean ± sample std (ddof=1) [95% Student t interval] over {n} seeds; (n=k) marks fewer seeds.")
    if any(_in_corpus(results, t).startswith("yes") for t in suite_tasks(results, mode)):
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
    va, vb = values_by_seed(suite_entry(models[a], task, mode), seeds), values_by_seed(suite_entry(models[b], task, mode), seeds)
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
        who = [m for m in (a, b) if model_summary(results, m, task, mode) is None]
        why = f"{' and '.join(who)} not scored" if who else "no seed scored for both"
        return {"a": a, "b": b, "unpaired": why, "verdict": f"{a} vs {b}: not compared ({why})"}
    return paired_comparison(va, vb, names=(a, b))


def _strategy_pairs(results: dict[str, Any], strategies: list[str], task: str, mode: str) -> list[dict[str, Any]]:
    """Every pair of strategies on one task: ``all_pairs`` when all were scored on the same seeds
    (the normal case), else each pair on the seeds it shares."""
    scored = {s: values_by_seed(suite_entry(results["models"][s], task, mode), results.get("seeds", [])) for s in strategies}
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
    strategies = [n for n, m in models.items() if m.get("kind") != "reference"]  # compare's strategies or bench's models
    plural = "strategies" if all(models[n].get("kind") == "strategy" for n in strategies) else "models"
    references = [n for n, m in models.items() if m.get("kind") == "reference"]
    lines: list[str] = []
    header = ["pair (a vs b)", "mean diff (a − b)", "95% CI", "p", "wins (a > b)", "verdict"]
    if len(strategies) >= 2:
        lines += [f"### Paired comparisons between {plural} ({mode})", "",
                  "Seed i of both models saw the same split and seed, so each pair is judged on the per-seed "
                  "differences: a two-sided paired t-test and the 95% t interval of the mean difference.", ""]
        done = []
        for task in suite_tasks(results, mode):
            comps = _strategy_pairs(results, strategies, task, mode)
            done += [(task, c) for c in comps]
            lines += [f"#### {task}", ""] + _md_table(header, _pair_rows(comps)) + [""]
        lines += _shown_lists(done)
        tested = sum(1 for _, c in done if not c.get("unpaired"))
        lines += [f"{tested} comparison{'s' if tested != 1 else ''} with no correction for multiple comparisons: "
                  "at p < 0.05 about one in twenty differences that do not exist would still read as shown.", ""]
    if strategies and references:
        lines += [f"### What pre-training bought ({mode})", "",
                  f"Each reference against the best of the {plural} on that task (highest mean), paired by seed.", ""]
        done = []
        for task in suite_tasks(results, mode):
            means = {s: summ["mean"] for s in strategies if (summ := model_summary(results, s, task, mode))}
            if not means:
                continue
            best = max(means, key=lambda s: means[s])  # ties: the first in display order
            comps = [_compare(results, best, r, task, mode) for r in references]
            done += [(task, c) for c in comps]
            lines += [f"#### {task} (best {'strategy' if plural == 'strategies' else 'model'}: {best})", ""] + _md_table(header, _pair_rows(comps)) + [""]
        lines += _shown_lists(done)
    return lines


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
    modes = suite_modes(results)
    tasks = list(dict.fromkeys(list(results.get("tasks", {})) + [t for m in modes for t in suite_tasks(results, m)]))
    rows = []
    for t in tasks:
        info = results.get("tasks", {}).get(t, {})
        sizes = {}
        for key in ("train_size", "dev_size"):
            per_mode = {m: _joined(task_fact(results, t, m, key), "{}") for m in modes if task_fact(results, t, m, key)}
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
    panels = [(mode, task) for mode in suite_modes(results) for task in suite_tasks(results, mode)]
    lines = _header(results)
    if panels:
        n = len(results.get("seeds", []))
        spread = "one seed" if n == 1 else f"bars: mean over {n} seeds, whiskers: 95% CI"
        plot_panels(results, panels, out_dir / "suite.png", title=f"{results.get('title', 'Downstream suite')} ({spread})")
        lines += ["![every task and mode](suite.png)", ""]
    for mode in suite_modes(results):
        lines += [f"## {MODE_TITLES.get(mode, mode)}", "", suite_table(results, mode), "", _note(results, mode), ""]
        for task in suite_tasks(results, mode):
            plot_panels(results, [(mode, task)], out_dir / plot_file_name(mode, task))
            lines += [f"![{task} ({mode})]({plot_file_name(mode, task)})", ""]
        if pairs:
            lines += _pairs_section(results, mode)
    lines += _task_table(results)
    report = out_dir / "report.md"
    report.write_text("\n".join(lines).rstrip() + "\n", encoding="utf-8")
    return report
