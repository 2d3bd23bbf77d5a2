"""Training throughput of ernie-cl against the conventional Hugging Face MLM route, same settings.

Four routes, each in its own Python process (so none inherits another's process group, threads or
memory), on one encoder config, batch, sequence length, corpus, tokenizer, precision and thread
count:

- ``hf``: ``transformers.Trainer`` + ``BertForMaskedLM`` + ``DataCollatorForLanguageModeling``
  (15% masking) on run_mlm-style blocks: the bundled corpus's training documents, tokenized with
  special tokens by the same WordPiece tokenizer ernie-cl trains (vocabulary ``--vocab``),
  concatenated and cut into ``--seq``-token blocks (``group_texts``). Trainer's default
  optimizer (``adamw_torch_fused`` in this transformers; reported as ``hf_optimizer``), no
  evaluation, no checkpoints, no logging sinks. ``--hf-compile`` adds
  ``TrainingArguments(torch_compile=True)``.
- ``standalone``: the same conventional route as a user writes it from transformers' ``run_mlm.py``
  example, in its own script (``hf_mlm_standalone.py``): a ``datasets.Dataset`` of the same texts,
  tokenized by ``Dataset.map`` with ``return_special_tokens_mask=True``, every column grouped into
  blocks by another ``Dataset.map``, the same model, collator and ``TrainingArguments``
  (``--hf-compile`` becomes its ``--compile``). It checks the ``hf`` route: ``hf_vs_standalone``
  = median(hf) / median(standalone) - 1, and the table says whether it is within 10%.
- ``mlm``: ``ernie_cl.training.trainer.train`` (the real trainer, DeepSpeed engine, cached example sets,
  streams) on a generated schedule with one stage training knowledge_masking alone. ``--compile``
  writes ``training.compile: true`` into that schedule (compiled is compared with compiled when
  ``--hf-compile`` is given too); ``--torch-dropout`` writes ``training.fast_dropout: false`` (torch's
  dropout masks, as the HF routes draw them, instead of ernie-cl's default cheap masks).
- ``all``: the same with one stage in which all seven tasks are active (the token-level ones
  share forward passes, as ``fuse_token_tasks`` does by default), equal budgets.

Heap. ernie-cl keeps the memory a step frees for the next step's tensors (``training.reuse_heap``,
on by default: glibc's mmap and trim thresholds raised, ``ernie_cl/training/allocator.py``). With
``--heap reuse`` (the default) the HF routes and the peak get the same thresholds through glibc's
environment variables (``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_``), so the baseline runs
at its best too; ``--heap release`` runs every route with glibc's defaults (ours with
``training.reuse_heap: false``).

Rounds. The routes run interleaved, ``--rounds`` times (default 5): peak hf standalone mlm all,
peak hf standalone mlm all, ..., so a slow drift of the machine reaches every route alike. For each
route the table gives the median tokens/s over the rounds, the slowest and the fastest round and the
spread (max - min) / median; step time, model GFLOP/s and data-wait share are medians too.
``ratio_mlm`` and ``ratio_all`` are median(ours) / median(hf). The per-round ratios (ours / hf of
the same round) come with their median, range and spread: the spread says how far one run's ratio
can be trusted. The default of 5 rounds is meant to keep that spread under 10% on a quiet machine;
on a loaded one it is wider, and the spread shows it.

What is counted. Tokens: the input tokens fed to the model per step, padding excluded (HF routes:
every block is exactly ``--seq`` real tokens, so batch x seq; ours: ``attention_mask.sum()``, which
the trainer logs as ``tokens_seen``). Time: the first ``--warmup`` optimizer steps are excluded;
the HF routes' timed steps span from the end of the last warm-up step to the end of the last step
(their ``on_step_end`` callbacks: batch fetch + forward + backward + optimizer step + callbacks),
ours is the sum of the trainer's ``step_time_s`` over the timed steps (batch fetch + forward +
backward + optimizer step + per-step metrics); ``data_wait_s`` is the part of it spent waiting for
a batch. Evaluation, example building, engine start-up and compilation in the warm-up steps are
outside all of them.

Model arithmetic (FLOP per step, forward + backward = 3 x forward, matmuls only)::

    3 * [T * L * (8 h^2 + 4 h f) + A * L * 4 h + D * (2 h^2 + 2 h V)]

T input tokens, L layers, h hidden, f intermediate size, A (query, key) pairs of real tokens that
attention scores (the sum of each sequence's length squared: T x ``--seq`` for the HF routes, whose
blocks are all full; padding counts nowhere), V vocabulary, D positions the MLM head decodes: every
position in the HF routes (their full-vocabulary output layer), the masked targets in ours. Ours
counts A and D exactly over the timed batches, replayed from the task's stream (their token count
must equal the trainer's ``tokens_seen``, or the benchmark stops).
``matmul_peak_gflops`` is the best fp32 (or bf16) ``torch.mm`` rate of square 2048 matrices on the
same threads, measured once per round (route ``peak``, a few seconds) and reported as median and
spread; ``ours_mlm_peak_fraction`` is median ours_mlm model GFLOP/s over the median peak, and the
per-round fraction (its median and range) divides each round's figure by the peak measured just
before it (the host's speed drifts within a run; a pair a few seconds apart shares the drift).

    python benchmarks/throughput.py                       # the issue's CPU settings, 5 rounds
    python benchmarks/throughput.py --rounds 9            # a narrower spread on a busy machine
    python benchmarks/throughput.py --routes mlm --batch 256  # 256-sequence batches: the README's 65%-of-peak setting
    python benchmarks/throughput.py --routes hf,standalone --hf-compile
    python benchmarks/throughput.py --compile --hf-compile   # compiled against compiled
    python benchmarks/throughput.py --preset base --device cuda --precision bf16 --steps 50

A table comes first; the last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
STANDALONE = Path(__file__).resolve().parent / "hf_mlm_standalone.py"

ALL_TASKS = ["knowledge_masking", "capitalization", "token_document_relation", "sentence_reordering",
             "sentence_distance", "discourse_relation", "ir_relevance"]
PRESETS = {"base": {"hidden": 768, "layers": 12, "heads": 12}}  # BERT-base sizes
FLOP_FORMULA = ("3*[T*L*(8h^2+4hf) + A*L*4h + D*(2h^2+2hV)]; A = sum of sequence lengths squared (HF: T*seq), "
                "D = decoded positions (HF: all T, ours: masked targets)")
ROUTE_KEYS = {"hf": "hf", "standalone": "standalone", "mlm": "ours_mlm", "all": "ours_all"}  # route -> summary key


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
    parser.add_argument("--routes", default="hf,standalone,mlm,all",
                        help="comma-separated subset of hf,standalone,mlm,all")
    parser.add_argument("--rounds", type=int, default=5, help="run the routes this many times, interleaved; every "
                        "figure is a median over the rounds, shown with its range and spread")
    parser.add_argument("--attention-dropout", type=float, default=0.1, metavar="P",
                        help="attention_probs_dropout_prob of every route's model (default BERT's 0.1; on CPU, "
                        "SDPA runs its fused flash kernel only when it is 0, else the unfused math path)")
    parser.add_argument("--compile", action="store_true", help="ours: training.compile: true in the generated schedule")
    parser.add_argument("--hf-compile", action="store_true", help="HF routes: TrainingArguments(torch_compile=True)")
    parser.add_argument("--torch-dropout", action="store_true", help="ours: training.fast_dropout: false (torch's "
                        "bernoulli_ dropout masks, as the HF routes draw them) instead of the default cheap masks")
    parser.add_argument("--heap", choices=["reuse", "release"], default="reuse", help="reuse (default): every route keeps "
                        "freed memory for the next step (ours: training.reuse_heap; the HF routes and the peak: glibc's "
                        "MALLOC_*_THRESHOLD_ variables); release: glibc's defaults everywhere")
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
    unknown = set(args.routes.split(",")) - set(ROUTE_KEYS)
    if unknown:
        parser.error(f"--routes: unknown {', '.join(sorted(unknown))} (choose from {', '.join(ROUTE_KEYS)})")
    if args.rounds < 1 or args.warmup < 1:  # the timed span starts at the end of the last warm-up step
        parser.error("--rounds and --warmup must be at least 1")
    return args


def model_config(args) -> dict:
    return {"model_type": "bert", "hidden_size": args.hidden, "num_hidden_layers": args.layers,
            "num_attention_heads": args.heads, "intermediate_size": 4 * args.hidden,
            "max_position_embeddings": max(512, args.seq), "type_vocab_size": 2,
            "attention_probs_dropout_prob": args.attention_dropout}


def schedule(args, tasks: list[str], folder: Path, compile_model: bool = False) -> Path:
    """A one-stage schedule of ``tasks`` whose steps cover warm-up + timed steps (explicit budgets);
    ``compile_model`` sets ``training.compile``, ``--torch-dropout`` ``training.fast_dropout: false``."""
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
    if compile_model:  # only when asked: a schedule without the key reads as before
        cfg["training"]["compile"] = True
    if getattr(args, "torch_dropout", False):
        cfg["training"]["fast_dropout"] = False
    if getattr(args, "heap", "reuse") == "release":
        cfg["training"]["reuse_heap"] = False
    path = folder / "schedule.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def decoder_flops(args, tokens: float, decoded: float, attended: float | None = None) -> float:
    """Model FLOP of forward + backward (module docstring); ``attended`` defaults to full blocks."""
    h, f, L, V = args.hidden, 4 * args.hidden, args.layers, args.vocab
    attended = tokens * args.seq if attended is None else attended
    return 3 * (tokens * L * (8 * h * h + 4 * h * f) + attended * L * 4 * h + decoded * (2 * h * h + 2 * h * V))


def run_ours(args, tasks: list[str]) -> dict:
    """Train the generated schedule through ernie_cl.training.trainer.train and read its metrics.jsonl."""
    from ernie_cl.training.trainer import train

    cache = Path(args.cache_dir) if args.cache_dir else None
    with tempfile.TemporaryDirectory() as tmp:
        path = schedule(args, tasks, Path(tmp), compile_model=args.compile)
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
            counted = timed_batches(args, path, cache, args.warmup, len(timed))
            if counted["tokens"] != tokens:
                raise SystemExit(f"throughput.py: the replayed batches hold {counted['tokens']} tokens, the trainer saw "
                                 f"{tokens}: the replay no longer follows the trainer's stream")
            result["decoded_positions"], result["attended_pairs"] = counted["decoded"], counted["attended"]
            result["model_gflops"] = decoder_flops(args, tokens, counted["decoded"], counted["attended"]) / seconds / 1e9
    return result


def timed_batches(args, schedule_path: Path, cache, skip: int, count: int) -> dict[str, int]:
    """Tokens, attended (query, key) pairs and masked targets of the timed batches: the
    knowledge_masking stream replayed from its start, length grouping included, as the trainer reads it."""
    from ernie_cl.config.schedule import load_model_config, load_schedule
    from ernie_cl.data.examples import ExampleStream, IGNORE
    from ernie_cl.data.preparation import default_cache_dir, prepare

    sched = load_schedule(schedule_path)
    prepared = prepare(sched, load_model_config(sched.model, schedule_path.parent), Path(cache or default_cache_dir()),
                       show_progress=False)
    stream = ExampleStream(prepared.train_sets["knowledge_masking"], args.batch, sched.seed, "knowledge_masking",
                           prepared.tokenizer.pad_id, False, group=sched.training.length_grouping)
    batches = [stream.next_batch() for _ in range(skip + count)][skip:]
    lengths = [b["attention_mask"].sum(1) for b in batches]
    return {"tokens": int(sum(n.sum() for n in lengths)), "attended": int(sum((n * n).sum() for n in lengths)),
            "decoded": int(sum((b["labels"]["knowledge_masking"] != IGNORE).sum() for b in batches))}


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
            logging_strategy="no", report_to=[], disable_tqdm=True, dataloader_num_workers=0, seed=0,
            torch_compile=args.hf_compile)
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


def heap_environment(args, route: str) -> dict[str, str]:
    """The child's environment: with ``--heap reuse``, processes that do not run ernie-cl's trainer
    (the HF routes, the peak) get ``training.reuse_heap``'s thresholds from glibc's variables."""
    from ernie_cl.training.allocator import MMAP_THRESHOLD, TRIM_THRESHOLD

    env = dict(os.environ)
    if args.heap == "reuse" and route not in ("mlm", "all"):
        env.update(MALLOC_MMAP_THRESHOLD_=str(MMAP_THRESHOLD), MALLOC_TRIM_THRESHOLD_=str(TRIM_THRESHOLD))
    return env


def run_child(command: list[str], route: str, env: dict[str, str]) -> dict:
    """Run one route's process and read the JSON it writes to ``--out``; a failed route stops the benchmark."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        done = subprocess.run([*command, "--out", str(out)], cwd=ROOT, env=env)
        if done.returncode:
            sys.exit(f"throughput: route {route!r} failed (exit status {done.returncode}); its output is above")
        return json.loads(out.read_text())


def in_subprocess(args, argv: list[str], route: str) -> dict:
    return run_child([sys.executable, __file__, *argv, "--route", route], route, heap_environment(args, route))


def standalone_command(args) -> list[str]:
    """hf_mlm_standalone.py with this run's sizes (``--hf-compile`` becomes its ``--compile``)."""
    sizes = {"hidden": args.hidden, "layers": args.layers, "heads": args.heads, "vocab": args.vocab,
             "batch": args.batch, "seq": args.seq, "steps": args.steps, "warmup": args.warmup,
             "threads": args.threads, "device": args.device, "precision": args.precision,
             "attention-dropout": args.attention_dropout}
    command = [sys.executable, str(STANDALONE), *(f"--{k}={v}" for k, v in sizes.items())]
    if args.cache_dir:
        command.append(f"--cache-dir={args.cache_dir}")
    if args.hf_compile:
        command.append("--compile")
    return command


def run_round(args, argv: list[str], number: int) -> dict[str, dict]:
    """One round: every route once, in ``--routes`` order, each in its own process, and the matmul peak
    right before the ``mlm`` route (first, without it), so that each round's peak fraction compares two
    measurements taken a few seconds apart."""
    routes = args.routes.split(",")
    results = {} if "mlm" in routes else {"peak": in_subprocess(args, argv, "peak")}
    for route in routes:
        print(f"throughput: round {number}/{args.rounds}, route {route}", file=sys.stderr, flush=True)
        if route == "mlm":
            results["peak"] = in_subprocess(args, argv, "peak")
        if route == "standalone":
            results[route] = run_child(standalone_command(args), route, heap_environment(args, route))
        else:
            results[route] = in_subprocess(args, argv, route)
    return results


def summarize_rounds(values: list[float]) -> dict:
    """Median, min, max and spread ((max - min) / median) of one figure over the rounds."""
    middle = statistics.median(values)
    return {"median": middle, "min": min(values), "max": max(values), "spread": (max(values) - min(values)) / middle}


def route_summary(results: list[dict]) -> dict:
    """One route over the rounds: tokens/s summarized and per round, the medians of the other figures."""
    tokens = [r["tokens_per_s"] for r in results]
    summary = {"tokens_per_s": summarize_rounds(tokens), "tokens_per_s_rounds": tokens}
    for key in ("step_time_s", "model_gflops", "data_wait_share"):
        if key in results[0]:
            summary[key] = statistics.median(r[key] for r in results)
    if "blocks" in results[0]:  # HF routes: the same in every round; hf and standalone should cut alike
        summary["blocks"] = results[0]["blocks"]
    return summary


def round_ratios(ours: list[dict], hf: list[dict]) -> dict:
    """The per-round ratios ours / hf (both from the same round) and their median, range and spread."""
    values = [o["tokens_per_s"] / h["tokens_per_s"] for o, h in zip(ours, hf)]
    return {"values": values, **summarize_rounds(values)}


def summarize(args, rounds: list[dict[str, dict]]) -> dict:
    """The run's figures: settings, every route over the rounds, the ratios of medians and per round,
    hf against standalone, the matmul peak."""
    import torch

    routes = args.routes.split(",")
    per_route = {route: [r[route] for r in rounds] for route in routes}
    settings = ("hidden", "layers", "heads", "vocab", "batch", "seq", "steps", "warmup", "threads", "device",
                "precision", "rounds", "attention_dropout", "compile", "hf_compile", "torch_dropout", "heap")
    summary = {"settings": {**{k: getattr(args, k) for k in settings}, "routes": routes},
               "torch": torch.__version__, "flop_formula": FLOP_FORMULA}
    for route, results in per_route.items():
        summary[ROUTE_KEYS[route]] = route_summary(results)
    median = {route: summary[ROUTE_KEYS[route]]["tokens_per_s"]["median"] for route in routes}
    if "hf" in per_route:
        summary["hf_optimizer"] = per_route["hf"][0]["optimizer"]
        for route in ("mlm", "all"):
            if route in per_route:
                summary[f"ratio_{route}"] = median[route] / median["hf"]
                summary[f"ratio_{route}_rounds"] = round_ratios(per_route[route], per_route["hf"])
        if "standalone" in per_route:
            summary["hf_vs_standalone"] = median["hf"] / median["standalone"] - 1
            summary["hf_vs_standalone_within_10pct"] = abs(summary["hf_vs_standalone"]) <= 0.10
    summary["matmul_peak_gflops"] = summarize_rounds([r["peak"]["gflops"] for r in rounds])
    if "mlm" in per_route:
        peak = summary["matmul_peak_gflops"]["median"]
        summary["ours_mlm_peak_fraction"] = summary["ours_mlm"]["model_gflops"] / peak
        fractions = [r["mlm"]["model_gflops"] / r["peak"]["gflops"] for r in rounds]
        summary["ours_mlm_peak_fraction_rounds"] = {"values": fractions, **summarize_rounds(fractions)}
        first = per_route["mlm"][0]  # the masking stream is seeded: every round decodes the same positions
        summary["ours_mlm_decoded_fraction"] = first["decoded_positions"] / first["tokens"]
    return summary


def aligned(rows: list[list[str]]) -> list[str]:
    """Rows as text columns, two spaces apart: the first column left-aligned, the others right-aligned."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths)))
            for row in rows]


def table(summary: dict) -> str:
    """The summary for people: one row per route, then the matmul peak, the ratios and hf against standalone."""
    rows = [["route", "tokens/s", "[min, max]", "spread", "step (s)", "model GFLOP/s", "data wait"]]
    for route in summary["settings"]["routes"]:
        r = summary[ROUTE_KEYS[route]]
        t = r["tokens_per_s"]
        rows.append([ROUTE_KEYS[route], f"{t['median']:.0f}", f"[{t['min']:.0f}, {t['max']:.0f}]", f"{t['spread']:.1%}",
                     f"{r['step_time_s']:.3f}", f"{r['model_gflops']:.1f}" if "model_gflops" in r else "-",
                     f"{r['data_wait_share']:.1%}" if "data_wait_share" in r else "-"])
    lines = aligned(rows)
    peak = summary["matmul_peak_gflops"]
    line = (f"matmul peak: {peak['median']:.1f} GFLOP/s [{peak['min']:.1f}, {peak['max']:.1f}], "
            f"spread {peak['spread']:.1%}")
    if "ours_mlm_peak_fraction" in summary:
        per = summary["ours_mlm_peak_fraction_rounds"]
        line += (f"; ours_mlm at {summary['ours_mlm_peak_fraction']:.1%} of it (of medians); per round "
                 f"{per['median']:.1%} [{per['min']:.1%}, {per['max']:.1%}]")
    lines.append(line)
    for route in ("mlm", "all"):
        if f"ratio_{route}" in summary:
            per = summary[f"ratio_{route}_rounds"]
            lines.append(f"ratio_{route}: {summary[f'ratio_{route}']:.3f} (of medians); per round {per['median']:.3f} "
                         f"[{per['min']:.3f}, {per['max']:.3f}], spread {per['spread']:.1%}")
    if "hf_vs_standalone" in summary:
        within = "within" if summary["hf_vs_standalone_within_10pct"] else "NOT within"
        lines.append(f"hf_vs_standalone: {summary['hf_vs_standalone']:+.1%} ({within} 10%)")
    heap = summary["settings"]["heap"]
    lines.append(f"heap: {heap} in every route" + (" (ours: training.reuse_heap; the others: glibc's MALLOC_*_THRESHOLD_)"
                                                    if heap == "reuse" else " (glibc's defaults)"))
    return "\n".join(lines)


def rounded(value, digits: int = 4):
    """``value`` with every float cut to ``digits`` significant digits (the JSON line; noise is far above them)."""
    if isinstance(value, float):
        return float(f"{value:.{digits}g}")
    if isinstance(value, dict):
        return {k: rounded(v, digits) for k, v in value.items()}
    if isinstance(value, list):
        return [rounded(v, digits) for v in value]
    return value


def main() -> None:
    args = parse_args()
    if args.route:
        Path(args.out).write_text(json.dumps(run_route(args)))
        return
    rounds = [run_round(args, sys.argv[1:], number) for number in range(1, args.rounds + 1)]
    summary = summarize(args, rounds)
    print("\n" + table(summary))
    print(json.dumps(rounded(summary)))


if __name__ == "__main__":
    main()
