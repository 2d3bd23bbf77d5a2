"""Attention with dropout on the probabilities, fused per (batch, head) on CPU (``csrc/attention.cpp``).

Why: with dropout on the attention probabilities (BERT's 0.1) torch's CPU SDPA cannot use its fused
kernel and runs the math path: copies of the transposed query, key and value, separate passes over the
[B, H, S, S] scores for the mask, the softmax and the dropout, and a copy of the transposed output,
then the same again in backward. The kernel does one head at a time while its scores are in cache
and reads and writes the model's [B, S, H, d] layout directly.

The dropout mask is the counter-based one of ``ernie_cl.model.dropout`` (the caller passes the seed
and threshold), indexed over the contiguous [B, H, Sq, Sk] probabilities, so for the same seed the
kernel drops exactly what the math path drops; outputs and gradients agree with it to float rounding
(tested). ``available(...)`` says when the kernel applies; otherwise callers keep the math path.

``packed_attention`` is the same kernel for self-attention on one packed projection: query, key and
value come from one product of the three weights ([B, S, 3 x H x d]), taken without the biases,
which the kernel adds as it reads each head and whose gradients it sums as it writes each head's
gradient; the gradient comes back packed too, so the three projections' backward is one product for
the input's gradient and one for the weights' (``ernie_cl.model.fused_blocks``).
"""

from __future__ import annotations

import functools
from typing import Optional

import torch
from torch.autograd.function import once_differentiable

from ernie_cl.kernels import compiled


def available(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> bool:
    """Whether ``attention`` can take these [B, H, S, d] inputs: float32 CPU, the kernels built with
    an MKL sgemm (torch's x86 builds have one)."""
    return (all(t.device.type == "cpu" and t.dtype == torch.float32 and t.dim() == 4 and t.stride(-1) == 1
                for t in (query, key, value))
            and _has_sgemm())


@functools.cache
def _has_sgemm() -> bool:
    """The kernels are built and found MKL's sgemm in this torch (asked once: it is called per layer)."""
    return compiled.load() and bool(torch.ops.ernie_cl.attention_available())


class _FusedAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, query, key, value, mask, scale: float, seed: int, limit: int, drop_scale: float):
        out, probs = torch.ops.ernie_cl.attention_forward(query, key, value, mask, scale, seed, limit, drop_scale)
        ctx.save_for_backward(query, key, value, probs)
        ctx.settings = (scale, seed, limit, drop_scale)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):
        query, key, value, probs = ctx.saved_tensors
        d_query, d_key, d_value = torch.ops.ernie_cl.attention_backward(grad, query, key, value, probs, *ctx.settings)
        return d_query, d_key, d_value, None, None, None, None, None


class _PackedAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, qkv, bias, mask, heads: int, scale: float, seed: int, limit: int, drop_scale: float):
        out, probs = torch.ops.ernie_cl.packed_attention_forward(qkv, bias, heads, mask, scale, seed, limit, drop_scale)
        ctx.save_for_backward(qkv, bias, probs)
        ctx.settings = (heads, scale, seed, limit, drop_scale)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):
        qkv, bias, probs = ctx.saved_tensors
        heads, *settings = ctx.settings
        d_qkv, d_bias = torch.ops.ernie_cl.packed_attention_backward(grad, qkv, bias, heads, probs, *settings)
        return d_qkv, (d_bias if bias is not None else None), None, None, None, None, None, None


def _kernel_mask(mask: Optional[torch.Tensor], batch: int, heads: int, sq: int, sk: int) -> Optional[torch.Tensor]:
    """The additive mask as the kernel reads it: [B, H, Sq, Sk] with a contiguous last dimension."""
    if mask is None:
        return None
    mask = mask.detach().expand(batch, heads, sq, sk)
    return mask.contiguous() if mask.stride(-1) != 1 else mask


def attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: Optional[torch.Tensor],
              scale: float, seed: int, limit: int, drop_scale: float) -> torch.Tensor:
    """``dropout(softmax(scale * q k^T + mask)) v`` for [B, H, S, d] inputs, returned as [B, Sq, H, d].
    ``mask``: additive float32, broadcastable to [B, H, Sq, Sk], or None. Dropout keeps element i of
    the probabilities when its 16-bit hash lane (seed, i) is >= ``limit`` and scales it by
    ``drop_scale``. The mask gets no gradient."""
    batch, heads, sq, _ = query.shape
    mask = _kernel_mask(mask, batch, heads, sq, key.shape[2])
    return _FusedAttention.apply(query, key, value, mask, scale, seed, limit, drop_scale)


def packed_available() -> bool:
    """Whether ``packed_attention`` is built (it takes float32 CPU tensors: the caller's check)."""
    return _has_sgemm()


def packed_attention(qkv: torch.Tensor, bias: Optional[torch.Tensor], heads: int, mask: Optional[torch.Tensor],
                     scale: float, seed: int, limit: int, drop_scale: float) -> torch.Tensor:
    """``attention`` of self-attention's query, key and value given as one [B, S, 3 x H x d] product
    (query, key, value side by side, each [B, S, H, d]) taken without ``bias`` ([3 x H x d] or
    None), which is added here; returns [B, S, H, d]. The same masks and results as ``attention``
    on ``(qkv + bias)``'s three parts (to float rounding)."""
    batch, length, _ = qkv.shape
    mask = _kernel_mask(mask, batch, heads, length, length)
    return _PackedAttention.apply(qkv.contiguous(), None if bias is None else bias.contiguous(), mask, heads, scale, seed,
                                  limit, drop_scale)
