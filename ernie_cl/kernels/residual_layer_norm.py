"""LayerNorm(dropout(h) + residual) in one CPU kernel pass per row (``csrc/residual_layer_norm.cpp``).

Why: BERT-style blocks end both sublayers (attention and feed-forward) with dropout, the residual add
and LayerNorm: three ops forward and three backward over a [tokens x hidden] tensor each, plus the
accumulation of the residual's gradient. One pass forward and one backward do the same arithmetic
while a row is in cache (in isolation, a [4096 x 256] block, forward + backward: 1.4 against 2.5 ms).
The dropout mask is the counter-based one of ``ernie_cl.model.dropout`` (the caller passes the seed
and threshold), indexed over ``h`` as that dropout indexes it, so the kernel drops exactly what the
unfused ops drop for the same seed; values agree with them to float rounding (tested).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch.autograd.function import once_differentiable

from ernie_cl.kernels import compiled


def available(residual: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> bool:
    """For an ``h`` of the residual's shape: float32 CPU tensors, a whole affine LayerNorm over the
    last dimension (a ZeRO-3 partitioned parameter is empty outside its module's forward), the
    kernels built."""
    width = residual.shape[-1] if residual.dim() else 0
    return (residual.device.type == "cpu" and residual.dtype == torch.float32 and weight.shape == (width,)
            and bias is not None and bias.shape == (width,) and weight.dtype == bias.dtype == torch.float32
            and compiled.load())


class _ResidualLayerNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h, h_bias, residual, weight, bias, eps: float, seed: int, limit: int, drop_scale: float):
        out, x, mean, rstd = torch.ops.ernie_cl.residual_layer_norm_forward(
            h.contiguous(), None if h_bias is None else h_bias.contiguous(), residual.contiguous(), weight.contiguous(),
            bias.contiguous(), eps, seed, limit, drop_scale)
        ctx.save_for_backward(x, mean, rstd, weight)
        ctx.settings = (h_bias is not None, seed, limit, drop_scale)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):
        x, mean, rstd, weight = ctx.saved_tensors
        d_h, d_residual, d_weight, d_bias, d_h_bias = torch.ops.ernie_cl.residual_layer_norm_backward(
            grad, x, mean, rstd, weight.contiguous(), *ctx.settings)
        return d_h, (d_h_bias if ctx.settings[0] else None), d_residual, d_weight, d_bias, None, None, None, None


def residual_layer_norm(h: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float,
                        seed: int, limit: int, drop_scale: float, h_bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``layer_norm(dropout(h + h_bias) + residual)`` over the last dimension; dropout keeps element i
    of ``h`` when its 16-bit hash lane (seed, i) is >= ``limit`` and scales it by ``drop_scale``.
    ``h_bias``: the bias of the linear layer that produced ``h`` (taken without it), or None."""
    return _ResidualLayerNorm.apply(h, h_bias, residual, weight, bias, eps, seed, limit, drop_scale)
