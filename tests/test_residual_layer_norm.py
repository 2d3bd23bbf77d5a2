"""training.fused_kernels: the output blocks' dropout + residual add + LayerNorm as one CPU kernel
(ernie_cl/kernels/csrc/residual_layer_norm.cpp, ernie_cl/model/fused_blocks.py), held against the
unfused ops."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ernie_cl.kernels import compiled
from ernie_cl.kernels.residual_layer_norm import residual_layer_norm
from ernie_cl.model import dropout, fused_blocks

pytestmark = pytest.mark.skipif(not compiled.load(), reason="no C++ compiler: the kernels are not built")


def tensors(rows: int, width: int, seed: int = 0):
    """h, residual, LayerNorm weight and bias, h's bias"""
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(*shape, generator=gen) for shape in ((rows, width), (rows, width), (width,), (width,), (width,))]


def run(path: str, h, residual, weight, bias, h_bias, p: float, seed: int = 3, with_h_bias: bool = True):
    """Output and the input gradients, with the RNG at ``seed``."""
    h, residual, weight, bias, h_bias = (t.clone().requires_grad_() for t in (h, residual, weight, bias, h_bias))
    torch.manual_seed(seed)
    if path == "fused":
        out = residual_layer_norm(h, residual, weight, bias, 1e-12, dropout.draw_seed() if p else 0,
                                  dropout.threshold(p), 1 / (1 - p), h_bias=h_bias if with_h_bias else None)
    else:
        biased = h + h_bias if with_h_bias else h
        out = F.layer_norm(dropout.cheap_dropout(biased, p) + residual, weight.shape, weight, bias, 1e-12)
    out.backward(torch.randn(out.shape, generator=torch.Generator().manual_seed(1)))
    return [out.detach(), h.grad, residual.grad, weight.grad, bias.grad] + ([h_bias.grad] if with_h_bias else [])


@pytest.mark.parametrize("rows,width", [(300, 37), (4096, 256), (1, 8)])
@pytest.mark.parametrize("p", [0.0, 0.3])
@pytest.mark.parametrize("with_h_bias", [True, False])
def test_the_kernel_matches_dropout_add_and_layer_norm(rows, width, p, with_h_bias):
    inputs = tensors(rows, width)
    ours, unfused = run("fused", *inputs, p, with_h_bias=with_h_bias), run("unfused", *inputs, p, with_h_bias=with_h_bias)
    assert len(ours) == len(unfused) == (6 if with_h_bias else 5)
    for name, a, b in zip(["output", "d h", "d residual", "d weight", "d bias", "d h's bias"], ours, unfused):
        tolerance = 1e-5 * max(1.0, rows / 100)  # the weight and bias gradients sum over the rows
        assert torch.allclose(a, b, atol=tolerance, rtol=1e-4), (name, (a - b).abs().max().item())
    if p and rows > 1:  # negative control: another seed drops other elements
        assert not torch.allclose(run("fused", *inputs, p, seed=4)[1], ours[1])


def test_results_do_not_depend_on_the_thread_count():
    inputs = tensors(1000, 96)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = run("fused", *inputs, 0.1)
        torch.set_num_threads(2)
        two = run("fused", *inputs, 0.1)
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(a, b) for a, b in zip(one, two))


def bert(model: str = "bert"):
    from transformers import AutoConfig, AutoModel

    config = AutoConfig.for_model(model, vocab_size=60, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=64, max_position_embeddings=40)
    torch.manual_seed(0)
    return AutoModel.from_config(config, add_pooling_layer=False, attn_implementation="sdpa")


@pytest.mark.parametrize("model", ["bert", "roberta"])
def test_install_patches_the_output_blocks_and_training_matches_the_unfused_model(model):
    ids = torch.randint(3, 60, (3, 12), generator=torch.Generator().manual_seed(3))
    mask = torch.ones_like(ids)
    mask[2, 8:] = 0
    results = []
    for fused in (True, False):
        backbone = bert(model)
        dropout.install(backbone, fused_attention=False)
        if fused:  # attention and feed-forward output blocks, self-attention and the widening of each layer
            assert fused_blocks.install(backbone) == 4 * backbone.config.num_hidden_layers
        backbone.train()
        torch.manual_seed(11)
        out = backbone(ids, attention_mask=mask).last_hidden_state
        (out * torch.randn(out.shape, generator=torch.Generator().manual_seed(2))).sum().backward()
        results.append((out.detach(), [p.grad for p in backbone.parameters()], backbone.state_dict().keys()))
    (out_on, grads_on, keys_on), (out_off, grads_off, keys_off) = results
    assert list(keys_on) == list(keys_off)
    assert torch.allclose(out_on, out_off, atol=1e-5)
    # float rounding, relative to each gradient's scale (RoBERTa's position-embedding gradient sums
    # contributions up to ~200)
    assert all((a - b).abs().max() <= 1e-5 * max(1.0, b.abs().max().item()) for a, b in zip(grads_on, grads_off))


def test_only_blocks_with_exactly_that_forward_and_cheap_dropout_are_patched():
    class PostNorm(nn.Module):  # same attributes, another computation: LayerNorm before the residual
        def __init__(self):
            super().__init__()
            self.dense, self.LayerNorm, self.dropout = nn.Linear(8, 8), nn.LayerNorm(8), dropout.CheapDropout(0.1)

        def forward(self, hidden_states, input_tensor):
            hidden_states = self.dense(hidden_states)
            hidden_states = self.dropout(hidden_states)
            hidden_states = self.LayerNorm(hidden_states) + input_tensor
            return hidden_states

    assert fused_blocks.install(nn.Sequential(PostNorm())) == 0
    # torch's nn.Dropout still in place (fast_dropout off): only the widening blocks, which have no dropout
    backbone = bert()
    assert fused_blocks.install(backbone) == backbone.config.num_hidden_layers
    assert all("forward" not in vars(layer.output) and "forward" not in vars(layer.attention.self)
               and "forward" in vars(layer.intermediate) for layer in backbone.encoder.layer)


def test_a_residual_copy_nobody_takes_does_not_keep_the_step_alive():
    """With torch's dropout only the widening is patched: the copy of its input it hands on for the
    residual add is never taken by the (unpatched) output block. It must not keep the input, and with
    it the step's tensors, alive after the step."""
    import gc
    import weakref

    backbone = bert()
    assert fused_blocks.install(backbone) == backbone.config.num_hidden_layers  # the widening blocks only
    backbone.train()
    inputs = []
    for layer in backbone.encoder.layer:
        layer.intermediate.register_forward_pre_hook(lambda module, args: inputs.append(weakref.ref(args[0])))
    ids = torch.randint(3, 60, (3, 12), generator=torch.Generator().manual_seed(3))
    for _ in range(2):
        backbone(ids).last_hidden_state.sum().backward()
    gc.collect()
    assert len(inputs) == 2 * backbone.config.num_hidden_layers
    assert all(ref() is None for ref in inputs)


def test_zero3_parameters_keep_the_modules_own_calls(monkeypatch):
    """A ZeRO-3 parameter (DeepSpeed marks it with ds_id) is gathered by its module's forward hook,
    so a block holding one must call its modules, not the kernel; the output stays the block's."""
    from ernie_cl.kernels import residual_layer_norm as kernel

    backbone = bert()
    dropout.install(backbone, fused_attention=False)
    fused_blocks.install(backbone)
    block = backbone.encoder.layer[0].output
    calls = []
    real = kernel.residual_layer_norm
    monkeypatch.setattr(kernel, "residual_layer_norm", lambda *a, **k: calls.append(1) or real(*a, **k))
    x, residual = torch.randn(2, 5, 64), torch.randn(2, 5, 32)
    block.train()
    block(x, residual)
    assert len(calls) == 1  # the plain block runs the kernel
    block.dense.weight.ds_id = 7
    torch.manual_seed(0)
    out = block(x, residual)
    assert len(calls) == 1
    torch.manual_seed(0)
    assert torch.equal(out, block.LayerNorm(block.dropout(block.dense(x)) + residual))
