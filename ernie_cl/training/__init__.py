"""Training: the curriculum fed onto the DeepSpeed engine, from the first step to the run folder.

``curriculum`` (the task of every step), ``engine`` (DeepSpeed), ``trainer`` (the loop),
``heldout_eval`` (held-out evaluation at stage ends, trivial baselines), ``checkpoint`` (atomic,
verified), ``distributed`` (several processes), ``stopping`` (SIGTERM/SIGINT), ``faults`` (fault
injection for tests), ``metric_sinks`` (metrics.jsonl, wandb, console).

May import: config, corpus, data, model, the tasks, ``ernie_cl.errors`` and ``ernie_cl.progress``.
Never evaluation or export.
"""
