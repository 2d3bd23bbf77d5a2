"""Export a checkpoint as an ordinary Hugging Face model folder, and continue pre-training from one.

``ernie-cl export CHECKPOINT --out DIR`` writes::

    DIR/config.json                   the backbone's config (architectures: BertForMaskedLM for a
                                      BERT trained with knowledge_masking, else the backbone class)
    DIR/model.safetensors             the backbone (task 0's embedding folded in) and, for BERT with
                                      knowledge_masking, its head as ``cls.predictions.*``
    DIR/tokenizer.json, ...           the run's tokenizer (``save_pretrained``)
    DIR/ernie_cl_extras.safetensors   the side file: every task embedding (unfolded) and every head
    DIR/ernie_cl.json                 task names in id order, which task was folded, the source

**Folding.** The toolkit adds task t's embedding to the word embeddings before the backbone adds
positions and segments, for every token. A plain Hugging Face model has no task input, so the
export adds task 0's vector (the first task of the schedule) to every row of the word-embedding
table: ``AutoModel`` then computes exactly the toolkit's hidden states for task id 0. The masked-LM
decoder keeps the unfolded table (the toolkit ties it to the embeddings before the task vector
is added), so the export unties it (``tie_word_embeddings: false``).

**Continuing.** A model config ``pretrained: DIR`` pointing at an export loads the backbone with
``AutoModel``; ``model.extras.restore_extras`` then subtracts the folded vector again and restores the task
embeddings and heads of the tasks that the new schedule shares with the export (by name).

Weights come from the checkpoint through ``training.checkpoint.model_weights``, which consolidates ZeRO-3
shards with DeepSpeed's own ``zero_to_fp32``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from ernie_cl.errors import CheckpointError, ConfigError
from ernie_cl.model.extras import EXTRAS_FILE, INFO_FILE

MLM_TASK = "knowledge_masking"


def export_checkpoint(checkpoint: str | os.PathLike, out: str | os.PathLike,
                      cache_dir: Optional[str | os.PathLike] = None) -> dict[str, Any]:
    """Write ``checkpoint`` (a checkpoint folder, or a run folder: its newest) to ``out`` as above."""
    from safetensors.torch import save_file

    from ernie_cl.evaluation.downstream import load_encoder

    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"--out '{out}' exists and is not an empty folder; choose a new or empty folder")
    encoder, tokenizer, info = load_encoder(checkpoint, cache_dir=cache_dir, device="cpu")
    backbone = encoder.backbone
    config = backbone.config
    embed_key = _embedding_key(backbone)
    folded_task = encoder.task_names[0]
    task_vectors = encoder.task_embeddings.weight.detach().clone()
    weights = {k: v.detach().clone().contiguous() for k, v in backbone.state_dict().items()}
    unfolded = weights[embed_key]
    weights[embed_key] = unfolded + task_vectors[0]  # task 0's vector, added to every token's word embedding

    mlm = config.model_type == "bert" and MLM_TASK in encoder.heads
    if mlm:
        weights = {f"bert.{k}": v for k, v in weights.items()}
        weights.update(_bert_mlm_head(encoder.heads[MLM_TASK], unfolded))
        config.architectures = ["BertForMaskedLM"]
        config.tie_word_embeddings = False  # the decoder reads the unfolded table
    else:
        config.architectures = [type(backbone).__name__]

    out.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(str(out))
    save_file(weights, str(out / "model.safetensors"), metadata={"format": "pt"})
    _prepare_tokenizer(tokenizer.hf, info["max_positions"], config)
    tokenizer.save(out)

    extras = {"task_embeddings.weight": task_vectors.contiguous()}
    tied = encoder.backbone.get_input_embeddings().weight
    for name, value in encoder.heads.state_dict(keep_vars=True).items():
        if value is not tied and isinstance(value, torch.Tensor):  # the tied decoder is the embedding table
            extras[f"heads.{name}"] = value.detach().clone().contiguous()
    save_file(extras, str(out / EXTRAS_FILE), metadata={"format": "pt"})
    side = {"format": 1, "tasks": encoder.task_names, "folded_task": folded_task, "folded_task_id": 0,
            "masked_lm_head": MLM_TASK if mlm else None, "source": info["checkpoint"],
            "global_step": info["global_step"], "schedule": info["schedule"]}
    (out / INFO_FILE).write_text(json.dumps(side, indent=1) + "\n", encoding="utf-8")
    return {**side, "out": str(out), "architectures": config.architectures}


def _prepare_tokenizer(hf, max_positions: int, config) -> None:
    """What the exported tokenizer should say about itself: its length limit, and that it returns
    token_type_ids for a model with a segment table (a WordPiece vocabulary trained by ernie-cl is a
    generic fast tokenizer, which otherwise returns only input_ids and attention_mask)."""
    hf.model_max_length = hf.init_kwargs["model_max_length"] = max_positions
    if getattr(config, "type_vocab_size", 0) and "token_type_ids" not in hf.model_input_names:
        hf.model_input_names = hf.init_kwargs["model_input_names"] = ["input_ids", "token_type_ids", "attention_mask"]


def _embedding_key(backbone: nn.Module) -> str:
    table = backbone.get_input_embeddings()
    for name, module in backbone.named_modules():
        if module is table:
            return f"{name}.weight"
    raise CheckpointError("the backbone's input embedding table is not one of its modules; cannot export it")


def _bert_mlm_head(head: nn.Module, embeddings: torch.Tensor) -> dict[str, torch.Tensor]:
    """The knowledge-masking head as BertForMaskedLM's ``cls.predictions``: HeadTransform is
    (Linear, GELU, LayerNorm) like BERT's transform (BERT's config says gelu, the same erf GELU;
    its LayerNorm eps is the config's 1e-12 where the head trained with 1e-5, a difference far
    below the logits' scale). Vocabulary rows the head never scored get a bias of -1e4."""
    dense, norm = head.transform[0], head.transform[2]
    bias = torch.full((embeddings.shape[0],), -1e4, dtype=embeddings.dtype)
    bias[: head.decoder.num_labels] = head.decoder.bias.detach()
    return {
        "cls.predictions.transform.dense.weight": dense.weight.detach().clone(),
        "cls.predictions.transform.dense.bias": dense.bias.detach().clone(),
        "cls.predictions.transform.LayerNorm.weight": norm.weight.detach().clone(),
        "cls.predictions.transform.LayerNorm.bias": norm.bias.detach().clone(),
        "cls.predictions.decoder.weight": embeddings.clone(),
        "cls.predictions.decoder.bias": bias.clone(),
        "cls.predictions.bias": bias,
    }
