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
  then leaves its fused kernel for the unfused math path and draws with ``bernoulli_``. An attention
  function registered with transformers' ``AttentionInterface`` does that math path itself with the
  cheap mask while training with dropout, and calls the stock SDPA function in every other case.
"""

from __future__ import annotations

import math

import torch
from torch import nn

ATTENTION_NAME = "ernie_cl_sdpa"  # the attn_implementation name registered with transformers
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


def _attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, **kwargs):
    """SDPA's math path with the cheap mask when training with dropout; the stock SDPA function
    (fused kernels) otherwise, and for anything this does not handle (causal, GQA, biases, softcap)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    plain = (dropout > 0.0 and query.shape[2] > 1 and not getattr(module, "is_causal", False)
             and getattr(module, "num_key_value_groups", 1) == 1 and kwargs.get("position_bias") is None
             and kwargs.get("softcap") is None and key.shape[1] == query.shape[1])
    if not plain:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)
    scale = query.shape[-1] ** -0.5 if scaling is None else scaling
    # scale the queries (S x d) rather than the scores (S x S); the mask is added in place (a free
    # backward), as an additive float mask when SDPA's is boolean (True = may attend)
    scores = torch.matmul(query * scale, key.transpose(-1, -2))
    if attention_mask is not None:
        if attention_mask.dtype == torch.bool:
            attention_mask = torch.where(attention_mask, 0.0, torch.finfo(scores.dtype).min).to(scores.dtype)
        scores = scores.add_(attention_mask)
    probs = cheap_dropout(torch.softmax(scores, dim=-1), dropout)
    return torch.matmul(probs, value).transpose(1, 2).contiguous(), None


def install(backbone: nn.Module) -> int:
    """Swap the backbone's ``nn.Dropout`` modules for ``CheapDropout`` and, when it runs SDPA
    attention, point it at the cheap-mask attention function. Parameters, state dict keys and exported
    configs are unchanged. Returns how many dropout modules were swapped."""
    swapped = 0
    for parent in list(backbone.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Dropout:
                setattr(parent, name, CheapDropout(child.p, child.inplace))
                swapped += 1
    config = getattr(backbone, "config", None)
    if config is not None and getattr(config, "_attn_implementation", None) == "sdpa":
        _register_attention()
        config._attn_implementation = ATTENTION_NAME
    return swapped


def _register_attention() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(ATTENTION_NAME, _attention)
    if ATTENTION_NAME not in ALL_MASK_ATTENTION_FUNCTIONS._global_mapping:
        AttentionMaskInterface.register(ATTENTION_NAME, sdpa_mask)  # the masks SDPA gets
