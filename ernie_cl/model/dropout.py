"""Cheaper dropout masks for training on CPU (``training.fast_dropout``, on by default).

Why: PyTorch's CPU dropout draws its mask with ``bernoulli_``, one serial Mersenne-Twister draw (two
32-bit words, a double conversion) per element on one core. In a masking step of the benchmark model
that was 13% of the step time (README, "Performance"). Here one serial 64-bit draw gives four masks:
the ``int64`` from ``random_()`` (uniform over [0, 2^63)) is read as four 16-bit words, of which the
low 15 bits are uniform and independent, and an element is kept when those bits are >= round(p x 2^15).
The rest (mask, compare, multiply) runs vectorised on every thread. Same distribution as torch's
dropout up to p being rounded to a multiple of 1/32768 (0.1 -> 0.100006), same default CPU generator
(so checkpointed RNG state still makes resume exact), a 1-byte mask saved for backward as torch does.

Two places use it:
- every ``nn.Dropout`` of the backbone (embeddings, attention output, feed-forward output) becomes a
  ``CheapDropout``;
- attention-probability dropout, which Hugging Face models hand to SDPA as ``dropout_p``: on CPU SDPA
  then leaves its fused kernel for the unfused math path and draws with ``bernoulli_``. The attention
  function of ``attention.py`` (``attention.install``) computes that path head by head with the
  cheap mask while training with dropout, and calls the stock SDPA function in every other case.
"""

from __future__ import annotations

import math

import torch
from torch import nn

_BITS = 15  # usable uniform bits per 16-bit word of a random_() int64


def keep_mask(shape: torch.Size | tuple[int, ...], p: float, device: torch.device | str = "cpu") -> torch.Tensor:
    """A bool tensor of ``shape``, each element True with probability 1 - p (p rounded to 1/32768)."""
    count = math.prod(shape)
    words = torch.empty((count + 3) // 4, dtype=torch.int64, device=device).random_().view(torch.int16)[:count]
    return words.bitwise_and_((1 << _BITS) - 1).ge(round(p * (1 << _BITS))).view(shape)


class _MaskedScale(torch.autograd.Function):
    """x * keep / (1 - p), saving only the bool mask for backward. ``torch.where`` rather than
    ``x * keep``: on CPU a float x bool product first copies the mask to a float tensor."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, p: float) -> torch.Tensor:
        keep = keep_mask(x.shape, p, x.device)
        ctx.save_for_backward(keep)
        ctx.scale = 1.0 / (1.0 - p)
        return torch.where(keep, x, 0.0).mul_(ctx.scale)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (keep,) = ctx.saved_tensors
        return torch.where(keep, grad, 0.0).mul_(ctx.scale), None


def cheap_dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """``F.dropout`` with the cheap mask."""
    if not training or p == 0.0:
        return x
    if p >= 1.0:
        return x.mul(0.0)
    return _MaskedScale.apply(x, p)


class CheapDropout(nn.Dropout):
    """``nn.Dropout`` (same ``p``, same place in the module tree) drawing the cheap mask."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return cheap_dropout(x, self.p, self.training)


def install(backbone: nn.Module) -> int:
    """Swap the backbone's ``nn.Dropout`` modules for ``CheapDropout`` (parameters, state dict keys
    and exported configs are unchanged); returns how many were swapped. Attention-probability dropout
    is ``attention.install``'s."""
    swapped = 0
    for parent in list(backbone.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Dropout:
                setattr(parent, name, CheapDropout(child.p, child.inplace))
                swapped += 1
    return swapped
