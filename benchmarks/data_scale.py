"""How data preparation scales with the corpus: time, memory and cache size at 1x, 4x, 16x, 64x.

Builds corpora of the bundled text (gensim's Wikipedia sample + Lee news corpus) written K times
over as JSONL, every copy with its own ids and titles (so every copy is a distinct document and the
held-out split hashes it anew), or takes ``--corpus PATH`` (a JSONL file with ``text`` and
``title``) for a real one. For each it runs ``ernie-cl prepare`` on a one-stage schedule of all
seven tasks with an empty cache, in its own process, and reports:

- wall time and MB of text per second (text: the UTF-8 bytes of the documents' text);
- peak memory of the whole process tree (the prepare process plus its worker processes, summed at
  each sample, with psutil; RSS every 0.1 s, PSS every second): RSS, which counts the pages a forked worker
  shares with its parent once in each (an upper bound), and PSS, which splits shared pages
  between the processes that share them (what the tree really occupies);
- cache bytes per text byte (example sets only, and everything: corpus cache, tokenizer, examples);
- the seconds of every preparation stage, as ``ernie-cl prepare`` prints them.

The last line is one JSON object with all of it. Usage::

    python benchmarks/data_scale.py                          # 1x 4x 16x 64x (64x: about 200 MB of text)
    python benchmarks/data_scale.py --sizes 1,4 --workers 2
    python benchmarks/data_scale.py --corpus my.jsonl        # a real corpus instead
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
TASKS = ["knowledge_masking", "capitalization", "token_document_relation", "sentence_reordering",
         "sentence_distance", "discourse_relation", "ir_relevance"]


def bundled_records() -> list[dict]:
    """The bundled documents as JSONL records: paragraphs separated by blank lines."""
    sys.path.insert(0, str(ROOT))
    from ernie_cl.corpus import load_corpus

    records = []
    with tempfile.TemporaryDirectory() as cache:  # the documents are read from it: use them inside
        corpus = load_corpus("bundled", cache_dir=cache, eval_fraction=0.1, show_progress=False)
        for doc in corpus.documents:
            paragraphs = [" ".join(s.text for s in paragraph) for paragraph in doc.paragraphs()]
            records.append({"id": doc.id, "title": doc.title, "text": "\n\n".join(paragraphs)})
    return records


def write_corpus(records: list[dict], copies: int, path: Path) -> int:
    """``copies`` copies of the records as JSONL; returns the text bytes written."""
    text_bytes = 0
    with open(path, "w", encoding="utf-8") as out:
        for k in range(copies):
            for r in records:
                out.write(json.dumps({"id": f"{k}:{r['id']}", "title": f"{r['title']} ({k})", "text": r["text"]}) + "\n")
                text_bytes += len(r["text"].encode("utf-8"))
    return text_bytes


def schedule_file(corpus: Path, folder: Path) -> Path:
    tasks = "\n".join(f"  {t}:\n    iterations: 20" for t in TASKS)
    path = folder / "data_scale.yaml"
    path.write_text(f"""name: data_scale
seed: 0
model: tiny
deepspeed: zero0
corpus: {{source: jsonl, path: {json.dumps(str(corpus))}, eval_fraction: 0.05}}
tokenizer: {{vocab_size: 8000, lowercase: true}}
training: {{batch_size: 32, seq_len: 128}}
tasks:
{tasks}
stages:
  - name: all
    tasks: [{", ".join(TASKS)}]
""", encoding="utf-8")
    return path


def tree_memory(process: psutil.Process, with_pss: bool) -> tuple[int, int]:
    """(RSS, PSS) summed over the process and its children (PSS 0 unless asked: reading it walks
    every mapping, which costs a noticeable share of a core at 10 samples a second)."""
    rss = pss = 0
    for p in [process, *process.children(recursive=True)]:
        try:
            if with_pss:
                info = p.memory_full_info()
                rss, pss = rss + info.rss, pss + getattr(info, "pss", info.rss)
            else:
                rss += p.memory_info().rss
        except psutil.Error:
            pass  # ended between listing and reading
    return rss, pss


def run_prepare(schedule: Path, cache: Path, workers: int | None) -> dict:
    command = [sys.executable, "-m", "ernie_cl.cli", "prepare", str(schedule), "--cache-dir", str(cache), "--no-progress"]
    if workers:
        command += ["--workers", str(workers)]
    start = time.perf_counter()
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    process, peak, done = psutil.Process(child.pid), [0, 0], threading.Event()

    def sample() -> None:
        count = 0
        while not done.is_set():
            try:
                rss, pss = tree_memory(process, with_pss=count % 10 == 0)  # RSS 10 times a second, PSS once
            except psutil.Error:
                return
            peak[0], peak[1] = max(peak[0], rss), max(peak[1], pss)
            count += 1
            done.wait(0.1)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, err = child.communicate()
    done.set()
    sampler.join()
    wall = time.perf_counter() - start
    if child.returncode != 0:
        raise SystemExit(f"ernie-cl prepare failed ({child.returncode}): {err.strip().splitlines()[-1] if err.strip() else ''}")
    stages = {}
    for line in out.splitlines():
        found = re.match(r"\s+(\S.*?)\s{2,}([\d.]+)(?:\s+([\d.]+) MB)?\s*$", line)
        if found and found.group(1) != "stage":
            stages[found.group(1)] = float(found.group(2))
    return {"wall_s": wall, "peak_rss_bytes": peak[0], "peak_pss_bytes": peak[1], "stages_s": stages}


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1,4,16,64", help="copies of the bundled text (default 1,4,16,64)")
    parser.add_argument("--corpus", type=Path, help="a JSONL corpus (text, title) instead of the bundled copies")
    parser.add_argument("--workers", type=int, help="ernie-cl prepare --workers (default: all cores)")
    parser.add_argument("--keep", type=Path, help="keep the corpora and caches in this folder")
    args = parser.parse_args()

    work = args.keep or Path(tempfile.mkdtemp(prefix="ernie-cl-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    if args.corpus:
        text = sum(len(json.loads(line).get("text", "").encode("utf-8")) for line in open(args.corpus, encoding="utf-8") if line.strip())
        corpora = [("corpus", args.corpus, text)]
    else:
        records = bundled_records()
        corpora = []
        for k in (int(s) for s in args.sizes.split(",")):
            path = work / f"bundled-{k}x.jsonl"
            corpora.append((f"{k}x", path, write_corpus(records, k, path)))
    print(f"{os.cpu_count()} cores; prepare --workers {args.workers or 'default'}; all seven tasks; empty cache each")
    print(f"{'corpus':>8} {'text MB':>8} {'wall s':>8} {'MB/s':>6} {'s/MB':>6} {'peak RSS GB':>12} {'peak PSS GB':>12} "
          f"{'examples/text':>14} {'cache/text':>11}")
    results = []
    for name, path, text in corpora:
        cache = work / f"cache-{name}"
        shutil.rmtree(cache, ignore_errors=True)
        measured = run_prepare(schedule_file(path, work), cache, args.workers)
        examples = folder_bytes(cache / "examples")
        row = {"corpus": name, "text_bytes": text, **measured, "mb_per_s": text / 1e6 / measured["wall_s"],
               "s_per_mb": measured["wall_s"] / (text / 1e6), "example_bytes": examples,
               "examples_per_text_byte": examples / text, "cache_per_text_byte": folder_bytes(cache) / text}
        results.append(row)
        print(f"{name:>8} {text / 1e6:8.1f} {row['wall_s']:8.1f} {row['mb_per_s']:6.2f} {row['s_per_mb']:6.1f} "
              f"{row['peak_rss_bytes'] / 1e9:12.2f} {row['peak_pss_bytes'] / 1e9:12.2f} {row['examples_per_text_byte']:14.2f} "
              f"{row['cache_per_text_byte']:11.2f}")
        slowest = sorted(measured["stages_s"].items(), key=lambda kv: -kv[1])[:6]
        print("         stages: " + ", ".join(f"{k} {v:.1f}s" for k, v in slowest))
        if not args.keep:
            shutil.rmtree(cache, ignore_errors=True)
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps({"cores": os.cpu_count(), "workers": args.workers, "results": results}))


if __name__ == "__main__":
    main()
