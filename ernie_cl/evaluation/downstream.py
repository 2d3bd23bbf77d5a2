"""Downstream evaluation of a pre-trained checkpoint: frozen-feature linear probes and fine-tuning.

``load_encoder`` rebuilds the pre-trained model from ``RUN/checkpoints/<tag>/`` alone: the run's
configs come from the checkpoint's ``trainer_state.json`` (``identity``), the tokenizer from the
cache ``data.preparation.schedule_tokenizer`` keeps (rebuilt from the corpus on a cache miss; no task
examples are built), the weights from ``mp_rank_00_model_states.pt``, or the consolidated ZeRO-3
shards (``training.checkpoint.model_weights``; read with ``weights_only=True``).

Two ways to measure what the encoder learnt:

- ``linear_probe``: frozen sentence features (``sentence_features``), standardised per fold,
  multinomial logistic regression (full-batch L-BFGS, float64, L2 as scikit-learn's ``C=1``),
  seeded stratified k-fold. ``probe_pang_lee`` runs it on the 200 movie-review sentences that
  gensim ships, so it needs no download.
- ``finetune``: the whole encoder (a copy) plus a fresh head, trained with AdamW and linear
  warm-up/decay on a GLUE-style task, scored on dev: ``ernie_cl/evaluation/finetune.py``, with the task
  formats in ``ernie_cl/evaluation/glue_tasks.py``.

Everything is deterministic given the seed and leaves the caller's global RNG untouched.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F

from ernie_cl.data.tokenizer import TextTokenizer
from ernie_cl.errors import CheckpointError, ConfigError, CorpusError
from ernie_cl.model.encoder import ErnieEncoder

WEIGHTS_FILE = "mp_rank_00_model_states.pt"
Loaded = tuple[ErnieEncoder, TextTokenizer, dict[str, Any]]
Text = Union[str, Sequence[str]]  # one text, or the segments of a pair (or more)
PathLike = Union[str, os.PathLike]


# --- loading a checkpoint ------------------------------------------------------------------------

def load_encoder(checkpoint: PathLike, cache_dir: Optional[PathLike] = None,
                 device: Optional[Union[str, torch.device]] = None) -> Loaded:
    """(encoder in eval mode, the run's tokenizer, info) from a checkpoint folder, or from a run
    folder (its newest complete checkpoint). ``cache_dir``: the cache the run used (default as for
    training); with another one the tokenizer is trained again from the corpus (the same result).
    ``device``: default CUDA when available, else CPU."""
    from pydantic import ValidationError

    from pretrain_tasks import get_task_class

    from ernie_cl.config.schedule import ScheduleConfig
    from ernie_cl.data.preparation import default_cache_dir, load_schedule_corpus, schedule_tokenizer
    from ernie_cl.model.encoder import build_backbone
    from ernie_cl.training import checkpoint as ckpt

    folder = _checkpoint_folder(Path(checkpoint))
    state = ckpt.read_state(folder) or {}
    identity = state.get("identity") or {}
    if "schedule" not in identity or "model" not in identity:
        raise CheckpointError(f"checkpoint '{folder}' records no run identity (schedule and model config) in "
                              f"{ckpt.STATE_FILE}; it was written by an older ernie-cl, retrain or pick another")
    try:
        schedule = ScheduleConfig.model_validate(identity["schedule"])
    except ValidationError as exc:
        raise CheckpointError(f"checkpoint '{folder}': its recorded schedule no longer validates "
                              f"({exc.errors()[0]['msg']}); use the ernie-cl version that wrote it") from None
    model_cfg = identity["model"]
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    # Only a WordPiece vocabulary trained on the corpus needs the corpus (parsed once, then cached).
    needs_corpus = not (schedule.tokenizer.pretrained or "pretrained" in model_cfg)
    corpus = load_schedule_corpus(schedule, cache, show_progress=False) if needs_corpus else None
    tokenizer = schedule_tokenizer(schedule, corpus, cache, model_cfg)
    seq_len = schedule.training.seq_len
    # The task objects only supply their heads here (no examples are built); their order fixes task ids.
    tasks = {name: get_task_class(name)(tokenizer, seq_len, schedule.tasks[name].options if name in schedule.tasks else {})
             for name in schedule.task_names()}
    with torch.random.fork_rng(devices=[]):  # random init, overwritten below: keep the caller's RNG as it was
        encoder = ErnieEncoder(build_backbone(model_cfg, tokenizer, seq_len), tasks)
    weights = ckpt.model_weights(folder)  # ZeRO-3 shards are consolidated
    # the loss balancers' state belongs to pre-training, not to the encoder
    weights = {k: v for k, v in weights.items() if not k.startswith("balancers.")}
    try:
        encoder.load_state_dict(weights, strict=True)
    except RuntimeError as exc:
        detail = " ".join(str(exc).split())[:240]
        raise CheckpointError(f"checkpoint '{folder}': its weights do not fit the rebuilt model ({detail}); was the "
                              "corpus or tokenizer changed since training?") from None
    encoder.to(_device(device)).eval()
    encoder.pretrain_seq_len = seq_len  # positions past it were never trained: the default max_len stays within
    info = {"checkpoint": str(folder), "tag": state.get("tag", folder.name), "global_step": state.get("global_step"),
            "schedule": schedule.name, "corpus_source": schedule.corpus.source, "tasks": list(tasks), "seq_len": seq_len,
            "max_positions": _max_positions(encoder), "tokenizer": tokenizer.fingerprint}
    return encoder, tokenizer, info


def _checkpoint_folder(path: Path) -> Path:
    from ernie_cl.training import checkpoint as ckpt

    if not path.is_dir():
        raise CheckpointError(f"checkpoint '{path}' does not exist; pass RUN/checkpoints/<tag> or a run folder")
    run_dir = path.parent if path.name == "checkpoints" else path if (path / "checkpoints").is_dir() else None
    if run_dir is not None:
        latest = ckpt.find_latest(run_dir, warn=lambda message: None)
        if latest is None:
            raise CheckpointError(f"run '{run_dir}' has no complete checkpoint; train it first or pass a checkpoint folder")
        return latest
    problem = ckpt.problem_with(path)
    if problem is not None:
        raise CheckpointError(f"checkpoint '{path}' cannot be used: {problem}; pick another (RUN/checkpoints/<tag>)")
    return path


def _device(device: Optional[Union[str, torch.device]]) -> torch.device:
    return torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _max_positions(encoder: ErnieEncoder) -> int:
    config = encoder.backbone.config
    offset = config.pad_token_id + 1 if config.model_type in ("roberta", "xlm-roberta", "camembert") else 0
    return getattr(config, "max_position_embeddings", 512) - offset


def _resolve_max_len(encoder: ErnieEncoder, max_len: Optional[int]) -> int:
    """Default: 128, or less where pre-training used shorter inputs (longer positions are untrained)."""
    usable = _max_positions(encoder)
    if max_len is None:
        return min(128, usable, getattr(encoder, "pretrain_seq_len", usable))
    if not 8 <= max_len <= usable:
        raise ConfigError(f"max_len {max_len} must be between 8 and the model's position table ({usable})")
    return max_len


def _loaded(checkpoint: Union[PathLike, Loaded], cache_dir: Optional[PathLike], device, private_copy: bool) -> Loaded:
    """Load a checkpoint, or take what ``load_encoder`` returned (copied when it will be trained)."""
    if not isinstance(checkpoint, tuple):
        return load_encoder(checkpoint, cache_dir, device)
    encoder, tokenizer, info = checkpoint
    if private_copy:  # the task objects hold no weights: share them rather than deep-copy their tokenizers
        encoder = copy.deepcopy(encoder, memo={id(encoder._tasks): encoder._tasks})
    if device is not None:
        encoder = encoder.to(_device(device))
    return encoder, tokenizer, info


# --- features ------------------------------------------------------------------------------------

def encode_texts(tokenizer: TextTokenizer, texts: Sequence[Text], max_len: int) -> list[tuple[list[int], list[int]]]:
    """(input_ids, token_type_ids) per text, laid out as in pre-training: ``[CLS] a [SEP] (b [SEP])``
    with segment ids 0, 1; when too long, the longest segment is cut first."""
    from pretrain_tasks._segments import join_segments

    rows = [(t,) if isinstance(t, str) else tuple(t) for t in texts]
    width = max((len(r) for r in rows), default=1)
    columns = [tokenizer.encode_batch([r[i] if i < len(r) else "" for r in rows]) for i in range(width)]
    return [join_segments(tokenizer, [columns[i][j].ids for i in range(len(r))], max_len) for j, r in enumerate(rows)]


def _pad(rows: Sequence[tuple[list[int], list[int]]], pad_id: int, device: torch.device) -> dict[str, torch.Tensor]:
    width = max(len(ids) for ids, _ in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    types = torch.zeros((len(rows), width), dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (row_ids, row_types) in enumerate(rows):
        ids[i, : len(row_ids)] = torch.tensor(row_ids)
        types[i, : len(row_ids)] = torch.tensor(row_types)
        mask[i, : len(row_ids)] = 1
    return {"input_ids": ids.to(device), "token_type_ids": types.to(device), "attention_mask": mask.to(device)}


def _pool(hidden: torch.Tensor, mask: torch.Tensor, pooling: str) -> torch.Tensor:
    if pooling == "cls":
        return hidden[:, 0]
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * weights).sum(1) / weights.sum(1).clamp_min(1.0)


def _check_pooling(pooling: str) -> None:
    if pooling not in ("mean", "cls"):
        raise ConfigError(f"pooling '{pooling}' is unknown; use 'mean' or 'cls'")


def _check_task_id(encoder: ErnieEncoder, task_id: int) -> None:
    if not 0 <= task_id < len(encoder.task_names):
        raise ConfigError(f"task_id {task_id} is out of range: the checkpoint has task ids 0..{len(encoder.task_names) - 1} "
                          f"({', '.join(encoder.task_names)})")


@torch.no_grad()
def sentence_features(encoder: ErnieEncoder, tokenizer: TextTokenizer, texts: Sequence[Text], batch_size: int = 64,
                      task_id: int = 0, pooling: str = "mean", max_len: Optional[int] = None,
                      progress: Any = None) -> torch.Tensor:
    """Frozen features ``[len(texts), hidden]`` (float32, on the CPU): eval mode, no gradients.

    ``pooling="mean"`` (default): the mean of the last layer over the non-padding positions. For a
    frozen encoder it is the better probe: every position is shaped by the token-level tasks,
    whereas [CLS] is trained only through the sentence-level heads (behind their own dense + tanh),
    and a short or token-only schedule leaves it nearly untrained. ``"cls"``: the [CLS] state the
    ERNIE heads read. ``task_id`` picks the task embedding added to the input (0: the schedule's
    first task). ``max_len``: default 128, or the pre-training sequence length if shorter. Texts
    are batched by length (less padding); rows come back in the input's order. ``progress``: a
    tqdm-like bar, advanced by the number of texts of every batch.
    """
    _check_pooling(pooling)
    _check_task_id(encoder, task_id)
    encoded = encode_texts(tokenizer, texts, _resolve_max_len(encoder, max_len))
    device = next(encoder.parameters()).device
    was_training = encoder.training
    encoder.eval()
    out = torch.zeros(len(encoded), encoder.backbone.config.hidden_size)
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i][0]))
    for start in range(0, len(order), batch_size):
        chosen = order[start : start + batch_size]
        batch = _pad([encoded[i] for i in chosen], tokenizer.pad_id, device)
        hidden = encoder.encode(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"], [task_id])
        out[chosen] = _pool(hidden, batch["attention_mask"], pooling).float().cpu()
        if progress is not None:
            progress.update(len(chosen))
    encoder.train(was_training)
    return out


# --- linear probe --------------------------------------------------------------------------------

def stratified_folds(labels: Sequence[Any], folds: int, seed: int = 0) -> list[list[int]]:
    """Indices of ``folds`` test folds: each class is shuffled (seeded) and dealt round-robin,
    continuing where the previous class stopped, so every fold holds each class's share to within
    one example and fold sizes differ by at most one."""
    rng = np.random.default_rng(seed)
    by_class: dict[Any, list[int]] = {}
    for i, label in enumerate(labels):
        by_class.setdefault(label, []).append(i)
    buckets: list[list[int]] = [[] for _ in range(folds)]
    dealt = 0
    for members in by_class.values():  # first-appearance order: deterministic for given labels
        for j, i in enumerate(rng.permutation(members)):
            buckets[(dealt + j) % folds].append(int(i))
        dealt += len(members)
    return [sorted(b) for b in buckets]


def _fit_logistic(x: torch.Tensor, y: torch.Tensor, classes: int, l2: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Multinomial logistic regression: mean cross-entropy + l2/2 * |W|^2 (bias not penalised),
    minimised by full-batch L-BFGS from zeros (convex: one optimum, reached deterministically)."""
    weight = torch.zeros(x.shape[1], classes, dtype=x.dtype, requires_grad=True)
    bias = torch.zeros(classes, dtype=x.dtype, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=500, tolerance_grad=1e-9, tolerance_change=1e-12,
                                  history_size=20, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(x @ weight + bias, y) + 0.5 * l2 * weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return weight.detach(), bias.detach()


def probe_accuracy(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor,
                   classes: int, l2: float) -> float:
    """Test accuracy of a logistic regression fitted on the training rows, with features
    standardised by the training rows' mean and std alone (no test statistics leak in)."""
    mean, std = train_x.mean(0), train_x.std(0, unbiased=False)
    std = torch.where(std > 0, std, torch.ones_like(std))  # a constant feature stays zero
    weight, bias = _fit_logistic((train_x - mean) / std, train_y, classes, l2)
    predicted = (((test_x - mean) / std) @ weight + bias).argmax(1)
    return float((predicted == test_y).double().mean())


def linear_probe(features: Union[torch.Tensor, np.ndarray], labels: Sequence[Any], folds: int = 5, seed: int = 0,
                 l2: Optional[float] = None) -> dict[str, Any]:
    """Stratified ``folds``-fold accuracy of a logistic regression on standardised features (mean
    and std from each training fold alone). ``l2`` defaults to 1 / training-fold size, which is
    scikit-learn's ``LogisticRegression(C=1)``. ``std`` is the population std over the folds."""
    x = torch.as_tensor(np.asarray(features), dtype=torch.float64)
    labels = list(labels)
    if x.ndim != 2 or x.shape[0] != len(labels):
        raise ConfigError(f"features must be [n, dim] with one row per label; got {tuple(x.shape)} for {len(labels)} labels")
    ids = {label: i for i, label in enumerate(dict.fromkeys(labels))}
    y = torch.tensor([ids[label] for label in labels], dtype=torch.long)
    if len(ids) < 2 or folds < 2 or len(labels) < folds:
        raise CorpusError(f"a {folds}-fold probe needs folds >= 2 and at least {max(folds, 2)} examples of 2 or more "
                          f"classes (got {len(labels)} examples of {len(ids)})")
    accuracies = []
    for test in stratified_folds(labels, folds, seed):
        keep = torch.ones(len(labels), dtype=torch.bool)
        keep[test] = False
        penalty = l2 if l2 is not None else 1.0 / int(keep.sum())
        accuracies.append(probe_accuracy(x[keep], y[keep], x[test], y[test], len(ids), penalty))
    return {"accuracy": float(np.mean(accuracies)), "std": float(np.std(accuracies)), "folds": folds, "n": len(labels),
            "classes": len(ids), "fold_accuracies": accuracies}


def pang_lee_polarity() -> tuple[list[str], list[int]]:
    """The 200 movie-review sentences gensim ships (``test/test_data/pang_lee_polarity.cor``), 100
    per class; labels 0 = negative, 1 = positive."""
    from importlib import resources

    try:
        path = resources.files("gensim") / "test" / "test_data" / "pang_lee_polarity.cor"
        raw = path.read_bytes()
    except (ModuleNotFoundError, FileNotFoundError) as exc:
        raise CorpusError(f"gensim's test data (pang_lee_polarity.cor) is not installed ({exc}); pip install gensim") from None
    texts, labels = [], []
    for number, line in enumerate(raw.decode("cp1252").splitlines(), 1):  # Windows-1252, not UTF-8 (0x97 dashes)
        tag, _, text = line.partition(" ")
        if tag not in ("__label__neg", "__label__pos"):
            raise CorpusError(f"{path}: line {number} does not start with __label__neg or __label__pos")
        texts.append(text.strip())
        labels.append(int(tag == "__label__pos"))
    return texts, labels


def probe_pang_lee(checkpoint: Union[PathLike, Loaded], cache_dir: Optional[PathLike] = None, pooling: str = "mean",
                   folds: int = 5, seed: int = 0, batch_size: int = 64, task_id: int = 0,
                   device: Optional[Union[str, torch.device]] = None) -> dict[str, Any]:
    """``linear_probe`` on frozen features of the Pang & Lee polarity sentences (chance: 0.5)."""
    encoder, tokenizer, info = _loaded(checkpoint, cache_dir, device, private_copy=False)
    texts, labels = pang_lee_polarity()
    features = sentence_features(encoder, tokenizer, texts, batch_size, task_id, pooling)
    return {"dataset": "pang_lee_polarity", "checkpoint": info["checkpoint"], "pooling": pooling,
            **linear_probe(features, labels, folds, seed)}

