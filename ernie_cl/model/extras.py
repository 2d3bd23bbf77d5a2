"""Continuing from an ernie-cl export: the side files' names, and putting their contents back.

An export (``ernie_cl/export.py``) is an ordinary Hugging Face folder plus two side files: every
task embedding and head (``EXTRAS_FILE``) and the task names with the folded task (``INFO_FILE``).
When a model config says ``pretrained: DIR`` and DIR has them, the trainer calls ``restore_extras``
after ``AutoModel`` has loaded the backbone. Here, next to the encoder, because training needs it
while the export itself (which rebuilds a model from a checkpoint) comes after training.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from ernie_cl.errors import ConfigError

EXTRAS_FILE = "ernie_cl_extras.safetensors"
INFO_FILE = "ernie_cl.json"


def restore_extras(model: nn.Module, model_cfg: dict[str, Any]) -> Optional[list[str]]:
    """When the model was loaded from an ernie-cl export (``pretrained: DIR`` with the side file):
    unfold task 0's vector from the word embeddings and restore the task embeddings and heads of
    the tasks present in both. Returns the restored task names (None for any other model)."""
    from safetensors.torch import load_file

    folder = Path(model_cfg["pretrained"]) if "pretrained" in model_cfg else None
    if folder is None or not (folder / INFO_FILE).is_file():
        return None
    try:
        side = json.loads((folder / INFO_FILE).read_text(encoding="utf-8"))
        extras = load_file(str(folder / EXTRAS_FILE))
        saved_tasks, folded = list(side["tasks"]), int(side["folded_task_id"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"pretrained: '{folder}' has a damaged {INFO_FILE} or {EXTRAS_FILE} ({exc}); export it again") from None
    vectors = extras["task_embeddings.weight"]
    restored = []
    with torch.no_grad():
        model.backbone.get_input_embeddings().weight -= vectors[folded]
        for i, task in enumerate(model.task_names):
            if task not in saved_tasks:
                continue  # a task new to this schedule keeps its fresh initialisation
            model.task_embeddings.weight[i] = vectors[saved_tasks.index(task)]
            head = model.heads[task]
            own = head.state_dict(keep_vars=True)
            saved = {k[len(f"heads.{task}."):]: v for k, v in extras.items() if k.startswith(f"heads.{task}.")}
            for key, value in saved.items():
                if key in own and own[key].shape == value.shape:
                    own[key].copy_(value)
            restored.append(task)
    return restored
