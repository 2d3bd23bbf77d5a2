"""GLUE-style task files for fine-tuning: TSV (GLUE's layout), CSV, JSONL/JSON, a ``save_to_disk``
folder, or a Hugging Face dataset name (offline: only datasets already in the local HF cache).

``load_glue_task`` finds the text columns by their GLUE names (sentence1/sentence2, question/sentence,
premise/hypothesis, ..., then sentence/text/...), the label column (label, gold_label, score, ...),
and whether it is classification (integer or string labels) or regression (decimal labels).
A folder holds ``train.*`` and ``dev.*`` (or validation.*); a single file is split 80/20, seeded and
stratified. The ``test`` split is never used.
"""


from __future__ import annotations

import csv
import json
import os
import re
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence, Union

import numpy as np

from ernie_cl.errors import ConfigError, CorpusError
from ernie_cl.evaluation.downstream import PathLike, stratified_folds


# --- GLUE-style tasks ----------------------------------------------------------------------------

SUFFIXES = (".tsv", ".csv", ".jsonl", ".json", ".ndjson")
DEV_STEMS = ("dev", "validation", "valid", "val", "dev_matched", "validation_matched")
PAIR_COLUMNS = (("sentence1", "sentence2"), ("question1", "question2"), ("question", "sentence"), ("premise", "hypothesis"),
                ("question", "passage"), ("sentence_A", "sentence_B"), ("text_a", "text_b"), ("text1", "text2"))
SINGLE_COLUMNS = ("sentence", "text", "review", "content", "document", "tweet")
LABEL_COLUMNS = ("label", "labels", "gold_label", "score", "similarity_score", "relatedness_score", "target", "class")
MIN_SINGLE_FILE = 10  # a single file is split 80/20: fewer rows leave a meaningless dev split
_INT = re.compile(r"[+-]?\d+")


@dataclass
class GlueTask:
    name: str
    kind: str  # "classification" | "regression"
    text_columns: list[str]
    label_column: str
    train_texts: list[tuple[str, ...]]
    train_labels: list[Any]  # class ids, or float targets
    dev_texts: list[tuple[str, ...]]
    dev_labels: list[Any]
    label_names: Optional[list[str]]  # class id -> the label as written in the data
    dev_source: str


def load_glue_task(spec: Union[PathLike, Sequence[PathLike]], config: Optional[str] = None,
                   text_columns: Optional[Sequence[str]] = None, label_column: Optional[str] = None,
                   task_type: Optional[str] = None, seed: int = 0) -> GlueTask:
    """Read a GLUE-style task.

    ``spec``: a folder with ``train.*`` and ``dev.*`` (or ``validation.*``; without one, train is
    split); one file (split 80/20, seeded, stratified for classification); a ``(train, dev)`` pair
    of files; a folder written by ``datasets``' ``save_to_disk``; or a Hugging Face dataset name
    (with ``config``), loaded from the local cache only. Files: ``.tsv`` (GLUE: header row, no
    quoting), ``.csv`` (header row), ``.jsonl`` (one object a line) or ``.json`` (a list of
    objects). Text columns are found by the GLUE names (sentence1+sentence2, question+sentence,
    premise+hypothesis, sentence, text, ...) unless given; the label column likewise (label,
    gold_label, score, ...). Integer or string labels make a classification task, decimal numbers
    (STS-B's ``3.800``) a regression task, unless ``task_type`` says otherwise.
    """
    if task_type not in (None, "classification", "regression"):
        raise ConfigError(f"task type '{task_type}' is unknown; use 'classification' or 'regression'")
    name, train_rows, dev_rows, where = _read_splits(spec, config)
    columns = list(train_rows[0])
    texts = _text_columns(columns, text_columns, where)
    label = _label_column(columns, label_column, where)
    dev_source = "dev split"
    if dev_rows is None:
        if len(train_rows) < MIN_SINGLE_FILE:
            raise CorpusError(f"{where}: too few examples to split into train and dev ({len(train_rows)}; need at least "
                              f"{MIN_SINGLE_FILE}); add examples or give a dev file")
        raw = [_cell(r, label, i, where, required=True) for i, r in enumerate(train_rows)]
        classify = task_type == "classification" or (task_type is None and not _looks_decimal(raw))
        chosen = stratified_folds([str(v) for v in raw], 5, seed)[0] if classify else \
            np.random.default_rng(seed).permutation(len(raw))[: len(raw) // 5].tolist()
        dev_index = set(chosen)
        dev_rows = [r for i, r in enumerate(train_rows) if i in dev_index]
        train_rows = [r for i, r in enumerate(train_rows) if i not in dev_index]
        dev_source = f"20% of {where} (seed {seed}{', stratified' if classify else ''})"
    train_raw = [_cell(r, label, i, where, required=True) for i, r in enumerate(train_rows)]
    dev_raw = [_cell(r, label, i, f"{where} (dev)", required=True) for i, r in enumerate(dev_rows)]
    kind = task_type or ("regression" if _looks_decimal(train_raw + dev_raw) else "classification")
    if kind == "regression":
        train_labels, dev_labels, names = _floats(train_raw, where), _floats(dev_raw, where), None
    else:
        train_labels, dev_labels, names = _class_ids(train_raw, dev_raw, where)
    if len(train_labels) < 2 or len(dev_labels) < 2:
        raise CorpusError(f"{where}: too few examples ({len(train_labels)} train, {len(dev_labels)} dev; "
                          "need at least 2 of each)")
    if kind == "classification" and len(set(train_labels)) < 2:
        raise CorpusError(f"{where}: every training example has the label '{names[0]}'; a classifier needs two or more labels")

    def text_rows(rows: list[dict]) -> list[tuple[str, ...]]:
        return [tuple(str(_cell(r, c, i, where)) for c in texts) for i, r in enumerate(rows)]

    return GlueTask(name, kind, texts, label, text_rows(train_rows), train_labels, text_rows(dev_rows), dev_labels,
                    names, dev_source)


def _read_splits(spec, config: Optional[str]) -> tuple[str, list[dict], Optional[list[dict]], str]:
    """(task name, train rows, dev rows or None, where: for messages)."""
    if isinstance(spec, (list, tuple)):
        if len(spec) != 2:
            raise ConfigError("give a task as one path, a dataset name, or a (train file, dev file) pair")
        train, dev = (Path(p) for p in spec)
        return train.parent.name or train.stem, _read_file(train), _read_file(dev), str(train)
    path = Path(spec).expanduser()
    if path.is_dir():
        if (path / "dataset_dict.json").is_file() or (path / "dataset_info.json").is_file():
            import datasets

            return path.name, *_dataset_splits(datasets.load_from_disk(str(path)), str(path))
        files = {p.stem: p for p in sorted(path.iterdir()) if p.is_file() and p.suffix.lower() in SUFFIXES}
        if "train" not in files:
            raise ConfigError(f"'{path}' holds no train.tsv, train.csv or train.jsonl; a task folder holds train.* and "
                              "dev.* (or validation.*)")
        dev = next((files[s] for s in DEV_STEMS if s in files), None)
        return path.name, _read_file(files["train"]), _read_file(dev) if dev else None, str(files["train"])
    if path.is_file():
        return path.stem, _read_file(path), None, str(path)
    if path.suffix.lower() in SUFFIXES or str(spec).startswith((".", "/", "~")) or (os.sep in str(spec) and path.parent.is_dir()):
        raise ConfigError(f"task file '{spec}' does not exist; give a TSV/CSV/JSONL file, a task folder or a dataset name")
    return _hub_dataset(str(spec), config)


def _hub_dataset(name: str, config: Optional[str]) -> tuple[str, list[dict], Optional[list[dict]], str]:
    import datasets

    label = f"{name}{'/' + config if config else ''}"
    try:
        with _offline():
            loaded = datasets.load_dataset(name, config)
    except Exception as exc:  # noqa: BLE001 - datasets raises many unrelated types; all mean "not loadable offline"
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(f"cannot load Hugging Face dataset '{label}' offline ({first[:200]}); ernie-cl downloads nothing: "
                          "put it in the local Hugging Face cache first, or pass a local TSV/CSV/JSONL file or folder") from None
    return label.replace("/", "-"), *_dataset_splits(loaded, f"dataset '{label}'")


@contextmanager
def _offline() -> Iterator[None]:
    """Hugging Face libraries read their offline switch at import time: flip the imported value."""
    import datasets
    import huggingface_hub.constants as hub

    saved = datasets.config.HF_HUB_OFFLINE, hub.HF_HUB_OFFLINE
    datasets.config.HF_HUB_OFFLINE = hub.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        datasets.config.HF_HUB_OFFLINE, hub.HF_HUB_OFFLINE = saved


def _dataset_splits(loaded, where: str) -> tuple[list[dict], Optional[list[dict]], str]:
    if not hasattr(loaded, "keys"):  # a single Dataset
        rows = loaded.to_list()
        return _nonempty(rows, where), None, where
    if "train" not in loaded:
        raise ConfigError(f"{where} has no 'train' split (splits: {', '.join(loaded)})")
    dev = next((s for s in DEV_STEMS if s in loaded), None)  # never 'test': GLUE's test labels are hidden (-1)
    return _nonempty(loaded["train"].to_list(), where), _nonempty(loaded[dev].to_list(), where) if dev else None, where


def _nonempty(rows: list[dict], where: str) -> list[dict]:
    if not rows:
        raise CorpusError(f"{where} holds no examples")
    return rows


def _read_file(path: Path) -> list[dict]:
    suffix = path.suffix.lower()
    if not path.is_file():
        raise ConfigError(f"task file '{path}' does not exist")
    if suffix not in SUFFIXES:
        raise ConfigError(f"'{path}': unknown format '{suffix}'; use .tsv (GLUE), .csv, .jsonl or .json")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise CorpusError(f"'{path}' is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    if suffix in (".tsv", ".csv"):
        # GLUE TSVs carry unbalanced quotes inside sentences: no quoting for TSV, as GLUE's loaders do.
        reader = csv.DictReader(text.splitlines(), delimiter="\t" if suffix == ".tsv" else ",",
                                quoting=csv.QUOTE_NONE if suffix == ".tsv" else csv.QUOTE_MINIMAL)
        rows = [r for r in reader if any(isinstance(v, str) and v.strip() for v in r.values())]
    else:
        rows = _json_rows(text, path)
    return _nonempty(rows, f"'{path}'")


def _json_rows(text: str, path: Path) -> list[dict]:
    if text.lstrip().startswith("["):
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as exc:
            raise CorpusError(f"'{path}' is not valid JSON ({exc.msg}, line {exc.lineno})") from None
    else:
        rows = []
        for number, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise CorpusError(f"'{path}' line {number} is not a JSON object ({exc.msg})") from None
    if not all(isinstance(r, dict) for r in rows):
        raise CorpusError(f"'{path}': every example must be a JSON object with text and label fields")
    return rows


def _text_columns(columns: list[str], given: Optional[Sequence[str]], where: str) -> list[str]:
    if given:
        missing = [c for c in given if c not in columns]
        if missing:
            raise ConfigError(f"{where}: no column {', '.join(repr(c) for c in missing)} (columns: {', '.join(columns)})")
        return list(given)
    for pair in PAIR_COLUMNS:
        if all(c in columns for c in pair):
            return list(pair)
    for single in SINGLE_COLUMNS:
        if single in columns:
            return [single]
    raise ConfigError(f"{where}: found no text column (columns: {', '.join(columns)}; looked for sentence, "
                      "sentence1+sentence2, question+sentence, premise+hypothesis, text, ...); name them with --text-columns")


def _label_column(columns: list[str], given: Optional[str], where: str) -> str:
    if given:
        if given not in columns:
            raise ConfigError(f"{where}: no label column '{given}' (columns: {', '.join(columns)})")
        return given
    found = next((c for c in LABEL_COLUMNS if c in columns), None)
    if found is None:
        raise ConfigError(f"{where}: found no label column (columns: {', '.join(columns)}; looked for "
                          f"{', '.join(LABEL_COLUMNS)}); name it with --label-column")
    return found


def _cell(row: dict, column: str, index: int, where: str, required: bool = False) -> Any:
    """A value as read: numbers stay numbers (JSON 1.0 marks a regression label), the rest is text.
    A missing cell is an error; an empty one too where ``required`` (labels)."""
    value = row.get(column)
    if value is None or (required and isinstance(value, str) and not value.strip()):
        raise CorpusError(f"{where}: example {index + 1} has no value in column '{column}'")
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else str(value)


def _looks_decimal(values: Sequence[Any]) -> bool:
    """True when every label is a number and at least one is written as a decimal."""
    def number(v: Any) -> bool:
        try:
            float(v)
            return True
        except ValueError:
            return False

    return all(number(v) for v in values) and any(
        isinstance(v, float) or (isinstance(v, str) and not _INT.fullmatch(v.strip())) for v in values)


def _floats(values: Sequence[Any], where: str) -> list[float]:
    try:
        return [float(v) for v in values]
    except ValueError as exc:
        raise CorpusError(f"{where}: a regression label is not a number ({exc})") from None


def _class_ids(train: Sequence[Any], dev: Sequence[Any], where: str) -> tuple[list[int], list[int], list[str]]:
    def key(v: Any) -> Union[int, str]:
        text = str(v).strip()
        return int(text) if _INT.fullmatch(text) else text

    classes = sorted({key(v) for v in train}, key=lambda k: (isinstance(k, str), k))
    ids = {k: i for i, k in enumerate(classes)}
    unseen = sorted({str(key(v)) for v in dev if key(v) not in ids})
    if unseen:
        raise CorpusError(f"{where}: dev label(s) {', '.join(unseen)} never occur in train; the classifier cannot predict them")
    return [ids[key(v)] for v in train], [ids[key(v)] for v in dev], [str(k) for k in classes]


