"""The pre-training heads' cross-entropy: a fused CPU kernel (``csrc/cross_entropy.cpp``) where it
applies, ``F.cross_entropy`` everywhere else.

Why: a masking step's vocabulary head ends in a [targets x vocabulary] logit matrix (about 600 x
16,000 in the benchmark). torch's CPU cross-entropy writes log_softmax's output, and its backward
zero-fills one more such matrix for nll_loss and reads two to write a third: 4-5% of the step. The
kernel keeps one float per row (its log-sum-exp) and writes the gradient in one pass. Values agree
with ``F.cross_entropy`` to float rounding (tested); the kernel is deterministic and independent of
the thread count, so resume stays bitwise exact.

The forward also finds each row's prediction (its first maximal index) while the row is in cache,
and leaves it on the targets tensor for the training step's accuracy (``predictions``): a separate
``max`` over the logits read them from memory again, 7 ms a step at the benchmark's sizes. The
prediction is handed over only for the very logits it was computed from (same storage, shape and
version counter: a detached view qualifies, a changed or another tensor does not), and only once.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from ernie_cl.kernels import compiled


_PREDICTED = "_ernie_cl_predicted"  # attribute of the targets: (which logits, their rows' predictions)


class _FusedCrossEntropy(torch.autograd.Function):
    """(per-row losses, per-row predictions); backward writes softmax - one_hot scaled by each row's
    incoming gradient."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, targets: torch.Tensor):
        loss, log_sum_exp, predicted = torch.ops.ernie_cl.cross_entropy_forward(logits, targets)
        ctx.save_for_backward(logits, log_sum_exp, targets)
        ctx.mark_non_differentiable(predicted)
        return loss, predicted

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor, _grad_predicted):
        logits, log_sum_exp, targets = ctx.saved_tensors
        return torch.ops.ernie_cl.cross_entropy_backward(grad, logits, log_sum_exp, targets), None


def _identity(logits: torch.Tensor) -> tuple:
    """What tells these logits apart from any others: storage, shape, strides and the version counter
    (shared with detached views, bumped by every in-place change)"""
    return logits.data_ptr(), tuple(logits.shape), logits.stride(), logits.dtype, logits._version


def predictions(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor | None:
    """The rows' first maximal indices (``logits.max(-1).indices``) as the fused cross-entropy found
    them for these ``logits`` and ``targets``; None when it did not take these very logits (another
    path, another or a changed tensor) or the predictions were already taken (they are handed over once)."""
    stored = targets.__dict__.pop(_PREDICTED, None)
    if stored is None or logits.is_inference() or stored[0] != _identity(logits):
        return None
    return stored[1]


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of ``logits`` [N, C] (computed in float32) against class ids ``targets`` [N]."""
    logits = logits.float()
    fused = (logits.device.type == "cpu" and logits.dim() == 2 and targets.dim() == 1 and targets.numel() > 0
             and targets.dtype == torch.int64 and bool((targets >= 0).all()) and compiled.load())
    if not fused:  # other devices, and targets with ignore_index (-100) entries
        return F.cross_entropy(logits, targets)
    losses, predicted = _FusedCrossEntropy.apply(logits, targets)
    if not logits.is_inference():  # inference tensors keep no version counter to check against
        setattr(targets, _PREDICTED, (_identity(logits), predicted))
    return losses.mean()
