"""The pre-training heads' cross-entropy: a fused CPU kernel (``csrc/cross_entropy.cpp``) where it
applies, ``F.cross_entropy`` everywhere else.

Why: a masking step's vocabulary head ends in a [targets x vocabulary] logit matrix (about 600 x
16,000 in the benchmark). torch's CPU cross-entropy writes log_softmax's output, and its backward
zero-fills one more such matrix for nll_loss and reads two to write a third: 4-5% of the step. The
kernel keeps one float per row (its log-sum-exp) and writes the gradient in one pass. Values agree
with ``F.cross_entropy`` to float rounding (tested); the kernel is deterministic and independent of
the thread count, so resume stays bitwise exact.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from ernie_cl.kernels import compiled


class _FusedCrossEntropy(torch.autograd.Function):
    """Per-row losses; backward writes softmax - one_hot scaled by each row's incoming gradient."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        loss, log_sum_exp = torch.ops.ernie_cl.cross_entropy_forward(logits, targets)
        ctx.save_for_backward(logits, log_sum_exp, targets)
        return loss

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):
        logits, log_sum_exp, targets = ctx.saved_tensors
        return torch.ops.ernie_cl.cross_entropy_backward(grad, logits, log_sum_exp, targets), None


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of ``logits`` [N, C] (computed in float32) against class ids ``targets`` [N]."""
    logits = logits.float()
    fused = (logits.device.type == "cpu" and logits.dim() == 2 and targets.dim() == 1 and targets.numel() > 0
             and targets.dtype == torch.int64 and bool((targets >= 0).all()) and compiled.load())
    if not fused:  # other devices, and targets with ignore_index (-100) entries
        return F.cross_entropy(logits, targets)
    return _FusedCrossEntropy.apply(logits, targets).mean()
