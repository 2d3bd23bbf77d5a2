"""training.fused_kernels: the feed-forward widening's bias + exact GELU as one CPU kernel that keeps
GELU's derivative (ernie_cl/kernels/csrc/bias_gelu.cpp, ernie_cl/model/fused_blocks.py), held
against torch's ops."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ernie_cl.kernels import bias_gelu as kernel
from ernie_cl.kernels import compiled
from ernie_cl.model import dropout, fused_blocks

pytestmark = pytest.mark.skipif(not compiled.load(), reason="no C++ compiler: the kernels are not built")


def run(path: str, h: torch.Tensor, bias, grad: torch.Tensor):
    """Output, h's gradient and the bias's gradient (None without a bias)."""
    h = h.clone().requires_grad_()
    bias = None if bias is None else bias.clone().requires_grad_()
    out = kernel.bias_gelu(h, bias) if path == "kernel" else F.gelu(h if bias is None else h + bias)
    out.backward(grad)
    return out.detach(), h.grad, None if bias is None else bias.grad


@pytest.mark.parametrize("shape", [(300, 37), (4096, 1024), (2, 5, 64), (1, 8)])
@pytest.mark.parametrize("with_bias", [True, False])
def test_the_kernel_matches_gelu_of_h_plus_bias(shape, with_bias):
    gen = torch.Generator().manual_seed(0)
    h = torch.randn(*shape, generator=gen) * 3  # wide enough to reach both tails of erf
    bias = torch.randn(shape[-1], generator=gen) if with_bias else None
    grad = torch.randn(*shape, generator=gen)
    ours, theirs = run("kernel", h, bias, grad), run("torch", h, bias, grad)
    rows = h.numel() // shape[-1]
    for name, a, b in zip(["output", "d h", "d bias"], ours, theirs):
        if b is None:
            assert a is None
            continue
        tolerance = 2e-6 * (max(1.0, rows / 64) if name == "d bias" else 1.0)  # the bias gradient sums the rows
        assert (a - b).abs().max().item() <= tolerance * max(1.0, b.abs().max().item()), (name, (a - b).abs().max().item())
    if with_bias:  # negative control: the bias matters
        assert not torch.allclose(ours[0], run("torch", h, None, grad)[0], atol=1e-3)


def test_results_do_not_depend_on_the_thread_count():
    gen = torch.Generator().manual_seed(1)
    h, bias, grad = torch.randn(1000, 96, generator=gen), torch.randn(96, generator=gen), torch.randn(1000, 96, generator=gen)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = run("kernel", h, bias, grad)
        torch.set_num_threads(2)
        two = run("kernel", h, bias, grad)
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(a, b) for a, b in zip(one, two))


def bert(**overrides):
    from transformers import AutoConfig, AutoModel

    config = AutoConfig.for_model("bert", vocab_size=60, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=64, max_position_embeddings=40, **overrides)
    torch.manual_seed(0)
    return AutoModel.from_config(config, add_pooling_layer=False, attn_implementation="sdpa")


def test_the_widening_runs_the_kernel_in_training_only(monkeypatch):
    calls = []
    real = kernel.bias_gelu
    monkeypatch.setattr(kernel, "bias_gelu", lambda *a: calls.append(1) or real(*a))
    backbone = bert()
    dropout.install(backbone, fused_attention=True)
    fused_blocks.install(backbone)
    ids = torch.randint(3, 60, (2, 10), generator=torch.Generator().manual_seed(3))
    backbone.train()
    backbone(ids)
    assert len(calls) == 2  # one widening a layer
    backbone.eval()
    with torch.no_grad():
        backbone(ids)
    assert len(calls) == 2  # evaluation: the module's own ops
    backbone.train()
    backbone.encoder.layer[0].intermediate.dense.weight.ds_id = 7  # ZeRO-3: gathered by the module's own hook
    backbone(ids)
    assert len(calls) == 3


@pytest.mark.parametrize("act", ["gelu_new", "relu", "gelu_python"])
def test_other_activations_keep_the_modules_own_forward(act):
    backbone = bert(hidden_act=act)
    dropout.install(backbone, fused_attention=True)
    fused_blocks.install(backbone)
    assert all("forward" not in vars(layer.intermediate) for layer in backbone.encoder.layer)
