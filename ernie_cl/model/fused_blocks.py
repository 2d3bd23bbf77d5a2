"""The backbone's output blocks and self-attention modules on ernie-cl's CPU kernels
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

The same encoders compute self-attention's query, key and value with three linear layers (three
products, their biases copied into the outputs and their gradients summed, three products for the
input's gradient and their sum). A self-attention module whose forward is exactly BERT's
(``_SELF_ATTENTION``) gets a forward that, in a training step with the fused attention kernel,
takes one product of the three weights concatenated and hands it to the packed kernel
(``ernie_cl.kernels.attention.packed_attention``), which adds the biases as it reads each head and
returns the gradient packed, so backward is one product for the input's gradient and one for the
weights'. Everything else (evaluation, a cache, other devices, ZeRO-3 parameters, another attention
implementation) runs the module's own forward.

The feed-forward widening (``_INTERMEDIATE``: ``dense`` then transformers' exact GELU) gets a forward
that, in training on float32 CPU parameters, takes the product without the bias and hands it to
``ernie_cl.kernels.bias_gelu``, which adds the bias, applies GELU and keeps GELU's derivative for
backward. It has no dropout, so it is patched whether or not the blocks' dropouts are the cheap ones.

The sublayer's input feeds two consumers, its first product (Q/K/V, or the widening) and the
residual add at its end, so autograd would add their two [tokens x hidden] gradients in a pass of its
own. The patched self-attention and widening take their product through ``_ProductPassingInput``,
which also returns the input itself for the residual; the output block takes that copy as its
residual (``_residual``), and backward adds the residual's gradient inside the product for the
input's gradient (``addmm_``, beta = 1) instead: eight [4096 x 256] additions a step less at the
benchmark's sizes.
"""

from __future__ import annotations

import inspect
import types

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from ernie_cl.kernels import attention as attention_kernel
from ernie_cl.kernels import bias_gelu
from ernie_cl.kernels import residual_layer_norm as fused
from ernie_cl.model.dropout import FUSED_ATTENTION_NAME, CheapDropout, additive_mask, draw_seed, threshold

_PATTERN = ("hidden_states = self.dense(hidden_states)", "hidden_states = self.dropout(hidden_states)",
            "hidden_states = self.LayerNorm(hidden_states + input_tensor)", "return hidden_states")

# BERT's feed-forward widening (the "intermediate" module; RoBERTa, ELECTRA and ERNIE copy it)
_INTERMEDIATE = ("hidden_states = self.dense(hidden_states)", "hidden_states = self.intermediate_act_fn(hidden_states)",
                 "return hidden_states")


# BERT's self-attention forward (transformers 5; RoBERTa, ELECTRA and ERNIE copy it), without comments
_SELF_ATTENTION = (
    "input_shape = hidden_states.shape[:-1]", "hidden_shape = (*input_shape, -1, self.attention_head_size)",
    "query_layer = self.query(hidden_states).view(*hidden_shape).transpose(1, 2)",
    "key_layer = self.key(hidden_states).view(*hidden_shape).transpose(1, 2)",
    "value_layer = self.value(hidden_states).view(*hidden_shape).transpose(1, 2)",
    "if cache is not None:", "current_cache = cache", "if isinstance(cache, EncoderDecoderCache):",
    "current_cache = cache.self_attention_cache",
    "key_layer, value_layer = current_cache.update(key_layer, value_layer, self.layer_idx, kwargs=kwargs)",
    "attention_interface: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(",
    "self.config._attn_implementation, eager_attention_forward", ")",
    "attn_output, attn_weights = attention_interface(", "self,", "query_layer,", "key_layer,", "value_layer,",
    "attention_mask,", "dropout=0.0 if not self.training else self.dropout.p,", "scaling=self.scaling,", "**kwargs,", ")",
    "attn_output = attn_output.reshape(*input_shape, -1).contiguous()", "return attn_output, attn_weights")


def _forward_source(module: nn.Module) -> tuple[str, tuple[str, ...]]:
    """(the forward's signature on one line, its body's lines stripped, without comments), or empty
    ones when the source cannot be read"""
    try:
        source = inspect.getsource(type(module).forward)
    except (OSError, TypeError):
        return "", ()
    lines = [line.strip() for line in source.splitlines()]
    end = next((i for i, line in enumerate(lines) if line.endswith(":")), len(lines))  # the signature's last line
    return " ".join(lines[:end + 1]).replace("( ", "("), tuple(line for line in lines[end + 1:] if line and not line.startswith("#"))


def _matches(module: nn.Module) -> bool:
    if not (isinstance(getattr(module, "dense", None), nn.Linear) and isinstance(getattr(module, "dropout", None), CheapDropout)
            and type(getattr(module, "LayerNorm", None)) is nn.LayerNorm):
        return False
    signature, body = _forward_source(module)
    return body == _PATTERN and "(self, hidden_states" in signature and "input_tensor" in signature


def _is_self_attention(module: nn.Module) -> bool:
    if not (all(isinstance(getattr(module, name, None), nn.Linear) for name in ("query", "key", "value"))
            and isinstance(getattr(module, "dropout", None), CheapDropout)):
        return False
    signature, body = _forward_source(module)
    return (body == _SELF_ATTENTION and "(self, hidden_states" in signature and "attention_mask" in signature
            and "cache" in signature)


def _is_intermediate(module: nn.Module) -> bool:
    """BERT's widening with the exact GELU (transformers' ``GELUActivation`` on ``F.gelu``; the tanh
    approximation and other activations keep the module's own forward)"""
    act = getattr(module, "intermediate_act_fn", None)
    if not (isinstance(getattr(module, "dense", None), nn.Linear) and type(act).__name__ == "GELUActivation"
            and getattr(act, "act", None) is F.gelu):
        return False
    signature, body = _forward_source(module)
    return body == _INTERMEDIATE and "(self, hidden_states" in signature


_RESIDUAL = "_ernie_cl_residual"  # attribute of a sublayer's input: its copy for the residual add


class _ProductPassingInput(torch.autograd.Function):
    """(x W^T, x): a product without bias, and x handed on for the sublayer's residual. Backward
    adds the residual's gradient into the input-gradient product (beta = 1); without this, x has two
    consumers and autograd adds their gradients in a separate pass."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor):
        ctx.set_materialize_grads(False)  # an unused output's gradient stays None
        # detached copies (same storage): the handed-on copy waits on x as an attribute, so neither it
        # nor this node may refer back to x (a cycle through autograd that Python's gc cannot see)
        ctx.save_for_backward(x.detach(), weight)
        return F.linear(x, weight), x.detach()

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_product, grad_residual):
        x, weight = ctx.saved_tensors
        if grad_product is None:
            return grad_residual, None
        g = grad_product.reshape(-1, grad_product.shape[-1])
        grad_weight = _weight_gradient(g, x.reshape(-1, x.shape[-1]))
        if grad_residual is None:
            return g.mm(weight).view(x.shape), grad_weight
        if grad_residual.is_contiguous() and grad_residual.dtype == g.dtype:
            # the residual's gradient comes from the output block's kernel alone: its buffer is ours
            return grad_residual.view(-1, x.shape[-1]).addmm_(g, weight).view(x.shape), grad_weight
        return torch.addmm(grad_residual.reshape(-1, x.shape[-1]), g, weight).view(x.shape), grad_weight


def _weight_gradient(g: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """g^T x, the gradient of a weight [out x in] from the product's gradient g [tokens x out] and its
    input x [tokens x in]. When out > in (the widening, the packed Q/K/V) MKL takes the transposed
    product x^T g, [in x out], faster: 2-6% with the copy into the weight's layout, out of cache, at
    4096 tokens on this 2-core host (hidden 256: the [1024 x 256] and [768 x 256] gradients; the
    [256 x 1024] one is faster as it is, so the rule is the wide result)."""
    if g.shape[1] > x.shape[1]:
        return x.t().mm(g).t().contiguous()
    return g.t().mm(x)  # as linear's backward takes it


def _product_passing_input(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """x W^T; x's copy for the residual add waits on x (``_residual``) for the sublayer's output block."""
    product, residual = _ProductPassingInput.apply(x, weight)
    setattr(x, _RESIDUAL, residual)
    return product


def _residual(input_tensor: torch.Tensor) -> torch.Tensor:
    """The residual the output block adds: the copy a patched product handed on (taken once), else
    the input itself."""
    residual = input_tensor.__dict__.pop(_RESIDUAL, None)
    return input_tensor if residual is None else residual


def _fused_forward(self, hidden_states: torch.Tensor, input_tensor: torch.Tensor) -> torch.Tensor:
    dense, norm, p = self.dense, self.LayerNorm, self.dropout.p
    input_tensor = _residual(input_tensor)
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


def _bias_gelu_forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
    dense = self.dense
    # training on plain float32 CPU parameters (ZeRO-3's ds_id ones are gathered by the module's hooks)
    if (self.training and torch.is_grad_enabled() and not hasattr(dense.weight, "ds_id")
            and (dense.bias is None or not hasattr(dense.bias, "ds_id")) and hidden_states.dtype == torch.float32
            and bias_gelu.available(dense.weight, dense.bias)):
        # the product without its bias: the kernel adds it in GELU's pass and keeps GELU's derivative
        return bias_gelu.bias_gelu(_product_passing_input(hidden_states, dense.weight), dense.bias)
    return self.intermediate_act_fn(dense(hidden_states))


def _packed_self_attention(self, hidden_states: torch.Tensor, attention_mask=None, cache=None, **kwargs):
    linears = (self.query, self.key, self.value)
    heads, size = self.num_attention_heads, self.attention_head_size
    biases = [linear.bias for linear in linears]
    p = self.dropout.p
    # the cases in which the stock forward would run the fused attention kernel (dropout._attention)
    # on plain float32 CPU tensors; ZeRO-3 parameters (ds_id) are gathered by their modules' hooks
    if (cache is None and self.training and torch.is_grad_enabled() and p < 1.0
            and getattr(self.config, "_attn_implementation", None) == FUSED_ATTENTION_NAME
            and not getattr(self, "is_causal", False) and hidden_states.dim() == 3 and hidden_states.shape[1] > 1
            and kwargs.get("position_bias") is None and kwargs.get("softcap") is None
            and hidden_states.dtype == torch.float32 and hidden_states.device.type == "cpu"
            and all(linear.weight.shape == (heads * size, hidden_states.shape[-1]) and not hasattr(linear.weight, "ds_id")
                    and linear.weight.dtype == torch.float32 for linear in linears)
            and (all(b is None for b in biases) or all(b is not None and b.dtype == torch.float32
                                                         and not hasattr(b, "ds_id") for b in biases))
            and attention_kernel.packed_available()):
        # one product of the three weights; the kernel adds the biases and returns the gradient packed
        qkv = _product_passing_input(hidden_states, torch.cat([linear.weight for linear in linears]))
        bias = None if biases[0] is None else torch.cat(biases)
        mask = additive_mask(attention_mask, qkv.dtype)
        seed = draw_seed() if p > 0.0 else 0  # the draw dropout._attention makes (none at p = 0)
        out = attention_kernel.packed_attention(qkv, bias, heads, mask, self.scaling, seed, threshold(p), 1.0 / (1.0 - p))
        return out.reshape(*hidden_states.shape[:-1], -1), None
    return type(self).forward(self, hidden_states, attention_mask=attention_mask, cache=cache, **kwargs)


def install(backbone: nn.Module) -> int:
    """Give every matching output block and self-attention module its fused forward; returns how many
    modules were patched. Call after ``dropout.install`` (the blocks' dropouts must be ``CheapDropout``;
    the self-attention forward runs the kernel only when the backbone uses the fused attention)."""
    count = 0
    for module in backbone.modules():
        if _matches(module):
            module.forward = types.MethodType(_fused_forward, module)
            count += 1
        elif _is_self_attention(module):
            module.forward = types.MethodType(_packed_self_attention, module)
            count += 1
        elif _is_intermediate(module):
            module.forward = types.MethodType(_bias_gelu_forward, module)
            count += 1
    return count
