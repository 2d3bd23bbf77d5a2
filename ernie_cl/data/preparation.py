"""Everything a run needs before its first step: corpus, tokenizer, tasks, cached example sets.

Used by ``train`` and by ``ernie-cl tasks NAME --examples``; every expensive piece is cached
(parsed corpus, trained tokenizer, example sets), so a second run starts in seconds.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from ernie_cl.config.budgets import Stage, plan_stages
from ernie_cl.config.schedule import ScheduleConfig
from ernie_cl.corpus import Corpus, load_corpus
from ernie_cl.data.examples import cached_examples
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
    train_sets: dict[str, Any] = field(default_factory=dict)  # task or fused group "a+b" -> datasets.Dataset
    eval_sets: dict[str, Any] = field(default_factory=dict)  # task -> held-out examples


def load_schedule_corpus(schedule: ScheduleConfig, cache_dir: Path, show_progress: bool = True) -> Corpus:
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
    )


def schedule_tokenizer(schedule: ScheduleConfig, corpus: Corpus, cache_dir: Path, model_cfg: dict[str, Any]) -> TextTokenizer:
    """The schedule's tokenizer; a pretrained model brings its own unless one is configured."""
    t = schedule.tokenizer
    if t.pretrained:
        return load_tokenizer(t.pretrained)
    if "pretrained" in model_cfg:
        return load_tokenizer(model_cfg["pretrained"])
    texts = (s.text for d in corpus.train for s in d.sentences())
    return build_or_load_tokenizer(texts, corpus.fingerprint, cache_dir, vocab_size=t.vocab_size, lowercase=t.lowercase)


def prepare(
    schedule: ScheduleConfig,
    model_cfg: dict[str, Any],
    cache_dir: Optional[Path] = None,
    task_names: Optional[list[str]] = None,
    show_progress: bool = True,
) -> Prepared:
    from pretrain_tasks import get_task_class
    from pretrain_tasks._packed import FusedPackedTasks

    cache_dir = Path(cache_dir or default_cache_dir())
    corpus = load_schedule_corpus(schedule, cache_dir, show_progress)
    tokenizer = schedule_tokenizer(schedule, corpus, cache_dir, model_cfg)
    seq_len = schedule.training.seq_len
    names = task_names or schedule.task_names()
    tasks = {}
    for name in names:
        options = schedule.tasks[name].options if name in schedule.tasks else {}
        tasks[name] = get_task_class(name)(tokenizer, seq_len, options)
    stages = plan_stages(schedule)
    prepared = Prepared(corpus, tokenizer, tasks, stages)
    workers = schedule.training.data_workers or os.cpu_count() or 1
    common = dict(seed=schedule.seed, corpus_fingerprint=corpus.fingerprint, cache_dir=cache_dir, workers=workers)
    for name, task in tasks.items():
        prepared.train_sets[name] = cached_examples(task, corpus.train, split="train", **common)
        prepared.eval_sets[name] = cached_examples(task, corpus.heldout, split="heldout", **common)
    for group in dict.fromkeys(s.fused for s in stages if s.fused and set(s.fused) <= set(tasks)):
        fused = FusedPackedTasks([tasks[t] for t in group])
        prepared.train_sets["+".join(group)] = cached_examples(fused, corpus.train, split="train", **common)
    return prepared
