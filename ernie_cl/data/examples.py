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
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any, Iterator, Sequence

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


def _build_shard(task, documents: Sequence[Document], seed: int, compact: bool = False) -> dict[str, Any]:
    """The examples of some documents, by column: lists of rows, or with ``compact`` one
    ``store.RowColumn`` a column (8 bytes a value instead of a Python int's 36: a shard of 4 MB of
    text is about a million tokens a column, held until it is written)."""
    columns: dict[str, Any] = {c: store.RowColumn() if compact else [] for c in columns_of(task)}
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
def _reported(task, documents: int) -> Iterator[None]:
    """Any failure, in a worker or not, surfaces as one ErnieClError naming the task (the original
    exception is its ``__cause__``, shown with ``--debug``); a worker that dies (e.g. killed for
    lack of memory) is a DataBuildError instead of a run that hangs."""
    try:
        yield
    except BrokenProcessPool:
        raise DataBuildError(f"task '{task.name}': a data worker process died while building examples from "
                             f"{documents} document(s) (killed by the system, often for lack of memory); set "
                             "training.data_workers lower (e.g. 1) or free memory, then run again") from None
    except ErnieClError as exc:
        if f"'{task.name}'" in str(exc) or str(exc).startswith(task.name):
            raise
        raise type(exc)(f"task '{task.name}': {exc}") from exc
    except Exception as exc:  # noqa: BLE001 - a task bug or a worker fault, reported as one line naming the task
        lines = str(exc).strip().splitlines()
        detail = f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
        raise DataBuildError(f"task '{task.name}': building examples failed ({detail}); run with --debug for "
                             "the traceback") from exc


def _build_forked_range(bounds: tuple[int, int]) -> dict[str, list[list[int]]]:
    start, end = bounds
    return _build_shard(SHARED["task"], SHARED["documents"][start:end], SHARED["seed"])


def _write_forked_shard(index: int) -> tuple[int, dict[str, Any]]:
    """Build one document shard's examples and write them to the set's folder; only the marker
    (a few counts) goes back to the parent."""
    f = SHARED
    start, end = f["bounds"][index]
    rows = _build_shard(f["task"], f["documents"][start:end], f["seed"], compact=True)
    return index, store.write_shard(f["folder"], index, rows, f["types"], f["task"].tokenizer.sep_id, f["point"])


def cached_examples(task, documents: Sequence[Document], *, split: str, seed: int, corpus_fingerprint: str,
                    cache_dir: str | os.PathLike, workers: int = 1, shard_chars: int | None = None,
                    show_progress: bool = False, build: bool = True) -> store.ExampleSet:
    """The task's examples for one split (built once, shard by shard, then memory-mapped; see
    ``example_store``). A killed build continues where it stopped; damaged shards are rebuilt.
    ``shard_chars``: text per shard (default ``shard_size`` of the split). ``build=False``: only
    from the cache (a CacheMissingError naming what is missing)."""
    from ernie_cl.progress import progress_bar

    chars = documents.char_counts() if hasattr(documents, "char_counts") else [  # a store view: nothing decoded
        sum(len(s.text) for s in doc.sentences()) for doc in documents]
    shard_chars = shard_chars or shard_size(int(sum(chars)))
    key = examples_fingerprint(task, corpus_fingerprint, task.tokenizer.fingerprint, seed, split, shard_chars)
    folder = Path(cache_dir) / "examples" / task.name / f"{split}-{key}"
    bounds = store.shard_bounds(chars, shard_chars)
    types = store.column_types(columns_of(task), task.tokenizer.vocab_size, _label_sizes(task))

    def build_missing(missing: list[int]) -> Iterator[tuple[int, dict[str, Any]]]:
        if not build:
            raise CacheMissingError(f"task '{task.name}': {len(missing)} of {len(bounds)} {split} example shard(s) are "
                              f"not in '{folder}'")
        # Progress in characters of text (shown as B: about a byte a character in English), so the
        # rate reads as MB/s of text and the ETA holds whatever the shard sizes.
        shard_text = [int(sum(chars[a:b])) for a, b in bounds]
        with _reported(task, len(documents)), progress_bar(total=sum(shard_text[i] for i in missing), unit="B",
                                                           unit_scale=True, desc=f"{task.name} {split} examples",
                                                           disable=not show_progress) as bar:
            task.fit(documents)
            for done, (index, marker) in enumerate(ordered_map(
                    _write_forked_shard, missing, workers if len(missing) > 1 else 1, task=task, documents=documents,
                    seed=seed, bounds=bounds, folder=folder, types=types, point=f"example-shard:{task.name}/{split}"), 1):
                bar.update(shard_text[index])
                bar.set_postfix_str(f"{done}/{len(missing)} shards", refresh=False)
                yield index, marker

    return store.build_set(folder, len(bounds), build_missing, types, task.tokenizer.sep_id,
                           describe=f"task '{task.name}' ({split})",
                           empty_message=f"task '{task.name}' built no {split} examples from {len(documents)} "
                                         "document(s); use a larger corpus")


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
