"""Training throughput of ernie-cl against the conventional Hugging Face MLM route, same settings.

Three routes, each in its own Python process (so neither inherits the other's process group, threads
or memory), on one encoder config, batch, sequence length, corpus, tokenizer, precision and
thread count:

- ``hf``: ``transformers.Trainer`` + ``BertForMaskedLM`` + ``DataCollatorForLanguageModeling``
  (15% masking) on run_mlm-style blocks: the bundled corpus's training documents, tokenized with
  special tokens by the same WordPiece tokenizer ernie-cl trains (vocabulary ``--vocab``),
  concatenated and cut into ``--seq``-token blocks (``group_texts``). Trainer's default
  optimizer (``adamw_torch_fused`` in this transformers; reported as ``hf_optimizer``), no evaluation, no checkpoints, no logging sinks.
- ``mlm``: ``ernie_cl.training.trainer.train`` (the real trainer, DeepSpeed engine, cached example sets,
  streams) on a generated schedule with one stage training knowledge_masking alone.
- ``all``: the same with one stage in which all seven tasks are active (the token-level ones
  share forward passes, as ``fuse_token_tasks`` does by default), equal budgets.

What is counted. Tokens: the input tokens fed to the model per step, padding excluded (HF: every
block is exactly ``--seq`` real tokens, so batch x seq; ours: ``attention_mask.sum()``, which the
trainer logs as ``tokens_seen``). Time: the first ``--warmup`` optimizer steps are excluded; HF's
timed steps span from the end of the last warm-up step to the end of the last step (its
``on_step_end`` callbacks: batch fetch + forward + backward + optimizer step + callbacks), ours is
the sum of the trainer's ``step_time_s`` over the timed steps (batch fetch + forward + backward +
optimizer step + per-step metrics); ``data_wait_s`` is the part of it spent waiting for a batch.
Evaluation, example building and engine start-up are outside both. With ``--rounds N`` the three
routes run N times in turn and each route's fastest round is reported.

Model arithmetic (FLOP per step, forward + backward = 3 x forward, matmuls only)::

    3 * [T * L * (8 h^2 + 4 h f + 4 S h) + D * (2 h^2 + 2 h V)]

T input tokens, L layers, h hidden, f intermediate size, S sequence length (keys attended), V
vocabulary, D positions the MLM head decodes: every position in the HF route (its full-vocabulary
output layer), the masked targets in ours (counted exactly over the timed batches).
``matmul_peak_gflops`` is the best fp32 (or bf16) ``torch.mm`` rate of square 2048 matrices on the
same threads, measured in the same run.

    python benchmarks/throughput.py                       # the issue's CPU settings, a few minutes
    python benchmarks/throughput.py --preset base --device cuda --precision bf16 --steps 50

The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

ALL_TASKS = ["knowledge_masking", "capitalization", "token_document_relation", "sentence_reordering",
             "sentence_distance", "discourse_relation", "ir_relevance"]
PRESETS = {"base": {"hidden": 768, "layers": 12, "heads": 12}}  # BERT-base sizes
FLOP_FORMULA = "3*[T*L*(8h^2+4hf+4Sh) + D*(2h^2+2hV)]; D = decoded positions (HF: all T, ours: masked targets)"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), help="model sizes of a preset (base: 768 hidden, 12 layers, 12 heads); "
                        "explicit --hidden/--layers/--heads override it")
    parser.add_argument("--hidden", type=int, help="hidden size (default 256)")
    parser.add_argument("--layers", type=int, help="transformer layers (default 4)")
    parser.add_argument("--heads", type=int, help="attention heads (default 4)")
    parser.add_argument("--vocab", type=int, default=16000, help="WordPiece vocabulary size trained on the corpus")
    parser.add_argument("--batch", type=int, default=32, help="sequences per optimizer step")
    parser.add_argument("--seq", type=int, default=128, help="sequence length (HF block size, ours seq_len)")
    parser.add_argument("--steps", type=int, default=16, help="timed optimizer steps per route")
    parser.add_argument("--warmup", type=int, default=3, help="optimizer steps before timing starts")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads in every route")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32", help="bf16 needs --device cuda")
    parser.add_argument("--routes", default="hf,mlm,all", help="comma-separated subset of hf,mlm,all")
    parser.add_argument("--rounds", type=int, default=1, help="run the routes this many times, interleaved, and keep "
                        "each route's fastest round (for a machine shared with other work)")
    parser.add_argument("--cache-dir", default=None, help="ernie-cl cache (corpus, tokenizer, examples); default: the usual one")
    parser.add_argument("--route", help=argparse.SUPPRESS)  # internal: run one route in this process
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    preset = PRESETS.get(args.preset, {})
    for key, default in (("hidden", 256), ("layers", 4), ("heads", 4)):
        if getattr(args, key) is None:
            setattr(args, key, preset.get(key, default))
    if args.precision == "bf16" and args.device != "cuda":
        parser.error("--precision bf16 needs --device cuda (DeepSpeed's bf16 path is GPU-only here)")
    if args.hidden % args.heads:
        parser.error(f"--hidden {args.hidden} is not divisible by --heads {args.heads}")
    return args


def model_config(args) -> dict:
    return {"model_type": "bert", "hidden_size": args.hidden, "num_hidden_layers": args.layers,
            "num_attention_heads": args.heads, "intermediate_size": 4 * args.hidden,
            "max_position_embeddings": max(512, args.seq), "type_vocab_size": 2}


def schedule(args, tasks: list[str], folder: Path) -> Path:
    """A one-stage schedule of ``tasks`` whose steps cover warm-up + timed steps (explicit budgets)."""
    import yaml

    sentence_tasks = [t for t in tasks if t not in ALL_TASKS[:3]]
    # token-level tasks share one step; each sentence task takes its own: steps = b * (1 + #sentence tasks)
    budget = -(-(args.warmup + args.steps) // (1 + len(sentence_tasks)))
    (folder / "model.yaml").write_text(yaml.safe_dump(model_config(args)))
    cfg = {
        "name": "throughput", "seed": 0, "model": "model.yaml",
        "deepspeed": "zero0_bf16" if args.precision == "bf16" else "zero0",
        "corpus": {"source": "bundled", "eval_fraction": 0.1},
        "tokenizer": {"vocab_size": args.vocab, "lowercase": True},
        "training": {"batch_size": args.batch, "seq_len": args.seq, "lr": 5e-4, "warmup_steps": 10,
                     "eval_examples": 32, "eval_batch_size": 32, "checkpoint_every": 0, "threads": args.threads},
        "allocation": "explicit",
        "stages": [{"name": "bench", "tasks": {t: budget for t in tasks}}],
    }
    path = folder / "schedule.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def decoder_flops(args, tokens: float, decoded: float) -> float:
    h, f, L, S, V = args.hidden, 4 * args.hidden, args.layers, args.seq, args.vocab
    return 3 * (tokens * L * (8 * h * h + 4 * h * f + 4 * S * h) + decoded * (2 * h * h + 2 * h * V))


def run_ours(args, tasks: list[str]) -> dict:
    """Train the generated schedule through ernie_cl.training.trainer.train and read its metrics.jsonl."""
    from ernie_cl.training.trainer import train

    cache = Path(args.cache_dir) if args.cache_dir else None
    with tempfile.TemporaryDirectory() as tmp:
        path = schedule(args, tasks, Path(tmp))
        train(path, Path(tmp) / "run", wandb_mode="disabled", cache_dir=cache, show_progress=False)
        rows = [json.loads(line) for line in (Path(tmp) / "run" / "metrics.jsonl").read_text().splitlines()]
        timed = [r for r in rows if r["step"] > args.warmup][: args.steps]
        before = next(r["tokens_seen"] for r in rows if r["step"] == args.warmup)
        tokens = timed[-1]["tokens_seen"] - before
        seconds = sum(r["step_time_s"] for r in timed)
        result = {"tokens_per_s": tokens / seconds, "steps": len(timed), "tokens": tokens, "seconds": seconds,
                  "data_wait_share": sum(r["data_wait_s"] for r in timed) / seconds,
                  "step_time_s": seconds / len(timed), "tasks_per_step": [r["task"] for r in timed]}
        if tasks == ["knowledge_masking"]:
            decoded = masked_targets(args, path, cache, args.warmup, len(timed))
            result["decoded_positions"] = decoded
            result["model_gflops"] = decoder_flops(args, tokens, decoded) / seconds / 1e9
    return result


def masked_targets(args, schedule_path: Path, cache, skip: int, count: int) -> int:
    """Masked targets in the timed batches: the knowledge_masking stream replayed from its start."""
    from ernie_cl.config.schedule import load_model_config, load_schedule
    from ernie_cl.data.examples import ExampleStream, IGNORE
    from ernie_cl.data.preparation import default_cache_dir, prepare

    sched = load_schedule(schedule_path)
    prepared = prepare(sched, load_model_config(sched.model, schedule_path.parent), Path(cache or default_cache_dir()),
                       show_progress=False)
    stream = ExampleStream(prepared.train_sets["knowledge_masking"], args.batch, sched.seed, "knowledge_masking",
                           prepared.tokenizer.pad_id, False)
    batches = [stream.next_batch() for _ in range(skip + count)][skip:]
    return int(sum((b["labels"]["knowledge_masking"] != IGNORE).sum() for b in batches))


def run_hf(args) -> dict:
    """transformers.Trainer + BertForMaskedLM + DataCollatorForLanguageModeling on run_mlm blocks."""
    import torch
    from datasets import Dataset
    from transformers import (BertConfig, BertForMaskedLM, DataCollatorForLanguageModeling, Trainer,
                              TrainerCallback, TrainingArguments)

    from ernie_cl.config.schedule import load_schedule
    from ernie_cl.data.preparation import default_cache_dir, load_schedule_corpus, schedule_tokenizer

    torch.set_num_threads(args.threads)
    cache = Path(args.cache_dir or default_cache_dir())
    with tempfile.TemporaryDirectory() as tmp:
        sched = load_schedule(schedule(args, ["knowledge_masking"], Path(tmp)))
        corpus = load_schedule_corpus(sched, cache, show_progress=False)
        tokenizer = schedule_tokenizer(sched, corpus, cache, {}).hf  # the very tokenizer ernie-cl trains
        texts = [" ".join(s.text for s in d.sentences()) for d in corpus.train]
        blocks = group_texts(tokenizer(texts)["input_ids"], args.seq)
        dataset = Dataset.from_dict({"input_ids": blocks})
        cfg = model_config(args)
        config = BertConfig(**{k: v for k, v in cfg.items() if k != "model_type"}, vocab_size=len(tokenizer),
                            pad_token_id=tokenizer.pad_token_id)
        torch.manual_seed(0)
        model = BertForMaskedLM(config)
        ends: list[float] = []

        class StepClock(TrainerCallback):
            def on_step_end(self, *_, **__):
                if args.device == "cuda":
                    torch.cuda.synchronize()
                ends.append(time.perf_counter())

        training_args = TrainingArguments(
            output_dir=str(Path(tmp) / "hf"), per_device_train_batch_size=args.batch, max_steps=args.warmup + args.steps,
            learning_rate=5e-4, warmup_steps=10, adam_beta2=0.98, weight_decay=0.01, max_grad_norm=1.0,
            bf16=args.precision == "bf16", use_cpu=args.device == "cpu", save_strategy="no", eval_strategy="no",
            logging_strategy="no", report_to=[], disable_tqdm=True, dataloader_num_workers=0, seed=0)
        collator = DataCollatorForLanguageModeling(tokenizer, mlm=True, mlm_probability=0.15)
        trainer = Trainer(model=model, args=training_args, train_dataset=dataset, data_collator=collator,
                          callbacks=[StepClock()])
        trainer.train()
    seconds = ends[args.warmup + args.steps - 1] - ends[args.warmup - 1]
    tokens = args.steps * args.batch * args.seq  # every block is seq real tokens: no padding
    return {"tokens_per_s": tokens / seconds, "steps": args.steps, "tokens": tokens, "seconds": seconds,
            "step_time_s": seconds / args.steps, "blocks": len(blocks), "optimizer": training_args.optim.value,
            "model_gflops": decoder_flops(args, tokens, tokens) / seconds / 1e9}


def group_texts(token_lists: list[list[int]], block: int) -> list[list[int]]:
    """run_mlm's group_texts: concatenate every text's ids and cut into full blocks (remainder dropped)."""
    flat = [i for ids in token_lists for i in ids]
    return [flat[i : i + block] for i in range(0, len(flat) - block + 1, block)]


def matmul_peak_gflops(args) -> float:
    """Best rate of a square 2048 matmul on the benchmark's threads (the machine's practical peak)."""
    import torch

    torch.set_num_threads(args.threads)
    dtype = torch.bfloat16 if args.precision == "bf16" else torch.float32
    a = torch.randn(2048, 2048, device=args.device, dtype=dtype)
    b = torch.randn(2048, 2048, device=args.device, dtype=dtype)
    best = float("inf")
    for _ in range(6):
        if args.device == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        for _ in range(50 if args.device == "cuda" else 1):
            torch.mm(a, b)
        if args.device == "cuda":
            torch.cuda.synchronize()
        best = min(best, (time.perf_counter() - started) / (50 if args.device == "cuda" else 1))
    return 2 * 2048**3 / best / 1e9


def run_route(args) -> dict:
    if args.route == "hf":
        return run_hf(args)
    if args.route == "peak":
        return {"gflops": matmul_peak_gflops(args)}
    return run_ours(args, ["knowledge_masking"] if args.route == "mlm" else ALL_TASKS)


def in_subprocess(argv: list[str], route: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        subprocess.run([sys.executable, __file__, *argv, "--route", route, "--out", str(out)], check=True, cwd=ROOT)
        return json.loads(out.read_text())


def main() -> None:
    args = parse_args()
    if args.route:
        Path(args.out).write_text(json.dumps(run_route(args)))
        return
    import torch

    argv = [a for a in sys.argv[1:]]
    routes = args.routes.split(",")
    peak = in_subprocess(argv, "peak")["gflops"]
    rounds = [{route: in_subprocess(argv, route) for route in routes} for _ in range(args.rounds)]
    results = {route: max((r[route] for r in rounds), key=lambda x: x["tokens_per_s"]) for route in routes}
    summary = {
        "settings": {k: getattr(args, k) for k in ("hidden", "layers", "heads", "vocab", "batch", "seq", "steps",
                                                   "warmup", "threads", "device", "precision", "rounds")},
        "torch": torch.__version__, "matmul_peak_gflops": round(peak, 1), "flop_formula": FLOP_FORMULA,
    }
    print(f"\n{'route':<10}{'tokens/s':>10}{'step (s)':>10}{'model GFLOP/s':>15}{'data wait':>11}")
    for route, r in results.items():
        key = "hf" if route == "hf" else f"ours_{route}"
        summary[f"{key}_tokens_per_s"] = round(r["tokens_per_s"], 1)
        summary[f"{key}_step_time_s"] = round(r["step_time_s"], 4)
        if "model_gflops" in r:
            summary[f"{key}_model_gflops"] = round(r["model_gflops"], 2)
        if "data_wait_share" in r:
            summary[f"{key}_data_wait_share"] = round(r["data_wait_share"], 4)
        gflops = f"{r['model_gflops']:.1f}" if "model_gflops" in r else "-"
        wait = f"{r['data_wait_share']:.1%}" if "data_wait_share" in r else "-"
        print(f"{key:<10}{r['tokens_per_s']:>10.0f}{r['step_time_s']:>10.3f}{gflops:>15}{wait:>11}")
    if "hf" in results:
        for route in ("mlm", "all"):
            if route in results:
                summary[f"ratio_{route}"] = round(results[route]["tokens_per_s"] / results["hf"]["tokens_per_s"], 3)
    if "mlm" in results:
        summary["ours_mlm_peak_fraction"] = round(results["mlm"]["model_gflops"] / peak, 3)
        summary["ours_mlm_decoded_fraction"] = round(results["mlm"]["decoded_positions"] / results["mlm"]["tokens"], 4)
    if "hf" in results:
        summary["hf_optimizer"] = results["hf"]["optimizer"]
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
