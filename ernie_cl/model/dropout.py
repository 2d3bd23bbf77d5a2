"""Cheaper dropout for training on CPU (``training.fast_dropout``, on by default).

Why: PyTorch's CPU dropout draws its mask with ``bernoulli_``, one serial Mersenne-Twister draw (two
32-bit words, a double conversion) per element on one core, then multiplies, stores a mask for
backward and multiplies again there. In a masking step of the benchmark model that was 13% of the
step time (README, "Performance").

Here the mask is counter-based: element i of a call is kept when the 16-bit lane (i % 4) of
splitmix64(seed + (i // 4) * gamma) is >= round(p x 2^16), and kept elements are scaled by 1 / (1 - p).
The call's seed is one draw from the default CPU generator, so a checkpointed RNG state still makes
resume exact. Nothing is stored for backward: the backward pass hashes the same counters again.
The mask does not depend on the thread count. ``ernie_cl/kernels/csrc/hash_dropout.cpp`` does
hash, compare and scale in one multi-threaded pass (``ernie_cl/kernels/compiled.py`` builds it once
per machine); ``hash_keep_mask`` is the same recipe in torch ops, used where the kernel is not
available (no compiler, a non-CPU tensor) and by the tests, which hold the two equal bit for bit.
Same distribution as torch's dropout up to p being rounded to a multiple of 1/65536 (0.1 -> 0.100006).

Two places use it:
- every ``nn.Dropout`` of the backbone (embeddings, attention output, feed-forward output) becomes a
  ``CheapDropout``;
- attention-probability dropout, which Hugging Face models hand to SDPA as ``dropout_p``: on CPU SDPA
  then leaves its fused kernel for the unfused math path and draws with ``bernoulli_``. An attention
  function registered with transformers' ``AttentionInterface`` does that math path itself with the
  cheap mask while training with dropout, and calls the stock SDPA function in every other case.
  With ``training.fused_kernels`` (``install(fused_attention=True)``) the same computation runs as one
  kernel per (batch, head) where it applies (``ernie_cl.kernels.attention``), with the same masks.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ernie_cl.kernels import attention as attention_kernel
from ernie_cl.kernels import compiled

ATTENTION_NAME = "ernie_cl_sdpa"  # the attn_implementation names registered with transformers:
FUSED_ATTENTION_NAME = "ernie_cl_fused"  # the math path with the cheap mask, and the fused kernel
_LANE_BITS = 16  # four 16-bit lanes per 64-bit hash
_GAMMA = 0x9E3779B97F4A7C15  # splitmix64's increment (the golden ratio in 64 bits)
_MIX = (0xBF58476D1CE4E5B9, 0x94D049BB133111EB)


def _signed(value: int) -> int:
    """A 64-bit pattern as the int64 torch stores (torch's int64 arithmetic wraps like uint64)."""
    return value - (1 << 64) if value >= 1 << 63 else value


def _shift_right(z: torch.Tensor, bits: int) -> torch.Tensor:
    """Logical right shift of int64 bit patterns (torch's >> is arithmetic)."""
    return (z >> bits) & ((1 << (64 - bits)) - 1)


def threshold(p: float) -> int:
    """Lanes below this are dropped: round(p x 2^16)."""
    return round(p * (1 << _LANE_BITS))


def draw_seed() -> int:
    """One draw from the default CPU generator: the seed of one dropout call."""
    return int(torch.empty((), dtype=torch.int64).random_())


def hash_keep_mask(shape: torch.Size | tuple[int, ...], seed: int, limit: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """The kernel's keep mask in torch ops: bool ``shape``, True where the element's lane >= ``limit``."""
    count = math.prod(shape)
    z = torch.arange((count + 3) // 4, dtype=torch.int64, device=device).mul_(_signed(_GAMMA)).add_(_signed(seed))
    z = (z ^ _shift_right(z, 30)).mul_(_signed(_MIX[0]))
    z = (z ^ _shift_right(z, 27)).mul_(_signed(_MIX[1]))
    z = z ^ _shift_right(z, 31)
    lanes = torch.stack([_shift_right(z, _LANE_BITS * k) & 0xFFFF for k in range(4)], dim=1).view(-1)[:count]
    return lanes.ge(limit).view(shape)


def _apply(x: torch.Tensor, seed: int, limit: int, scale: float) -> torch.Tensor:
    if x.device.type == "cpu" and compiled.load():
        return torch.ops.ernie_cl.hash_dropout(x, seed, limit, scale)
    return torch.where(hash_keep_mask(x.shape, seed, limit, x.device), x, 0.0).mul_(scale)


class _HashDropout(torch.autograd.Function):
    """x * keep / (1 - p) with the counter-based mask; backward recomputes the mask from the seed."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, p: float) -> torch.Tensor:
        ctx.seed, ctx.limit, ctx.scale = draw_seed(), threshold(p), 1.0 / (1.0 - p)
        return _apply(x, ctx.seed, ctx.limit, ctx.scale)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return _apply(grad, ctx.seed, ctx.limit, ctx.scale), None


def cheap_dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """``F.dropout`` with the counter-based mask."""
    if not training or p == 0.0:
        return x
    if p >= 1.0:
        return x.mul(0.0)
    return _HashDropout.apply(x, p)


class CheapDropout(nn.Dropout):
    """``nn.Dropout`` (same ``p``, same place in the module tree) drawing the cheap mask."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return cheap_dropout(x, self.p, self.training)


def additive_mask(mask, dtype: torch.dtype):
    """SDPA's mask as the kernels and the math path add it: a boolean one (True = may attend) becomes
    0 / the dtype's lowest value; a float one or None is returned as it is."""
    if mask is not None and mask.dtype == torch.bool:
        return torch.where(mask, 0.0, torch.finfo(dtype).min).to(dtype)
    return mask


def _fused_attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, **kwargs):
    """``_attention``, with the fused CPU kernel where it applies (float32 CPU tensors, MKL)."""
    return _attention(module, query, key, value, attention_mask, dropout, scaling, fused=True, **kwargs)


def _attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, fused: bool = False,
               **kwargs):
    """SDPA's math path with the cheap mask when training with dropout, or, ``fused``, the same
    computation in one kernel per batch and head (which also takes training steps without dropout:
    there it is faster than SDPA's flash kernel, README "Performance"); the stock SDPA function
    otherwise, and for anything this does not handle (causal, GQA, biases, softcap)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    supported = (query.shape[2] > 1 and not getattr(module, "is_causal", False)
                 and getattr(module, "num_key_value_groups", 1) == 1 and kwargs.get("position_bias") is None
                 and kwargs.get("softcap") is None and key.shape[1] == query.shape[1])
    training_step = dropout > 0.0 or (torch.is_grad_enabled() and query.requires_grad)
    kernel = fused and supported and dropout < 1.0 and training_step and attention_kernel.available(query, key, value)
    if not kernel and not (supported and dropout > 0.0):  # neither the kernel nor the math path
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)
    scale = query.shape[-1] ** -0.5 if scaling is None else scaling
    attention_mask = additive_mask(attention_mask, query.dtype)
    if kernel:
        # the same mask draw as the math path below (one seed per call, same element indices; none at p = 0)
        seed = draw_seed() if dropout > 0.0 else 0
        return attention_kernel.attention(query, key, value, attention_mask, scale, seed, threshold(dropout),
                                          1.0 / (1.0 - dropout)), None
    # scale the queries (S x d) rather than the scores (S x S); the mask is added in place (a free
    # backward), as an additive float mask when SDPA's is boolean (True = may attend)
    scores = torch.matmul(query * scale, key.transpose(-1, -2))
    if attention_mask is not None:
        scores = scores.add_(attention_mask)
    probs = cheap_dropout(torch.softmax(scores, dim=-1), dropout)
    return torch.matmul(probs, value).transpose(1, 2).contiguous(), None


def install(backbone: nn.Module, fused_attention: bool = True) -> int:
    """Swap the backbone's ``nn.Dropout`` modules for ``CheapDropout`` and, when it runs SDPA
    attention, point it at the cheap-mask attention function (``fused_attention``: the fused kernel
    where it applies). Parameters, state dict keys and exported configs are unchanged. Returns how
    many dropout modules were swapped."""
    swapped = 0
    for parent in list(backbone.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Dropout:
                setattr(parent, name, CheapDropout(child.p, child.inplace))
                swapped += 1
    config = getattr(backbone, "config", None)
    if config is not None and getattr(config, "_attn_implementation", None) == "sdpa":
        _register_attention()
        config._attn_implementation = FUSED_ATTENTION_NAME if fused_attention else ATTENTION_NAME
    return swapped


def _register_attention() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface, sdpa_mask

    for name, function in ((ATTENTION_NAME, _attention), (FUSED_ATTENTION_NAME, _fused_attention)):
        AttentionInterface.register(name, function)
        if name not in ALL_MASK_ATTENTION_FUNCTIONS._global_mapping:
            AttentionMaskInterface.register(name, sdpa_mask)  # the masks SDPA gets
