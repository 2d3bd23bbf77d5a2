"""The downstream-suite plots: a bar per model at its mean, 95% CI whiskers, a dot per seed and the
majority baseline, one panel per (mode, task). matplotlib's Agg canvas is used directly (no pyplot
state), as ``report.py`` does, so reports can be written without a display."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

from ernie_cl.evaluation.bench_results import metric_name, model_summary, task_fact


def plot_file_name(mode: str, task: str) -> str:
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
        s = model_summary(results, name, task, mode)
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
    for baseline in task_fact(results, task, mode, "majority_baseline"):
        ax.axhline(baseline, color="tab:red", linestyle="--", linewidth=1.0, zorder=3)
        tops.append(baseline)
    span = (max(tops) - min(bottoms)) or 1.0
    for x, top, mean in labels:
        ax.text(x, top + 0.02 * span, f"{mean:.3f}", ha="center", va="bottom", fontsize=7)
    ax.set_xlim(-0.6, len(names) - 0.4)  # keeps a trailing model without a bar (n/a) in view
    ax.set_ylim(min(bottoms) - (0.05 * span if min(bottoms) < 0 else 0.0), max(tops) + 0.14 * span)
    ax.set_xticks(range(len(names)), names, rotation=20 if max(map(len, names)) > 10 else 0,
                  ha="right" if max(map(len, names)) > 10 else "center", fontsize=8)
    ax.set_ylabel(metric_name(results, task, mode))
    ax.set_title(f"{task} ({mode})", fontsize=10)


def _legend(fig: Any, results: dict[str, Any], width: float) -> None:
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch
    kinds, colours = [m.get("kind") for m in results["models"].values()], _colours(results)
    handles = [Patch(facecolor=colours[n][0], edgecolor="0.3", label=kind or "model")
               for n, kind in zip(results["models"], kinds) if kind != "reference"][:1]
    if "reference" in kinds:
        handles.append(Patch(facecolor="0.78", hatch="//", edgecolor="0.3", label="reference"))
    handles += [Line2D([], [], color="black", marker="o", linestyle="none", markersize=4, label="each seed")]
    if len(results.get("seeds", [])) > 1:
        handles.append(Line2D([], [], color="black", marker="_", markersize=10, linestyle="-", label="95% CI"))
    handles.append(Line2D([], [], color="tab:red", linestyle="--", label="majority baseline"))
    ncol = max(1, min(len(handles), int(width / 1.3)))  # wrap rather than overflow a narrow figure
    fig.legend(handles=handles, loc="outside lower center", ncol=ncol, fontsize=7, frameon=False)


def plot_panels(results: dict[str, Any], panels: list[tuple[str, str]], path: Path, title: str | None = None) -> None:
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
