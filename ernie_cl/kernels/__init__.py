"""ernie-cl's own CPU kernels, for the work torch's CPU operators do in several passes.

``compiled`` (builds ``csrc/*.cpp`` with the machine's g++ on first use, cached once per machine),
``cross_entropy`` (the heads' loss: one pass forward, one backward), ``attention`` (attention with
dropout, one (batch, head) at a time), ``residual_layer_norm`` (dropout + residual add + LayerNorm), ``bias_gelu`` (the feed-forward
widening's bias + exact GELU, its derivative kept for backward).
The dropout kernel's Python side is ``ernie_cl.model.dropout``, which swaps it into the backbone;
``ernie_cl.model.fused_blocks`` puts the residual LayerNorm and bias + GELU in. Every kernel has a torch-op path
that gives the same results (up to float rounding for the fused ones) where it cannot be built.

May import: ``ernie_cl.errors``. It sits below every room that computes (pretrain_tasks, model).
"""
