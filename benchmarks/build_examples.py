"""How long building every task's examples takes for the whole bundled corpus, from a cold cache.

Prints one line per task (train + held-out examples, seconds) and, last, one JSON object with the
per-task times and the total. The corpus is parsed and the tokenizer trained first (in their own
cache) and not counted: the figure is the example generation that `ernie-cl train` does per task.

    python benchmarks/build_examples.py [--tasks a,b,...] [--seq-len 128] [--workers N]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ernie_cl.corpus import load_corpus  # noqa: E402
from ernie_cl.data.examples import cached_examples  # noqa: E402
from ernie_cl.data.tokenizer import build_or_load_tokenizer  # noqa: E402
from pretrain_tasks import get_task_class, registered_tasks  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", default=",".join(registered_tasks()), help="comma-separated task names (default: all)")
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--vocab-size", type=int, default=8000)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--corpus-cache", default=str(Path(tempfile.gettempdir()) / "ernie-cl-bench-corpus"),
                        help="cache for the parsed corpus and tokenizer (not timed)")
    args = parser.parse_args()

    corpus = load_corpus("bundled", cache_dir=args.corpus_cache, eval_fraction=0.1, show_progress=False)
    tokenizer = build_or_load_tokenizer((s.text for d in corpus.train for s in d.sentences()), corpus.fingerprint,
                                        args.corpus_cache, vocab_size=args.vocab_size)
    times: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as cold_cache:  # a fresh example cache: every build is cold
        for name in args.tasks.split(","):
            task = get_task_class(name)(tokenizer, args.seq_len)
            started = time.perf_counter()
            sizes = [len(cached_examples(task, docs, split=split, seed=0, corpus_fingerprint=corpus.fingerprint,
                                         cache_dir=cold_cache, workers=args.workers))
                     for split, docs in (("train", corpus.train), ("heldout", corpus.heldout))]
            times[name] = time.perf_counter() - started
            print(f"{name:<26} {sizes[0]:>7} train + {sizes[1]:>5} held-out examples  {times[name]:6.1f} s", flush=True)
    total = sum(times.values())
    print(f"{'total':<26} {total:6.1f} s on {args.workers} worker(s), {os.cpu_count()} core(s)")
    print(json.dumps({"seconds_per_task": {k: round(v, 2) for k, v in times.items()}, "total_seconds": round(total, 2),
                      "documents": len(corpus.documents), "workers": args.workers, "seq_len": args.seq_len}))


if __name__ == "__main__":
    main()
