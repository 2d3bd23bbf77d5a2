"""Per-stage iteration budgets: what a schedule file asks of every stage, before any training.

Budget allocation (``allocation: ernie2``, after olfmlm's reproduction of ERNIE 2.0's table): with S
stages, each task's total budget N is split into S + 1 units; the task gets one unit in every stage
it takes part in after its first, and the rest (``N - units_later``) in the stage that introduces it.
For S = 4 tasks of 50k introduced one per stage this gives 20/0/0/0, 10/30/0/0, 10/10/40/0,
10/10/10/50 (thousands), the published table. ``allocation: explicit`` takes per-stage budgets as given.

Shared forward passes: co-active token-level tasks that read the same packed input (knowledge
masking, capitalization, token-document relation) are marked as one fused group per stage
(``plan_stages``); ``training.curriculum`` places their steps.
"""

from __future__ import annotations

from dataclasses import dataclass

from ernie_cl.config.schedule import ScheduleConfig
from ernie_cl.errors import ConfigError


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


def plan_stages(schedule: ScheduleConfig) -> list[Stage]:
    """Per-stage budgets, with the token-level tasks that share forward passes marked."""
    from pretrain_tasks import get_task_class
    from pretrain_tasks._packed import PackedTokenTask

    fusable = {t for t in schedule.task_names() if issubclass(get_task_class(t), PackedTokenTask)}
    return fuse_token_tasks(allocate_budgets(schedule), fusable if schedule.training.fuse_token_tasks else set())
