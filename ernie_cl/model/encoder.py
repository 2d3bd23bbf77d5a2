"""The shared encoder: any Hugging Face encoder + ERNIE 2.0 task embeddings + one head per task.

Task embeddings: a learned vector per task id is added to the word embeddings before the backbone
adds its position and segment embeddings (and applies its embedding LayerNorm), which is where
ERNIE 2.0 sums them. We feed ``inputs_embeds`` so this works for BERT, RoBERTa, ERNIE and any
encoder that accepts them, without touching the backbone's code.

The whole step (encode -> select -> head -> loss) runs inside ``forward`` so the DeepSpeed engine
sees every parameter use (ZeRO-3 gathers parameters in forward hooks).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Sequence

import torch
from torch import nn

from ernie_cl.data.tokenizer import TextTokenizer
from ernie_cl.errors import ConfigError


def build_backbone(model_cfg: dict[str, Any], tokenizer: TextTokenizer, seq_len: int) -> nn.Module:
    """A Hugging Face encoder from a config mapping (``model_type`` + sizes) or ``pretrained: DIR``."""
    from transformers import AutoConfig, AutoModel

    if "pretrained" in model_cfg:
        path = Path(model_cfg["pretrained"])
        if not path.is_dir():
            raise ConfigError(f"pretrained model directory '{path}' does not exist; give a local Hugging Face model folder")
        backbone = _without_pooler(AutoModel.from_pretrained, str(path), local_files_only=True, attn_implementation="sdpa")
    else:
        settings = {k: v for k, v in model_cfg.items() if k != "model_type"}
        settings.update(vocab_size=tokenizer.vocab_size, pad_token_id=tokenizer.pad_id)
        try:
            config = AutoConfig.for_model(model_cfg["model_type"], **settings)
        except (ValueError, KeyError) as exc:
            raise ConfigError(f"model config: {str(exc).splitlines()[0]}") from exc
        backbone = _without_pooler(AutoModel.from_config, config, attn_implementation="sdpa")
    max_positions = getattr(backbone.config, "max_position_embeddings", None)
    # RoBERTa-style models reserve padding_idx + 1 positions at the start of the table.
    usable = max_positions - (backbone.config.pad_token_id + 1 if backbone.config.model_type in ("roberta", "xlm-roberta", "camembert") else 0) if max_positions else None
    if usable is not None and seq_len > usable:
        raise ConfigError(f"training.seq_len {seq_len} is longer than the model's position table ({usable}); lower seq_len")
    if backbone.get_input_embeddings().num_embeddings < tokenizer.vocab_size:
        raise ConfigError(
            f"the tokenizer has {tokenizer.vocab_size} tokens but the model's embedding table only "
            f"{backbone.get_input_embeddings().num_embeddings}; use the model's own tokenizer"
        )
    return backbone


def _without_pooler(factory, *args, **kwargs):
    # The [CLS] pooler is unused (our sentence heads read [CLS] directly); unused parameters would
    # get no gradient, which multi-process engines dislike. Not every architecture takes the flag.
    try:
        return factory(*args, add_pooling_layer=False, **kwargs)
    except TypeError:
        return factory(*args, **kwargs)


class ErnieEncoder(nn.Module):
    """Backbone + task embeddings + a ModuleDict of task heads."""

    def __init__(self, backbone: nn.Module, tasks: dict[str, Any]):
        super().__init__()
        self.backbone = backbone
        hidden = backbone.config.hidden_size
        self.task_names = list(tasks)
        self.task_embeddings = nn.Embedding(len(self.task_names), hidden)
        nn.init.normal_(self.task_embeddings.weight, std=getattr(backbone.config, "initializer_range", 0.02))
        embeddings = backbone.get_input_embeddings()
        self.heads = nn.ModuleDict({name: task.make_head(hidden, embeddings) for name, task in tasks.items()})
        self._tasks = tasks  # plain objects (not modules): select / loss / metric logic

    def last_shared_parameters(self) -> list[nn.Parameter]:
        """The parameters of the backbone's last transformer layer (GradNorm measures gradient norms
        there): the last child module that holds parameters, searched depth-first from the end."""
        layers = getattr(getattr(self.backbone, "encoder", None), "layer", None)
        if layers is not None and len(layers):
            return [p for p in layers[-1].parameters() if p.requires_grad]
        return [p for p in list(self.backbone.parameters())[-8:] if p.requires_grad]

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor,
               task_ids: Sequence[int]) -> torch.Tensor:
        """Hidden states; the input carries the task embedding of its task, or, for an input shared
        by fused token-level tasks, the mean of their task embeddings."""
        embeds = self.backbone.get_input_embeddings()(input_ids)
        # through the module, not .weight: ZeRO-3 gathers a partitioned parameter only in its module's forward
        task_vec = self.task_embeddings(torch.as_tensor(list(task_ids), device=input_ids.device)).mean(0)
        out = self.backbone(inputs_embeds=embeds + task_vec, attention_mask=attention_mask, token_type_ids=token_type_ids)
        return out.last_hidden_state

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor,
        labels: dict[str, torch.Tensor],
        task_ids: Optional[Sequence[int]] = None,
    ) -> dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """``{task: (loss, logits, targets)}`` for every task with labels in the batch, from one
        forward pass. ``task_ids`` defaults to the tasks' own ids."""
        ids = [self.task_names.index(t) for t in labels] if task_ids is None else task_ids
        hidden = self.encode(input_ids, attention_mask, token_type_ids, ids)
        out = {}
        for task, task_labels in labels.items():
            spec = self._tasks[task]
            selected, targets = spec.select(hidden, task_labels)
            logits = self.heads[task](selected)
            out[task] = (spec.loss(logits, targets), logits, targets)
        return out


def compile_backbone(model: ErnieEncoder) -> None:
    """``torch.compile`` the backbone in place (``Module.compile``: parameter names, and so
    checkpoints, stay as they are). Only the backbone: the heads select a data-dependent number of
    positions, which would break the graph every step. A frame that fails to compile runs eager
    (dynamo's ``suppress_errors``), so a machine without a working compiler still trains."""
    import torch._dynamo

    torch._dynamo.config.suppress_errors = True
    model.backbone.compile()

