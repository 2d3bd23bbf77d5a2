"""Continual-learning metrics against numbers worked out by hand: continual, joint, ERNIE-style
sequential and a positive-transfer case, stages before a task's first training excluded, NaN entries."""

from __future__ import annotations

import math

import pytest

from ernie_cl.evaluation.continual_metrics import (average_final, backward_transfer, finished_at, forgetting,
                                                   mean_forgetting, summarize, trained_from)

NAN = float("nan")
TASKS = ["A", "B", "C"]

# Continual: A, then B, then C (one task per stage).
CONTINUAL_STAGES = [["A"], ["B"], ["C"]]
CONTINUAL_R = [[0.80, 0.30, 0.20],
               [0.60, 0.85, 0.25],
               [0.50, 0.70, 0.90]]

# ERNIE 2.0 sequential multi-task: A, then A+B, then A+B+C (every task trains until the end).
SEQUENTIAL_STAGES = [["A"], ["A", "B"], ["A", "B", "C"]]
SEQUENTIAL_R = [[0.60, 0.40, 0.30],
                [0.70, 0.75, 0.35],
                [0.68, 0.80, 0.85]]


def test_stage_index_helpers_for_the_three_schedules():
    assert finished_at(CONTINUAL_STAGES, TASKS) == [0, 1, 2]
    assert trained_from(CONTINUAL_STAGES, TASKS) == [0, 1, 2]
    assert finished_at(SEQUENTIAL_STAGES, TASKS) == [2, 2, 2]
    assert trained_from(SEQUENTIAL_STAGES, TASKS) == [0, 1, 2]
    assert finished_at([TASKS], TASKS) == [0, 0, 0]
    # The pairwise variant: (A)(B)(C), then (A,B)(B,C)(A,C), then (A,B,C).
    pairwise = [["A"], ["B"], ["C"], ["A", "B"], ["B", "C"], ["A", "C"], ["A", "B", "C"]]
    assert trained_from(pairwise, TASKS) == [0, 1, 2]
    assert finished_at(pairwise, TASKS) == [6, 6, 6]


def test_helpers_mark_a_never_trained_task_and_refuse_unknown_names():
    assert finished_at([["A"], ["B"]], TASKS) == [0, 1, -1]
    assert trained_from([["A"], ["B"]], TASKS) == [0, 1, -1]
    with pytest.raises(ValueError, match="unknown task.*'D'"):
        finished_at([["A"], ["D"]], TASKS)


def test_continual_case_with_forgetting():
    # average: (0.50 + 0.70 + 0.90) / 3 = 0.70
    assert average_final(CONTINUAL_R) == pytest.approx(0.70)
    # A finished at stage 0: 0.50 - 0.80 = -0.30; B at stage 1: 0.70 - 0.85 = -0.15; C ends last (excluded).
    # BWT = (-0.30 - 0.15) / 2 = -0.225
    assert backward_transfer(CONTINUAL_R, [0, 1, 2]) == pytest.approx(-0.225)
    # A: max(0.80, 0.60) - 0.50 = 0.30; B: max over stage 1 only = 0.85 - 0.70 = 0.15; C: no earlier stage.
    assert forgetting(CONTINUAL_R, [0, 1, 2]) == pytest.approx([0.30, 0.15, 0.0])
    # mean over A and B (C first trains in the last stage): (0.30 + 0.15) / 2 = 0.225
    assert mean_forgetting(CONTINUAL_R, [0, 1, 2]) == pytest.approx(0.225)


def test_joint_training_has_one_stage_so_no_transfer_or_forgetting():
    R = [[0.70, 0.80, 0.90]]
    assert average_final(R) == pytest.approx(0.80)  # (0.7 + 0.8 + 0.9) / 3
    assert backward_transfer(R, [0, 0, 0]) == 0.0
    assert forgetting(R, [0, 0, 0]) == [0.0, 0.0, 0.0]
    assert mean_forgetting(R, [0, 0, 0]) == 0.0


def test_ernie_sequential_has_zero_bwt_but_can_still_forget():
    # average: (0.68 + 0.80 + 0.85) / 3 = 2.33 / 3
    assert average_final(SEQUENTIAL_R) == pytest.approx(2.33 / 3)
    # every task trains in the last stage: no task finished earlier, BWT is 0.0 by definition
    assert backward_transfer(SEQUENTIAL_R, [2, 2, 2]) == 0.0
    # A: max(0.60, 0.70) - 0.68 = 0.02; B: 0.75 - 0.80 = -0.05 (kept improving); C: no earlier stage
    assert forgetting(SEQUENTIAL_R, [0, 1, 2]) == pytest.approx([0.02, -0.05, 0.0])
    assert mean_forgetting(SEQUENTIAL_R, [0, 1, 2]) == pytest.approx(-0.015)  # (0.02 - 0.05) / 2


def test_metric_rising_after_training_ended_gives_positive_bwt():
    R = [[0.60, 0.50],
         [0.66, 0.80]]
    assert backward_transfer(R, [0, 1]) == pytest.approx(0.06)  # 0.66 - 0.60
    assert forgetting(R, [0, 1]) == pytest.approx([-0.06, 0.0])  # 0.60 - 0.66; B has no earlier stage


def test_stages_before_a_task_first_trains_do_not_count_as_forgetting():
    # B's untrained head happens to score 0.75 at stage 0; trained, it peaks at 0.72 and ends at 0.70.
    R = [[0.80, 0.75, 0.50],
         [0.70, 0.72, 0.50],
         [0.65, 0.70, 0.90]]
    # B: 0.72 - 0.70 = 0.02, not 0.75 - 0.70 = 0.05
    assert forgetting(R, [0, 1, 2]) == pytest.approx([0.15, 0.02, 0.0])


def test_nan_entries_are_skipped():
    R = [[0.80, NAN, 0.20],
         [NAN, 0.70, 0.30],
         [0.60, 0.65, None]]
    # average over the two finite final values: (0.60 + 0.65) / 2 = 0.625
    assert average_final(R) == pytest.approx(0.625)
    # A: 0.60 - 0.80 = -0.20; B: 0.65 - 0.70 = -0.05; mean -0.125
    assert backward_transfer(R, [0, 1, 2]) == pytest.approx(-0.125)
    # A: max(0.80, NaN skipped) - 0.60 = 0.20; B: 0.70 - 0.65 = 0.05; C: no earlier stage
    assert forgetting(R, [0, 1, 2]) == pytest.approx([0.20, 0.05, 0.0])
    # a missing final value leaves that task's forgetting NaN, and the mean skips it
    R2 = [[0.80, 0.40], [0.70, 0.60], [NAN, 0.55]]
    f = forgetting(R2, [0, 1])
    assert math.isnan(f[0]) and f[1] == pytest.approx(0.05)  # 0.60 - 0.55
    assert mean_forgetting(R2, [0, 1]) == pytest.approx(0.05)
    # nothing left to average is NaN, not 0.0
    assert math.isnan(backward_transfer([[NAN, 0.5], [NAN, 0.6]], [0, 1]))
    assert math.isnan(average_final([[NAN, NAN]]))


def test_summarize_builds_the_results_metrics_block():
    got = summarize(SEQUENTIAL_R, SEQUENTIAL_STAGES, TASKS)
    assert got["average_final"] == pytest.approx(2.33 / 3)
    assert got["bwt"] == 0.0
    assert got["forgetting"] == pytest.approx({"A": 0.02, "B": -0.05, "C": 0.0})
    assert got["mean_forgetting"] == pytest.approx(-0.015)


def test_mismatched_shapes_are_refused_with_a_message():
    with pytest.raises(ValueError, match="2 entries but the matrix has 3 task columns"):
        backward_transfer(CONTINUAL_R, [0, 1])
    with pytest.raises(ValueError, match=r"outside 0\.\.2"):
        forgetting(CONTINUAL_R, [0, 1, 5])
    with pytest.raises(ValueError, match="2 stage rows but 3 stages"):
        summarize(CONTINUAL_R[:2], CONTINUAL_STAGES, TASKS)
    with pytest.raises(ValueError, match="non-empty"):
        average_final([])
