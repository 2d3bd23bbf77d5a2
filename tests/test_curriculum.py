"""Budget allocation (the ERNIE 2.0 way and explicit) and the within-stage sampler."""

from collections import Counter

import pytest

from ernie_cl.config.budgets import allocate_budgets, fuse_token_tasks
from ernie_cl.config.schedule import ScheduleConfig
from ernie_cl.errors import ConfigError
from ernie_cl.training.curriculum import Curriculum


def schedule(stages, budgets=None, allocation="ernie2", seed=0):
    data = {"seed": seed, "allocation": allocation, "stages": stages}
    if budgets:
        data["tasks"] = {t: {"iterations": n} for t, n in budgets.items()}
    return ScheduleConfig.model_validate(data)


def sequential(tasks, budget):
    stages = [{"name": f"s{i}", "tasks": tasks[: i + 1]} for i in range(len(tasks))]
    return schedule(stages, {t: budget for t in tasks})


def test_ernie2_allocation_reproduces_the_published_table():
    stages = allocate_budgets(sequential(["km", "cap", "tdr", "reorder"], 50_000))
    table = [[s.budgets.get(t, 0) // 1000 for t in ["km", "cap", "tdr", "reorder"]] for s in stages]
    assert table == [[20, 0, 0, 0], [10, 30, 0, 0], [10, 10, 40, 0], [10, 10, 10, 50]]


@pytest.mark.parametrize("budget", [7, 100, 601, 50_000])
@pytest.mark.parametrize("n_tasks", [1, 2, 3, 5])
def test_every_task_gets_exactly_its_total_budget(budget, n_tasks):
    tasks = [f"t{i}" for i in range(n_tasks)]
    stages = allocate_budgets(sequential(tasks, budget))
    for t in tasks:
        assert sum(s.budgets.get(t, 0) for s in stages) == budget
    assert all(n > 0 for s in stages for n in s.budgets.values())


def test_continual_schedule_gives_each_task_its_whole_budget_in_its_one_stage():
    cfg = schedule([{"name": "a", "tasks": ["a"]}, {"name": "b", "tasks": ["b"]}], {"a": 90, "b": 30})
    assert [s.budgets for s in allocate_budgets(cfg)] == [{"a": 90}, {"b": 30}]


def test_explicit_allocation_is_taken_as_given():
    cfg = schedule([{"name": "x", "tasks": {"a": 5}}, {"name": "y", "tasks": {"a": 2, "b": 9}}], allocation="explicit")
    assert [s.budgets for s in allocate_budgets(cfg)] == [{"a": 5}, {"a": 2, "b": 9}]


def test_budget_too_small_to_spread_is_refused():
    cfg = schedule([{"name": f"s{i}", "tasks": ["a"]} for i in range(4)], {"a": 3})
    with pytest.raises(ConfigError, match="too few"):
        allocate_budgets(cfg)


def test_each_stage_plan_spends_every_budget_exactly():
    cur = Curriculum(allocate_budgets(sequential(["a", "b", "c"], 400)), seed=3)
    seen = []
    while not cur.finished:
        stage = cur.current_stage
        counts = Counter(step.task for step in cur.stage_steps())
        assert counts == Counter(stage.budgets)
        seen.append(dict(counts))
        cur.next_stage()
    assert cur.global_step == cur.total_steps == 1200


def test_plan_is_deterministic_for_a_seed_and_changes_with_it():
    stages = allocate_budgets(sequential(["a", "b"], 300))
    assert Curriculum(stages, 1).plan(1) == Curriculum(stages, 1).plan(1)
    assert Curriculum(stages, 1).plan(1) != Curriculum(stages, 2).plan(1)


def test_task_is_drawn_in_proportion_to_remaining_budget():
    # a: 300, b: 100 left at the first step of the stage -> a is drawn first 75% of the time
    stages = allocate_budgets(schedule([{"name": "s", "tasks": {"a": 300, "b": 100}}], allocation="explicit"))
    firsts = Counter(Curriculum(stages, seed).plan(0)[0][0] for seed in range(4000))
    assert abs(firsts["a"] / 4000 - 0.75) < 0.03
    # and conditionally: after drawing a, the next is a with probability 299/399
    seconds = Counter(p[1][0] for p in (Curriculum(stages, s).plan(0) for s in range(4000)) if p[0] == ("a",))
    assert abs(seconds["a"] / sum(seconds.values()) - 299 / 399) < 0.03


def test_resumed_curriculum_continues_with_the_same_steps():
    stages = allocate_budgets(sequential(["a", "b", "c"], 60))
    full = Curriculum(stages, 5)
    reference = []
    while not full.finished:
        reference += [(s.global_step, s.stage.name, s.task) for s in full.stage_steps()]
        full.next_stage()

    first = Curriculum(stages, 5)
    taken = []
    gen = first.stage_steps()
    for _ in range(10):
        s = next(gen)
        taken.append((s.global_step, s.stage.name, s.task))
    resumed = Curriculum(stages, 0)
    resumed.load_state_dict(first.state_dict())
    while not resumed.finished:
        taken += [(s.global_step, s.stage.name, s.task) for s in resumed.stage_steps()]
        resumed.next_stage()
    assert taken == reference


def test_fused_token_tasks_spend_their_budgets_exactly_in_fewer_steps():
    cfg = schedule([{"name": "s", "tasks": {"km": 200, "cap": 300, "tdr": 50, "order": 120}}], allocation="explicit")
    stages = fuse_token_tasks(allocate_budgets(cfg), fusable={"km", "cap", "tdr"})
    assert stages[0].fused == ("km", "cap", "tdr") and stages[0].steps == 300 + 120
    plan = Curriculum(stages, 7).plan(0)
    assert len(plan) == 420
    spent = Counter(t for step in plan for t in step)
    assert spent == Counter({"km": 200, "cap": 300, "tdr": 50, "order": 120})
    assert all(step == ("order",) or "cap" in step for step in plan)  # the largest budget joins every fused step
    # the smaller budgets are spread evenly over the group's steps, not bunched at the start
    group_steps = [step for step in plan if step != ("order",)]
    tdr_at = [i for i, step in enumerate(group_steps) if "tdr" in step]
    assert max(tdr_at) >= 290 and min(tdr_at) <= 10 and all(5 <= b - a <= 7 for a, b in zip(tdr_at, tdr_at[1:]))


def test_a_single_fusable_task_or_fusion_off_changes_nothing():
    cfg = schedule([{"name": "s", "tasks": {"km": 20, "order": 10}}], allocation="explicit")
    plain = allocate_budgets(cfg)
    fused = fuse_token_tasks(plain, fusable={"km"})
    assert fused[0].fused == () and Curriculum(fused, 3).plan(0) == Curriculum(plain, 3).plan(0)
