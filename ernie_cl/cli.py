"""The ``ernie-cl`` command: parse arguments, call the library, print one-line errors.

Exit codes: 0 success, 2 usage or configuration error, 1 runtime failure, 130 interrupted.
A full traceback is printed only with ``--debug``. Heavy libraries are imported lazily so that
``ernie-cl --help`` answers at once.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

from .errors import ConfigError, ErnieClError

DEFAULT_SCHEDULE = Path(__file__).resolve().parent.parent / "schedules" / "demo.yaml"

DESCRIPTION = """\
ERNIE-2.0-style continual sequential multi-task pre-training of text encoders.

Typical use:
  ernie-cl train schedules/demo.yaml --run-dir runs/demo        # staged pre-training
  ernie-cl train schedules/demo.yaml --run-dir runs/demo --resume auto
  ernie-cl tasks                                                 # registered pre-training tasks
  ernie-cl tasks knowledge_masking --examples 3                  # what a task's examples look like
  ernie-cl validate schedules/demo.yaml                          # check a schedule, nothing else
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ernie-cl", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
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
    train.add_argument("--no-progress", action="store_true", help="no progress bars (for logs)")

    tasks = sub.add_parser("tasks", help="list the registered pre-training tasks, or show one task's examples",
                           description="Without NAME: the registered task names, one a line. With NAME and "
                                       "--examples N: N decoded training examples of that task on the schedule's corpus.")
    tasks.add_argument("name", nargs="?", help="a task name")
    tasks.add_argument("--examples", type=int, default=3, metavar="N", help="how many examples to print (default 3)")
    tasks.add_argument("--stats", action="store_true",
                       help="print the label distribution over the corpus and the trivial baseline instead of examples")
    tasks.add_argument("--schedule", default=str(DEFAULT_SCHEDULE), help="schedule whose corpus and settings to use (default: demo)")
    tasks.add_argument("--cache-dir", help="cache folder (as for train)")

    validate = sub.add_parser("validate", help="check a schedule file and the configs it names, then stop")
    validate.add_argument("schedule", help="schedule YAML file")
    return parser


def _train(args: argparse.Namespace) -> int:
    from .trainer import train

    from .stopping import StopRequested

    try:
        summary = train(args.schedule, args.run_dir, resume=args.resume, wandb_mode=args.wandb,
                        cache_dir=args.cache_dir, show_progress=not args.no_progress,
                        allow_config_change=args.allow_config_change)
    except StopRequested as stop:
        print(f"ernie-cl: {stop}", file=sys.stderr)
        return stop.exit_code
    print(f"ernie-cl: done; {len(summary['stages'])} stage(s); summary in {Path(args.run_dir) / 'summary.json'}")
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
    from .config import load_model_config, load_schedule
    from .preparation import prepare

    schedule = load_schedule(args.schedule)
    model_cfg = load_model_config(schedule.model, Path(args.schedule).parent)
    prepared = prepare(schedule, model_cfg, Path(args.cache_dir) if args.cache_dir else None, task_names=[args.name])
    task, dataset = prepared.tasks[args.name], prepared.train_sets[args.name]
    print(f"{args.name}: {len(dataset)} training examples, {len(prepared.eval_sets[args.name])} held-out; "
          f"{task.num_labels} labels; level {task.level}")
    if args.stats:
        from .evaluation import label_statistics

        print(label_statistics(task, dataset, prepared.eval_sets[args.name]))
        return 0
    for i in range(min(args.examples, len(dataset))):
        print(f"\n--- example {i} ---\n{task.describe_example(dataset[i])}")
    return 0


def _validate(args: argparse.Namespace) -> int:
    from .config import load_deepspeed_config, load_model_config, load_schedule
    from .preparation import plan_stages

    schedule = load_schedule(args.schedule)
    base = Path(args.schedule).parent
    load_model_config(schedule.model, base)
    load_deepspeed_config(schedule.deepspeed, base)
    stages = plan_stages(schedule)
    print(f"{args.schedule}: valid; {len(stages)} stage(s), {sum(s.steps for s in stages)} optimizer steps")
    for stage in stages:
        budgets = ", ".join(f"{t}={n}" for t, n in stage.budgets.items())
        fused = f"; {'+'.join(stage.fused)} share forward passes" if stage.fused else ""
        print(f"  {stage.name}: {budgets} ({stage.steps} steps{fused})")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    handler = {"train": _train, "tasks": _tasks, "validate": _validate}[args.command]
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


if __name__ == "__main__":
    sys.exit(main())
