"""The curriculum: which task trains at every step of every stage, with budgets spent exactly.

The per-stage budgets come from ``config.budgets`` (the ERNIE 2.0 allocation).

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

from ernie_cl.config.budgets import Stage


@dataclass(frozen=True)
class Step:
    global_step: int  # 1-based count of optimizer steps over the whole run
    stage: Stage
    step_in_stage: int  # 0-based
    tasks: tuple[str, ...]  # one task, or the fused token-level tasks trained on one shared input

    @property
    def task(self) -> str:
        return "+".join(self.tasks)


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
