"""The curriculum: which task trains at every step of every stage, with budgets spent exactly.

Budget allocation (``allocation: ernie2``, after olfmlm's reproduction of ERNIE 2.0's table): with S
stages, each task's total budget N is split into S + 1 units; the task gets one unit in every stage
it takes part in after its first, and the rest (``N - units_later``) in the stage that introduces it.
For S = 4 tasks of 50k introduced one per stage this gives 20/0/0/0, 10/30/0/0, 10/10/40/0,
10/10/10/50 (thousands), the published table. ``allocation: explicit`` takes per-stage budgets as given.

Mixing within a stage: the task of each step is drawn with probability proportional to the budget
it has left in the stage. Drawing without replacement in proportion to what is left is exactly a
uniformly random arrangement of the multiset {task: budget}, so a stage's plan is a seeded
permutation of that multiset: deterministic from (seed, stage index), every budget spent exactly,
and resumable from the step position alone.

Shared forward passes: co-active token-level tasks that read the same packed input (knowledge
masking, capitalization, token-document relation) can be fused: one step then trains several of
them on one batch and one forward pass, each spending one iteration of its budget (ERNIE 2.0 combined
several token-level losses in one update). See ``Curriculum.plan`` for how fused steps are placed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np

from .config import ScheduleConfig
from .errors import ConfigError


@dataclass(frozen=True)
class Stage:
    index: int
    name: str
    budgets: dict[str, int]  # task -> iterations in this stage, in the schedule's task order
    fused: tuple[str, ...] = ()  # co-active token-level tasks that share one forward pass

    @property
    def steps(self) -> int:
        """Optimizer steps in the stage: a fused step spends one iteration of each of its tasks."""
        unfused = sum(n for t, n in self.budgets.items() if t not in self.fused)
        return unfused + (max(self.budgets[t] for t in self.fused) if self.fused else 0)


@dataclass(frozen=True)
class Step:
    global_step: int  # 1-based count of optimizer steps over the whole run
    stage: Stage
    step_in_stage: int  # 0-based
    tasks: tuple[str, ...]  # one task, or the fused token-level tasks trained on one shared input

    @property
    def task(self) -> str:
        return "+".join(self.tasks)


def fuse_token_tasks(stages: list[Stage], fusable: set[str]) -> list[Stage]:
    """Mark, in every stage, the co-active tasks that can share one forward pass (two or more)."""
    out = []
    for stage in stages:
        group = tuple(t for t in stage.budgets if t in fusable)
        out.append(Stage(stage.index, stage.name, stage.budgets, group if len(group) >= 2 else ()))
    return out


def allocate_budgets(schedule: ScheduleConfig) -> list[Stage]:
    """Per-stage iteration budgets for every task of the schedule."""
    order = schedule.task_names()
    if schedule.allocation == "explicit":
        return [
            Stage(i, s.name, {t: int(s.tasks[t]) for t in order if t in s.task_names})  # type: ignore[index]
            for i, s in enumerate(schedule.stages)
        ]
    n_stages = len(schedule.stages)
    per_stage: list[dict[str, int]] = [{} for _ in schedule.stages]
    for task in order:
        total = int(schedule.tasks[task].iterations)  # validated present for ernie2
        stages_in = [i for i, s in enumerate(schedule.stages) if task in s.task_names]
        unit = max(1, total // (n_stages + 1))
        first = total - unit * (len(stages_in) - 1)
        if first < 1:
            raise ConfigError(
                f"task '{task}': {total} iterations are too few to spread over its {len(stages_in)} stages; "
                f"give it at least {unit * (len(stages_in) - 1) + 1}"
            )
        per_stage[stages_in[0]][task] = first
        for i in stages_in[1:]:
            per_stage[i][task] = unit
    return [
        Stage(i, s.name, {t: per_stage[i][t] for t in order if t in per_stage[i]})
        for i, s in enumerate(schedule.stages)
    ]


class Curriculum:
    """Iterates (stage, task) over the whole run; its state is just the position."""

    def __init__(self, stages: list[Stage], seed: int):
        self.stages = stages
        self.seed = seed
        self.stage_index = 0
        self.step_in_stage = 0

    @property
    def total_steps(self) -> int:
        return sum(s.steps for s in self.stages)

    @property
    def global_step(self) -> int:
        """Steps completed so far over the whole run."""
        return sum(s.steps for s in self.stages[: self.stage_index]) + self.step_in_stage

    @property
    def finished(self) -> bool:
        return self.stage_index >= len(self.stages)

    def plan(self, stage_index: int) -> list[tuple[str, ...]]:
        """The task(s) of every step of a stage: a seeded permutation of the budget multiset, in
        which a fused group counts as one unit with the largest budget of its tasks; the g-th step
        of the group includes task t when floor((g+1) b_t / B) > floor(g b_t / B), which spreads
        t's b_t iterations evenly over the group's B steps and spends them exactly."""
        stage = self.stages[stage_index]
        units: list[tuple[str, ...]] = []
        for task in stage.budgets:
            if task not in stage.fused:
                units.append((task,))
            elif task == stage.fused[0]:
                units.append(stage.fused)
        sizes = [stage.budgets[u[0]] if len(u) == 1 else max(stage.budgets[t] for t in u) for u in units]
        order = np.random.default_rng([self.seed, stage_index]).permutation(np.repeat(np.arange(len(units)), sizes))
        plan, group_step = [], 0
        for i in order:
            if units[i] != stage.fused:
                plan.append(units[i])
                continue
            big = sizes[i]
            plan.append(tuple(t for t in units[i] if (group_step + 1) * stage.budgets[t] // big > group_step * stage.budgets[t] // big))
            group_step += 1
        return plan

    @property
    def current_stage(self) -> Stage:
        return self.stages[self.stage_index]

    def stage_steps(self) -> Iterator[Step]:
        """Yield the remaining steps of the current stage; the position advances as each is taken."""
        stage = self.current_stage
        plan = self.plan(stage.index)
        while self.step_in_stage < len(plan):
            step = Step(self.global_step + 1, stage, self.step_in_stage, tuple(plan[self.step_in_stage]))
            self.step_in_stage += 1
            yield step

    def next_stage(self) -> None:
        """Move to the start of the next stage (call after the current stage's steps are done)."""
        if self.step_in_stage != self.current_stage.steps:
            raise RuntimeError("next_stage() called before the current stage spent its budget")
        self.stage_index += 1
        self.step_in_stage = 0

    def budget_spent(self) -> dict[str, int]:
        """Iterations each task has trained so far (stages done, plus the current one's steps taken)."""
        spent: dict[str, int] = {}
        for stage in self.stages[: self.stage_index]:
            for task, n in stage.budgets.items():
                spent[task] = spent.get(task, 0) + n
        if not self.finished:
            for step_tasks in self.plan(self.stage_index)[: self.step_in_stage]:
                for task in step_tasks:
                    spent[task] = spent.get(task, 0) + 1
        return spent

    def state_dict(self) -> dict[str, int]:
        return {"stage_index": self.stage_index, "step_in_stage": self.step_in_stage, "seed": self.seed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.stage_index = int(state["stage_index"])
        self.step_in_stage = int(state["step_in_stage"])
        self.seed = int(state["seed"])
