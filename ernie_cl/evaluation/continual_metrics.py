"""Continual-learning metrics over an accuracy matrix, for comparing training strategies.

``R[i][j]`` is the held-out metric of task ``j`` after stage ``i`` (``i = 0 .. S-1`` over one
strategy's stages, tasks in a fixed order). Metrics are taken as higher-is-better (accuracies).
``finished_at[j]`` is the last stage that trained task ``j``; ``trained_from[j]`` is the first.

- Average final metric (A):   ``A = (1/T) * sum_j R[S-1][j]``.
- Backward transfer (GEM, Lopez-Paz & Ranzato 2017, "Gradient Episodic Memory for Continual
  Learning", NeurIPS), with ``F = {j : finished_at[j] < S-1}``, the tasks whose training ended
  before the last stage:   ``BWT = (1/|F|) * sum_{j in F} (R[S-1][j] - R[finished_at[j]][j])``.
  Negative BWT is forgetting; positive BWT means later stages improved an already-finished task.
  ``BWT = 0.0`` when ``F`` is empty: joint training (one stage), or ERNIE 2.0's sequential
  multi-task schedule, where every task keeps training until the end, have nothing to transfer to.
  GEM's ``i_j = j`` (one task per stage) is the special case ``finished_at[j] = j``.
- Forgetting (Chaudhry et al. 2018, "Riemannian Walk for Incremental Learning", ECCV), per task:
  ``f_j = max_{l in [trained_from[j], S-2]} R[l][j] - R[S-1][j]``; ``f_j = 0.0`` when that range is
  empty (the task first trains in the last stage). Stages before ``trained_from[j]`` are excluded:
  there the head is untrained, so a chance-level bump must not count as knowledge later lost.
  Mean forgetting averages ``f_j`` over the tasks with a non-empty range (Chaudhry's ``F_k`` averages
  over the ``k-1`` tasks seen before the last), and is 0.0 when there are none.

NaN handling (a task with no value at some stage): NaN entries are skipped in the maxima and means;
a difference needing a missing value is skipped; a mean with nothing left to average is NaN. A task
that no stage trains has index ``-1`` in both helpers and is left out of BWT and forgetting.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

NEVER_TRAINED = -1


def _matrix(R: Sequence[Sequence[float | None]]) -> np.ndarray:
    """``R`` as a 2-D float array; ``None`` becomes NaN."""
    arr = np.array(R, dtype=float)
    if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"accuracy matrix must be a non-empty stages x tasks table, got shape {arr.shape}")
    return arr


def _check_indices(name: str, indices: Sequence[int], arr: np.ndarray) -> None:
    stages, tasks = arr.shape
    if len(indices) != tasks:
        raise ValueError(f"{name} has {len(indices)} entries but the matrix has {tasks} task columns")
    bad = [i for i in indices if not NEVER_TRAINED <= i < stages]
    if bad:
        raise ValueError(f"{name} has stage indices {bad} outside 0..{stages - 1} (or -1 for never trained)")


def _nanmean(values: list[float]) -> float:
    finite = [v for v in values if not np.isnan(v)]
    return float(np.mean(finite)) if finite else float("nan")


def average_final(R: Sequence[Sequence[float | None]]) -> float:
    """Mean over tasks of the metric after the last stage (NaN entries skipped)."""
    return _nanmean(list(_matrix(R)[-1]))


def backward_transfer(R: Sequence[Sequence[float | None]], finished_at: Sequence[int]) -> float:
    """GEM backward transfer over the tasks whose training ended before the last stage; 0.0 if none."""
    arr = _matrix(R)
    _check_indices("finished_at", finished_at, arr)
    last = arr.shape[0] - 1
    eligible = [j for j, end in enumerate(finished_at) if NEVER_TRAINED < end < last]
    if not eligible:
        return 0.0
    return _nanmean([arr[last, j] - arr[finished_at[j], j] for j in eligible])


def forgetting(R: Sequence[Sequence[float | None]], trained_from: Sequence[int]) -> list[float]:
    """Per task: best metric at a stage in [trained_from, S-2] minus the final metric; 0.0 if no such stage."""
    arr = _matrix(R)
    _check_indices("trained_from", trained_from, arr)
    last = arr.shape[0] - 1
    out = []
    for j, start in enumerate(trained_from):
        earlier = arr[start:last, j] if start != NEVER_TRAINED else arr[:0, j]
        earlier = earlier[~np.isnan(earlier)]
        out.append(float(earlier.max() - arr[last, j]) if earlier.size else 0.0)
    return out


def mean_forgetting(R: Sequence[Sequence[float | None]], trained_from: Sequence[int]) -> float:
    """Mean forgetting over the tasks trained before the last stage; 0.0 when there are none."""
    arr = _matrix(R)
    per_task = forgetting(arr, trained_from)
    last = arr.shape[0] - 1
    counted = [f for f, start in zip(per_task, trained_from) if NEVER_TRAINED < start < last]
    return _nanmean(counted) if counted else 0.0


def _stage_indices(stage_tasks: Sequence[Sequence[str]], tasks: Sequence[str]) -> dict[str, list[int]]:
    """Task -> the indices of the stages that train it; unknown task names are an error."""
    known = set(tasks)
    seen: dict[str, list[int]] = {t: [] for t in tasks}
    for i, names in enumerate(stage_tasks):
        unknown = sorted(set(names) - known)
        if unknown:
            raise ValueError(f"stage {i} trains unknown task(s) {unknown}; known: {list(tasks)}")
        for name in names:
            seen[name].append(i)
    return seen


def finished_at(stage_tasks: Sequence[Sequence[str]], tasks: Sequence[str]) -> list[int]:
    """Index of the last stage that trains each task (in ``tasks`` order); -1 if none does."""
    seen = _stage_indices(stage_tasks, tasks)
    return [seen[t][-1] if seen[t] else NEVER_TRAINED for t in tasks]


def trained_from(stage_tasks: Sequence[Sequence[str]], tasks: Sequence[str]) -> list[int]:
    """Index of the first stage that trains each task (in ``tasks`` order); -1 if none does."""
    seen = _stage_indices(stage_tasks, tasks)
    return [seen[t][0] if seen[t] else NEVER_TRAINED for t in tasks]


def summarize(R: Sequence[Sequence[float | None]], stage_tasks: Sequence[Sequence[str]],
              tasks: Sequence[str]) -> dict[str, object]:
    """The ``metrics`` block of one run in results.json: average_final, bwt, forgetting, mean_forgetting."""
    if len(R) != len(stage_tasks):
        raise ValueError(f"the matrix has {len(R)} stage rows but {len(stage_tasks)} stages were given")
    start = trained_from(stage_tasks, tasks)
    return {
        "average_final": average_final(R),
        "bwt": backward_transfer(R, finished_at(stage_tasks, tasks)),
        "forgetting": dict(zip(tasks, forgetting(R, start))),
        "mean_forgetting": mean_forgetting(R, start),
    }
