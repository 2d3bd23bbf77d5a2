"""The task contract, checked on every registered task (a new task is tested the day it is added),
and the registry's refusals: duplicate names, missing methods, bad levels, unknown options/tasks."""

from __future__ import annotations

import random

import pytest
import torch
from torch import nn

import pretrain_tasks
from ernie_cl.errors import ConfigError, TaskRegistrationError
from pretrain_tasks import IGNORE, PretrainTask, get_task_class, register_task, registered_tasks
from pretrain_tasks import base

SEQ_LEN = 128
HIDDEN = 16
TASK_NAMES = sorted(registered_tasks())


@pytest.fixture
def task_factory(tokenizer, rich_document, many_documents):
    """A task with default options, fitted on a split holding the contract document and 120 others
    (tasks that pair a document with other documents need them)."""

    def make(name):
        task = get_task_class(name)(tokenizer, SEQ_LEN)
        task.fit([rich_document, *many_documents[:40]])
        return task

    return make


@pytest.fixture
def registry_guard():
    """Whatever a test registers is removed again, so tests never see each other's throwaway tasks."""
    snapshot = dict(base._REGISTRY)
    yield snapshot
    base._REGISTRY.clear()
    base._REGISTRY.update(snapshot)


def test_the_english_word_aware_tasks_are_registered():
    assert {"knowledge_masking", "capitalization"} <= set(TASK_NAMES)
    assert all(registered_tasks()[name].name == name for name in TASK_NAMES)


@pytest.mark.parametrize("name", TASK_NAMES)
def test_examples_follow_the_layout(task_factory, tokenizer, rich_document, name):
    task = task_factory(name)
    examples = task.build_examples(rich_document, random.Random(0))
    assert examples, f"task {name} built no example from the contract document"
    for ex in examples:
        assert set(ex) >= {"input_ids", "token_type_ids", "labels"}
        ids, types, labels = ex["input_ids"], ex["token_type_ids"], ex["labels"]
        assert len(ids) == len(types) <= SEQ_LEN
        assert ids[0] == tokenizer.cls_id and ids[-1] == tokenizer.sep_id
        assert all(0 <= i < tokenizer.vocab_size for i in ids)
        assert all(t >= 0 for t in types)
        assert all(label == IGNORE or 0 <= label < task.num_labels for label in labels)
        if task.level == "token":
            assert len(labels) == len(ids)
            assert any(label != IGNORE for label in labels), "an example without a target"
        else:
            assert len(labels) == 1 and labels[0] != IGNORE
        assert isinstance(task.describe_example(ex), str) and task.describe_example(ex)


@pytest.mark.parametrize("name", TASK_NAMES)
def test_head_and_loss_train_on_built_examples(task_factory, tokenizer, rich_document, name):
    torch.manual_seed(0)
    task = task_factory(name)
    examples = task.build_examples(rich_document, random.Random(0))[:4]
    length = max(len(ex["input_ids"]) for ex in examples)
    if task.level == "token":
        labels = torch.tensor([ex["labels"] + [IGNORE] * (length - len(ex["labels"])) for ex in examples])
    else:
        labels = torch.tensor([ex["labels"] for ex in examples])
    hidden = torch.randn(len(examples), length, HIDDEN, requires_grad=True)
    head = task.make_head(HIDDEN, nn.Embedding(tokenizer.vocab_size, HIDDEN))
    selected, targets = task.select(hidden, labels)
    logits = head(selected)
    assert logits.shape == (targets.numel(), task.num_labels) and targets.numel() > 0
    loss = task.loss(logits, targets)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    assert hidden.grad is not None and hidden.grad.abs().sum() > 0
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in head.parameters())


@pytest.mark.parametrize("name", TASK_NAMES)
def test_metric_counts_on_hand_made_logits(task_factory, name):
    task = task_factory(name)
    targets = torch.tensor([0, 1, 1, 0, 1])
    logits = torch.zeros(5, task.num_labels)
    logits[torch.arange(5), targets] = 1.0
    logits[3, 1] = 2.0  # wrong: predicts 1 for a 0
    logits[4, 0] = 2.0  # wrong: predicts 0 for a 1
    assert task.metric_counts(logits, targets) == (3, 5)
    # ties go to the first maximal class, as argmax has them: a tie between 0 and 1 predicts 0
    tied = torch.zeros(2, task.num_labels)
    assert task.metric_counts(tied, torch.tensor([0, 1])) == (1, 2)
    noisy = torch.randint(0, 3, (200, task.num_labels)).float()
    labels = torch.randint(0, task.num_labels, (200,))
    assert task.metric_counts(noisy, labels) == (int((noisy.argmax(-1) == labels).sum()), 200)


@pytest.mark.parametrize("name", TASK_NAMES)
def test_trivial_baseline_is_majority_accuracy(task_factory, name):
    task = task_factory(name)
    if task.level == "token":
        labels = [[IGNORE, 1, 1, 0, IGNORE], [0, 1, IGNORE]]  # 1 three times out of five targets
        assert task.trivial_baseline(labels) == pytest.approx(3 / 5)
    else:
        assert task.trivial_baseline([[1], [1], [0]]) == pytest.approx(2 / 3)


@pytest.mark.parametrize("name", TASK_NAMES)
def test_unknown_option_lists_the_known_ones(tokenizer, name):
    cls = get_task_class(name)
    with pytest.raises(ConfigError, match=f"task '{name}': unknown option\\(s\\) no_such_option; known options: ") as err:
        cls(tokenizer, SEQ_LEN, {"no_such_option": 1})
    assert all(option in str(err.value) for option in cls.default_options)


def test_unknown_task_lists_the_known_ones():
    with pytest.raises(ConfigError, match="unknown task 'nope'; known tasks: ") as err:
        get_task_class("nope")
    assert all(name in str(err.value) for name in TASK_NAMES)


class _Complete(PretrainTask):
    """Implements the protocol; the refusals below change one thing each."""

    name = "contract_test_complete"
    level = "token"

    @property
    def num_labels(self) -> int:
        return 2

    def build_examples(self, doc, rng):
        return []

    def make_head(self, hidden_size, input_embeddings):
        return nn.Linear(hidden_size, 2)


def test_a_complete_task_registers(registry_guard):
    assert register_task(_Complete) is _Complete
    assert get_task_class("contract_test_complete") is _Complete


def test_a_duplicate_name_is_refused(registry_guard):
    duplicate = type("Duplicate", (_Complete,), {"name": "knowledge_masking"})
    with pytest.raises(TaskRegistrationError, match="task name 'knowledge_masking' is already registered by pretrain_tasks.knowledge_masking"):
        register_task(duplicate)
    assert base._REGISTRY == registry_guard


def test_a_missing_method_is_refused(registry_guard):
    class NoHead(PretrainTask):
        name = "contract_test_no_head"
        level = "sentence"

        def build_examples(self, doc, rng):
            return []

    with pytest.raises(TaskRegistrationError, match=r"missing required method\(s\) make_head, num_labels"):
        register_task(NoHead)
    assert base._REGISTRY == registry_guard


def test_a_bad_level_is_refused(registry_guard):
    bad_level = type("BadLevel", (_Complete,), {"name": "contract_test_bad_level", "level": "word"})
    with pytest.raises(TaskRegistrationError, match="`level` must be one of"):
        register_task(bad_level)
    assert base._REGISTRY == registry_guard


def test_a_class_outside_the_protocol_is_refused(registry_guard):
    with pytest.raises(TaskRegistrationError, match="must subclass pretrain_tasks.base.PretrainTask"):
        register_task(type("NotATask", (), {"name": "contract_test_not_a_task", "level": "token"}))
    assert pretrain_tasks.registered_tasks() == registry_guard
