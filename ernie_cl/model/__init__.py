"""The model being pre-trained: shared encoder, task embeddings, heads, and how the losses combine.

``encoder`` (a Hugging Face backbone + ERNIE task embeddings + one head per task), ``balancing``
(loss weighting of the tasks that share a step; its uncertainty weights are model parameters),
``extras`` (putting an export's task embeddings and heads back when continuing from it),
``dropout`` (cheaper dropout masks for CPU training, ``training.fast_dropout``, and the attention
function that uses them), ``fused_blocks`` (the output blocks' dropout + residual + LayerNorm on one
kernel, self-attention's projections as one product, the widening's bias + GELU on one kernel,
``training.fused_kernels``); the kernels are in ``ernie_cl.kernels``.

May import: ``ernie_cl.errors``, ``ernie_cl.data.tokenizer`` and ``ernie_cl.kernels``. Never config,
training or evaluation (config imports ``balancing`` to validate schedules).
"""
