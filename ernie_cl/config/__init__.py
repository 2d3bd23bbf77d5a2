"""Configuration: what a run is asked to do, checked before any heavy work.

``schedule`` (typed, self-validating schedule and model/DeepSpeed config files), ``messages``
(one-line error messages, strict YAML), ``budgets`` (per-stage iteration budgets, fused groups),
``run_checks`` (the whole-run checks of ``ernie-cl validate``).

May import: ``ernie_cl.errors``, the task registry (``pretrain_tasks``) and the loss-balancing
methods (``ernie_cl.model.balancing``), whose names a schedule is validated against. Nothing from
data, training or evaluation.
"""
