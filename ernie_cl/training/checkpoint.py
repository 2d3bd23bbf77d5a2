"""Crash-safe checkpoints: written atomically, verified before use, loaded without pickled code.

Layout::

    RUN/checkpoints/
        stage-01-<name>/                   a stage-end checkpoint (kept for good)
        step-0000500/                      a periodic one (the newest ``keep_checkpoints`` are kept)
            mp_rank_00_model_states.pt     model, optimizer, LR schedule (DeepSpeed's own files;
            ...                            under ZeRO also one optimizer shard per rank)
            rng-rank-00.json               torch / numpy / python RNG state of each rank
            trainer_state.json             curriculum position and budget spent per task, data
                                           stream positions, loss-weighting state, counters,
                                           summary so far, wandb run id, the run's configs, and a
                                           manifest (size + SHA-256 of every other file); written
                                           LAST: it is the completion marker
        latest                             the newest checkpoint's name (replaced atomically)
        .staging/                          a checkpoint being written (never resumed from)
        .replaced-<tag>/                   the old copy of a tag being written again, until the new
                                           one is in place (resumed from only if the tag is missing,
                                           and put back under its tag by the next checkpoint)

Writing: every file goes to ``.staging/<tag>``, is flushed and fsynced, the marker is written last,
and only then is the folder renamed into place (one atomic rename) and ``latest`` replaced. A crash
at any moment leaves either no new checkpoint or a complete one; the previous ones are untouched.

Reading: a checkpoint counts only if its marker parses and every file of its manifest has the
recorded size and hash. ``--resume auto`` takes the complete checkpoint with the highest recorded
step (never parsed from folder names) and names, with a warning, each newer one it had to skip.
Engine files are read with ``torch.load(weights_only=True)``: loading never runs pickled code.
"""

from __future__ import annotations

import base64
import json
import os
import pickle
import random
import shutil
import warnings
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch
from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine

from ernie_cl.errors import CheckpointError, TrainingError
from ernie_cl import faults
from ernie_cl.corpus.durable import file_sha256, fsync_dir, fsync_file, write_json_durably
from ernie_cl.training import distributed

STATE_FILE = "trainer_state.json"
POINTER = "latest"
STAGING = ".staging"
REPLACED = ".replaced-"  # prefix of an old copy moved aside while its tag is rewritten


def checkpoints_dir(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints"


# --- writing -------------------------------------------------------------------------------------

def rng_state() -> dict[str, Any]:
    """This process's torch, numpy and python RNG states, as JSON."""
    np_state = np.random.get_state()
    return {
        "torch": base64.b64encode(torch.get_rng_state().numpy().tobytes()).decode(),
        "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
        "python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
    }


def restore_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(torch.frombuffer(bytearray(base64.b64decode(state["torch"])), dtype=torch.uint8))
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), *rest))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


def save_checkpoint(engine, run_dir: Path, tag: str, trainer_state: dict[str, Any], stage_end: bool,
                    keep: int) -> Path:
    """Write checkpoint ``tag`` atomically (see the module docstring), then prune old periodic ones.
    Every rank calls this; rank 0 writes the marker and renames."""
    root = checkpoints_dir(run_dir)
    staging_root = root / STAGING
    staging = staging_root / tag
    if distributed.rank() == 0:
        shutil.rmtree(staging_root, ignore_errors=True)  # leftovers of a crash while writing a checkpoint
        _settle_replaced(root)
        staging_root.mkdir(parents=True, exist_ok=True)
    try:
        distributed.barrier()
        engine.save_checkpoint(str(staging_root), tag=tag, save_latest=False)
        write_json_durably(staging / f"rng-rank-{distributed.rank():02d}.json", rng_state())
        distributed.barrier()
        target = root / tag
        if distributed.rank() == 0:
            files = sorted(p for p in staging.rglob("*") if p.is_file())
            for path in files:
                fsync_file(path)
            faults.inject(f"checkpoint-files:{tag}")
            manifest = {str(p.relative_to(staging)): {"size": p.stat().st_size, "sha256": file_sha256(p)} for p in files}
            write_json_durably(staging / STATE_FILE, {**trainer_state, "tag": tag, "stage_end": stage_end,
                                                          "world_size": distributed.world_size(), "files": manifest})
            # The same tag written again (a resumed run redoing a step): the old copy is moved aside,
            # not deleted, until the new one is in place, so no moment leaves neither on disk.
            # (_settle_replaced above has cleared any earlier `replaced` folder of this tag.)
            replaced = root / f"{REPLACED}{tag}"
            if target.exists():
                os.rename(target, replaced)
                faults.inject(f"checkpoint-swap:{tag}")
            os.rename(staging, target)
            fsync_dir(root)
            shutil.rmtree(replaced, ignore_errors=True)
            if not any(staging_root.iterdir()):
                staging_root.rmdir()
            (root / f".{POINTER}.tmp").write_text(tag)
            os.replace(root / f".{POINTER}.tmp", root / POINTER)
            fsync_dir(root)
            faults.inject(f"checkpoint-done:{tag}")
            prune(root, keep)
    except OSError as exc:  # e.g. a full disk: drop the half-written copy, keep every complete checkpoint
        shutil.rmtree(staging_root, ignore_errors=True)
        raise TrainingError(f"could not write checkpoint {tag}: {exc.strerror or exc}; the previous checkpoints in {root} "
                            "are intact; free disk space, then continue with --resume auto") from exc
    distributed.barrier()
    return target


def _settle_replaced(root: Path) -> None:
    """Old copies left moved aside by a killed same-tag rewrite: put back under their tag when it
    has no live folder, deleted when it has one (the rewrite finished)."""
    if not root.is_dir():
        return
    for path in root.glob(f"{REPLACED}*"):
        target = root / path.name.removeprefix(REPLACED)
        if target.exists():
            shutil.rmtree(path, ignore_errors=True)
        else:
            os.rename(path, target)


def prune(root: Path, keep: int) -> None:
    """Delete complete periodic checkpoints beyond the newest ``keep``; stage-end ones stay."""
    complete = sorted((s["global_step"], p, s) for p, s in _complete_checkpoints(root))
    newest = {p for _, p, _ in complete[-keep:]}
    for _, path, state in complete:
        if path not in newest and not state.get("stage_end"):
            shutil.rmtree(path, ignore_errors=True)


# --- reading -------------------------------------------------------------------------------------

def read_state(checkpoint: Path) -> Optional[dict[str, Any]]:
    """The trainer state of a checkpoint, or None if its marker is missing or unreadable."""
    try:
        state = json.loads((checkpoint / STATE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) and "global_step" in state and "files" in state else None


def problem_with(checkpoint: Path) -> Optional[str]:
    """Why a checkpoint cannot be used (None when it is complete and intact)."""
    state = read_state(checkpoint)
    if state is None:
        return f"no readable {STATE_FILE} (it was not finished)"
    for name, expected in state["files"].items():
        path = checkpoint / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != expected["size"]:
            return f"{name} has {path.stat().st_size} bytes, {expected['size']} were written"
        if file_sha256(path) != expected["sha256"]:
            return f"{name} is corrupted (its SHA-256 differs from the one recorded when it was written)"
    return None


def _checkpoint_folders(root: Path) -> list[tuple[Path, Optional[dict[str, Any]]]]:
    """Every checkpoint folder (staging excluded) with its trainer state, None when unreadable; an
    old copy moved aside by a same-tag rewrite counts while that tag has no live folder (a crash
    between the rewrite's two renames)."""
    if not root.is_dir():
        return []
    folders = [path for path in sorted(root.iterdir()) if path.is_dir()]
    live = {path.name for path in folders if not path.name.startswith(".")}
    usable = [path for path in folders if not path.name.startswith(".")
              or (path.name.startswith(REPLACED) and path.name.removeprefix(REPLACED) not in live)]
    return [(path, read_state(path)) for path in usable]


def _complete_checkpoints(root: Path) -> list[tuple[Path, dict[str, Any]]]:
    return [(path, state) for path, state in _checkpoint_folders(root) if state is not None]


def find_latest(run_dir: Path, warn: Callable[[str], None] = print) -> Optional[Path]:
    """The intact checkpoint with the highest recorded step (None when there is none); each newer
    checkpoint that had to be skipped is named in a warning."""
    root = checkpoints_dir(run_dir)
    # a folder without a readable marker sorts as newest, so that it is named in a warning
    candidates = [(state["global_step"] if state else float("inf"), path.name, path) for path, state in _checkpoint_folders(root)]
    for _, _, path in sorted(candidates, reverse=True):
        problem = problem_with(path)
        if problem is None:
            return path
        warn(f"ernie-cl: warning: skipping checkpoint {path}: {problem}")
    return None


def resolve_resume(resume: str, run_dir: Path, warn: Callable[[str], None] = print) -> Optional[Path]:
    """``auto`` -> newest intact checkpoint of the run (or None: start fresh); else a path. Either
    must have been written by as many processes as this run has."""
    if resume == "auto":
        found = find_latest(run_dir, warn)
        if found is not None:
            check_world_size(found)
        return found
    path = Path(resume)
    if not path.is_dir():
        raise CheckpointError(f"checkpoint '{resume}' does not exist; pass a folder under RUN/checkpoints/ or --resume auto")
    problem = problem_with(path)
    if problem is not None:
        raise CheckpointError(f"checkpoint '{resume}' cannot be used: {problem}; pick another or use --resume auto")
    check_world_size(path)
    return path


def check_world_size(checkpoint: Path) -> None:
    """ZeRO shards optimizer state per rank and the data streams shard examples per rank, so a
    checkpoint resumes with the number of processes that wrote it (1 for checkpoints that predate
    the field)."""
    written = int((read_state(checkpoint) or {}).get("world_size", 1))
    if written != distributed.world_size():
        raise CheckpointError(f"checkpoint '{checkpoint}' was written by {written} process(es) but this run has {distributed.world_size()}; "
                              f"resume with {written} (torchrun --nproc-per-node {written} -m ernie_cl.cli train ...)")


class WeightsOnlyCheckpointEngine(TorchCheckpointEngine):
    """DeepSpeed's torch checkpoint engine, but loading with ``weights_only=True``: tensors and
    plain containers only, no pickled code runs."""

    def load(self, path: str, map_location=None):
        with torch.serialization.safe_globals(zero_state_globals()):
            return torch.load(path, map_location=map_location, weights_only=True)


def zero_state_globals() -> list[Any]:
    """The only non-container types that DeepSpeed's ZeRO optimizer files hold (checked for stages
    1-3 in fp32): plain data classes, rebuilt from their fields; no code of theirs runs on load."""
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [LossScaler, ZeroStageEnum, fragment_address]


MODEL_FILE = "mp_rank_00_model_states.pt"


def model_weights(checkpoint: Path) -> dict[str, Any]:
    """The whole model's fp32 state dict: DeepSpeed's module file under ZeRO 0-2; under ZeRO-3 the
    per-rank shards consolidated by DeepSpeed's own ``zero_to_fp32`` (read weights-only as well)."""
    files = (read_state(checkpoint) or {}).get("files", {})
    try:
        if MODEL_FILE in files:
            with torch.serialization.safe_globals(zero_state_globals()):
                weights = torch.load(checkpoint / MODEL_FILE, map_location="cpu", weights_only=True).get("module")
            if isinstance(weights, dict) and weights:
                return weights
            raise CheckpointError(f"checkpoint '{checkpoint}': {MODEL_FILE} holds no 'module' weights")
        if any(name.startswith("zero_pp_rank_") and name.endswith("_model_states.pt") for name in files):
            return _consolidate_zero3(checkpoint)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(f"refusing to load '{checkpoint}': its files hold pickled objects other than tensors and "
                              "plain containers, and loading them could run code; use a checkpoint written by ernie-cl") from exc
    raise CheckpointError(f"checkpoint '{checkpoint}' holds no model weights ({MODEL_FILE} or ZeRO-3 shards); pick another")


def _consolidate_zero3(checkpoint: Path) -> dict[str, Any]:
    import contextlib
    import io

    from deepspeed.utils import zero_to_fp32

    original = torch.load

    def weights_only_load(*args: Any, **kwargs: Any) -> Any:  # zero_to_fp32 asks for weights_only=False
        kwargs["weights_only"] = True
        with torch.serialization.safe_globals(zero_state_globals()):
            return original(*args, **kwargs)

    torch.load = weights_only_load
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            return dict(zero_to_fp32.get_fp32_state_dict_from_zero_checkpoint(str(checkpoint.parent), tag=checkpoint.name))
    finally:
        torch.load = original


def load_checkpoint(engine, checkpoint: Path) -> dict[str, Any]:
    """Restore engine (model, optimizer, LR schedule) and this rank's RNG; return the trainer state."""
    state = read_state(checkpoint)
    if state is None:
        raise CheckpointError(f"checkpoint '{checkpoint}' is incomplete; pick another or use --resume auto")
    engine.checkpoint_engine = WeightsOnlyCheckpointEngine()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            load_path, _ = engine.load_checkpoint(str(checkpoint.parent), tag=checkpoint.name,
                                                  load_optimizer_states=True, load_lr_scheduler_states=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(f"refusing to load '{checkpoint}': its files hold pickled objects other than tensors and "
                              "plain containers, and loading them could run code; use a checkpoint written by ernie-cl") from exc
    except (RuntimeError, KeyError, ValueError) as exc:
        raise CheckpointError(f"could not load the engine state from '{checkpoint}': {str(exc).splitlines()[0][:200]}") from exc
    if load_path is None:
        raise CheckpointError(f"DeepSpeed could not load the engine state from '{checkpoint}'")
    rng_file = checkpoint / f"rng-rank-{distributed.rank():02d}.json"
    if not rng_file.is_file():
        raise CheckpointError(f"checkpoint '{checkpoint}' has no RNG state for rank {distributed.rank()} "
                              "(it was written with fewer processes); resume with the same number of processes")
    restore_rng_state(json.loads(rng_file.read_text(encoding="utf-8")))
    return state
