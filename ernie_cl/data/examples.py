"""Cached example sets and resumable per-task batch streams.

Examples are built once per (corpus, tokenizer, task configuration, seed, split) and cached under
``CACHE/examples/<task>/<split>-<fingerprint>/`` as one compact Arrow file per document shard, each
written by the worker process that built it (``example_store``); a second run opens them
memory-mapped. Each document's examples come from an RNG seeded by (seed, task, document id), so a
build is reproducible and independent of document order, shard layout and number of workers.

A task's stream is a function of its position alone: the example at position q is
``shard[perm_e[q mod N]]`` with ``e = q // N``, ``perm_e`` a permutation seeded by (seed, task, e)
and ``shard`` the N rows of this rank (rows r, r + W, ... of W processes; every row with one).
Resuming therefore only needs the position, and a resumed run draws exactly what the
uninterrupted run would have drawn. With length grouping (``group`` > 1 batches) the positions of
each window of ``group`` batches are sorted by example length and cut into batches served in a
seeded order: the same examples in the same windows, regrouped so that a batch carries little
padding (sentence pairs vary from a dozen tokens to ``seq_len``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import time
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import numpy as np
import torch

from ernie_cl.corpus.document import Document
from ernie_cl.corpus.workers import SHARED, ordered_map
from ernie_cl.data import example_store as store
from ernie_cl.errors import CacheMissingError, CorpusError, DataBuildError, ErnieClError

INPUT_COLUMNS = ("input_ids", "token_type_ids")
IGNORE = -100
# A split's documents are cut into shards, the unit of parallel work, of resuming and of one file:
# 64 shards (enough to keep every core busy to the end) of at least 1,000 and at most 4,000,000
# characters of text; a function of the split alone, so workers never change the layout.
SHARDS_PER_SET, MIN_SHARD_CHARS, MAX_SHARD_CHARS = 64, 1_000, 4_000_000


def shard_size(total_chars: int) -> int:
    return min(MAX_SHARD_CHARS, max(MIN_SHARD_CHARS, -(-total_chars // SHARDS_PER_SET)))


def columns_of(task) -> tuple[str, ...]:
    """Input columns plus the task's label column(s): ``labels``, or ``labels:<task>`` per member
    of a fused set of token-level tasks."""
    return INPUT_COLUMNS + tuple(getattr(task, "label_columns", ("labels",)))


def examples_fingerprint(task, corpus_fingerprint: str, tokenizer_fingerprint: str, seed: int, split: str,
                         shard_chars: int) -> str:
    payload = json.dumps([task.fingerprint_data(), corpus_fingerprint, tokenizer_fingerprint, seed, split,
                          {"store": store.FORMAT, "shard_chars": shard_chars}], sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def document_rng(seed: int, task_name: str, doc_id: str) -> random.Random:
    """The random source of one document's examples: the same on every run, worker and process."""
    return random.Random(f"{seed}:{task_name}:{doc_id}")


def _build_shard(task, documents: Sequence[Document], seed: int) -> dict[str, list[list[int]]]:
    """The examples of some documents, by column, in memory (``build_examples``)."""
    columns: dict[str, list[list[int]]] = {c: [] for c in columns_of(task)}
    for doc in documents:
        rng = document_rng(seed, task.name, doc.id)
        for example in task.build_examples(doc, rng):
            for c, values in columns.items():
                values.append(example[c])
    return columns


def build_examples(task, documents: Sequence[Document], seed: int, workers: int = 1) -> dict[str, list[list[int]]]:
    """Fit the task on the split, then run its generator over every document with a per-document
    seeded RNG, in memory (``cached_examples`` is the way to build a whole split: on disk, shard by
    shard). With ``workers > 1`` document ranges are built in forked processes; the result is
    identical to a serial build (same RNG per document, ranges concatenated in order)."""
    with _reported(task, len(documents)):
        task.fit(documents)
        bounds = [(round(i * len(documents) / (4 * workers)), round((i + 1) * len(documents) / (4 * workers)))
                  for i in range(4 * workers)]
        parts = list(ordered_map(_build_forked_range, bounds, workers if len(documents) >= 2 * workers else 1,
                                 task=task, documents=documents, seed=seed))
        return {c: [row for part in parts for row in part[c]] for c in columns_of(task)}


@contextlib.contextmanager
def _reported(task, documents: int, names: Optional[str] = None) -> Iterator[None]:
    """Any failure, in a worker or not, surfaces as one ErnieClError naming the task (the original
    exception is its ``__cause__``, shown with ``--debug``); a worker that dies (e.g. killed for
    lack of memory) is a DataBuildError instead of a run that hangs. ``names``: what the message
    names instead of ``task 'NAME'`` (the tasks of a pass, when a worker died among them)."""
    who = names or f"task '{task.name}'"
    try:
        yield
    except BrokenProcessPool:
        raise DataBuildError(f"{who}: a data worker process died while building examples from "
                             f"{documents} document(s) (killed by the system, often for lack of memory); set "
                             "training.data_workers lower (e.g. 1) or free memory, then run again") from None
    except ErnieClError as exc:
        if names or f"'{task.name}'" in str(exc) or str(exc).startswith(task.name):
            raise
        raise type(exc)(f"task '{task.name}': {exc}") from exc
    except Exception as exc:  # noqa: BLE001 - a task bug or a worker fault, reported as one line naming the task
        lines = str(exc).strip().splitlines()
        detail = f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
        raise DataBuildError(f"{who}: building examples failed ({detail}); run with --debug for "
                             "the traceback") from exc


def _build_forked_range(bounds: tuple[int, int]) -> dict[str, list[list[int]]]:
    start, end = bounds
    return _build_shard(SHARED["task"], SHARED["documents"][start:end], SHARED["seed"])


def _write_forked_shard(index: int) -> tuple[int, dict[str, Any], dict[str, float]]:
    """Build one document shard's examples for every set that lacks it and write them to the sets'
    folders; only the markers and the seconds spent on each set go back to the parent. Every
    document is decoded once and its sentences tokenized once for all the sets (``remembering``)."""
    f = SHARED
    start, end = f["bounds"][index]
    names = f["needs"][index]
    sets = {name: f["sets"][name] for name in names}
    rows = {name: {c: store.RowColumn(store.TYPE_CODES[t]) for c, t in s.types.items()} for name, s in sets.items()}
    seconds = dict.fromkeys(names, 0.0)
    tokenizer = f["tokenizer"]
    for doc in f["documents"][start:end]:
        with tokenizer.remembering(s.text for s in doc.sentences()):
            for name, example_set in sets.items():
                began = time.perf_counter()
                with _reported(example_set.task, end - start):  # names the task whose examples failed
                    rng = document_rng(f["seed"], example_set.task.name, doc.id)
                    _append(example_set, rows[name], example_set.task.build_examples(doc, rng))
                seconds[name] += time.perf_counter() - began
    markers = {}
    for name, example_set in sets.items():
        began = time.perf_counter()
        markers[name] = store.write_shard(example_set.folder, index, rows.pop(name), example_set.types,
                                          tokenizer.sep_id, f"example-shard:{example_set.task.name}/{f['split']}")
        seconds[name] += time.perf_counter() - began
    return index, markers, seconds


def _append(example_set: "_PendingSet", columns: dict[str, Any], examples: list[dict[str, list[int]]]) -> None:
    try:
        for example in examples:
            for c, values in columns.items():
                values.append(example[c])
    except OverflowError:  # a value the column's stored type cannot hold: say which column
        for c in columns:
            limits, values = np.iinfo(example_set.types[c]), [v for e in examples for v in e[c]]
            if values and (min(values) < limits.min or max(values) > limits.max):
                raise DataBuildError(f"column '{c}' holds values outside {example_set.types[c]} ({min(values)}.."
                                     f"{max(values)}); the task's num_labels or the vocabulary size is wrong") from None
        raise


@dataclass
class _PendingSet:
    """One example set of a split pass: where it lives, its stored types and what is built of it."""

    task: Any
    folder: Path
    types: dict[str, str]
    done: dict[int, Any] = field(default_factory=dict)
    missing: list[int] = field(default_factory=list)
    finished: Optional[store.ExampleSet] = None
    seconds: float = 0.0  # fit in the parent plus this set's share of the pass


def cached_examples(task, documents: Sequence[Document], *, split: str, seed: int, corpus_fingerprint: str,
                    cache_dir: str | os.PathLike, workers: int = 1, shard_chars: int | None = None,
                    show_progress: bool = False, build: bool = True) -> store.ExampleSet:
    """The task's examples for one split (see ``cached_example_sets``, of which this is one set)."""
    return cached_example_sets({task.name: task}, documents, split=split, seed=seed, corpus_fingerprint=corpus_fingerprint,
                               cache_dir=cache_dir, workers=workers, shard_chars=shard_chars,
                               show_progress=show_progress, build=build)[task.name][0]


def cached_example_sets(tasks: dict[str, Any], documents: Sequence[Document], *, split: str, seed: int,
                        corpus_fingerprint: str, cache_dir: str | os.PathLike, workers: int = 1,
                        shard_chars: int | None = None, show_progress: bool = False,
                        build: bool = True) -> dict[str, tuple[store.ExampleSet, float]]:
    """Several tasks' examples for one split, built in one pass over the documents (each built
    once, shard by shard, then memory-mapped; see ``example_store``): a worker decodes a shard's
    documents once and tokenizes each sentence once for all the sets that lack that shard, so
    seven tasks cost one read of the corpus, not seven. Each set is the same as if built alone
    (each document's examples come from the task's own seeded RNG). A killed build continues
    where it stopped; damaged shards are rebuilt. Returns name -> (set, seconds): a set's fit
    plus its share of the pass's time (in proportion to the worker time it took).
    ``shard_chars``: text per shard (default ``shard_size`` of the split). ``build=False``: only
    from the cache (a CacheMissingError naming what is missing)."""
    from ernie_cl.progress import progress_bar

    chars = documents.char_counts() if hasattr(documents, "char_counts") else [  # a store view: nothing decoded
        sum(len(s.text) for s in doc.sentences()) for doc in documents]
    shard_chars = shard_chars or shard_size(int(sum(chars)))
    bounds = store.shard_bounds(chars, shard_chars)
    sets: dict[str, _PendingSet] = {}
    for name, task in tasks.items():
        key = examples_fingerprint(task, corpus_fingerprint, task.tokenizer.fingerprint, seed, split, shard_chars)
        pending = _PendingSet(task, Path(cache_dir) / "examples" / task.name / f"{split}-{key}",
                              store.column_types(columns_of(task), task.tokenizer.vocab_size, _label_sizes(task)))
        pending.finished, pending.done, pending.missing = store.pending_shards(pending.folder, len(bounds),
                                                                                f"task '{task.name}' ({split})")
        sets[name] = pending
    building = {name: s for name, s in sets.items() if s.finished is None}  # fit even with no shard: its errors say most
    if not build and any(s.missing for s in building.values()):
        s = next(s for s in building.values() if s.missing)
        raise CacheMissingError(f"task '{s.task.name}': {len(s.missing)} of {len(bounds)} {split} example shard(s) are "
                                f"not in '{s.folder}'")
    if building:
        needs = {i: [name for name, s in building.items() if i in set(s.missing)] for i in range(len(bounds))}
        indices = [i for i in range(len(bounds)) if needs[i]]
        # Progress in characters of text (shown as B: about a byte a character in English), so the
        # rate reads as MB/s of text and the ETA holds whatever the shard sizes.
        shard_text = [int(sum(chars[a:b])) for a, b in bounds]
        for s in building.values():
            with _reported(s.task, len(documents)):
                began = time.perf_counter()
                s.task.fit(documents)
                s.seconds += time.perf_counter() - began
        worker_seconds = dict.fromkeys(building, 0.0)
        began = time.perf_counter()
        names = ", ".join(f"'{s.task.name}'" for s in building.values())
        label = next(iter(building.values())).task.name if len(building) == 1 else f"{len(building)} sets"
        with _reported(None, len(documents), f"task {names}" if len(building) == 1 else f"tasks {names}"):
            with progress_bar(total=sum(shard_text[i] for i in indices), unit="B", unit_scale=True,
                              desc=f"{split} examples ({label})", disable=not show_progress) as bar:
                tokenizer = next(iter(building.values())).task.tokenizer
                for done, (index, markers, seconds) in enumerate(ordered_map(
                        _write_forked_shard, indices, workers if len(indices) > 1 else 1, documents=documents,
                        seed=seed, bounds=bounds, needs=needs, sets=building, tokenizer=tokenizer, split=split), 1):
                    for name, marker in markers.items():
                        building[name].done[index] = marker
                        worker_seconds[name] += seconds[name]
                    bar.update(shard_text[index])
                    bar.set_postfix_str(f"{done}/{len(indices)} shards", refresh=False)
        elapsed = time.perf_counter() - began
        total = sum(worker_seconds.values()) or 1.0
        for name, s in building.items():
            s.seconds += elapsed * worker_seconds[name] / total
    out = {}
    for name, s in sets.items():
        if s.finished is None:
            s.finished = store.finish_set(s.folder, len(bounds), s.done, s.types, s.task.tokenizer.sep_id,
                                          f"task '{s.task.name}' built no {split} examples from {len(documents)} "
                                          "document(s); use a larger corpus")
        out[name] = (s.finished, s.seconds)
    return out


def _label_sizes(task) -> dict[str, int]:
    """Label column -> number of label ids (what the stored integer type must hold)."""
    members = getattr(task, "members", None)
    if members is not None:
        return {f"labels:{m.name}": m.num_labels for m in members}
    return {"labels": task.num_labels}


def collate(rows: dict[str, Any], pad_id: int, sentence_level: bool, labels_of: dict[str, str],
            pad_to_multiple: int = 8) -> dict[str, Any]:
    """Pad a batch of ragged rows (as returned by ``Dataset[indices]``) into tensors.
    ``labels_of`` maps label columns to task names; ``batch["labels"]`` is ``{task: tensor}``."""
    input_ids = rows["input_ids"]
    longest = max(len(r) for r in input_ids)
    width = -(-longest // pad_to_multiple) * pad_to_multiple
    n = len(input_ids)
    ids = np.full((n, width), pad_id, dtype=np.int64)
    types = np.zeros((n, width), dtype=np.int64)
    mask = np.zeros((n, width), dtype=np.int64)
    for i, (row_ids, row_types) in enumerate(zip(input_ids, rows["token_type_ids"])):
        k = len(row_ids)
        ids[i, :k], types[i, :k], mask[i, :k] = row_ids, row_types, 1
    labels = {}
    for column, task in labels_of.items():
        padded = np.full((n, 1 if sentence_level else width), IGNORE, dtype=np.int64)
        for i, row in enumerate(rows[column]):
            padded[i, : len(row)] = row
        labels[task] = torch.from_numpy(padded)
    return {
        "input_ids": torch.from_numpy(ids),
        "token_type_ids": torch.from_numpy(types),
        "attention_mask": torch.from_numpy(mask),
        "labels": labels,
    }


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    out = {k: v.to(device) for k, v in batch.items() if k != "labels"}
    out["labels"] = {task: v.to(device) for task, v in batch["labels"].items()}
    return out


class ExampleStream:
    """An endless, resumable stream of batches over one task's training examples."""

    def __init__(self, dataset, batch_size: int, seed: int, task_name: str, pad_id: int, sentence_level: bool,
                 rank: int = 0, world: int = 1, group: int = 1):
        self.dataset = dataset
        self.group = group
        self._window, self._window_batches = -1, []
        self._lengths = dataset.lengths() if group > 1 else None
        # this rank's disjoint shard: rows rank, rank + world, ... (all rows with one process)
        self.rows = np.arange(rank, len(dataset), world, dtype=np.int64)
        if len(self.rows) == 0:
            raise CorpusError(f"task '{task_name}' has {len(dataset)} training example(s), fewer than the {world} "
                              "processes; use a larger corpus or fewer processes")
        self.labels_of = labels_of(dataset, task_name)
        self.batch_size = batch_size
        self.seed_key = [seed, int(hashlib.sha256(task_name.encode()).hexdigest()[:8], 16)]
        self.pad_id = pad_id
        self.sentence_level = sentence_level
        self.position = 0
        self._epoch = -1
        self._perm = np.empty(0, dtype=np.int64)

    def _permutation(self, epoch: int) -> np.ndarray:
        if epoch != self._epoch:
            self._perm = np.random.default_rng(self.seed_key + [epoch]).permutation(len(self.rows))
            self._epoch = epoch
        return self._perm

    def indices(self, start: int, count: int) -> list[int]:
        """Rows of the example set at stream positions start .. start + count - 1."""
        n = len(self.rows)
        return [int(self.rows[self._permutation(q // n)[q % n]]) for q in range(start, start + count)]

    def batch_indices(self, position: int) -> list[int]:
        """Rows of the batch that starts at stream ``position`` (see the module docstring)."""
        if self.group <= 1:
            return self.indices(position, self.batch_size)
        span = self.batch_size * self.group
        window, offset = divmod(position, span)
        if window != self._window:
            rows = self.indices(window * span, span)
            order = sorted(rows, key=lambda row: self._lengths[row])  # stable: ties keep stream order
            batches = [order[k : k + self.batch_size] for k in range(0, span, self.batch_size)]
            shuffled = np.random.default_rng(self.seed_key + [window, 1]).permutation(len(batches))
            self._window, self._window_batches = window, [batches[k] for k in shuffled]
        return self._window_batches[offset // self.batch_size]

    def next_batch(self) -> dict[str, torch.Tensor]:
        rows = self.dataset.rows(self.batch_indices(self.position))
        self.position += self.batch_size
        return collate(rows, self.pad_id, self.sentence_level, self.labels_of)

    def state_dict(self) -> dict[str, int]:
        return {"position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.position = int(state["position"])


def labels_of(dataset, task_name: str) -> dict[str, str]:
    """Label column -> task: ``labels`` belongs to the set's task; ``labels:<t>`` to task t."""
    return {c: (task_name if c == "labels" else c.split(":", 1)[1]) for c in dataset.column_names if c.startswith("labels")}


def eval_batches(dataset, batch_size: int, limit: int, pad_id: int, sentence_level: bool, task_name: str):
    """At most ``limit`` held-out examples spread evenly over the set (so every held-out document
    is represented), in fixed order and batched: every evaluation sees the same examples."""
    chosen = eval_indices(len(dataset), limit)
    for start in range(0, len(chosen), batch_size):
        yield collate(dataset.rows(chosen[start : start + batch_size]), pad_id, sentence_level, labels_of(dataset, task_name))


def eval_indices(size: int, limit: int) -> list[int]:
    if size <= limit:
        return list(range(size))
    return sorted({int(i) for i in np.linspace(0, size - 1, limit)})
