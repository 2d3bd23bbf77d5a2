"""The pre-training task protocol and its registry: the only things a new task must know.

A task turns documents into labelled examples, owns its head, its loss and its held-out metric, and
names its trivial baseline. Every example is a dict of three int lists with one shared layout:

- ``input_ids``: ``[CLS] ... [SEP] (... [SEP])``, at most ``seq_len`` ids;
- ``token_type_ids``: segment ids, same length;
- ``labels``: for ``level == "token"`` one label per position (``IGNORE`` = not a target);
  for ``level == "sentence"`` a single class id, predicted from the [CLS] position.

Adding a task = one module in ``pretrain_tasks/`` whose class is decorated with
``@register_task``; the registry checks the protocol at import time and refuses duplicates.
"""

from __future__ import annotations

import random
from collections import Counter
from typing import Any, ClassVar, Iterable, Literal, Sequence

import torch
from torch import nn

from ernie_cl.corpus.document import Document
from ernie_cl.data.tokenizer import TextTokenizer
from ernie_cl.kernels.cross_entropy import cross_entropy, predictions
from ernie_cl.errors import ConfigError, TaskRegistrationError

IGNORE = -100
LEVELS = ("token", "sentence")


class PretrainTask:
    """Base class of every pre-training task. Subclasses set the class attributes and implement
    ``build_examples``, ``make_head`` and ``num_labels``; the rest has working defaults."""

    name: ClassVar[str]
    level: ClassVar[Literal["token", "sentence"]]
    metric_name: ClassVar[str] = "accuracy"
    #: Options a schedule may set for this task, with their defaults (unknown keys are refused).
    default_options: ClassVar[dict[str, Any]] = {}

    def __init__(self, tokenizer: TextTokenizer, seq_len: int, options: dict[str, Any] | None = None):
        options = dict(options or {})
        unknown = sorted(set(options) - set(self.default_options))
        if unknown:
            known = ", ".join(sorted(self.default_options)) or "none"
            raise ConfigError(f"task '{self.name}': unknown option(s) {', '.join(unknown)}; known options: {known}")
        self.options = {**self.default_options, **options}
        self.tokenizer = tokenizer
        self.seq_len = seq_len
        self.validate_options()

    # --- what a task must provide -------------------------------------------------------------
    @property
    def num_labels(self) -> int:
        raise NotImplementedError

    def build_examples(self, doc: Document, rng: random.Random) -> list[dict[str, list[int]]]:
        """Labelled examples from one document. Pure: the same doc and rng state give the same output."""
        raise NotImplementedError

    def make_head(self, hidden_size: int, input_embeddings: nn.Embedding) -> nn.Module:
        """A module mapping selected hidden states ``[N, hidden]`` to logits ``[N, num_labels]``."""
        raise NotImplementedError

    # --- defaults a task may override ---------------------------------------------------------
    def fit(self, documents: Sequence[Document]) -> None:
        """See the whole split once before ``build_examples`` is called on its documents: for tasks
        that pair a document with others (negatives from other documents, a BM25 index) or need
        corpus statistics. Raise ``CorpusError`` naming the task and what it needs when the split
        is too small. The default needs nothing."""

    def validate_options(self) -> None:
        """Raise ConfigError for option values that make no sense."""

    def select(self, hidden: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The hidden states the head sees and their targets: only labelled positions (token level,
        so a vocabulary-sized head decodes the targets alone) or the [CLS] position (sentence level)."""
        if self.level == "token":
            keep = labels != IGNORE
            return hidden[keep], labels[keep]
        return hidden[:, 0], labels.reshape(-1)

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if targets.numel() == 0:  # a batch without targets contributes nothing, but keeps the graph
            return logits.sum() * 0.0
        return cross_entropy(logits, targets)  # F.cross_entropy's value; a fused kernel on CPU

    def metric_counts(self, logits: torch.Tensor, targets: torch.Tensor) -> tuple[int, int]:
        """(correct, total) so that metrics aggregate exactly over batches."""
        # the fused cross-entropy found the predictions as it read the logits (7 ms a step saved at
        # the benchmark's sizes); otherwise max(-1).indices, argmax's result (the first maximal
        # index, NaN counting as maximal) at about a third of its cost on CPU
        predicted = predictions(logits, targets)
        if predicted is None:
            predicted = logits.max(-1).indices
        return int((predicted == targets).sum()), int(targets.numel())

    def trivial_baseline(self, labels: Iterable[list[int]]) -> float:
        """Accuracy of always predicting the most common target (majority class; for masking the
        most frequent token), measured on the given examples' labels."""
        counts: Counter[int] = Counter()
        for row in labels:
            counts.update(x for x in row if x != IGNORE)
        total = sum(counts.values())
        return counts.most_common(1)[0][1] / total if total else 0.0

    def label_name(self, label: int) -> str:
        """A readable name of a label id (class name, or token for vocabulary-sized heads)."""
        return str(label)

    def describe_example(self, example: dict[str, list[int]]) -> str:
        """Human-readable rendering of one example (``ernie-cl tasks NAME --examples N``)."""
        tokens = [self.tokenizer.id_to_token(i) for i in example["input_ids"]]
        if self.level == "sentence":
            return f"{' '.join(tokens)}\n  label: {example['labels'][0]}"
        marked = [f"{t}<{lab}>" if lab != IGNORE else t for t, lab in zip(tokens, example["labels"])]
        return " ".join(marked)

    def fingerprint_data(self) -> dict[str, Any]:
        """Everything that changes the examples; part of the example-cache key."""
        return {"name": self.name, "options": self.options, "seq_len": self.seq_len, "version": getattr(self, "version", 1)}


# --- registry -----------------------------------------------------------------------------------
_REGISTRY: dict[str, type[PretrainTask]] = {}
_REQUIRED = ("build_examples", "make_head", "num_labels")


def register_task(cls: type[PretrainTask]) -> type[PretrainTask]:
    """Class decorator: check the task protocol and add the task under ``cls.name``."""
    where = f"{cls.__module__}.{cls.__qualname__}"
    if not (isinstance(cls, type) and issubclass(cls, PretrainTask)):
        raise TaskRegistrationError(f"{where}: a task must subclass pretrain_tasks.base.PretrainTask")
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not name.isidentifier():
        raise TaskRegistrationError(f"{where}: set a class attribute `name` (a lower_snake_case identifier)")
    if getattr(cls, "level", None) not in LEVELS:
        raise TaskRegistrationError(f"{where}: class attribute `level` must be one of {LEVELS}")
    missing = [m for m in _REQUIRED if getattr(cls, m) is getattr(PretrainTask, m)]
    if missing:
        raise TaskRegistrationError(f"{where}: missing required method(s) {', '.join(missing)}")
    if name in _REGISTRY and _REGISTRY[name] is not cls:
        other = _REGISTRY[name]
        raise TaskRegistrationError(f"{where}: task name '{name}' is already registered by {other.__module__}.{other.__qualname__}")
    _REGISTRY[name] = cls
    return cls


def registered_tasks() -> dict[str, type[PretrainTask]]:
    return dict(_REGISTRY)


def get_task_class(name: str) -> type[PretrainTask]:
    if name not in _REGISTRY:
        raise ConfigError(f"unknown task '{name}'; known tasks: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]
