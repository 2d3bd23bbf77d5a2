"""Data: everything between documents and batches.

``tokenizer`` (WordPiece trained on the corpus, or a pretrained one), ``examples`` (each task's
examples built per document in parallel, cached as Arrow; resumable streams of batches),
``preparation`` (corpus, tokenizer, tasks and example sets for a schedule, all cached).

May import: ``ernie_cl.errors``, ``ernie_cl.progress``, ``ernie_cl.faults``, ``ernie_cl.config``,
``ernie_cl.corpus`` and the tasks (``pretrain_tasks``). Never model, training or evaluation.
"""
