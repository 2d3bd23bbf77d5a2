"""``ernie-cl bench``: score one encoder on the offline downstream suite (``bench_tasks``).

Two modes, each run once per seed; seed ``s`` fixes the task's train/dev split (grouped and
stratified, ``bench_tasks.load_bench_task``) and, for fine-tuning, the head, dropout and batch order,
so two models scored with the same seeds saw the same data (the paired comparisons rely on it):

- ``probe``: frozen mean-pooled features of every text (computed once per model; the split only
  picks rows) and a logistic regression trained on the train side (standardised features, L2 as
  scikit-learn's ``C=1``), scored on dev. All examples are used.
- ``finetune``: the whole encoder plus a fresh head (``finetune.finetune``). The CPU-sized default
  trains on a stratified subset of ``FINETUNE_TRAIN`` examples for ``FINETUNE_EPOCHS`` epochs and
  scores the whole dev side; ``finetune_train=None`` (``--finetune-train all``) trains on all of it.

The result of one model is the ``models`` entry that ``bench_report`` renders:
``{"kind", "source", "tasks": {task: {mode: {"metric_name", "values", "train_size", "dev_size",
"seconds", "majority_baseline", ...}}}}`` with one value per seed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch

from ernie_cl.errors import ConfigError
from ernie_cl.evaluation.bench_tasks import BENCH_TASKS, BenchTask, load_bench_task, subsample
from ernie_cl.evaluation.downstream import Loaded, probe_accuracy, sentence_features

MODES = ("probe", "finetune")
FINETUNE_TRAIN = 2000  # CPU-sized default: a few minutes a task for a small encoder on 2 cores
FINETUNE_EPOCHS = 2
ModelForSeed = Callable[[int], Loaded]  # a model per seed (a random-init reference draws its weights with the seed)


def parse_tasks(text: Optional[str]) -> tuple[str, ...]:
    """"a,b" -> ("a", "b"), checked against the suite; None or "all": every task."""
    if text is None or text.strip() == "all":
        return BENCH_TASKS
    names = tuple(t.strip() for t in text.split(",") if t.strip())
    unknown = [t for t in names if t not in BENCH_TASKS]
    if unknown or not names:
        raise ConfigError(f"unknown downstream task(s) {', '.join(unknown) or '(none given)'}; choose from "
                          f"{', '.join(BENCH_TASKS)} (comma-separated) or 'all'")
    return names


def probe_task(features: dict[str, torch.Tensor], task: BenchTask) -> float:
    """Dev accuracy of a logistic regression on the train side's frozen features."""
    train_x = torch.stack([features[t] for t in task.train_texts]).double()
    dev_x = torch.stack([features[t] for t in task.dev_texts]).double()
    return probe_accuracy(train_x, torch.tensor(task.train_labels, dtype=torch.long), dev_x,
                          torch.tensor(task.dev_labels, dtype=torch.long), len(task.label_names), 1.0 / len(task.train_texts))


def _features(loaded: Loaded, unique: Sequence[str], batch_size: int, max_len: Optional[int],
              progress: Any) -> dict[str, torch.Tensor]:
    encoder, tokenizer, _ = loaded
    rows = sentence_features(encoder, tokenizer, unique, batch_size=batch_size, task_id=0, pooling="mean",
                             max_len=max_len, progress=progress)
    return dict(zip(unique, rows))


def _as_glue(task: BenchTask, seed: int):
    from ernie_cl.evaluation.glue_tasks import GlueTask

    return GlueTask(name=task.name, kind="classification", text_columns=["text"], label_column="label",
                    train_texts=[(t,) for t in task.train_texts], train_labels=list(task.train_labels),
                    dev_texts=[(t,) for t in task.dev_texts], dev_labels=list(task.dev_labels),
                    label_names=list(task.label_names), dev_source=f"bench split, seed {seed}")


def bench_model(model_for_seed: ModelForSeed, tasks: Sequence[str] = BENCH_TASKS, seeds: Sequence[int] = (0, 1, 2),
                modes: Sequence[str] = ("probe",), finetune_train: Optional[int] = FINETUNE_TRAIN,
                finetune_epochs: int = FINETUNE_EPOCHS, batch_size: int = 64, max_len: Optional[int] = None,
                same_model_every_seed: bool = True,
                show_progress: bool = False, log: Callable[[str], None] = lambda message: None) -> dict[str, Any]:
    """Every (task, mode) scored with every seed; see the module docstring for the result.

    ``model_for_seed(seed)`` gives the model; with ``same_model_every_seed`` it is called once and
    the probe's features are computed once per task (only the split changes with the seed).
    ``max_len``: tokens per text (default 128, or the pre-training length if shorter)."""
    from ernie_cl.evaluation.finetune import finetune
    from ernie_cl.progress import progress_bar

    for mode in modes:
        if mode not in MODES:
            raise ConfigError(f"unknown bench mode '{mode}'; use probe, finetune or both")
    if not seeds:
        raise ConfigError("bench needs at least one seed")
    if finetune_train is not None and finetune_train < 10:
        raise ConfigError(f"--finetune-train must be at least 10 (or 'all'), got {finetune_train}")
    cached: dict[int, Loaded] = {}

    def model(seed: int) -> Loaded:
        key = 0 if same_model_every_seed else seed
        if key not in cached:
            cached.clear()  # one model in memory at a time
            cached[key] = model_for_seed(seed)
        return cached[key]

    out: dict[str, Any] = {}
    for name in tasks:
        out[name] = {}
        splits = [load_bench_task(name, seed) for seed in seeds]
        unique = list(dict.fromkeys(splits[0].train_texts + splits[0].dev_texts))  # duplicates encoded once
        for mode in modes:
            values, train_sizes, seconds, extra = [], [], 0.0, {}
            encodings = 1 if same_model_every_seed else len(seeds)
            bar = (progress_bar(total=encodings * len(unique), desc=f"{name} (probe features)", unit="text",
                                disable=not show_progress) if mode == "probe" else
                   progress_bar(total=len(seeds), desc=f"{name} (fine-tuning)", unit="seed", disable=not show_progress))
            features = None
            for seed, split in zip(seeds, splits):
                started = time.perf_counter()
                if mode == "probe":
                    if features is None or not same_model_every_seed:
                        features = _features(model(seed), unique, batch_size, max_len, bar)
                    values.append(probe_task(features, split))
                    train_sizes.append(len(split.train_texts))
                else:
                    chosen = subsample(split, finetune_train, seed)
                    result = finetune(model(seed), _as_glue(chosen, seed), epochs=finetune_epochs, seed=seed,
                                      batch_size=32, max_len=max_len, show_progress=show_progress)
                    values.append(result["value"])
                    train_sizes.append(len(chosen.train_texts))
                    extra = {"settings": {**result["settings"], "train_cap": finetune_train}}
                seconds += time.perf_counter() - started
                if mode == "finetune":
                    bar.update(1)
            bar.close()
            out[name][mode] = {"metric_name": "accuracy", "values": values, "seeds": list(seeds),
                               "train_size": round(float(np.mean(train_sizes))),  # grouped splits differ a little by seed
                               "dev_size": round(float(np.mean([len(s.dev_texts) for s in splits]))),
                               "majority_baseline": float(np.mean([s.majority_baseline for s in splits])),
                               "seconds": round(seconds, 1), **extra}
            log(f"{name} ({mode}): accuracy {np.mean(values):.3f} over {len(values)} seed(s) in {seconds:.0f} s")
    return out


# --- a whole suite run: several models and references, one report --------------------------------

# Corpus sources whose running text includes a downstream task's texts (never its labels).
TEXTS_IN_CORPUS = {"bundled_plus": ("wiki_topics", "bbc_topics")}


def machine() -> str:
    import os
    import platform

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"{os.cpu_count()} CPU cores"
    return f"{device}, {platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads"


def task_notes(tasks: Sequence[str], infos: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per task: description, source, licence and which models saw its texts in pre-training."""
    notes = {}
    for name in tasks:
        task = load_bench_task(name, 0)
        saw = [model for model, info in infos.items() if name in TEXTS_IN_CORPUS.get(info.get("corpus_source") or "", ())]
        notes[name] = {"description": task.description, "source": task.source, "licence": task.licence,
                       "grouped_by": task.grouped_by, "classes": len(task.label_names),
                       "in_pretraining_corpus": f"text only (no labels), for {', '.join(saw)}" if saw else False}
    return notes


@dataclass
class BenchModel:
    """One row of a suite report: how to get the model for a seed, and what it is."""

    load: ModelForSeed
    # "model" (a model given to `ernie-cl bench`) or "strategy" (compare's runs), compared with each
    # other; or "reference" (random init, the starting point), which they are measured against
    kind: str = "model"
    per_seed: bool = False  # a new model per seed (a random init draws its weights with the seed)


def run_bench(models: dict[str, BenchModel], tasks: Sequence[str] = BENCH_TASKS, seeds: Sequence[int] = (0, 1, 2),
              modes: Sequence[str] = ("probe",), title: str = "Downstream suite", commands: Sequence[str] = (),
              show_progress: bool = False, log: Callable[[str], None] = print, **options: Any) -> dict[str, Any]:
    """``bench_model`` for every named model, as the suite results that
    ``bench_report.write_suite_report`` renders (``options`` go to ``bench_model``)."""
    started = time.perf_counter()
    results: dict[str, Any] = {"title": title, "seeds": list(seeds), "modes": list(modes), "models": {},
                               "machine": machine(), "commands": list(commands), "options": dict(options)}
    infos: dict[str, dict[str, Any]] = {}
    for name, spec in models.items():
        log(f"ernie-cl bench: {name}")
        info: dict[str, Any] = {}

        def load(seed: int, spec=spec, info=info) -> Loaded:
            loaded = spec.load(seed)
            info.update(loaded[2])
            return loaded

        scores = bench_model(load, tasks, seeds, modes, same_model_every_seed=not spec.per_seed,
                             show_progress=show_progress, log=lambda m, n=name: log(f"  {n}: {m}"), **options)
        infos[name] = info
        results["models"][name] = {"kind": spec.kind, "source": info.get("checkpoint", name),
                                   "corpus_source": info.get("corpus_source"), "tasks": scores}
    results["tasks"] = task_notes(tasks, infos)
    results["wall_time_s"] = round(time.perf_counter() - started, 1)
    return results
