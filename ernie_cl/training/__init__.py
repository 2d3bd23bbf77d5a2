"""Training: the curriculum fed onto the DeepSpeed engine, from the first step to the run folder.

``curriculum`` (the task of every step), ``engine`` (DeepSpeed), ``trainer`` (the loop),
``heldout_eval`` (held-out evaluation at stage ends, trivial baselines), ``checkpoint`` (atomic,
verified), ``distributed`` (several processes), ``stopping`` (SIGTERM/SIGINT), ``metric_sinks``
(metrics.jsonl, wandb, console).

May import: config, corpus, data, model, the tasks, ``ernie_cl.errors``, ``ernie_cl.progress`` and
``ernie_cl.faults``.
Never evaluation or export.
"""
