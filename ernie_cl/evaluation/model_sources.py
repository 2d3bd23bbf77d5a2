"""What ``ernie-cl bench`` can score: any encoder a user has on disk, behind one interface.

A model source is one of
- an ernie-cl run folder or checkpoint folder (``RUN/checkpoints/<tag>``): ``downstream.load_encoder``
  rebuilds the encoder with its task embeddings; features use task id 0, as the export does;
- an ernie-cl export or any local Hugging Face encoder folder (``config.json`` + weights + a fast
  tokenizer), e.g. all-MiniLM-L6-v2: loaded with ``AutoModel`` and wrapped in ``PlainEncoder``, which
  has the same ``encode`` signature as ``ErnieEncoder`` and no task embeddings;
- a random-init encoder of the same shape as either (``random_init_like``): the same backbone config
  and tokenizer with fresh weights drawn from the backbone's own initialiser (seeded), the reference
  that shows what pre-training bought.

Whatever the source, the result is ``(encoder, tokenizer, info)`` as ``load_encoder`` returns it, so
``sentence_features`` and ``finetune`` take it unchanged.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import torch
from torch import nn

from ernie_cl.errors import CheckpointError, ConfigError
from ernie_cl.evaluation.downstream import Loaded, PathLike, _device, load_encoder

EXPORT_INFO = "ernie_cl.json"  # written by ``ernie-cl export`` next to the Hugging Face files


class PlainEncoder(nn.Module):
    """A Hugging Face encoder without ERNIE task embeddings, with ``ErnieEncoder``'s ``encode``."""

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.task_names = ["(no task embedding)"]  # task id 0 is the only valid one: it adds nothing
        self.task_embeddings = None
        self._tasks: dict[str, Any] = {}  # no pre-training heads (fine-tuning deep-copies around this)

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor,
               task_ids: Sequence[int]) -> torch.Tensor:
        # a backbone without a segment table (type_vocab_size 0 or 1 with pair inputs) gets none
        types = token_type_ids if getattr(self.backbone.config, "type_vocab_size", 0) > 1 else None
        return self.backbone(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=types).last_hidden_state


def source_kind(path: PathLike) -> str:
    """"ernie-cl checkpoint", "ernie-cl export" or "Hugging Face folder", by what the folder holds."""
    path = Path(path)
    if not path.is_dir():
        raise ConfigError(f"model '{path}' does not exist; pass a run folder, a checkpoint folder, an ernie-cl export "
                          "or a local Hugging Face encoder folder")
    if (path / "checkpoints").is_dir() or path.name == "checkpoints" or (path / "trainer_state.json").is_file():
        return "ernie-cl checkpoint"
    if (path / "config.json").is_file():
        return "ernie-cl export" if (path / EXPORT_INFO).is_file() else "Hugging Face folder"
    raise ConfigError(f"model '{path}' is neither an ernie-cl run/checkpoint (no checkpoints/ or trainer_state.json) "
                      "nor a Hugging Face model folder (no config.json)")


def load_model(source: PathLike, cache_dir: Optional[PathLike] = None,
               device: Optional[Union[str, torch.device]] = None) -> Loaded:
    """(encoder in eval mode, tokenizer, info) from any model source (see the module docstring)."""
    kind = source_kind(source)
    if kind == "ernie-cl checkpoint":
        encoder, tokenizer, info = load_encoder(source, cache_dir, device)
        return encoder, tokenizer, {**info, "kind": kind, "source": str(source)}
    return _load_hf_folder(Path(source), kind, device)


def _load_hf_folder(path: Path, kind: str, device: Optional[Union[str, torch.device]]) -> Loaded:
    from transformers import AutoModel

    from ernie_cl.data.tokenizer import load_tokenizer
    from ernie_cl.model.encoder import _without_pooler

    from transformers.utils import logging as hf_logging

    tokenizer = load_tokenizer(path)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # its load report lists the unused pooler of a sentence-embedding model
    hf_logging.disable_progress_bar()
    try:
        with torch.random.fork_rng(devices=[]):  # a head the checkpoint lacks is drawn at random: keep the caller's RNG
            backbone = _without_pooler(AutoModel.from_pretrained, str(path), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"cannot load an encoder from '{path}': {str(exc).splitlines()[0]}") from None
    finally:
        hf_logging.set_verbosity(verbosity)
        hf_logging.enable_progress_bar()
    encoder = PlainEncoder(backbone).to(_device(device)).eval()
    info = {"checkpoint": str(path), "kind": kind, "source": str(path), "tag": path.name, "global_step": None,
            "tokenizer": tokenizer.fingerprint, "model_type": backbone.config.model_type}
    if kind == "ernie-cl export":
        info["export"] = json.loads((path / EXPORT_INFO).read_text(encoding="utf-8"))
    return encoder, tokenizer, info


def random_init_like(loaded: Loaded, seed: int) -> Loaded:
    """A fresh encoder of the same shape (backbone config) and tokenizer, weights drawn with ``seed``
    by the backbone's own initialiser; no task embeddings (random ones would add only noise)."""
    from transformers import AutoModel

    from ernie_cl.model.encoder import _without_pooler

    encoder, tokenizer, info = loaded
    config = encoder.backbone.config
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        backbone = _without_pooler(AutoModel.from_config, config)
    device = next(encoder.parameters()).device
    fresh = PlainEncoder(backbone).to(device).eval()
    if hasattr(encoder, "pretrain_seq_len"):
        fresh.pretrain_seq_len = encoder.pretrain_seq_len
    return fresh, tokenizer, {**info, "kind": "random init", "random_init_seed": seed,
                              "checkpoint": f"random init shaped like {info.get('source', info.get('checkpoint'))}"}
