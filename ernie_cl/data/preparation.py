"""Everything a run needs before its first step: corpus, tokenizer, tasks, cached example sets.

Used by ``ernie-cl prepare`` (this alone), ``train`` and ``ernie-cl tasks NAME --examples``; every
expensive piece is cached (parsed corpus, trained tokenizer, example sets), so a second run starts in
seconds. ``Prepared.report`` says what each stage took: seconds and bytes on disk.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional

from ernie_cl.config.budgets import Stage, plan_stages
from ernie_cl.config.schedule import ScheduleConfig
from ernie_cl.corpus import Corpus, load_corpus
from ernie_cl.corpus.workers import engine_cpus, lean_collection, use_engine, use_workers
from ernie_cl.data.examples import cached_example_sets
from ernie_cl.data.tokenizer import TextTokenizer, build_or_load_tokenizer, load_tokenizer


def default_cache_dir() -> Path:
    """``$ERNIE_CL_CACHE``, else ``$XDG_CACHE_HOME/ernie-cl``, else ``~/.cache/ernie-cl``."""
    if os.environ.get("ERNIE_CL_CACHE"):
        return Path(os.environ["ERNIE_CL_CACHE"])
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return base / "ernie-cl"


@dataclass
class Prepared:
    corpus: Corpus
    tokenizer: TextTokenizer
    tasks: dict[str, Any]  # name -> PretrainTask, in the schedule's task order (= task ids)
    stages: list[Stage] = field(default_factory=list)  # budgets per stage, fused groups marked
    train_sets: dict[str, Any] = field(default_factory=dict)  # task or fused group "a+b" -> ExampleSet
    eval_sets: dict[str, Any] = field(default_factory=dict)  # task -> held-out examples
    report: list[dict[str, Any]] = field(default_factory=list)  # per stage: {"stage", "seconds", "bytes"}


@contextlib.contextmanager
def _timed(report: list[dict[str, Any]], stage: str) -> Iterator[dict[str, Any]]:
    """Append ``{"stage", "seconds", "bytes"}`` to ``report``; the caller may fill in ``bytes``."""
    entry: dict[str, Any] = {"stage": stage, "seconds": 0.0, "bytes": None}
    start = time.perf_counter()
    yield entry
    entry["seconds"] = time.perf_counter() - start
    report.append(entry)


def _folder_bytes(folder: Optional[Path]) -> Optional[int]:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) if folder and folder.is_dir() else None


def load_schedule_corpus(schedule: ScheduleConfig, cache_dir: Path, show_progress: bool = True,
                         workers: Optional[int] = None, build: bool = True) -> Corpus:
    """The schedule's corpus (parsed by ``workers`` processes on a cache miss; default as for examples)."""
    c = schedule.corpus
    return load_corpus(
        source=c.source,
        path=c.path,
        cache_dir=cache_dir,
        max_documents=c.max_documents,
        eval_fraction=c.eval_fraction,
        phrases=c.phrases,
        phrase_min_count=c.phrase_min_count,
        phrase_threshold=c.phrase_threshold,
        spacy_model=c.spacy_model,
        text_field=c.text_field,
        title_field=c.title_field,
        split=c.split,
        show_progress=show_progress,
        workers=workers or schedule.training.data_workers or os.cpu_count() or 1,
        build=build,
    )


def schedule_tokenizer(schedule: ScheduleConfig, corpus: Corpus, cache_dir: Path, model_cfg: dict[str, Any],
                       build: bool = True) -> TextTokenizer:
    """The schedule's tokenizer; a pretrained model brings its own unless one is configured."""
    t = schedule.tokenizer
    if t.pretrained:
        return load_tokenizer(t.pretrained)
    if "pretrained" in model_cfg:
        return load_tokenizer(model_cfg["pretrained"])
    documents, sample = tokenizer_sample(corpus.train, t.sample_chars)
    if hasattr(documents, "sentence_batches"):  # a store's view: the text column alone, in batches
        texts = documents.sentence_batches()
    else:
        texts = (s.text for d in documents for s in d.sentences())
    return build_or_load_tokenizer(texts, corpus.fingerprint, cache_dir, vocab_size=t.vocab_size, lowercase=t.lowercase,
                                   sample=sample, build=build)


def tokenizer_sample(train, sample_chars: int):
    """(documents, name of the sample): all of the training split when it has at most
    ``sample_chars`` characters, else the documents whose id hash's low 32 bits, read as a
    fraction, are below sample_chars / total: about sample_chars of text spread over the whole
    corpus, the same on every run (the held-out split reads the hash's high bits)."""
    import numpy as np

    if not hasattr(train, "char_counts") or int(train.char_counts().sum()) <= sample_chars:
        return train, None
    fraction = sample_chars / int(train.char_counts().sum())
    low = (train.store.hashes[train.indices] & np.uint64(0xFFFFFFFF)).astype(np.float64) / 2.0**32
    return train.store.view(train.indices[low < fraction]), f"sample of {sample_chars} characters"


def prepare(
    schedule: ScheduleConfig,
    model_cfg: dict[str, Any],
    cache_dir: Optional[Path] = None,
    task_names: Optional[list[str]] = None,
    show_progress: bool = True,
    workers: Optional[int] = None,
    engine: str = "local",
    ray_address: Optional[str] = None,
    build: bool = True,
) -> Prepared:
    """Corpus, tokenizer, tasks and every example set of the schedule (built where not cached).
    ``workers``: processes (or Ray tasks at a time) that parse the corpus and build examples
    (default ``training.data_workers``, else all cores, or with Ray all the cluster's CPUs).
    ``engine``: ``local`` (forked processes) or ``ray`` (the same stage functions as Ray tasks over
    shard ids; Ray started here, or the cluster at ``ray_address``, whose nodes must all see
    ``cache_dir`` and the corpus at the same paths). The result does not depend on the engine.
    ``build=False``: read everything from the cache, and a one-line CacheMissingError naming the first
    thing that is not there (training ranks other than 0 read what rank 0 or ``prepare`` built)."""
    explicit = workers or schedule.training.data_workers
    with use_engine(engine, ray_address, num_cpus=explicit or os.cpu_count() or 1):
        workers = explicit or engine_cpus()
        with use_workers(workers), lean_collection():  # a fit may spread its own work (map_ranges)
            return _prepare(schedule, model_cfg, cache_dir, task_names, show_progress, workers, build)


def _prepare(schedule: ScheduleConfig, model_cfg: dict[str, Any], cache_dir: Optional[Path],
             task_names: Optional[list[str]], show_progress: bool, workers: int, build: bool = True) -> Prepared:
    from pretrain_tasks import get_task_class
    from pretrain_tasks._packed import FusedPackedTasks, PackedTokenTask

    cache_dir = Path(cache_dir or default_cache_dir())
    report: list[dict[str, Any]] = []
    with _timed(report, "corpus") as entry:
        corpus = load_schedule_corpus(schedule, cache_dir, show_progress, workers, build)
        entry["bytes"] = _folder_bytes(corpus.cache_path)
    with _timed(report, "tokenizer"):
        tokenizer = schedule_tokenizer(schedule, corpus, cache_dir, model_cfg, build)
    seq_len = schedule.training.seq_len
    names = task_names or schedule.task_names()
    tasks = {}
    for name in names:
        options = schedule.tasks[name].options if name in schedule.tasks else {}
        tasks[name] = get_task_class(name)(tokenizer, seq_len, options)
        if isinstance(tasks[name], PackedTokenTask):
            tasks[name].fill_chunks = schedule.training.fill_chunks
    stages = plan_stages(schedule)
    prepared = Prepared(corpus, tokenizer, tasks, stages, report=report)
    common = dict(seed=schedule.seed, corpus_fingerprint=corpus.fingerprint, cache_dir=cache_dir, workers=workers,
                  show_progress=show_progress, build=build)

    def build_sets(sets: dict[str, Any], documents, split: str) -> dict[str, Any]:
        """One pass over the split for all its sets; a report line per set (its share of the time)."""
        built = cached_example_sets(sets, documents, split=split, **common)
        for name, (example_set, seconds) in built.items():
            report.append({"stage": f"{name} {split}", "seconds": seconds, "bytes": example_set.num_bytes})
        return {name: example_set for name, (example_set, _) in built.items()}

    fused_groups = list(dict.fromkeys(s.fused for s in stages if s.fused and set(s.fused) <= set(tasks)))
    # a task that every stage trains inside a fused group never reads its own training set:
    # building it would cost as much as the fused set again (a third of a large prepare)
    train = {name: task for name, task in tasks.items() if task_names or not fused_groups or _trained_alone(name, stages)}
    train |= {"+".join(group): FusedPackedTasks([tasks[t] for t in group]) for group in fused_groups}
    prepared.train_sets = build_sets(train, corpus.train, "train")
    prepared.eval_sets = build_sets(dict(tasks), corpus.heldout, "heldout")
    return prepared


def _trained_alone(name: str, stages: list[Stage]) -> bool:
    """Whether some stage trains ``name`` on its own example set (not inside a fused group)."""
    return any(name in s.budgets and name not in s.fused for s in stages)
