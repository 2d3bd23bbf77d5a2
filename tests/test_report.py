"""The comparison report on a synthetic results.json: mean ± std cells worked out by hand, the
rankings, the seed-spread verdicts, the accuracy-matrix tables, and valid PNG plots."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from ernie_cl.evaluation.continual_metrics import summarize
from ernie_cl.evaluation.report import format_mean_std, mean_std, rank, spread_verdict, write_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
TASKS = ["km", "cap"]


def run(R: list[list[float]], probe: float, wall: float, stages: list[list[str]] | None = None) -> dict[str, Any]:
    """One seed's entry; the metrics block is stored only when ``stages`` is given (else recomputed)."""
    out = {"run_dir": "runs/x", "R": R, "R_init": [0.10, 0.50], "baselines": {"km": 0.10, "cap": 0.50},
           "metric_names": {"km": "accuracy", "cap": "accuracy"},
           "downstream": {"pang_lee_probe": {"accuracy": probe, "std": 0.01, "folds": 5},
                          "mrpc": {"metric_name": "f1", "value": 0.75}},
           "wall_time_s": wall, "tokens_seen": 1_000_000,
           "loss_curve": [[s, 5.0 - 0.01 * s + 0.1 * (s % 3)] for s in range(0, 60, 2)]}
    if stages is not None:
        out["metrics"] = summarize(R, stages, TASKS)
    return out


def make_results() -> dict[str, Any]:
    seq_stages = [{"name": "km", "tasks": ["km"], "steps": 20}, {"name": "km+cap", "tasks": ["km", "cap"], "steps": 40}]
    con_stages = [{"name": "km", "tasks": ["km"], "steps": 30}, {"name": "cap", "tasks": ["cap"], "steps": 30}]
    seq = [s["tasks"] for s in seq_stages]
    return {
        "schedule": "schedules/demo.yaml", "tasks": TASKS, "seeds": [0, 1], "balancing": "fixed", "extra_key": 1,
        "strategies": {
            "sequential": {"stages": seq_stages, "budgets": {"km": 30, "cap": 30}, "total_steps": 60, "runs": {
                "0": run([[0.50, 0.40], [0.60, 0.80]], probe=0.80, wall=100.0, stages=seq),
                "1": run([[0.52, 0.42], [0.62, 0.84]], probe=0.82, wall=110.0, stages=seq)}},
            "continual": {"stages": con_stages, "budgets": {"km": 30, "cap": 30}, "total_steps": 60, "runs": {
                "0": run([[0.70, 0.30], [0.50, 0.90]], probe=0.90, wall=90.0),
                "1": run([[0.72, 0.30], [0.48, 0.92]], probe=0.91, wall=90.0)}},
        },
    }


@pytest.fixture(scope="module")
def two_seeds(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, list[Path]]:
    out = tmp_path_factory.mktemp("two_seeds")
    paths = write_report(make_results(), out)
    return (out / "report.md").read_text(encoding="utf-8"), paths


def test_mean_std_uses_sample_std_and_formats_one_seed_as_mean_only():
    assert mean_std([1.0, 2.0, 3.0]) == (2.0, 1.0)  # ddof=1: sqrt(((1)^2 + 0 + (1)^2) / 2) = 1
    assert mean_std([0.5]) == (0.5, None)
    assert format_mean_std([0.60, 0.62]) == "0.610 ± 0.014"  # std = 0.02 / sqrt(2) = 0.01414
    assert format_mean_std([0.7]) == "0.700"
    assert format_mean_std([float("nan"), None]) == "n/a"


def test_spread_verdict_rule_is_strict_and_needs_two_seeds():
    # means 0.5 and 0.8, stds 0.1 each: |0.3| > 0.2
    assert spread_verdict([0.4, 0.6], [0.7, 0.9]) == "exceeds"
    # means 0.5 and 0.6, stds 0.1 each: |0.1| < 0.2
    assert spread_verdict([0.4, 0.6], [0.5, 0.7]) == "within seed spread"
    assert spread_verdict([0.5], [0.9]) == "no seed spread (one seed)"
    assert [name for name, _ in rank({"a": [0.5], "b": [0.7], "c": [float("nan")]})] == ["b", "a", "c"]


def test_header_shows_command_seeds_and_equal_budgets(two_seeds):
    text, _ = two_seeds
    assert "--seeds 2 --strategies sequential,continual" in text
    assert "- Seeds: 0, 1 (2)" in text
    assert "- Tasks (held-out metric): km (accuracy), cap (accuracy)" in text
    assert "| sequential | 2 | 60 | 30 | 30 |" in text
    assert "| continual | 2 | 60 | 30 | 30 |" in text
    assert "Per-task budgets are equal across strategies." in text


def test_main_table_rows_hold_mean_and_std_over_seeds(two_seeds):
    text, _ = two_seeds
    assert ("| strategy | average final | BWT | mean forgetting | km final | cap final | pang_lee_probe accuracy "
            "| mrpc f1 | wall time (s) | tokens seen |") in text
    # sequential: average final (0.70, 0.73); BWT 0 (every task trains to the end);
    # forgetting of km: 0.50 - 0.60 = 0.52 - 0.62 = -0.10; km (0.60, 0.62); cap (0.80, 0.84);
    # probe (0.80, 0.82); wall (100, 110): std 10 / sqrt(2) = 7.07
    assert ("| sequential | 0.715 ± 0.021 | 0.000 ± 0.000 | -0.100 ± 0.000 | 0.610 ± 0.014 | 0.820 ± 0.028 "
            "| 0.810 ± 0.014 | 0.750 ± 0.000 | 105.0 ± 7.1 | 1,000,000 ± 0 |") in text
    # continual (metrics recomputed from R): average (0.70, 0.70); BWT (0.50 - 0.70, 0.48 - 0.72) = (-0.20, -0.24);
    # forgetting of km (0.20, 0.24); km (0.50, 0.48); cap (0.90, 0.92); probe (0.90, 0.91)
    assert ("| continual | 0.700 ± 0.000 | -0.220 ± 0.028 | 0.220 ± 0.028 | 0.490 ± 0.014 | 0.910 ± 0.014 "
            "| 0.905 ± 0.007 | 0.750 ± 0.000 | 90.0 ± 0.0 | 1,000,000 ± 0 |") in text


def test_rankings_and_seed_spread_verdicts(two_seeds):
    text, _ = two_seeds
    assert "By average final: sequential (0.715) > continual (0.700)" in text
    assert "By pang_lee_probe accuracy: continual (0.905) > sequential (0.810)" in text
    assert "|mean_a − mean_b| > std_a + std_b" in text
    # average final: |0.715 - 0.700| = 0.015 < 0.021 + 0.000; probe: |0.810 - 0.905| = 0.095 > 0.014 + 0.007
    assert "| sequential vs continual | +0.015: within seed spread | -0.095: exceeds |" in text
    assert "no seed spread" not in text


def test_accuracy_matrix_tables_show_seed_means_and_baselines(two_seeds):
    text, _ = two_seeds
    assert "| stage | trains | end step | km | cap |" in text
    assert "| before training |  | 0 | 0.100 | 0.500 |" in text
    assert "| km | km | 20 | **0.510** | 0.410 |" in text  # (0.50 + 0.52) / 2, (0.40 + 0.42) / 2
    assert "| km+cap | km+cap | 60 | **0.610** | **0.820** |" in text
    assert "| cap | cap | 60 | 0.490 | **0.910** |" in text
    assert "| trivial baseline |  |  | 0.100 | 0.500 |" in text
    assert "![sequential accuracy matrix](heatmap_sequential.png)" in text


def test_plots_are_valid_pngs_linked_from_the_report(two_seeds):
    text, paths = two_seeds
    out = paths[0].parent
    assert [p.name for p in paths] == ["report.md", "heatmap_sequential.png", "heatmap_continual.png",
                                       "task_metrics_across_stages.png", "loss_curves.png"]
    for png in paths[1:]:
        data = png.read_bytes()
        assert data[:8] == PNG_MAGIC and len(data) > 5_000, png.name
        assert f"]({png.name})" in text
    assert (out / "report.md") == paths[0]


def test_one_seed_report_shows_means_only_and_no_spread(tmp_path: Path):
    results = make_results()
    results["seeds"] = [0]
    for strategy in results["strategies"].values():
        strategy["runs"] = {"0": strategy["runs"]["0"]}
        for r in strategy["runs"].values():
            del r["loss_curve"], r["R_init"]  # optional keys
    # a one-stage joint strategy with a different budget
    joint = copy.deepcopy(results["strategies"]["continual"])
    joint.update(stages=[{"name": "km+cap", "tasks": TASKS, "steps": 70}], budgets={"km": 35, "cap": 35},
                 total_steps=70)
    joint["runs"]["0"]["R"] = [[0.65, 0.85]]
    del joint["runs"]["0"]["baselines"]  # optional: its heatmap then shows the raw metric
    results["strategies"]["joint"] = joint
    paths = write_report(results, tmp_path)
    text = paths[0].read_text(encoding="utf-8")
    assert "| sequential | 0.700 | 0.000 | -0.100 | 0.600 | 0.800 | 0.800 | 0.750 | 100.0 | 1,000,000 |" in text
    assert "| joint | 0.750 | 0.000 | 0.000 | 0.650 | 0.850 | 0.900 | 0.750 | 90.0 | 1,000,000 |" in text
    assert "With one seed no seed spread is available" in text
    assert "| sequential vs joint | -0.050: no seed spread (one seed) | -0.100: no seed spread (one seed) |" in text
    assert "By average final: joint (0.750) > sequential (0.700) > continual (0.700)" in text
    assert "Per-task budgets differ across strategies" in text
    assert text.count("| trivial baseline |") == 2  # sequential and continual; joint has none
    assert "before training" not in text and not (tmp_path / "loss_curves.png").exists()
    assert [p.name for p in paths[1:]] == ["heatmap_sequential.png", "heatmap_continual.png", "heatmap_joint.png",
                                           "task_metrics_across_stages.png"]
    assert all(p.read_bytes()[:8] == PNG_MAGIC for p in paths[1:])
