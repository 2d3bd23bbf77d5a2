"""Several processes on one run: ranks, agreement between them, and per-rank bookkeeping.

ernie-cl scales out with DeepSpeed's data parallelism (``torchrun --nproc-per-node N`` or
``deepspeed --num_gpus N``; NCCL on GPUs, gloo on CPUs); nothing here replaces it. What the
trainer needs on top:

- every rank trains on a disjoint shard of every task's examples (``ExampleStream`` takes
  ``rank``/``world``: rank r reads rows r, r + N, r + 2N, ... of the example set);
- every rank makes the same decisions at the same step, or a collective would wait forever: the
  curriculum is a seeded plan (checked once per stage with ``check_same``), a step is skipped
  when its loss is non-finite on *any* rank (``global_view``), and a stop signal on any rank stops
  all (``any_rank``);
- metrics are means over ranks (losses, accuracies; tokens are summed), and only rank 0 writes
  files or prints (``start`` silences stdout elsewhere).

With one process every function here is a no-op, so single-process runs are unchanged bit for bit.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional

import torch

from ernie_cl.errors import ConfigError

LOG_EXAMPLES_ENV = "ERNIE_CL_LOG_EXAMPLES"


def rank() -> int:
    return torch.distributed.get_rank() if _active() else int(os.environ.get("RANK", 0))


def world_size() -> int:
    return torch.distributed.get_world_size() if _active() else int(os.environ.get("WORLD_SIZE", 1))


def is_main() -> bool:
    return rank() == 0


def _active() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def in_multi_process_group() -> bool:
    return _active() and torch.distributed.get_world_size() > 1


def start() -> None:
    """Join the process group (rank 0 of 1 without a launcher). Ranks other than 0 print nothing
    to stdout: rank 0 reports for the run (errors still reach stderr from every rank)."""
    from ernie_cl.training.engine import init_distributed

    if torch.cuda.is_available():  # one GPU per rank, chosen before NCCL's first collective
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    init_distributed()
    if not is_main():
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - for the rest of this process


def cores_per_process() -> int:
    """CPU threads for one rank: the machine's cores shared among the ranks on this node."""
    local = int(os.environ.get("LOCAL_WORLD_SIZE") or os.environ.get("LOCAL_SIZE") or 1)  # torchrun, deepspeed
    return max(1, (os.cpu_count() or 1) // max(1, local))


def _device() -> torch.device:
    """Where collective tensors live: NCCL reduces only GPU tensors, gloo only CPU ones."""
    if torch.distributed.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def barrier() -> None:
    if in_multi_process_group():
        torch.distributed.barrier()


@contextlib.contextmanager
def main_first() -> Iterator[None]:
    """Rank 0 runs the block first (building caches); the others wait, then run it on warm caches."""
    if not is_main():
        barrier()
    try:
        yield
    finally:
        if is_main():
            barrier()


def any_rank(flag: bool) -> bool:
    """True on every rank when it is true on any (a stop signal that reached one rank)."""
    if not in_multi_process_group():
        return flag
    value = torch.tensor([1.0 if flag else 0.0], dtype=torch.float64, device=_device())
    torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.MAX)
    return bool(value.item())


def check_same(value: Any, what: str) -> None:
    """Refuse to go on when the ranks disagree on ``value`` (e.g. different schedule files)."""
    if not in_multi_process_group():
        return
    digest = hashlib.sha256(json.dumps(value, default=str).encode()).hexdigest()
    gathered: list[Optional[str]] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(gathered, digest)
    if len(set(gathered)) > 1:
        raise ConfigError(f"the ranks disagree on the {what}; give every process the same schedule, configs and seed")


def global_view(losses: Mapping[str, torch.Tensor], accuracies: Mapping[str, float], tokens: int
                ) -> tuple[dict[str, torch.Tensor], dict[str, float], int]:
    """Losses and accuracies averaged over the ranks, tokens summed, in one collective.

    Each returned loss has the mean's *value* but this rank's *gradient* (``local - local.detach()
    + mean``): loss balancers then compute the same weights on every rank, the engine still averages
    the ranks' gradients, and a non-finite loss on one rank makes the value non-finite everywhere,
    so all ranks skip that step together."""
    if not in_multi_process_group():
        return dict(losses), dict(accuracies), tokens
    names = list(losses)
    local = torch.tensor([float(losses[n].detach()) for n in names] + [float(accuracies[n]) for n in names] + [float(tokens)],
                         dtype=torch.float64, device=_device())
    torch.distributed.all_reduce(local)
    k, n_ranks = len(names), torch.distributed.get_world_size()
    means = local[: 2 * k] / n_ranks
    out = {}
    for i, name in enumerate(names):
        loss = losses[name]
        out[name] = loss - loss.detach() + means[i].to(device=loss.device, dtype=loss.dtype)
    return out, {name: float(means[k + i]) for i, name in enumerate(names)}, int(round(float(local[-1])))


def check_schedule(schedule) -> None:
    """Settings that cannot run on several processes, refused before any work."""
    if world_size() > 1:
        for i, stage in enumerate(schedule.stages):
            if (stage.balancing or {}).get("method") == "gradnorm":
                raise ConfigError(f"stages[{i}].balancing: gradnorm measures gradient norms on one process only; "
                                  "run it with one process or choose another method (fixed, uncertainty, dwa, dtp)")


class NullLog:
    """Stands in for metrics.jsonl on ranks other than 0."""

    def write(self, record: dict[str, Any]) -> None:
        pass

    def close(self) -> None:
        pass


class ExampleLog:
    """With ``ERNIE_CL_LOG_EXAMPLES=1``: ``RUN/examples/rank-NN.jsonl``, one line per step with the
    example-set row indices this rank trained on and their token count (to audit the sharding;
    off by default). Lines past the resumed step are dropped, as for metrics.jsonl."""

    def __init__(self, run_dir: Path, keep_until_step: int, streams: Mapping[str, Any]):
        self.streams = streams
        self.positions = {name: s.position for name, s in streams.items()}
        self.file = None
        if os.environ.get(LOG_EXAMPLES_ENV) == "1":
            from ernie_cl.training.metric_sinks import MetricsLog

            (Path(run_dir) / "examples").mkdir(parents=True, exist_ok=True)
            self.file = MetricsLog(Path(run_dir) / "examples" / f"rank-{rank():02d}.jsonl", keep_until_step)

    def after_step(self, step: int) -> None:
        if self.file is None:
            return
        for name, stream in self.streams.items():
            if stream.position != self.positions[name]:
                rows = [row for position in range(self.positions[name], stream.position, stream.batch_size)
                        for row in stream.batch_indices(position)]
                tokens = sum(len(ids) for ids in stream.dataset[rows]["input_ids"])
                self.file.write({"step": step, "stream": name, "rows": rows, "tokens": tokens})
                self.positions[name] = stream.position

    def close(self) -> None:
        if self.file is not None:
            self.file.close()

