"""The feed-forward widening's bias and exact GELU in one CPU pass, GELU's derivative kept for
backward (``csrc/bias_gelu.cpp``).

Why: GELU's erf makes its forward and backward passes over the [tokens x 4h] activation
compute-bound, and torch takes erf in both (plus exp in backward), adds the widening's bias in a
separate copy into the product's output and sums its gradient in another pass. The kernel adds the
bias, takes erf and exp once and writes gelu(x) and gelu'(x); backward multiplies the incoming
gradient by the saved derivative and sums the bias gradient in the same pass. Values agree with
``F.gelu(h + bias)`` and its gradients to float rounding (tested); results do not depend on the
number of threads.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch.autograd.function import once_differentiable

from ernie_cl.kernels import compiled


def available(weight: torch.Tensor, bias: Optional[torch.Tensor]) -> bool:
    """For the linear layer whose product (taken without ``bias``) the kernel gets: a float32 CPU
    ``weight`` [out, in] and a float32 ``bias`` [out] or None; the kernels built."""
    return (weight.device.type == "cpu" and weight.dtype == torch.float32 and weight.dim() == 2
            and (bias is None or (bias.dtype == torch.float32 and bias.shape == (weight.shape[0],)))
            and compiled.load())


class _BiasGelu(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h, bias):
        out, deriv = torch.ops.ernie_cl.bias_gelu_forward(h, bias)
        ctx.save_for_backward(deriv)
        ctx.with_bias = bias is not None
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):
        (deriv,) = ctx.saved_tensors
        grad_h, grad_bias = torch.ops.ernie_cl.bias_gelu_backward(grad, deriv, ctx.with_bias)
        return grad_h, (grad_bias if ctx.with_bias else None)


def bias_gelu(h: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
    """``F.gelu(h + bias)`` (exact GELU; ``bias`` [h.shape[-1]] or None) through the kernel."""
    return _BiasGelu.apply(h, bias)
