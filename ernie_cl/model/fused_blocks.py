"""The backbone's "dense -> dropout -> LayerNorm(h + residual)" output blocks on one CPU kernel
(``training.fused_kernels``, on by default with ``training.fast_dropout``).

BERT and the encoders that copy its code (RoBERTa, ERNIE, ELECTRA, ...) end the attention and the
feed-forward sublayer with a module whose forward is exactly::

    hidden_states = self.dense(hidden_states)
    hidden_states = self.dropout(hidden_states)
    hidden_states = self.LayerNorm(hidden_states + input_tensor)
    return hidden_states

``install`` finds those modules by that source (nothing else is touched, so an architecture that
does something else keeps its own code) and gives them a forward that runs the dropout, the residual
add and LayerNorm as one kernel (``ernie_cl.kernels.residual_layer_norm``, which also adds the dense
layer's bias and sums its gradient, so the product is taken without it) while training on CPU in
float32, with the cheap dropout's mask and seed draw, so a step computes what the unfused ops compute
up to float rounding. Otherwise (evaluation, other devices, ZeRO-3 parameters) it runs the module's
own ops. Parameters and state dict keys are unchanged.
"""

from __future__ import annotations

import inspect
import types

import torch
import torch.nn.functional as F
from torch import nn

from ernie_cl.kernels import residual_layer_norm as fused
from ernie_cl.model.dropout import CheapDropout, draw_seed, threshold

_PATTERN = ("hidden_states = self.dense(hidden_states)", "hidden_states = self.dropout(hidden_states)",
            "hidden_states = self.LayerNorm(hidden_states + input_tensor)", "return hidden_states")


def _matches(module: nn.Module) -> bool:
    if not (isinstance(getattr(module, "dense", None), nn.Linear) and isinstance(getattr(module, "dropout", None), CheapDropout)
            and type(getattr(module, "LayerNorm", None)) is nn.LayerNorm):
        return False
    try:
        source = inspect.getsource(type(module).forward)
    except (OSError, TypeError):
        return False
    lines = [line.strip() for line in source.splitlines()]
    end = next((i for i, line in enumerate(lines) if line.endswith(":")), len(lines))  # the signature's last line
    signature = " ".join(lines[:end + 1])
    body = tuple(line for line in lines[end + 1:] if line and not line.startswith("#"))
    return body == _PATTERN and "(self, hidden_states" in signature and "input_tensor" in signature


def _fused_forward(self, hidden_states: torch.Tensor, input_tensor: torch.Tensor) -> torch.Tensor:
    dense, norm, p = self.dense, self.LayerNorm, self.dropout.p
    # ZeRO-3 parameters (ds_id) are gathered by their own modules' forward hooks, and its prefetching
    # follows the modules' call order: those blocks keep the modules' own calls
    plain = not any(hasattr(w, "ds_id") for w in (dense.weight, norm.weight))
    whole = dense.weight.shape == (input_tensor.shape[-1], hidden_states.shape[-1])
    if (self.training and p < 1.0 and plain and whole and hidden_states.dtype == torch.float32
            and (dense.bias is None or dense.bias.shape == (dense.weight.shape[0],))
            and fused.available(input_tensor, norm.weight, norm.bias)):  # the product has the residual's shape
        # the product without its bias: the kernel adds the bias (no copy into the product's output)
        # and sums its gradient in the same passes
        product = F.linear(hidden_states, dense.weight)
        seed = draw_seed() if p > 0.0 else 0  # one draw, as the cheap dropout makes; none at p = 0, as it makes none
        return fused.residual_layer_norm(product, input_tensor, norm.weight, norm.bias, norm.eps, seed,
                                         threshold(p), 1.0 / (1.0 - p), h_bias=dense.bias)
    return norm(self.dropout(dense(hidden_states)) + input_tensor)


def install(backbone: nn.Module) -> int:
    """Give every matching output block the fused forward; returns how many there were. Call after
    ``dropout.install`` (the blocks' dropouts must be ``CheapDropout``)."""
    count = 0
    for module in backbone.modules():
        if _matches(module):
            module.forward = types.MethodType(_fused_forward, module)
            count += 1
    return count
