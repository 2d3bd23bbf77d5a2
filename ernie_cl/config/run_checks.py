"""The whole run's configuration checked before any heavy work (``ernie-cl validate``, and
``ernie-cl train`` before it reads the corpus): the schedule, the model and DeepSpeed configs it
names, whether the model fits the schedule (heads, position table), the task options and the
corpus path. Reads small files only; loads no corpus, tokenizer or model.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from ernie_cl.config.schedule import (ScheduleConfig, _check_heads, _one_line_errors, load_deepspeed_config,
                                      load_model_config, load_schedule, resolve_config_file)
from ernie_cl.config.messages import _key
from ernie_cl.errors import ConfigError, did_you_mean


# --- the whole run's configuration, checked before any heavy work -------------------------------
@dataclass
class RunConfigs:
    schedule: ScheduleConfig
    model: dict[str, Any]
    deepspeed: dict[str, Any]
    model_path: Path
    deepspeed_path: Path


def check_run(path: str | Path) -> RunConfigs:
    """Everything ``ernie-cl validate`` checks, and ``ernie-cl train`` before it reads the corpus:
    the schedule, the model and DeepSpeed configs it names, whether the model fits the schedule,
    the task options and the corpus path. Reads only small files (imports transformers' config
    classes, ~1 s); loads no corpus, tokenizer or model."""
    with _one_line_errors():
        return _check_run(Path(path))


def _check_run(path: Path) -> RunConfigs:
    schedule = load_schedule(path)
    try:
        model_path = resolve_config_file(schedule.model, "model", ".yaml", path.parent)
        ds_path = resolve_config_file(schedule.deepspeed, "deepspeed", ".json", path.parent)
    except ConfigError as exc:
        key = "model" if str(exc).startswith("model") else "deepspeed"
        raise ConfigError(f"{path}: {key}: {exc}") from None
    try:
        model_cfg = load_model_config(str(model_path))
        check_model_fits(schedule, model_cfg, model_path, path)
    except ConfigError as exc:
        if str(exc).startswith(str(path)):
            raise
        raise ConfigError(f"{exc} (the model config that {path} names)") from None
    try:
        ds_cfg = load_deepspeed_config(str(ds_path))
    except ConfigError as exc:
        raise ConfigError(f"{exc} (the DeepSpeed config that {path} names)") from None
    check_task_options(schedule, model_cfg, path)
    check_corpus_path(schedule, path)
    return RunConfigs(schedule, model_cfg, ds_cfg, model_path, ds_path)


_ROBERTA_LIKE = ("roberta", "xlm-roberta", "camembert")  # reserve pad_token_id + 1 positions (as encoder.py)


def check_model_fits(schedule: ScheduleConfig, model_cfg: dict[str, Any], model_path: Path, where: Path) -> None:
    """The model config with transformers' defaults filled in: a known model_type, hidden size
    divisible by the heads, and training.seq_len within the position table."""
    from transformers import AutoConfig

    if "pretrained" in model_cfg:
        folder = Path(model_cfg["pretrained"])
        if not (folder / "config.json").is_file():
            raise ConfigError(f"{model_path}: pretrained: '{folder}' is not a local Hugging Face model folder (no config.json); "
                              "give a folder written by save_pretrained")
        try:
            config = AutoConfig.from_pretrained(str(folder), local_files_only=True)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{model_path}: pretrained: cannot read {folder / 'config.json'} ({_first_line(exc)})") from None
        pad = config.pad_token_id or 0
    else:
        from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

        model_type = model_cfg["model_type"]
        if model_type not in CONFIG_MAPPING_NAMES:
            raise ConfigError(f"{model_path}: model_type: unknown model type '{model_type}'{did_you_mean(model_type, CONFIG_MAPPING_NAMES)}; "
                              "use a Hugging Face model type such as bert, roberta or ernie")
        try:
            config = AutoConfig.for_model(model_type, **{k: v for k, v in model_cfg.items() if k != "model_type"})
        except (TypeError, ValueError, KeyError, AttributeError) as exc:
            raise ConfigError(f"{model_path}: not a valid {model_type} config ({_first_line(exc)})") from None
        # our WordPiece tokenizer puts [PAD] at id 0; a pretrained tokenizer brings its own
        pad = (config.pad_token_id or 0) if schedule.tokenizer.pretrained else 0
    _check_heads({"hidden_size": getattr(config, "hidden_size", None),
                  "num_attention_heads": getattr(config, "num_attention_heads", None)}, model_path)
    positions = getattr(config, "max_position_embeddings", None)
    if isinstance(positions, int) and positions > 0:
        usable = positions - (pad + 1 if config.model_type in _ROBERTA_LIKE else 0)
        seq_len = schedule.training.seq_len
        if seq_len > usable:
            raise ConfigError(f"{where}: training.seq_len: {seq_len} is longer than the model's position table ({usable} "
                              f"positions, max_position_embeddings of {model_path}); use training.seq_len <= {usable}")


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


class _NeedsTokenizer(Exception):
    """A task's option check asked for something only the real tokenizer knows."""


class _TokenizerStub:
    """Stands in for the tokenizer when options are checked before a tokenizer exists."""

    def __init__(self, lowercase: Optional[bool]):
        self._lowercase = lowercase

    @property
    def lowercase(self) -> bool:
        if self._lowercase is None:  # a pretrained tokenizer: known once it is loaded
            raise _NeedsTokenizer
        return self._lowercase

    def __getattr__(self, name: str) -> Any:
        raise _NeedsTokenizer


def check_task_options(schedule: ScheduleConfig, model_cfg: dict[str, Any], where: Path) -> None:
    """Each task's ``tasks.X.options``: known keys and the task's own value checks, without a
    tokenizer (checks that need one run again when the task is built)."""
    from pretrain_tasks import get_task_class

    trained_here = not schedule.tokenizer.pretrained and "pretrained" not in model_cfg
    for name in schedule.task_names():
        cls = get_task_class(name)
        options = schedule.tasks[name].options if name in schedule.tasks else {}
        for key in options:
            if key not in cls.default_options:
                known = ", ".join(sorted(cls.default_options)) or "none"
                raise ConfigError(f"{where}: tasks.{name}.options.{_key(key)}: unknown option{did_you_mean(key, cls.default_options)}; "
                                  f"known options of {name}: {known}")
        task = cls.__new__(cls)  # only what validate_options reads: no tokenizer, no heavy set-up
        task.options = {**cls.default_options, **options}
        task.tokenizer = _TokenizerStub(schedule.tokenizer.lowercase if trained_here else None)
        task.seq_len = schedule.training.seq_len
        try:
            task.validate_options()
        except _NeedsTokenizer:
            continue
        except ConfigError as exc:
            message = str(exc).removeprefix(f"task '{name}': ")
            option = next((k for k in cls.default_options if re.search(rf"\b{re.escape(k)}\b", message)), None)
            raise ConfigError(f"{where}: tasks.{name}{'.options.' + option if option else ''}: {message}") from None
        except (TypeError, ValueError, KeyError, AttributeError) as exc:
            raise ConfigError(f"{where}: tasks.{name}.options: not valid for task '{name}' ({_first_line(exc)})") from None


_CORPUS_PATHS = {"wiki": "file", "lines": "file", "jsonl": "file", "txt": "folder"}


def check_corpus_path(schedule: ScheduleConfig, where: Path) -> None:
    """The corpus path exists and has the kind the source reads (relative paths: from the current
    directory, as the corpus loader reads them). Nothing is read."""
    source, value = schedule.corpus.source, schedule.corpus.path
    if source in ("bundled", "bundled_plus"):  # files inside installed packages: no path
        if value is not None:
            raise ConfigError(f"{where}: corpus.path: source '{source}' takes no path; drop it, or set corpus.source to the "
                              "reader of that path (wiki, txt, jsonl, hf or lines)")
        return
    if value is None:
        raise ConfigError(f"{where}: corpus.path: source '{source}' needs a path; add corpus.path")
    path = Path(value).expanduser()
    relative = "" if path.is_absolute() else f" (relative to the current directory {Path.cwd()})"
    if source == "hf":  # a saved dataset folder, or a hub name that only the datasets library can check
        if not path.exists() and (path.is_absolute() or value.startswith((".", "~"))):
            raise ConfigError(f"{where}: corpus.path: '{value}' does not exist{relative}; give a folder written by "
                              "Dataset.save_to_disk, or a Hugging Face dataset name")
        return
    kind = _CORPUS_PATHS[source]
    if not path.exists():
        raise ConfigError(f"{where}: corpus.path: '{value}' does not exist{relative}; give an existing {kind} for source '{source}'")
    if path.is_dir() != (kind == "folder"):
        raise ConfigError(f"{where}: corpus.path: '{value}' is not a {kind}; source '{source}' reads a {kind}")

