"""Fine-tuning a pre-trained checkpoint on a GLUE-style task (``ernie-cl finetune``).

The whole encoder (a copy) plus dropout and a fresh linear head on pooled features, AdamW (no decay
on biases and norms), linear warm-up over ``warmup_ratio`` then linear decay to 0, gradient clipping
at 1; regression trains on standardised targets. The reported value is the dev metric after the last
epoch (dev never selects an epoch). Deterministic given the seed.
"""


from __future__ import annotations

import math
import time
from typing import Any, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ernie_cl.errors import ConfigError
from ernie_cl.model.encoder import ErnieEncoder


from ernie_cl.evaluation.downstream import (Loaded, PathLike, _check_pooling, _check_task_id, _loaded, _pad, _pool,
                                            _resolve_max_len, encode_texts)
from ernie_cl.evaluation.glue_tasks import GlueTask, load_glue_task


# --- fine-tuning ---------------------------------------------------------------------------------

class _FineTuned(nn.Module):
    """The pre-trained encoder (all weights trainable) + dropout + a fresh linear head."""

    def __init__(self, encoder: ErnieEncoder, outputs: int, pooling: str, task_id: int):
        super().__init__()
        self.encoder, self.pooling, self.task_id = encoder, pooling, task_id
        config = encoder.backbone.config
        self.head = nn.Sequential(nn.Dropout(getattr(config, "hidden_dropout_prob", 0.1)), nn.Linear(config.hidden_size, outputs))
        nn.init.normal_(self.head[1].weight, std=getattr(config, "initializer_range", 0.02))
        nn.init.zeros_(self.head[1].bias)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder.encode(input_ids, attention_mask, token_type_ids, [self.task_id])
        return self.head(_pool(hidden, attention_mask, self.pooling)).float()

    def trained_parameters(self) -> list[nn.Parameter]:
        # the pre-training heads are unused (a decoder tied to the word embeddings comes in with the backbone)
        task_embeddings = self.encoder.task_embeddings  # None for a plain Hugging Face encoder
        return list(dict.fromkeys([*self.encoder.backbone.parameters(), *([] if task_embeddings is None else [task_embeddings.weight]),
                                   *self.head.parameters()]))


def finetune(checkpoint: Union[PathLike, Loaded], task_spec: Union[PathLike, Sequence[PathLike], GlueTask], *,
             config: Optional[str] = None, text_columns: Optional[Sequence[str]] = None,
             label_column: Optional[str] = None, task_type: Optional[str] = None, epochs: int = 3,
             lr: Optional[float] = None, batch_size: int = 32, seed: int = 0, max_len: Optional[int] = None, warmup_ratio: float = 0.1,
             weight_decay: float = 0.01, pooling: str = "mean", task_id: int = 0, cache_dir: Optional[PathLike] = None,
             device: Optional[Union[str, torch.device]] = None, show_progress: bool = False) -> dict[str, Any]:
    """Fine-tune a copy of the encoder, all weights trainable, plus a fresh linear head on a
    GLUE-style task (``load_glue_task``, or a ``GlueTask`` already in memory); the result is the dev metric after the last epoch (no
    selection on dev); ``per_epoch`` has every epoch's.

    Classification: cross-entropy; accuracy (also macro-F1 and the majority-class baseline).
    Regression: MSE on standardised targets (train mean and std, so the fresh head starts at the
    right scale); Pearson (the value), Spearman, and MSE in the data's units. AdamW (no decay on
    biases and norms), linear warm-up over ``warmup_ratio`` of the steps then linear decay to 0,
    gradient clipping at 1. ``lr``: default by model width (``default_lr``). ``pooling``: the head
    reads the mean of the last layer (default; as in ``sentence_features``): with a small encoder
    and a few hundred steps it learns from the first epoch, while a head on [CLS] ("cls", the
    ERNIE/BERT convention) first has to teach [CLS] to gather the sentence. ``max_len``: default
    128, or the pre-training sequence length if shorter. ``checkpoint`` may also be what
    ``load_encoder`` returned (it is copied, not changed).
    """
    _check_pooling(pooling)
    for name, value in (("epochs", epochs), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{name} must be a positive integer (got {value})")
    if (lr is not None and not lr > 0) or not 0 <= warmup_ratio < 1 or weight_decay < 0:
        raise ConfigError(f"lr must be positive, warmup_ratio in [0, 1) and weight_decay >= 0 "
                          f"(got {lr}, {warmup_ratio}, {weight_decay})")
    task = task_spec if isinstance(task_spec, GlueTask) else load_glue_task(  # data errors before loading a model
        task_spec, config, text_columns, label_column, task_type, seed)
    encoder, tokenizer, info = _loaded(checkpoint, cache_dir, device, private_copy=True)
    _check_task_id(encoder, task_id)
    max_len = _resolve_max_len(encoder, max_len)
    lr = lr if lr is not None else default_lr(encoder.backbone.config.hidden_size)
    train_rows, dev_rows = encode_texts(tokenizer, task.train_texts, max_len), encode_texts(tokenizer, task.dev_texts, max_len)
    regression = task.kind == "regression"
    targets = torch.tensor(task.train_labels, dtype=torch.float32 if regression else torch.long)
    scale = (float(targets.mean()), float(targets.std()) or 1.0) if regression else (0.0, 1.0)
    device_ = next(encoder.parameters()).device
    steps = epochs * math.ceil(len(train_rows) / batch_size)
    started = time.perf_counter()
    with torch.random.fork_rng(devices=[device_] if device_.type == "cuda" else []):  # dropout draws from the global RNG
        torch.manual_seed(seed)
        model = _FineTuned(encoder, 1 if regression else len(task.label_names), pooling, task_id).to(device_)
        optimizer, schedule = _optimizer(model, lr, weight_decay, steps, warmup_ratio)
        order = torch.Generator().manual_seed(seed)
        progress = _progress(steps, task.name, show_progress)
        history = []
        for epoch in range(1, epochs + 1):
            model.train()
            loss_sum = 0.0
            for chosen in torch.randperm(len(train_rows), generator=order).split(batch_size):
                logits = model(**_pad([train_rows[i] for i in chosen], tokenizer.pad_id, device_))
                y = targets[chosen].to(device_)
                loss = F.mse_loss(logits.squeeze(-1), (y - scale[0]) / scale[1]) if regression else F.cross_entropy(logits, y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.trained_parameters(), 1.0)
                optimizer.step()
                schedule.step()
                loss_sum += float(loss.detach()) * len(chosen)
                progress.update(1)
            history.append({"epoch": epoch, "train_loss": loss_sum / len(train_rows),
                            **_score(model, dev_rows, task, scale, tokenizer.pad_id, device_)})
        progress.close()
    metric = "pearson" if regression else "accuracy"
    final = {k: v for k, v in history[-1].items() if k not in ("epoch", "train_loss")}
    return {"task": task.name, "metric_name": metric, "value": final[metric], "kind": task.kind,
            "train_examples": len(train_rows), "dev_examples": len(dev_rows), **final,
            "labels": task.label_names, "text_columns": task.text_columns, "label_column": task.label_column,
            "dev_source": task.dev_source, "per_epoch": history, "checkpoint": info["checkpoint"],
            "settings": {"epochs": epochs, "lr": lr, "batch_size": batch_size, "seed": seed, "max_len": max_len,
                         "warmup_ratio": warmup_ratio, "weight_decay": weight_decay, "pooling": pooling, "task_id": task_id},
            "seconds": round(time.perf_counter() - started, 2)}


def default_lr(hidden_size: int) -> float:
    """Fine-tuning learning rate by width: 5e-5 for base-sized encoders (BERT's 2e-5..5e-5 range),
    larger steps for narrower ones, which otherwise barely move in a few epochs."""
    return 1e-3 if hidden_size <= 64 else 3e-4 if hidden_size <= 256 else 1e-4 if hidden_size < 768 else 5e-5


def _optimizer(model: _FineTuned, lr: float, weight_decay: float, steps: int, warmup_ratio: float):
    params = model.trained_parameters()
    groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
              {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW(groups, lr=lr)
    warmup = int(warmup_ratio * steps)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        return max(0.0, (steps - step) / max(1, steps - warmup))

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _progress(total: int, name: str, enabled: bool):
    from ernie_cl.progress import progress_bar

    return progress_bar(total=total, desc=f"fine-tuning {name}", unit="step", disable=not enabled)


@torch.no_grad()
def _score(model: _FineTuned, rows: list[tuple[list[int], list[int]]], task: GlueTask, scale: tuple[float, float],
           pad_id: int, device: torch.device) -> dict[str, Optional[float]]:
    model.eval()
    logits = torch.cat([model(**_pad(rows[s : s + 64], pad_id, device)).cpu() for s in range(0, len(rows), 64)])
    gold = np.asarray(task.dev_labels)
    if task.kind == "regression":
        predicted = logits.squeeze(-1).double().numpy() * scale[1] + scale[0]
        return {"pearson": _correlation(predicted, gold), "spearman": _correlation(_ranks(predicted), _ranks(gold)),
                "mse": float(np.mean((predicted - gold) ** 2))}
    predicted = logits.argmax(-1).numpy()
    f1s = [2 * np.sum((predicted == c) & (gold == c)) / (np.sum(predicted == c) + np.sum(gold == c))
           for c in sorted(set(predicted.tolist()) | set(gold.tolist()))]
    majority = np.bincount(task.train_labels).argmax()
    return {"accuracy": float(np.mean(predicted == gold)), "macro_f1": float(np.mean(f1s)),
            "majority_baseline": float(np.mean(gold == majority))}


def _ranks(values: np.ndarray) -> np.ndarray:
    """Ranks with ties averaged (what Spearman's correlation needs)."""
    values = np.asarray(values, dtype=float)
    ranks = np.empty(len(values))
    ranks[np.argsort(values, kind="stable")] = np.arange(len(values), dtype=float)
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    return np.bincount(inverse, weights=ranks)[inverse] / counts[inverse]


def _correlation(a: np.ndarray, b: np.ndarray) -> Optional[float]:
    """Pearson's r; None when either side is constant (then it is undefined)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.std() == 0 or b.std() == 0:
        return None
    return float(np.corrcoef(a, b)[0, 1])

