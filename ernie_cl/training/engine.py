"""Creating the DeepSpeed engine: process group, optimizer, learning-rate schedule, config merge.

On a machine without a GPU DeepSpeed picks its CPU accelerator and the gloo backend; on a GPU the
same code runs unchanged with NCCL. A single process started without a launcher gets the
environment a launcher would have set (rank 0 of 1).
"""

from __future__ import annotations

import copy
import os
import socket
from typing import Any

import torch

from ernie_cl.config.schedule import TrainingConfig
from ernie_cl.errors import ConfigError
from ernie_cl.training.allocator import keep_freed_memory


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def name_accelerator() -> None:
    """On CPU-only machines tell DeepSpeed so (it otherwise warns while guessing). Must run before
    anything imports deepspeed, transformers' integration included."""
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")


def quiet_deepspeed() -> None:
    """Keep DeepSpeed's info-level chatter out of the console."""
    import logging

    name_accelerator()
    from deepspeed.utils import logger

    logger.setLevel(logging.WARNING)


def init_distributed() -> None:
    quiet_deepspeed()
    import deepspeed
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return
    defaults = {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port())}
    added = [key for key in defaults if key not in os.environ]
    os.environ.update({key: defaults[key] for key in added})
    try:
        deepspeed.init_distributed(verbose=False)
    finally:
        # Only the rendezvous reads the port: a process started from this one (another run) must
        # not inherit a port this process now holds. DeepSpeed reads the ranks again later.
        if "MASTER_PORT" in added:
            os.environ.pop("MASTER_PORT", None)


def lr_lambda(warmup_steps: int, total_steps: int, min_ratio: float):
    """Linear warm-up to the peak, then linear decay to ``min_ratio`` of it at the last step."""
    def factor(step: int) -> float:
        if warmup_steps and step < warmup_steps:
            return (step + 1) / warmup_steps
        span = max(1, total_steps - warmup_steps)
        return max(min_ratio, 1.0 - (1.0 - min_ratio) * (step - warmup_steps) / span)
    return factor


def merged_ds_config(ds_cfg: dict[str, Any], training: TrainingConfig) -> dict[str, Any]:
    """The DeepSpeed config with the schedule's batch size and clipping filled in."""
    cfg = copy.deepcopy(ds_cfg)
    for key in ("train_batch_size", "optimizer", "scheduler"):
        if key in cfg:
            raise ConfigError(f"DeepSpeed config: remove '{key}'; ernie-cl sets it from the schedule's training section")
    cfg["train_micro_batch_size_per_gpu"] = training.batch_size
    cfg.setdefault("gradient_accumulation_steps", 1)
    cfg["gradient_clipping"] = training.grad_clip
    cfg.setdefault("steps_per_print", 10**9)
    cfg.setdefault("wall_clock_breakdown", False)
    low_precision = any(cfg.get(k, {}).get("enabled") for k in ("bf16", "fp16"))
    if low_precision and not torch.cuda.is_available():
        raise ConfigError("the DeepSpeed config enables bf16/fp16 but no GPU is present; use deepspeed: zero0 (fp32) on CPU")
    return cfg


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """No weight decay on biases, LayerNorm weights and embedding tables (standard BERT practice)."""
    decay, no_decay, seen = [], [], set()
    for module_name, module in model.named_modules():
        for name, param in module.named_parameters(recurse=False):
            if id(param) in seen or not param.requires_grad:
                continue  # tied weights appear twice
            seen.add(id(param))
            # balancers: uncertainty's log-variances; decay would pull them to 0 (weight 1/2)
            exempt = name == "bias" or isinstance(module, (torch.nn.LayerNorm, torch.nn.Embedding)) \
                or module_name.startswith("balancers")
            (no_decay if exempt else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def create_engine(model: torch.nn.Module, ds_cfg: dict[str, Any], training: TrainingConfig, total_steps: int):
    import deepspeed

    if training.reuse_heap:  # from here on the process trains: steps free and allocate the same tensors
        keep_freed_memory()
    init_distributed()
    config = merged_ds_config(ds_cfg, training)
    # fused: one kernel over all parameters instead of ~10 elementwise passes per tensor (the
    # single-tensor loop torch picks on CPU cost about as much as the backward pass at 7M parameters)
    optimizer = torch.optim.AdamW(param_groups(model, training.weight_decay), lr=training.lr, betas=training.betas,
                                  fused=True)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(training.warmup_steps, total_steps, training.min_lr_ratio))
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=schedule, config=config)
    if engine.dp_world_size == 1 and engine.zero_optimization_stage() == 0:
        # one process: the gradient all-reduce is an identity that still flattens, reduces, divides
        # by 1 and copies back every gradient each step; skipping it changes no bit
        engine.enable_backward_allreduce = False
        if not (engine.fp16_enabled() or engine.bfloat16_enabled()):
            engine.clip_fp32_gradients = lambda: clip_gradients(engine.module.parameters(), engine.gradient_clipping())
    return engine


def clip_gradients(parameters, max_norm: float) -> None:
    """DeepSpeed's fp32 clipping for one process (``deepspeed.runtime.utils.clip_grad_norm_``: the
    2-norm of the per-parameter 2-norms, scaled by min(1, max_norm / (norm + 1e-6))), bit for bit, in
    two foreach calls instead of a Python loop of two ops per parameter (1.5 against 3.0 ms alone at
    the benchmark's 75 tensors). The multiplication by exactly 1.0, an identity, is skipped; it
    touched every gradient each step."""
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return
    total = torch.stack(torch._foreach_norm(grads, 2.0)).pow(2.0).sum().float().pow(0.5)
    # DeepSpeed's mean over one rank (total * 1.0 / 1) and its all-reduce over one rank are identities
    coef = torch.min(torch.tensor([1.0]), torch.tensor([float(max_norm)]) / (total + 1e-6))
    if coef.item() != 1.0:
        torch._foreach_mul_(grads, coef.reshape(()))


def release_engine(engine) -> None:
    """Let a finished run's model, gradients and optimizer state go (``ernie-cl compare`` trains its
    strategies one after another in one process). Under ZeRO-3 DeepSpeed keeps them reachable after
    the run: hooks on the parameters, which Python's garbage collector cannot see through, until
    ``engine.destroy()``; the top module at the bottom of ``parameter_offload.FWD_MODULE_STACK``, a
    module-level list nothing pops it from; and an ``lru_cache`` on a coordinator method, which, being
    on the class, holds every coordinator it has served. (Measured: three runs in a row left three
    models alive; with this, none.) Other engines alive in the process keep their stack entries; the
    cache only loses cached answers."""
    engine.destroy()
    try:
        from deepspeed.runtime.zero import parameter_offload
        from deepspeed.runtime.zero.partitioned_param_coordinator import PartitionedParameterCoordinator
    except ImportError:  # a DeepSpeed without these: nothing of ours to let go
        return
    ours = {id(module) for module in engine.module.modules()}
    stack = getattr(parameter_offload, "FWD_MODULE_STACK", None)
    if isinstance(stack, list):
        stack[:] = [module for module in stack if id(module) not in ours]
    for function in vars(PartitionedParameterCoordinator).values():
        _clear_lru_caches(function)


def _clear_lru_caches(function, depth: int = 3) -> None:
    """``cache_clear()`` on ``function`` or an ``lru_cache`` it wraps (through ``__wrapped__`` or its
    closure, as DeepSpeed's nvtx decorator wraps it)."""
    if depth < 0 or not callable(function):
        return
    if hasattr(function, "cache_clear"):
        function.cache_clear()
        return
    inner = [getattr(function, "__wrapped__", None)]
    inner += [cell.cell_contents for cell in (getattr(function, "__closure__", None) or ()) if _filled(cell)]
    for candidate in inner:
        _clear_lru_caches(candidate, depth - 1)


def _filled(cell) -> bool:
    try:
        cell.cell_contents
    except ValueError:  # an empty cell
        return False
    return True
