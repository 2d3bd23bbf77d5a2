"""The conventional MLM route on its own, written as a user writes it from transformers' ``run_mlm.py``.

It checks ``throughput.py``'s ``hf`` route, which hands ``Trainer`` ready-cut ``input_ids`` blocks.
This script goes the run_mlm way instead: a ``datasets.Dataset`` of the texts, tokenized by
``Dataset.map`` with ``return_special_tokens_mask=True``, every column (``input_ids``,
``attention_mask``, ``special_tokens_mask``, ``token_type_ids`` where the tokenizer gives them)
concatenated and cut into ``--seq``-token blocks by run_mlm's ``group_texts`` (another batched
``Dataset.map``), then ``Trainer`` + ``BertForMaskedLM`` + ``DataCollatorForLanguageModeling`` (15%
masking). ``Trainer`` drops ``special_tokens_mask`` before batching (``BertForMaskedLM.forward`` takes no
such argument), so the collator works the special tokens out again, as it does under run_mlm itself.
Everything else is the ``hf`` route's: the same training texts and WordPiece tokenizer
(obtained through ernie_cl, its only use here), encoder config, ``TrainingArguments``, seed and
threads, and the same clock: the time at every ``on_step_end``, the timed span running from the end
of the last warm-up step to the end of the last step. Tokens are batch x seq per step (every block
is ``--seq`` real tokens); model GFLOP/s uses ``throughput.decoder_flops`` with every position
decoded.

    python benchmarks/hf_mlm_standalone.py --out result.json
    python benchmarks/hf_mlm_standalone.py --hidden 64 --layers 1 --heads 2 --vocab 2000 --compile

The result (tokens_per_s, steps, tokens, seconds, step_time_s, model_gflops, blocks) is printed as
one JSON line and written to ``--out`` when given.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from itertools import chain
from pathlib import Path

import datasets
import torch
from transformers import (BertConfig, BertForMaskedLM, DataCollatorForLanguageModeling, Trainer, TrainerCallback,
                          TrainingArguments)

from throughput import decoder_flops, model_config, schedule


def parse_args(argv=None) -> argparse.Namespace:
    """The sizes throughput.py passes (same names and defaults); ``--compile`` is Trainer's torch_compile."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=16000, help="WordPiece vocabulary size trained on the corpus")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seq", type=int, default=128, help="block size")
    parser.add_argument("--steps", type=int, default=16, help="timed optimizer steps")
    parser.add_argument("--warmup", type=int, default=3, help="optimizer steps before timing starts (at least 1)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--cache-dir", default=None, help="ernie-cl cache (corpus, tokenizer); default: the usual one")
    parser.add_argument("--attention-dropout", type=float, default=0.1, help="attention_probs_dropout_prob")
    parser.add_argument("--compile", action="store_true", help="TrainingArguments(torch_compile=True)")
    parser.add_argument("--out", help="write the result JSON here too")
    args = parser.parse_args(argv)
    if args.warmup < 1:  # the timed span starts at the end of the last warm-up step
        parser.error("--warmup must be at least 1")
    return args


def corpus_and_tokenizer(args) -> tuple[list[str], object]:
    """The training texts and the HF tokenizer exactly as throughput.py's hf route gets them."""
    from ernie_cl.config.schedule import load_schedule
    from ernie_cl.data.preparation import default_cache_dir, load_schedule_corpus, schedule_tokenizer

    cache = Path(args.cache_dir or default_cache_dir())
    with tempfile.TemporaryDirectory() as tmp:
        sched = load_schedule(schedule(args, ["knowledge_masking"], Path(tmp)))
        corpus = load_schedule_corpus(sched, cache, show_progress=False)
        tokenizer = schedule_tokenizer(sched, corpus, cache, {}).hf
    texts = [" ".join(s.text for s in d.sentences()) for d in corpus.train]
    return texts, tokenizer


def group_texts(examples: dict[str, list[list[int]]], block: int) -> dict[str, list[list[int]]]:
    """run_mlm's group_texts: concatenate every column of a batch of texts and cut it into full blocks."""
    joined = {column: list(chain.from_iterable(values)) for column, values in examples.items()}
    total = len(joined["input_ids"]) // block * block  # each map batch's remainder is dropped, as in run_mlm
    return {column: [values[i : i + block] for i in range(0, total, block)] for column, values in joined.items()}


def mlm_dataset(texts: list[str], tokenizer, block: int) -> datasets.Dataset:
    """run_mlm's data pipeline: a Dataset of texts, tokenized with special-token masks, grouped into blocks."""
    raw = datasets.Dataset.from_dict({"text": texts})
    tokenized = raw.map(lambda batch: tokenizer(batch["text"], return_special_tokens_mask=True), batched=True,
                        remove_columns=["text"])
    return tokenized.map(group_texts, batched=True, fn_kwargs={"block": block})


def train(args, dataset: datasets.Dataset, tokenizer) -> list[float]:
    """Trainer + BertForMaskedLM + the 15% masking collator; the time at the end of every optimizer step."""
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

    with tempfile.TemporaryDirectory() as tmp:
        # the hf route's TrainingArguments, spelled out here as a run_mlm user would pass them
        training_args = TrainingArguments(
            output_dir=tmp, per_device_train_batch_size=args.batch, max_steps=args.warmup + args.steps,
            learning_rate=5e-4, warmup_steps=10, adam_beta2=0.98, weight_decay=0.01, max_grad_norm=1.0,
            bf16=args.precision == "bf16", use_cpu=args.device == "cpu", save_strategy="no", eval_strategy="no",
            logging_strategy="no", report_to=[], disable_tqdm=True, dataloader_num_workers=0, seed=0,
            torch_compile=args.compile)
        collator = DataCollatorForLanguageModeling(tokenizer, mlm=True, mlm_probability=0.15)
        trainer = Trainer(model=model, args=training_args, train_dataset=dataset, data_collator=collator,
                          callbacks=[StepClock()])
        trainer.train()
    return ends


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    datasets.disable_progress_bars()
    texts, tokenizer = corpus_and_tokenizer(args)
    dataset = mlm_dataset(texts, tokenizer, args.seq)
    ends = train(args, dataset, tokenizer)
    seconds = ends[args.warmup + args.steps - 1] - ends[args.warmup - 1]
    tokens = args.steps * args.batch * args.seq  # every block is seq real tokens: no padding
    result = {"tokens_per_s": tokens / seconds, "steps": args.steps, "tokens": tokens, "seconds": seconds,
              "step_time_s": seconds / args.steps, "blocks": len(dataset),
              "model_gflops": decoder_flops(args, tokens, tokens) / seconds / 1e9}
    print(json.dumps(result))
    if args.out:
        Path(args.out).write_text(json.dumps(result))


if __name__ == "__main__":
    main()
