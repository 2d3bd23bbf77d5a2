"""The downstream-suite report on hand-made results: table cells (mean ± std [95% CI]) worked out by
hand, the same numbers in the terminal table, "n/a" for a missing task, the paired verdicts (one pair
shown, one not), the in-pre-training-corpus marking, one-seed rendering, and valid PNG plots."""

from __future__ import annotations

import math
import statistics
import struct
from pathlib import Path
from typing import Any

import pytest

from ernie_cl.evaluation.bench_plots import draw_task
from ernie_cl.evaluation.bench_report import print_suite_table, suite_table, write_suite_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
T_975_DF2 = 4.302653  # Student t 0.975 quantile, 2 degrees of freedom (tables)


def entry(values: list[float], train: int = 10200, dev: int = 2608, base: float = 0.5) -> dict[str, Any]:
    return {"metric_name": "accuracy", "values": values, "train_size": train, "dev_size": dev, "seconds": 1.0,
            "majority_baseline": base}


def make_results() -> dict[str, Any]:
    """rt_polarity: sequential beats joint on every seed by ~0.09 (shown); subj: mixed signs (not shown);
    random init has no subj score; joint was not fine-tuned."""
    return {
        "title": "Downstream suite", "seeds": [0, 1, 2],
        "models": {
            "sequential": {"kind": "strategy", "source": "runs/cmp/runs/sequential/seed-0", "tasks": {
                "rt_polarity": {"probe": entry([0.80, 0.82, 0.84]), "finetune": entry([0.85, 0.86, 0.87], train=2000)},
                "subj": {"probe": entry([0.70, 0.75, 0.72], train=8000, dev=2000, base=0.51)}}},
            "joint": {"kind": "strategy", "source": "runs/cmp/runs/joint/seed-0", "tasks": {
                "rt_polarity": {"probe": entry([0.70, 0.73, 0.75])},
                "subj": {"probe": entry([0.72, 0.71, 0.73], train=8000, dev=2000, base=0.51)}}},
            "random init": {"kind": "reference", "source": "random weights (seeded)", "tasks": {
                "rt_polarity": {"probe": entry([0.55, 0.58, 0.56]),
                                "finetune": entry([0.60, 0.61, 0.59], train=2000)}}},
        },
        "tasks": {"rt_polarity": {"description": "movie-review polarity", "licence": "research use",
                                  "in_pretraining_corpus": "text only (no labels)"},
                  "subj": {"description": "subjective vs objective sentences", "licence": "research use",
                           "in_pretraining_corpus": False}},
        "machine": "2 CPU cores (test)", "commands": ["ernie-cl bench runs/cmp --seeds 3"], "wall_time_s": 150.0,
    }


def one_seed_results() -> dict[str, Any]:
    results = make_results()
    results["seeds"] = [0]
    for model in results["models"].values():
        for modes in model["tasks"].values():
            for e in modes.values():
                e["values"] = e["values"][:1]
    return results


def by_hand(values: list[float]) -> str:
    """mean ± std [mean ∓ t·std/√n] with the tabled t quantile (3 seeds)."""
    mean, std = statistics.fmean(values), statistics.stdev(values)
    half = T_975_DF2 * std / math.sqrt(len(values))
    return f"{mean:.3f} ± {std:.3f} [{mean - half:.3f}, {mean + half:.3f}]"


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    out = tmp_path_factory.mktemp("suite")
    path = write_suite_report(make_results(), out)
    return path.read_text(encoding="utf-8"), out


def test_markdown_cells_are_mean_std_and_t_interval_worked_out_by_hand():
    table = suite_table(make_results(), "probe")
    # sequential: mean 0.82, std 0.02, half-width 4.302653 * 0.02 / sqrt(3) = 0.0497
    assert by_hand([0.80, 0.82, 0.84]) == "0.820 ± 0.020 [0.770, 0.870]"
    # joint: mean 0.72667, std sqrt(0.0012667 / 2) = 0.02517, half-width 0.0625
    assert by_hand([0.70, 0.73, 0.75]) == "0.727 ± 0.025 [0.664, 0.789]"
    rows = {line.split(" | ")[0].strip("| *"): line for line in table.splitlines()}
    assert rows["sequential"] == ("| sequential | strategy | 0.820 ± 0.020 [0.770, 0.870] | "
                                  f"{by_hand([0.70, 0.75, 0.72])} |")
    assert rows["joint"] == f"| joint | strategy | 0.727 ± 0.025 [0.664, 0.789] | {by_hand([0.72, 0.71, 0.73])} |"
    assert rows["random init"] == f"| random init | reference | {by_hand([0.55, 0.58, 0.56])} | n/a |"
    assert table.splitlines()[0] == "| model | kind | rt_polarity (accuracy) † | subj (accuracy) |"


def test_last_rows_give_majority_baselines_and_train_dev_sizes():
    lines = suite_table(make_results(), "probe").splitlines()
    assert lines[-2] == "| *majority baseline* |  | 0.500 | 0.510 |"
    assert lines[-1] == "| *train / dev size* |  | 10200 / 2608 | 8000 / 2000 |"


def test_terminal_table_has_the_same_numbers_aligned_without_pipes():
    text = print_suite_table(make_results(), "probe")
    assert "|" not in text
    lines = text.splitlines()
    seq = next(line for line in lines if line.startswith("sequential"))
    assert seq.split("  ")[0] == "sequential"
    assert "0.820 ± 0.020 [0.770, 0.870]" in seq and by_hand([0.70, 0.75, 0.72]) in seq
    joint = next(line for line in lines if line.startswith("joint"))
    # columns line up: every cell starts at the same offset as its header
    header = next(line for line in lines if line.startswith("model"))
    assert seq.index("0.820") == joint.index("0.727") == header.index("rt_polarity")
    assert next(line for line in lines if line.startswith("random init")).endswith("n/a")
    assert any(line.startswith("majority baseline") and "0.500" in line and "0.510" in line for line in lines)


def test_a_model_missing_a_task_renders_na():
    finetune = suite_table(make_results(), "finetune").splitlines()
    assert "| joint | strategy | n/a |" in finetune
    assert f"| sequential | strategy | {by_hand([0.85, 0.86, 0.87])} |" in finetune


def test_report_states_shown_and_not_shown_pairs_with_the_stats_verdicts(report: tuple[str, Path]):
    text, _ = report
    # rt_polarity: d = [0.10, 0.09, 0.09], t = 28 with 2 df -> p = 1 - 28 / sqrt(786) = 0.00127
    assert ("| sequential vs joint | +0.093 | [+0.079, +0.108] | 0.0013 | 3/3 | "
            "sequential > joint: shown (p=0.0013, 3 seeds) |") in text
    # subj: d = [-0.02, 0.04, -0.01], t = 0.18 -> p = 0.87
    assert "- subj: sequential vs joint: not shown at this scale (p=0.87, 3 seeds)" in text
    shown = text.index("**Shown**")
    not_shown = text.index("**Not shown**", shown)
    assert shown < text.index("- rt_polarity: sequential > joint: shown (p=0.0013, 3 seeds)", shown) < not_shown


def test_report_compares_each_reference_with_the_best_strategy(report: tuple[str, Path]):
    text, _ = report
    # best on rt_polarity probe: sequential (0.820); d = [0.25, 0.24, 0.28]: mean 0.25667, std 0.020817
    t = (0.77 / 3) / (math.sqrt(0.00086667 / 2) / math.sqrt(3))
    assert 1 - t / math.sqrt(2 + t * t) == pytest.approx(0.0022, abs=5e-5)
    assert "#### rt_polarity (best strategy: sequential)" in text
    assert "sequential > random init: shown (p=0.0022, 3 seeds)" in text
    assert "subj: sequential vs random init (random init not scored)" in text
    assert "sequential vs joint (joint not scored)" in text  # fine-tuning: joint has no score


def test_report_says_what_was_run_and_marks_tasks_in_the_pretraining_corpus(report: tuple[str, Path]):
    text, _ = report
    assert text.startswith("# Downstream suite\n")
    assert "- Seeds: 0, 1, 2 (3 seeds)" in text and "  - `ernie-cl bench runs/cmp --seeds 3`" in text
    assert "- Machine: 2 CPU cores (test)" in text and "- Wall time: 150 s (2.5 min)" in text
    assert "  - **random init** (reference): `random weights (seeded)`" in text
    assert ("| rt_polarity | movie-review polarity | research use | probe: 10200; finetune: 2000 | 2608 | "
            "yes: its texts (not labels) are in the pre-training corpus |") in text
    assert "| subj | subjective vs objective sentences | research use | 8000 | 2000 | no |" in text


def test_report_links_a_valid_png_per_mode_and_task_plus_the_suite_figure(report: tuple[str, Path]):
    text, out = report
    for name in ("probe_rt_polarity.png", "probe_subj.png", "finetune_rt_polarity.png"):
        assert f"![{name[:-4].split('_', 1)[1]} ({name.split('_')[0]})]({name})" in text
        assert png_size(out / name) == (504, 480)  # (4.2 in, 4.0 in) at 120 dpi
        assert (out / name).stat().st_size > 10_000
    assert "![every task and mode](suite.png)" in text
    assert png_size(out / "suite.png") == (3 * 504, 480)  # three panels side by side
    assert not (out / "finetune_subj.png").exists()  # no model fine-tuned on subj


def test_one_seed_renders_values_without_intervals_and_says_so(tmp_path: Path):
    results = one_seed_results()
    table = suite_table(results, "probe")
    assert "| sequential | strategy | 0.800 | 0.700 |" in table and "±" not in table and "[" not in table
    assert "One seed" in print_suite_table(results, "probe")
    text = write_suite_report(results, tmp_path).read_text(encoding="utf-8")
    assert "- Seeds: 0 (one seed: no spread, intervals or tests)" in text
    assert "sequential vs joint: not testable with one seed" in text
    assert "±" not in text
    assert png_size(tmp_path / "probe_rt_polarity.png") == (504, 480)


def test_panel_draws_a_whisker_only_with_two_or_more_seeds_and_a_dot_per_seed():
    from matplotlib.collections import PathCollection
    from matplotlib.container import ErrorbarContainer
    from matplotlib.figure import Figure

    for results, whiskers, dots in ((make_results(), 3, 9), (one_seed_results(), 0, 3)):
        ax = Figure().add_subplot()
        draw_task(ax, results, "probe", "rt_polarity")
        bars = [p.get_height() for p in ax.patches]
        assert bars == pytest.approx([statistics.fmean(m["tasks"]["rt_polarity"]["probe"]["values"])
                                      for m in results["models"].values()])
        assert sum(isinstance(c, ErrorbarContainer) for c in ax.containers) == whiskers
        assert sum(len(c.get_offsets()) for c in ax.collections if isinstance(c, PathCollection)) == dots
        assert [tuple(line.get_ydata()) for line in ax.lines if line.get_linestyle() == "--"] == [(0.5, 0.5)]
        assert ax.get_ylabel() == "accuracy" and ax.get_title() == "rt_polarity (probe)"
    ax = Figure().add_subplot()
    draw_task(ax, make_results(), "probe", "subj")  # random init has no subj score: no bar, an "n/a" mark
    assert len(ax.patches) == 2 and [t.get_text() for t in ax.texts].count("n/a") == 1


def test_seeds_are_paired_by_id_not_by_position(tmp_path: Path):
    results = make_results()
    joint = results["models"]["joint"]["tasks"]["rt_polarity"]["probe"]
    joint["seeds"], joint["values"] = [2, 1, 0], joint["values"][::-1]  # same scores, listed backwards
    for model in ("sequential", "random init"):
        results["models"][model]["tasks"]["rt_polarity"]["probe"]["seeds"] = [0, 1, 2]
    text = write_suite_report(results, tmp_path).read_text(encoding="utf-8")
    assert "sequential > joint: shown (p=0.0013, 3 seeds)" in text


def test_no_pairs_leaves_the_comparisons_out(tmp_path: Path):
    text = write_suite_report(make_results(), tmp_path, pairs=False).read_text(encoding="utf-8")
    assert "Paired comparisons" not in text and "What pre-training bought" not in text
    assert "0.820 ± 0.020 [0.770, 0.870]" in text
