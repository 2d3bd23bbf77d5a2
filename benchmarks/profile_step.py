"""Where an ernie-cl training step spends its time on CPU: ``torch.profiler`` over real steps.

Builds the same model, engine and knowledge_masking stream as ``benchmarks/throughput.py``'s
``mlm`` route (its generated one-stage schedule, the real DeepSpeed engine, the cached example
set) and profiles ``--steps`` optimizer steps after ``--warmup``. Each step is cut into phases
with ``record_function`` (data, forward, backward, optimizer) and the operators' self CPU time
is summed into kinds: matrix products, attention, LayerNorm, GELU, dropout, softmax / loss,
embeddings, the fused AdamW kernel, and the rest (elementwise ops, copies, framework overhead).

    python benchmarks/profile_step.py                 # the throughput benchmark's CPU sizes
    python benchmarks/profile_step.py --compile       # the same with training.compile: true
    python benchmarks/profile_step.py --torch-dropout # torch's dropout masks instead of the cheap ones
    python benchmarks/profile_step.py --per-call      # every op's own wall time, products by shape

``--per-call`` times each ATen / ernie-cl operator call with ``time.perf_counter`` inside a
``TorchDispatchMode`` instead of using the profiler, and lists the matrix products by shape with
their GFLOP/s. The profiler's per-shape self times can mislead here: it put the backward weight
products at 85-170 GFLOP/s, where timing each call gives 250-300 (2026-12-05). The mode adds a few
microseconds of Python per call, so the step is slower under it; the products' times are not.

Prints two tables (phases, operator kinds: ms per step and share of the step) and the top
operators; the last line is one JSON object. The profiler adds some overhead of its own, so the
shares, not the absolute times, are the point (throughput.py measures speed).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from throughput import schedule  # noqa: E402  (the benchmark's own generated schedule)

# operator name (substring, checked in order) -> kind; backward ops carry their forward's kind
KINDS = [
    ("scaled_dot_product", "attention"), ("_flash_attention", "attention"), ("_efficient_attention", "attention"),
    ("ernie_cl::attention", "attention"),  # the fused kernel: its products, softmax and dropout inside
    ("residual_layer_norm", "layernorm"),  # the fused kernel: dropout + residual add + LayerNorm
    ("addmm", "matmul"), ("aten::mm", "matmul"), ("aten::bmm", "matmul"), ("matmul", "matmul"), ("linear", "matmul"),
    ("layer_norm", "layernorm"), ("gelu", "gelu"),
    ("dropout", "dropout"), ("bernoulli", "dropout"), ("random_", "dropout"), ("bitwise_and", "dropout"),  # cheap masks
    ("softmax", "softmax/loss"), ("nll_loss", "softmax/loss"), ("cross_entropy", "softmax/loss"),
    ("embedding", "embedding"), ("index_select", "embedding"),
    ("adam", "optimizer"),
]


def kind_of(name: str) -> str:
    lowered = name.lower()
    return next((kind for key, kind in KINDS if key in lowered), "other")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=16000)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--steps", type=int, default=8, help="profiled optimizer steps")
    parser.add_argument("--warmup", type=int, default=3, help="steps before profiling (with --compile: compilation)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    parser.add_argument("--attention-dropout", type=float, default=0.1, metavar="P",
                        help="attention_probs_dropout_prob (0: SDPA's fused CPU kernel instead of the math path)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the backbone (training.compile: true)")
    parser.add_argument("--torch-dropout", action="store_true", help="torch's bernoulli_ dropout masks (training.fast_dropout: "
                        "false) instead of the default cheap ones")
    parser.add_argument("--cache-dir", default=None, help="ernie-cl cache (default: the usual one)")
    parser.add_argument("--top", type=int, default=15, help="operators listed by self CPU time")
    parser.add_argument("--per-call", action="store_true", help="time every operator call (wall clock, in a "
                        "TorchDispatchMode) instead of the profiler; products listed by shape with GFLOP/s")
    return parser.parse_args(argv)


def build(args, folder: Path):
    """The trainer's parts for a one-stage knowledge_masking schedule: engine and example stream."""
    import os

    import torch
    from ernie_cl.config.schedule import load_deepspeed_config, load_model_config, load_schedule
    from ernie_cl.data.examples import ExampleStream
    from ernie_cl.data.preparation import default_cache_dir, prepare
    from ernie_cl.training.engine import create_engine, name_accelerator
    from ernie_cl.training.trainer import build_model

    args.threads = args.threads or os.cpu_count() or 1
    args.precision = "fp32"
    torch.set_num_threads(args.threads)
    # throughput.py's mlm-route schedule and model config, with the step budget made long enough
    path = schedule(argparse.Namespace(**{**vars(args), "steps": 1000}), ["knowledge_masking"], folder, args.compile)
    name_accelerator()
    schedule_cfg = load_schedule(path)
    model_cfg = load_model_config(schedule_cfg.model, folder)
    cache = Path(args.cache_dir or default_cache_dir())
    prepared = prepare(schedule_cfg, model_cfg, cache, show_progress=False)
    model = build_model(schedule_cfg, model_cfg, prepared)  # as the trainer builds it
    engine = create_engine(model, load_deepspeed_config(schedule_cfg.deepspeed, folder), schedule_cfg.training, 1000)
    stream = ExampleStream(prepared.train_sets["knowledge_masking"], args.batch, 0, "knowledge_masking",
                           prepared.tokenizer.pad_id, False, group=schedule_cfg.training.length_grouping)
    return engine, stream


def step(engine, stream) -> int:
    """One optimizer step as the trainer takes it for knowledge_masking alone; returns its tokens."""
    from torch.profiler import record_function

    from ernie_cl.data.examples import to_device

    with record_function("phase: data"):
        batch = to_device(stream.next_batch(), engine.device)
    with record_function("phase: forward"):
        loss = engine(**batch)["knowledge_masking"][0]
    with record_function("phase: backward"):
        engine.backward(loss)
    with record_function("phase: optimizer"):
        engine.step()
    return int(batch["attention_mask"].sum())


# addmm_: the fused blocks' input-gradient products, which add the residual's gradient in place
PRODUCTS = ("aten.mm.default", "aten.addmm.default", "aten.addmm_.default")


def product_shape(name: str, args: tuple) -> tuple[int, int, int]:
    """(m, k, n) of an mm (a, b) or addmm / addmm_ (c, a, b) call."""
    a, b = (args[0], args[1]) if name == "aten.mm.default" else (args[1], args[2])
    return a.shape[0], a.shape[1], b.shape[1]


def per_call(args, engine, stream) -> None:
    """Each operator call's wall time over ``--steps`` steps; matrix products by shape (module docstring)."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    calls: dict[str, list] = defaultdict(lambda: [0, 0.0])
    shapes: dict[tuple, list] = defaultdict(lambda: [0, 0.0])

    class Timed(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, op_args=(), kwargs=None):
            started = time.perf_counter()
            out = func(*op_args, **(kwargs or {}))
            seconds = time.perf_counter() - started
            name = str(func)
            calls[name][0] += 1
            calls[name][1] += seconds
            if name in PRODUCTS:
                entry = shapes[product_shape(name, op_args)]
                entry[0] += 1
                entry[1] += seconds
            return out

    started = time.perf_counter()
    with Timed():
        tokens = sum(step(engine, stream) for _ in range(args.steps))
    wall = (time.perf_counter() - started) / args.steps
    timed = sum(seconds for _, seconds in calls.values()) / args.steps
    print(f"\nstep: {wall * 1e3:.1f} ms with every call timed, {tokens / args.steps:.0f} tokens, threads {args.threads}; "
          f"the calls' own time {timed * 1e3:.1f} ms, the rest (Python, autograd, between calls) {(wall - timed) * 1e3:.1f} ms")
    flops = sum(2 * m * k * n * count for (m, k, n), (count, _) in shapes.items()) / args.steps
    product_s = sum(seconds for _, seconds in shapes.values()) / args.steps
    print(f"matrix products: {product_s * 1e3:.1f} ms a step ({product_s / wall:.1%} of it), "
          f"{flops / product_s / 1e9:.1f} GFLOP/s over all of them")
    top = sorted(calls.items(), key=lambda kv: -kv[1][1])[: args.top]
    print(f"\n{'operator':<52}{'calls':>7}{'ms/step':>10}")
    for name, (count, seconds) in top:
        print(f"{name[:51]:<52}{count // args.steps:>7}{seconds / args.steps * 1e3:>10.2f}")
    print(f"\n{'product (m x k) . (k x n)':<30}{'calls':>7}{'ms/step':>10}{'GFLOP/s':>9}")
    for (m, k, n), (count, seconds) in sorted(shapes.items(), key=lambda kv: -kv[1][1])[: args.top]:
        print(f"{f'{m} x {k} . {k} x {n}':<30}{count / args.steps:>7.1f}{seconds / args.steps * 1e3:>10.2f}"
              f"{2 * m * k * n * count / seconds / 1e9:>9.1f}")
    print(json.dumps({"settings": vars(args), "step_ms": round(wall * 1e3, 2), "calls_ms": round(timed * 1e3, 2),
                      "products_ms": round(product_s * 1e3, 2), "products_gflops": round(flops / product_s / 1e9, 1),
                      "ops": {name: {"calls": count // args.steps, "ms": round(seconds / args.steps * 1e3, 3)}
                              for name, (count, seconds) in top}}))


def main() -> None:
    args = parse_args()
    from torch.profiler import ProfilerActivity, profile

    with tempfile.TemporaryDirectory() as tmp:
        engine, stream = build(args, Path(tmp))
        for _ in range(args.warmup):
            step(engine, stream)
        if args.per_call:
            per_call(args, engine, stream)
            return
        started = time.perf_counter()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            tokens = sum(step(engine, stream) for _ in range(args.steps))
        wall = (time.perf_counter() - started) / args.steps
    events = prof.key_averages()
    phases = {e.key.removeprefix("phase: "): e.cpu_time_total / 1e3 / args.steps
              for e in events if e.key.startswith("phase: ")}
    kinds: dict[str, float] = defaultdict(float)
    for e in events:
        if not e.key.startswith("phase: ") and not e.key.startswith("ProfilerStep"):
            kinds[kind_of(e.key)] += e.self_cpu_time_total / 1e3 / args.steps
    profiled = sum(kinds.values())
    print(f"\nstep: {wall * 1e3:.1f} ms under the profiler, {tokens / args.steps:.0f} tokens, "
          f"threads {args.threads}, compile {args.compile}, torch dropout {args.torch_dropout}")
    print(f"\n{'phase':<12}{'ms/step':>10}{'share':>8}")
    for name, ms in phases.items():
        print(f"{name:<12}{ms:>10.1f}{ms / (wall * 1e3):>8.1%}")
    print(f"\n{'kind':<14}{'ms/step':>10}{'share':>8}   (operators' self CPU time)")
    for name, ms in sorted(kinds.items(), key=lambda kv: -kv[1]):
        print(f"{name:<14}{ms:>10.1f}{ms / profiled:>8.1%}")
    top = sorted((e for e in events if not e.key.startswith("phase: ")), key=lambda e: -e.self_cpu_time_total)[: args.top]
    print(f"\n{'operator':<52}{'kind':<14}{'calls':>7}{'ms/step':>10}")
    for e in top:
        print(f"{e.key[:51]:<52}{kind_of(e.key):<14}{e.count // args.steps:>7}{e.self_cpu_time_total / 1e3 / args.steps:>10.1f}")
    print(json.dumps({"settings": vars(args), "step_ms": round(wall * 1e3, 2), "tokens_per_step": tokens / args.steps,
                      "phases_ms": {k: round(v, 2) for k, v in phases.items()},
                      "kinds_ms": {k: round(v, 2) for k, v in sorted(kinds.items(), key=lambda kv: -kv[1])},
                      "top": [{"op": e.key, "kind": kind_of(e.key), "calls": e.count // args.steps,
                               "ms": round(e.self_cpu_time_total / 1e3 / args.steps, 2)} for e in top]}))


if __name__ == "__main__":
    main()
