"""Typed, self-validating schedule config (YAML) with one-line errors that say how to fix them.

A schedule file names the model and DeepSpeed configs, the corpus, the tokenizer, the training
settings, each task's total iteration budget and options, and the stages. Validation happens here,
before any heavy work; every problem becomes a ``ConfigError`` naming the file and key path.
"""

from __future__ import annotations

import difflib
import json
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import ConfigError

REPO_ROOT = Path(__file__).resolve().parent.parent


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


class CorpusConfig(_Strict):
    source: Literal["bundled", "wiki", "txt", "jsonl", "hf"] = "bundled"
    path: Optional[str] = None
    max_documents: Optional[int] = Field(default=None, gt=0)
    eval_fraction: float = Field(default=0.05, gt=0, lt=1)
    phrases: bool = True
    phrase_min_count: int = Field(default=5, gt=0)
    phrase_threshold: float = Field(default=10.0, gt=0)
    spacy_model: Optional[str] = None
    text_field: str = "text"
    title_field: str = "title"
    split: str = "train"


class TokenizerConfig(_Strict):
    pretrained: Optional[str] = None  # a local Hugging Face tokenizer directory
    vocab_size: int = Field(default=8000, ge=100)
    lowercase: bool = True


class TrainingConfig(_Strict):
    batch_size: int = Field(default=32, gt=0)
    seq_len: int = Field(default=128, ge=16)
    lr: float = Field(default=5e-4, gt=0)
    warmup_steps: int = Field(default=100, ge=0)
    min_lr_ratio: float = Field(default=0.1, ge=0, le=1)
    weight_decay: float = Field(default=0.01, ge=0)
    betas: tuple[float, float] = (0.9, 0.98)  # ERNIE 2.0's Adam betas
    grad_clip: float = Field(default=1.0, ge=0)
    eval_examples: int = Field(default=512, gt=0)
    eval_batch_size: int = Field(default=64, gt=0)
    log_every: int = Field(default=1, gt=0)
    # a checkpoint every N optimizer steps inside stages (0: stage ends only); the newest
    # keep_checkpoints are kept, stage-end checkpoints always
    checkpoint_every: int = Field(default=250, ge=0)
    keep_checkpoints: int = Field(default=2, ge=2)
    # a step whose loss is NaN/inf is skipped (no update) and counted; this many in a row stop the run
    max_nonfinite_steps: int = Field(default=10, gt=0)
    # co-active knowledge_masking / capitalization / token_document_relation share one forward pass
    fuse_token_tasks: bool = True
    threads: Optional[int] = Field(default=None, gt=0)  # torch threads; default: all cores
    data_workers: Optional[int] = Field(default=None, gt=0)  # processes building examples; default: all cores


class TaskConfig(_Strict):
    iterations: Optional[int] = Field(default=None, gt=0)
    options: dict[str, Any] = Field(default_factory=dict)


class StageConfig(_Strict):
    name: str = Field(min_length=1)
    # A list of task names (budgets allocated the ERNIE 2.0 way) or {task: iterations in this stage}.
    tasks: Union[list[str], dict[str, int]]
    # loss weighting of the tasks that share a step: {method: fixed|uncertainty|dwa|gradnorm|dtp, OPTION: VALUE}
    balancing: Optional[dict[str, Any]] = None

    @model_validator(mode="after")
    def _balancing_fits(self) -> "StageConfig":
        from .balancing import validate_balancing

        validate_balancing(self.balancing, self.task_names)
        return self

    @field_validator("tasks")
    @classmethod
    def _non_empty(cls, value):
        if not value:
            raise ValueError("a stage needs at least one task")
        if isinstance(value, dict) and any(v <= 0 for v in value.values()):
            raise ValueError("per-stage iterations must be positive integers")
        if isinstance(value, list) and len(set(value)) != len(value):
            raise ValueError("a task is listed twice in this stage")
        return value

    @property
    def task_names(self) -> list[str]:
        return list(self.tasks)


class ScheduleConfig(_Strict):
    name: str = "schedule"
    seed: int = 0
    model: str = "tiny"  # configs/model/<name>.yaml or a path
    deepspeed: str = "zero0"  # configs/deepspeed/<name>.json or a path
    corpus: CorpusConfig = Field(default_factory=CorpusConfig)
    tokenizer: TokenizerConfig = Field(default_factory=TokenizerConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    allocation: Literal["ernie2", "explicit"] = "ernie2"
    tasks: dict[str, TaskConfig] = Field(default_factory=dict)
    stages: list[StageConfig] = Field(min_length=1)

    @model_validator(mode="after")
    def _consistent(self) -> "ScheduleConfig":
        names = [s.name for s in self.stages]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"duplicate stage name(s) {', '.join(dupes)}; give every stage its own name")
        explicit = [isinstance(s.tasks, dict) for s in self.stages]
        if self.allocation == "explicit" and not all(explicit):
            raise ValueError("allocation 'explicit' needs every stage's tasks as {task: iterations}")
        if self.allocation == "ernie2":
            if any(explicit):
                raise ValueError("allocation 'ernie2' takes stage tasks as a list; set allocation: explicit for per-stage budgets")
            used = {t for s in self.stages for t in s.task_names}
            for task in sorted(used):
                if task not in self.tasks or self.tasks[task].iterations is None:
                    raise ValueError(f"task '{task}' needs tasks.{task}.iterations (its total budget) for allocation 'ernie2'")
        return self

    def task_names(self) -> list[str]:
        """Every task of the schedule in order of first appearance (this order fixes task ids)."""
        seen: list[str] = []
        for stage in self.stages:
            seen.extend(t for t in stage.task_names if t not in seen)
        return seen


# --- loading ----------------------------------------------------------------------------------
def _loc(loc: tuple) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def _explain(error: dict, model: type[BaseModel]) -> str:
    where = _loc(tuple(p for p in error["loc"] if p not in ("list[str]", "dict[str,int]")))
    if error["type"] == "extra_forbidden":
        key = str(error["loc"][-1])
        known = _known_keys(model, error["loc"][:-1])
        hint = difflib.get_close_matches(key, known, n=1)
        suggestion = f"; did you mean '{hint[0]}'?" if hint else (f"; known keys: {', '.join(known)}" if known else "")
        return f"{where}: unknown key{suggestion}"
    if error["type"] == "missing":
        return f"{where}: required key is missing"
    return f"{where}: {error['msg']}"


def _known_keys(model: type[BaseModel], loc: tuple) -> list[str]:
    current: Any = model
    for part in loc:
        if isinstance(part, int) or not (isinstance(current, type) and issubclass(current, BaseModel)):
            continue
        field = current.model_fields.get(str(part))
        if field is None:
            return []
        annotation = field.annotation
        current = next((a for a in getattr(annotation, "__args__", (annotation,)) if isinstance(a, type) and issubclass(a, BaseModel)), annotation)
        if getattr(annotation, "__origin__", None) in (list, dict):
            current = annotation.__args__[-1]
    if isinstance(current, type) and issubclass(current, BaseModel):
        return sorted(current.model_fields)
    return []


def load_schedule(path: str | Path) -> ScheduleConfig:
    """Read and validate a schedule file; every problem is one ConfigError line."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"schedule file '{path}' not found; pass the path of a YAML schedule (see schedules/)")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        first = str(exc).replace("\n", " ")
        raise ConfigError(f"{path}: not valid YAML ({first})") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a schedule must be a YAML mapping with at least 'stages'")
    try:
        schedule = ScheduleConfig.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        more = f" (and {exc.error_count() - 1} more problem(s))" if exc.error_count() > 1 else ""
        raise ConfigError(f"{path}: {_explain(first, ScheduleConfig)}{more}") from exc
    check_tasks_known(schedule, str(path))
    return schedule


def check_tasks_known(schedule: ScheduleConfig, where: str) -> None:
    from pretrain_tasks import registered_tasks

    known = registered_tasks()
    for i, stage in enumerate(schedule.stages):
        for task in stage.task_names:
            if task not in known:
                hint = difflib.get_close_matches(task, known, n=1)
                extra = f" (did you mean '{hint[0]}'?)" if hint else ""
                raise ConfigError(f"{where}: stages[{i}].tasks: unknown task '{task}'{extra}; known tasks: {', '.join(sorted(known))}")
    used = set(schedule.task_names())
    for task in schedule.tasks:
        if task not in used:
            raise ConfigError(f"{where}: tasks.{task}: configured but used in no stage; add it to a stage or remove it")


def resolve_config_file(value: str, kind: str, suffix: str, relative_to: Optional[Path] = None) -> Path:
    """A config named by path, or by bare name under configs/<kind>/ of the repository."""
    candidates = [Path(value)]
    if relative_to is not None:
        candidates.append(relative_to / value)
    candidates.append(REPO_ROOT / "configs" / kind / f"{value}{suffix}")
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    shipped = sorted(p.stem for p in (REPO_ROOT / "configs" / kind).glob(f"*{suffix}"))
    raise ConfigError(f"{kind} config '{value}' not found; give a file path or one of: {', '.join(shipped)}")


def load_model_config(value: str, relative_to: Optional[Path] = None) -> dict[str, Any]:
    path = resolve_config_file(value, "model", ".yaml", relative_to)
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a model config must be a YAML mapping")
    if "pretrained" not in data:
        if "model_type" not in data:
            raise ConfigError(f"{path}: give 'model_type' (e.g. bert, roberta, ernie) or 'pretrained: LOCAL_DIR'")
        hidden, heads = data.get("hidden_size"), data.get("num_attention_heads")
        if isinstance(hidden, int) and isinstance(heads, int) and (heads <= 0 or hidden % heads):
            raise ConfigError(f"{path}: hidden_size {hidden} is not divisible by num_attention_heads {heads}")
    return data


def load_deepspeed_config(value: str, relative_to: Optional[Path] = None) -> dict[str, Any]:
    path = resolve_config_file(value, "deepspeed", ".json", relative_to)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a DeepSpeed config must be a JSON object")
    return data
