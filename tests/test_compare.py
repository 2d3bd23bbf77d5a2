"""Baseline derivation of ``ernie-cl compare``: every strategy gets the same per-task iterations and
the same total optimizer steps, for several schedules (the shipped ones and hand-made ones)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from ernie_cl.compare import STRATEGIES, derive_schedule, strategy_stages, task_budgets
from ernie_cl.config import load_schedule
from ernie_cl.curriculum import Curriculum
from ernie_cl.preparation import plan_stages

ROOT = Path(__file__).resolve().parent.parent


def derived(schedule_path: Path, strategy: str, tmp_path: Path, seed: int = 7):
    schedule = load_schedule(schedule_path)
    data = derive_schedule(schedule, strategy, seed, schedule_path.parent)
    path = tmp_path / f"{strategy}.yaml"
    path.write_text(yaml.safe_dump(data))
    return load_schedule(path)


def spent_per_task(schedule) -> tuple[dict[str, int], int]:
    """Iterations per task and optimizer steps, counted from the curriculum's actual plan."""
    stages = plan_stages(schedule)
    curriculum = Curriculum(stages, schedule.seed)
    counts: dict[str, int] = {}
    for stage in stages:
        for step_tasks in curriculum.plan(stage.index):
            for task in step_tasks:
                counts[task] = counts.get(task, 0) + 1
    return counts, curriculum.total_steps


@pytest.mark.parametrize("name", ["demo", "ernie2_en", "ernie2_full", "continual", "joint"])
def test_every_strategy_spends_the_same_budget_per_task_and_the_same_steps(name, tmp_path):
    path = ROOT / "schedules" / f"{name}.yaml"
    budgets = task_budgets(load_schedule(path))
    for strategy in STRATEGIES:
        schedule = derived(path, strategy, tmp_path)
        counts, steps = spent_per_task(schedule)
        assert counts == budgets, strategy
        assert steps == sum(budgets.values()), strategy  # fusion off: one task per step everywhere
        assert schedule.seed == 7 and schedule.training.fuse_token_tasks is False


def test_explicit_allocation_schedules_keep_their_per_task_totals(tmp_path):
    schedule = {
        "name": "x", "allocation": "explicit", "tasks": {"knowledge_masking": {}, "capitalization": {}, "sentence_distance": {}},
        "stages": [{"name": "a", "tasks": {"knowledge_masking": 30}},
                   {"name": "b", "tasks": {"knowledge_masking": 10, "capitalization": 25}},
                   {"name": "c", "tasks": {"capitalization": 5, "sentence_distance": 17}}],
    }
    path = tmp_path / "x.yaml"
    path.write_text(yaml.safe_dump(schedule))
    assert task_budgets(load_schedule(path)) == {"knowledge_masking": 40, "capitalization": 30, "sentence_distance": 17}
    for strategy in STRATEGIES:
        counts, steps = spent_per_task(derived(path, strategy, tmp_path))
        assert counts == {"knowledge_masking": 40, "capitalization": 30, "sentence_distance": 17}
        assert steps == 87


def test_strategy_stages_follow_the_definitions():
    tasks = ["A", "B", "C"]
    sequential = [["A"], ["A", "B"], ["A", "B", "C"]]
    assert strategy_stages("sequential", tasks, sequential) == sequential
    assert strategy_stages("continual", tasks, sequential) == [["A"], ["B"], ["C"]]
    assert strategy_stages("joint", tasks, sequential) == [["A", "B", "C"]]
    # ERNIE 2.0's figure: (A)(B)(C), then (A,B)(B,C)(A,C), then (A,B,C)
    pairwise = strategy_stages("pairwise", tasks, sequential)
    assert pairwise[:3] == [["A"], ["B"], ["C"]]
    assert [set(p) for p in pairwise[3:6]] == [{"A", "B"}, {"B", "C"}, {"A", "C"}]
    assert pairwise[6] == ["A", "B", "C"]
    # five tasks: each takes part in 4 stages (alone, two cyclic pairs, all)
    five = strategy_stages("pairwise", list("ABCDE"), [])
    assert len(five) == 11 and all(sum(t in s for s in five) == 4 for t in "ABCDE")


def test_the_continual_strategy_gives_each_task_its_whole_budget_in_its_own_stage(tmp_path):
    path = ROOT / "schedules" / "ernie2_en.yaml"
    schedule = derived(path, "continual", tmp_path)
    stages = plan_stages(schedule)
    budgets = task_budgets(load_schedule(path))
    assert [s.budgets for s in stages] == [{t: n} for t, n in budgets.items()]
