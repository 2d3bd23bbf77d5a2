"""Held-out evaluation of every task: mean loss, the task's metric, and its trivial baseline.

Losses and metrics are aggregated over targets (not averaged per batch), so the numbers do not
depend on the evaluation batch size.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import torch

from ernie_cl.data.examples import eval_batches, eval_indices, to_device


def trivial_baselines(tasks: dict[str, Any], eval_sets: dict[str, Any], limit: int) -> dict[str, float]:
    """Each task's trivial baseline on exactly the held-out examples the evaluation uses."""
    out = {}
    for name, task in tasks.items():
        dataset = eval_sets[name]
        rows = dataset[eval_indices(len(dataset), limit)]
        out[name] = task.trivial_baseline(rows["labels"])
    return out


@torch.no_grad()
def evaluate(model: torch.nn.Module, tasks: dict[str, Any], eval_sets: dict[str, Any], baselines: dict[str, float],
             limit: int, batch_size: int, pad_id: int, device: torch.device) -> dict[str, dict[str, Any]]:
    """``{task: {"loss", "metric", "metric_name", "baseline"}}`` on the held-out examples."""
    was_training = model.training
    model.eval()
    results = {}
    for name, task in tasks.items():
        loss_sum, correct, total = 0.0, 0, 0
        for batch in eval_batches(eval_sets[name], batch_size, limit, pad_id, task.level == "sentence", name):
            loss, logits, targets = model(**to_device(batch, device))[name]
            n = targets.numel()
            if n:
                loss_sum += float(loss) * n
                c, t = task.metric_counts(logits, targets)
                correct, total = correct + c, total + t
        results[name] = {
            "loss": loss_sum / total if total else float("nan"),
            "metric": correct / total if total else float("nan"),
            "metric_name": task.metric_name,
            "baseline": baselines[name],
        }
    model.train(was_training)
    return results


def label_statistics(task, train_set, eval_set, top: int = 15) -> str:
    """A readable label distribution of a task's examples, with its trivial baseline."""
    counts: Counter[int] = Counter()
    for row in train_set["labels"]:
        counts.update(x for x in row if x != -100)
    total = sum(counts.values())
    lines = [f"targets in training examples: {total} over {len(counts)} distinct labels (of {task.num_labels})"]
    for label, n in counts.most_common(top):
        lines.append(f"  {label:>6}  {task.label_name(label):<28} {n:>9}  {n / total:7.2%}")
    if len(counts) > top:
        lines.append(f"  ... {len(counts) - top} more labels")
    lines.append(f"trivial baseline (always the most common label), training set: {counts.most_common(1)[0][1] / total:.4f}"
                 if total else "no targets")
    lines.append(f"trivial baseline on the held-out examples: {task.trivial_baseline(eval_set['labels']):.4f}")
    return "\n".join(lines)
