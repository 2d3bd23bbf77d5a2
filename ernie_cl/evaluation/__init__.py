"""Evaluation: what a run folder is worth, and how strategies compare.

``downstream`` (loading a checkpoint, frozen features, linear probe), ``finetune`` and
``glue_tasks`` (fine-tuning on GLUE-style tasks), ``continual_metrics`` (forgetting, transfer),
``compare`` (strategies x seeds on equal budgets) and ``report`` (its tables and plots).

May import everything below it on the data path: config, corpus, data, model, training, the
tasks, ``ernie_cl.errors`` and ``ernie_cl.progress``. Never export or the CLI.
"""
