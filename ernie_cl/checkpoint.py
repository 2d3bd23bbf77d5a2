"""Checkpoints: DeepSpeed engine state plus a JSON trainer state written last as the completion mark.

Layout::

    RUN/checkpoints/<tag>/                 one checkpoint (tag e.g. ``stage-01-km``)
        mp_rank_00_model_states.pt ...     model, optimizer and LR-schedule state (DeepSpeed's own format)
        trainer_state.json                 curriculum position, stream positions, RNG, counters,
                                           summary so far, wandb run id; written last
    RUN/checkpoints/latest                 DeepSpeed's pointer to the newest tag

A checkpoint without a readable ``trainer_state.json`` is incomplete and never resumed from. The
newest checkpoint is chosen by the step recorded inside it, never by parsing folder names.
"""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path
from typing import Any, Optional

import torch

from .errors import CheckpointError

STATE_FILE = "trainer_state.json"


def checkpoints_dir(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints"


def write_json_durably(path: Path, data: Any) -> None:
    """Write via a temporary file, fsync, then rename: readers see the old file or the new one."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=1)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def rng_state() -> dict[str, str]:
    return {"torch": base64.b64encode(torch.get_rng_state().numpy().tobytes()).decode()}


def restore_rng_state(state: dict[str, str]) -> None:
    raw = base64.b64decode(state["torch"])
    torch.set_rng_state(torch.frombuffer(bytearray(raw), dtype=torch.uint8))


def save_checkpoint(engine, run_dir: Path, tag: str, trainer_state: dict[str, Any]) -> Path:
    """Save the engine under ``tag``, then the trainer state (the completion mark)."""
    root = checkpoints_dir(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    engine.save_checkpoint(str(root), tag=tag, save_latest=True)
    target = root / tag
    write_json_durably(target / STATE_FILE, {**trainer_state, "tag": tag, "rng": rng_state()})
    return target


def read_state(checkpoint: Path) -> Optional[dict[str, Any]]:
    """The trainer state of a complete checkpoint, or None if it is missing or unreadable."""
    try:
        state = json.loads((checkpoint / STATE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) and "global_step" in state else None


def find_latest(run_dir: Path) -> Optional[Path]:
    """The complete checkpoint with the highest recorded step (None when there is none)."""
    root = checkpoints_dir(run_dir)
    if not root.is_dir():
        return None
    best, best_step = None, -1
    for candidate in sorted(p for p in root.iterdir() if p.is_dir()):
        state = read_state(candidate)
        if state is not None and state["global_step"] > best_step:
            best, best_step = candidate, state["global_step"]
    return best


def resolve_resume(resume: str, run_dir: Path) -> Optional[Path]:
    """``auto`` -> newest complete checkpoint of the run (or None: start fresh); else a path."""
    if resume == "auto":
        return find_latest(run_dir)
    path = Path(resume)
    if not path.is_dir():
        raise CheckpointError(f"checkpoint '{resume}' does not exist; pass a folder under RUN/checkpoints/ or --resume auto")
    if read_state(path) is None:
        raise CheckpointError(f"checkpoint '{resume}' is incomplete (no readable {STATE_FILE}); pick another or use --resume auto")
    return path


def load_checkpoint(engine, checkpoint: Path) -> dict[str, Any]:
    """Restore engine (model, optimizer, LR schedule) and RNG; return the trainer state."""
    state = read_state(checkpoint)
    if state is None:
        raise CheckpointError(f"checkpoint '{checkpoint}' is incomplete; pick another or use --resume auto")
    load_path, _ = engine.load_checkpoint(str(checkpoint.parent), tag=checkpoint.name,
                                          load_optimizer_states=True, load_lr_scheduler_states=True)
    if load_path is None:
        raise CheckpointError(f"DeepSpeed could not load the engine state from '{checkpoint}'")
    restore_rng_state(state["rng"])
    return state
