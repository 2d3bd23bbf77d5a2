"""Extra step time of each loss-balancing method, measured on one fused two-task step.

The demo schedule's model (tiny BERT) and a real fused knowledge_masking + capitalization batch
from the bundled corpus; one full training step per measurement: forward, the balancer's
``combine`` (GradNorm's extra ``autograd.grad`` included), backward, AdamW step. The methods are
timed round-robin (fixed, uncertainty, dwa, gradnorm, dtp, fixed, ...) so that drift in the
machine's load hits all of them alike; the median per method is reported with its cost relative to
``fixed``. Plain torch AdamW instead of the DeepSpeed engine: the balancing cost does not depend on
the engine, and one process can then hold a model per method.

    python benchmarks/balancing_cost.py [--rounds 30] [--threads 2]

The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from pathlib import Path

import torch

from ernie_cl.config.schedule import load_model_config, load_schedule
from ernie_cl.data.examples import ExampleStream
from ernie_cl.data.preparation import default_cache_dir, prepare
from ernie_cl.model.balancing import BALANCING_METHODS, make_balancer
from ernie_cl.model.encoder import ErnieEncoder, build_backbone

ROOT = Path(__file__).resolve().parent.parent
TASKS = ["knowledge_masking", "capitalization"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=30, help="timed steps per method (after 3 warm-up rounds)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    schedule = load_schedule(ROOT / "schedules" / "demo.yaml")
    model_cfg = load_model_config(schedule.model, ROOT / "schedules")
    prepared = prepare(schedule, model_cfg, default_cache_dir(), show_progress=False)
    group = "+".join(TASKS)
    stream = ExampleStream(prepared.train_sets[group], schedule.training.batch_size, 0, group, prepared.tokenizer.pad_id, False)
    batch = stream.next_batch()  # one real fused batch, reused: the data pipeline is not what is measured
    torch.manual_seed(0)
    base = ErnieEncoder(build_backbone(model_cfg, prepared.tokenizer, schedule.training.seq_len),
                        {t: prepared.tasks[t] for t in TASKS})
    setups = {}
    for method in BALANCING_METHODS:
        model = copy.deepcopy(base)
        model.balancer = make_balancer(method, TASKS, {})
        setups[method] = (model, torch.optim.AdamW(model.parameters(), lr=1e-4))
    times: dict[str, list[float]] = {m: [] for m in BALANCING_METHODS}
    for round_index in range(args.rounds + 3):
        for method, (model, optimizer) in setups.items():
            started = time.perf_counter()
            outputs = model(**batch)
            accuracy = {t: float((o[1].argmax(-1) == o[2]).float().mean()) for t, o in outputs.items()}
            shared = model.last_shared_parameters() if method == "gradnorm" else None
            loss, _ = model.balancer.combine({t: o[0] for t, o in outputs.items()}, accuracies=accuracy, shared_params=shared)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if round_index >= 3:
                times[method].append(time.perf_counter() - started)
    fixed = statistics.median(times["fixed"])
    result = {"threads": args.threads, "rounds": args.rounds, "batch": list(batch["input_ids"].shape)}
    print(f"{'method':<12}{'median step (ms)':>18}{'extra vs fixed':>16}")
    for method, values in times.items():
        median = statistics.median(values)
        result[method] = {"median_step_ms": round(1000 * median, 2), "extra_vs_fixed": round(median / fixed - 1, 4)}
        print(f"{method:<12}{1000 * median:>18.1f}{median / fixed - 1:>+15.1%}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
