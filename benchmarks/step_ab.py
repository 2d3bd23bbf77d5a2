"""Training settings compared step by step, interleaved in one process.

``throughput.py`` compares routes in separate processes, a minute apart, so the host's drift (its
matmul speed moves by 10-40% within a run on a shared machine) enters every comparison. This script
answers a narrower question more precisely: is setting A faster than setting B for the same model?
It builds one engine and one example stream per variant (throughput.py's one-stage knowledge_masking
schedule and model, each variant with its own ``training`` overrides), then takes optimizer steps
round-robin (A, B, A, B, ...), so that neighbouring steps share the host's state.

Each step is timed from the batch fetch to the end of the optimizer step, as the trainer times it.
For every variant it prints tokens per second (all timed tokens over all timed seconds, padding
excluded), positions per second (padding included), the share of real tokens, the median step; and
for every variant after the first, the median over the rounds of (its time per token / the first
variant's time per token in the same round), with the range of those ratios.

    python benchmarks/step_ab.py --variant whole:fill_chunks=false,length_grouping=16 --variant filled:
    python benchmarks/step_ab.py --variant torch:fast_dropout=false --variant cheap: --steps 60

A variant is ``NAME:key=value,key=value`` with keys of the schedule's ``training`` section (values
read as YAML); ``NAME:`` alone keeps the defaults.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from throughput import schedule  # noqa: E402  (the benchmark's own generated schedule)


def parse_variant(text: str) -> tuple[str, dict]:
    name, sep, settings = text.partition(":")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"--variant {text!r}: write NAME:key=value,... (NAME: alone for the defaults)")
    overrides = {}
    for item in filter(None, settings.split(",")):
        key, eq, value = item.partition("=")
        if not eq:
            raise argparse.ArgumentTypeError(f"--variant {text!r}: {item!r} is not key=value")
        overrides[key.strip()] = yaml.safe_load(value)
    if "reuse_heap" in overrides:  # glibc's thresholds are the process's, not an engine's
        raise argparse.ArgumentTypeError(f"--variant {text!r}: reuse_heap applies to the whole process, so it cannot "
                                         "differ between variants here; compare it with throughput.py --heap reuse|release")
    return name, overrides


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", type=parse_variant, action="append", required=True,
                        help="NAME:key=value,... (training settings); give two or more, the first is the reference")
    parser.add_argument("--steps", type=int, default=40, help="timed steps per variant (rounds)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per variant first")
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=16000)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    parser.add_argument("--attention-dropout", type=float, default=0.1, metavar="P")
    parser.add_argument("--cache-dir", default=None, help="ernie-cl cache (default: the usual one)")
    args = parser.parse_args(argv)
    if len(args.variant) < 2:
        parser.error("give at least two --variant")
    if len({name for name, _ in args.variant}) != len(args.variant):
        parser.error("--variant names must differ")
    if args.steps < 1 or args.warmup < 0:
        parser.error("--steps must be >= 1 and --warmup >= 0")
    return args


def build(args, overrides: dict, folder: Path):
    """Engine and knowledge_masking stream of throughput.py's mlm schedule with ``overrides``."""
    import torch
    from ernie_cl.config.schedule import load_deepspeed_config, load_model_config, load_schedule
    from ernie_cl.data.examples import ExampleStream
    from ernie_cl.data.preparation import default_cache_dir, prepare
    from ernie_cl.training.engine import create_engine
    from ernie_cl.training.trainer import build_model

    spec = argparse.Namespace(**{**vars(args), "steps": 10_000, "precision": "fp32", "torch_dropout": False})
    folder.mkdir(parents=True)
    path = schedule(spec, ["knowledge_masking"], folder)
    cfg = yaml.safe_load(path.read_text())
    cfg["training"].update(overrides)
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    sched = load_schedule(path)  # a bad key or value: the usual one-line ConfigError
    model_cfg = load_model_config(sched.model, folder)
    prepared = prepare(sched, model_cfg, Path(args.cache_dir or default_cache_dir()), show_progress=False)
    model = build_model(sched, model_cfg, prepared)
    engine = create_engine(model, load_deepspeed_config(sched.deepspeed, folder), sched.training, 10_000)
    stream = ExampleStream(prepared.train_sets["knowledge_masking"], args.batch, sched.seed, "knowledge_masking",
                           prepared.tokenizer.pad_id, False, group=sched.training.length_grouping)
    torch.set_num_threads(args.threads)
    return engine, stream


def step(engine, stream) -> tuple[float, int, int]:
    """One optimizer step, as the trainer takes it: (seconds, real tokens, positions)."""
    from ernie_cl.data.examples import to_device

    started = time.perf_counter()
    batch = to_device(stream.next_batch(), engine.device)
    loss = engine(**batch)["knowledge_masking"][0]
    engine.backward(loss)
    engine.step()
    mask = batch["attention_mask"]
    return time.perf_counter() - started, int(mask.sum()), mask.numel()


def summarize(names: list[str], rows: dict[str, list[tuple[float, int, int]]]) -> dict:
    result = {}
    reference = rows[names[0]]
    for name in names:
        timed = rows[name]
        seconds = sum(t for t, _, _ in timed)
        tokens, positions = sum(n for _, n, _ in timed), sum(p for _, _, p in timed)
        entry = {"tokens_per_s": tokens / seconds, "positions_per_s": positions / seconds, "real_share": tokens / positions,
                 "median_step_s": statistics.median(t for t, _, _ in timed)}
        if name != names[0]:
            ratios = [(t / n) / (t0 / n0) for (t, n, _), (t0, n0, _) in zip(timed, reference)]
            entry["time_per_token_vs_first"] = {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios)}
        result[name] = entry
    return result


def main() -> None:
    args = parse_args()
    import os

    from ernie_cl.errors import ErnieClError
    from ernie_cl.training.engine import name_accelerator

    args.threads = args.threads or os.cpu_count() or 1
    name_accelerator()
    names = [name for name, _ in args.variant]
    with tempfile.TemporaryDirectory() as tmp:
        try:
            parts = {name: build(args, overrides, Path(tmp) / name) for name, overrides in args.variant}
        except ErnieClError as exc:
            raise SystemExit(f"step_ab.py: {exc}") from None
        for _ in range(args.warmup):
            for engine, stream in parts.values():
                step(engine, stream)
        rows: dict[str, list] = {name: [] for name in names}
        for number in range(args.steps):
            for name, (engine, stream) in parts.items():
                rows[name].append(step(engine, stream))
            print(f"step_ab: round {number + 1}/{args.steps}", file=sys.stderr, flush=True)
    result = summarize(names, rows)
    print(f"\n{'variant':<16}{'tokens/s':>10}{'positions/s':>13}{'real share':>12}{'step (s)':>10}   time per token vs {names[0]}")
    for name in names:
        r = result[name]
        vs = r.get("time_per_token_vs_first")
        versus = f"{vs['median']:.3f} [{vs['min']:.3f}, {vs['max']:.3f}]" if vs else "-"
        print(f"{name:<16}{r['tokens_per_s']:>10.0f}{r['positions_per_s']:>13.0f}{r['real_share']:>12.3f}"
              f"{r['median_step_s']:>10.3f}   {versus}")
    print(json.dumps({"variants": dict(args.variant), "steps": args.steps, "threads": args.threads, "result": result}))


if __name__ == "__main__":
    main()
