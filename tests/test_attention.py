"""training.fused_kernels: attention with dropout as one CPU kernel per (batch, head)
(ernie_cl/kernels/csrc/attention.cpp), held against the unfused math path it replaces."""

from __future__ import annotations

import pytest
import torch

from ernie_cl.kernels import attention as fused
from ernie_cl.model import dropout

pytestmark = pytest.mark.skipif(not fused.available(*(torch.zeros(1, 1, 1, 1),) * 3),
                                reason="no C++ compiler or no MKL sgemm in this torch build")


def projections(batch: int, heads: int, sq: int, sk: int, dim: int, layout: str, seed: int = 0):
    """Query, key and value as [B, H, S, d]: views of [B, S, H, d] projections (how Hugging Face
    models pass them) or contiguous tensors."""
    gen = torch.Generator().manual_seed(seed)
    shapes = [(batch, sq, heads, dim), (batch, sk, heads, dim), (batch, sk, heads, dim)]
    tensors = [torch.randn(*shape, generator=gen) for shape in shapes]
    tensors = [t.transpose(1, 2) for t in tensors]
    if layout == "contiguous":
        tensors = [t.contiguous() for t in tensors]
    return [t.requires_grad_() for t in tensors]


def padding_mask(batch: int, sq: int, sk: int) -> torch.Tensor:
    mask = torch.ones(batch, 1, sq, sk, dtype=torch.bool)
    for b in range(batch):
        mask[b, :, :, sk - 3 * b:] = False if b else True  # sequence b has 3b padded positions
    return mask


def run(path: str, q, k, v, mask, p: float, scale: float, seed: int = 7):
    """Output and the three input gradients of one forward + backward, with the RNG at ``seed``."""
    q, k, v = (t.detach().clone().requires_grad_() for t in (q, k, v))
    torch.manual_seed(seed)
    if path == "fused":
        additive = None if mask is None else torch.where(mask, 0.0, torch.finfo(torch.float32).min)
        out = fused.attention(q, k, v, additive, scale, dropout.draw_seed(), dropout.threshold(p), 1 / (1 - p))
    else:
        out, _ = dropout._attention(torch.nn.Module(), q, k, v, mask, dropout=p, scaling=scale, fused=False)
    weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    (out * weights).sum().backward()
    return [out.detach(), q.grad, k.grad, v.grad]


@pytest.mark.parametrize("layout", ["projection views", "contiguous"])
@pytest.mark.parametrize("batch,heads,sq,sk,dim,masked", [
    (3, 4, 37, 37, 16, True),   # a length that is no multiple of 4 or of the vector width
    (2, 2, 128, 128, 64, True),  # the benchmark's head size and length
    (2, 3, 9, 21, 5, False),    # cross-attention shapes, an odd head size, no mask
    (1, 1, 1, 1, 8, False),
])
def test_fused_attention_matches_the_math_path(layout, batch, heads, sq, sk, dim, masked):
    q, k, v = projections(batch, heads, sq, sk, dim, layout)
    mask = padding_mask(batch, sq, sk) if masked else None
    ours = run("fused", q, k, v, mask, 0.3, dim ** -0.5)
    math = run("math", q, k, v, mask, 0.3, dim ** -0.5)
    assert ours[0].shape == (batch, sq, heads, dim)
    for name, a, b in zip(["output", "d query", "d key", "d value"], ours, math):
        assert a.shape == b.shape, name
        assert torch.allclose(a, b, atol=2e-6, rtol=1e-5), (name, (a - b).abs().max().item())
    # negative control: another seed drops other probabilities, so the outputs must differ
    other = run("fused", q, k, v, mask, 0.3, dim ** -0.5, seed=8)
    assert sq * sk == 1 or not torch.allclose(other[0], ours[0], atol=1e-3)


def test_the_mask_may_be_a_broadcast_key_padding_row():
    q, k, v = projections(2, 2, 10, 10, 8, "projection views")
    keys_kept = torch.tensor([[True] * 10, [True] * 6 + [False] * 4]).view(2, 1, 1, 10)
    ours = run("fused", q, k, v, keys_kept, 0.2, 0.35)
    math = run("math", q, k, v, keys_kept.expand(2, 1, 10, 10), 0.2, 0.35)
    for a, b in zip(ours, math):
        assert torch.allclose(a, b, atol=2e-6, rtol=1e-5)


def test_dropout_drops_and_rescales():
    """p close to 1 keeps few probabilities; with p -> 0 the output is plain softmax attention."""
    q, k, v = projections(2, 2, 16, 16, 8, "contiguous")
    plain = torch.nn.functional.scaled_dot_product_attention(q, k, v, scale=0.25).transpose(1, 2)
    assert torch.allclose(run("fused", q, k, v, None, 1e-9, 0.25)[0], plain, atol=1e-6)
    dropped = run("fused", q, k, v, None, 0.5, 0.25)[0]
    assert not torch.allclose(dropped, plain, atol=1e-2)
    # the expectation over seeds is the undropped output
    mean = sum(run("fused", q, k, v, None, 0.5, 0.25, seed=s)[0] for s in range(200)) / 200
    assert (mean - plain).abs().mean() < 0.1 * plain.abs().mean()


def test_results_do_not_depend_on_the_thread_count():
    q, k, v = projections(4, 4, 64, 64, 32, "projection views")
    mask = padding_mask(4, 64, 64)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = run("fused", q, k, v, mask, 0.1, 0.2)
        torch.set_num_threads(2)
        two = run("fused", q, k, v, mask, 0.1, 0.2)
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(a, b) for a, b in zip(one, two))


def test_the_installed_model_trains_the_same_with_and_without_the_kernel(monkeypatch):
    """training.fused_kernels on and off (the attention part): same masks, same hidden states and gradients to float
    rounding; and the kernel really runs when it is on."""
    from transformers import BertConfig, BertModel

    config = BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=32)
    ids = torch.randint(1, 50, (3, 12), generator=torch.Generator().manual_seed(3))
    mask = torch.ones_like(ids)
    mask[2, 8:] = 0
    calls = []
    kernel = fused.attention
    monkeypatch.setattr(fused, "attention", lambda *args: calls.append(1) or kernel(*args))
    results = []
    for on in (True, False):
        torch.manual_seed(0)
        model = BertModel._from_config(config, add_pooling_layer=False, attn_implementation="sdpa")
        dropout.install(model, fused_attention=on)
        model.train()
        torch.manual_seed(11)
        out = model(ids, attention_mask=mask).last_hidden_state
        (out * torch.randn(out.shape, generator=torch.Generator().manual_seed(2))).sum().backward()
        results.append((out.detach(), [p.grad for p in model.parameters()]))
    assert len(calls) == config.num_hidden_layers  # only the fused model's layers called the kernel
    (out_on, grads_on), (out_off, grads_off) = results
    assert torch.allclose(out_on, out_off, atol=1e-5)
    assert all(torch.allclose(a, b, atol=1e-5, rtol=1e-4) for a, b in zip(grads_on, grads_off))


def test_without_dropout_training_steps_take_the_kernel_and_evaluation_keeps_sdpa(monkeypatch):
    """At p = 0 the kernel is faster than SDPA's flash kernel for a training step (forward + backward),
    so it takes those; a forward without gradients (evaluation) stays with the stock SDPA function."""
    calls = []
    kernel = fused.attention
    monkeypatch.setattr(fused, "attention", lambda *args: calls.append(1) or kernel(*args))
    q, k, v = projections(2, 4, 24, 24, 16, "projection views")
    mask = padding_mask(2, 24, 24)
    stock = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=0.25).transpose(1, 2)
    ours, _ = dropout._attention(torch.nn.Module(), q, k, v, mask, dropout=0.0, scaling=0.25, fused=True)
    assert len(calls) == 1 and torch.allclose(ours, stock, atol=1e-6)
    ours.sum().backward()
    assert q.grad is not None and k.grad is not None and v.grad is not None
    with torch.no_grad():
        dropout._attention(torch.nn.Module(), q, k, v, mask, dropout=0.0, scaling=0.25, fused=True)
    dropout._attention(torch.nn.Module(), q, k, v, mask, dropout=0.0, scaling=0.25, fused=False)
    assert len(calls) == 1


def packed_run(qkv, bias, heads: int, mask, p: float, scale: float, packed: bool, seed: int = 7):
    """Output and the gradients of the packed projection and its bias: the packed kernel, or the
    unpacked kernel on the three parts of (qkv + bias)."""
    qkv = qkv.detach().clone().requires_grad_()
    bias = None if bias is None else bias.detach().clone().requires_grad_()
    additive = None if mask is None else torch.where(mask, 0.0, torch.finfo(torch.float32).min)
    torch.manual_seed(seed)
    if packed:
        out = fused.packed_attention(qkv, bias, heads, additive, scale, dropout.draw_seed(), dropout.threshold(p), 1 / (1 - p))
    else:
        batch, length, width = qkv.shape
        parts = (qkv if bias is None else qkv + bias).view(batch, length, 3, heads, width // (3 * heads))
        q, k, v = (parts[:, :, i].transpose(1, 2) for i in range(3))
        out = fused.attention(q, k, v, additive, scale, dropout.draw_seed(), dropout.threshold(p), 1 / (1 - p))
    (out * torch.randn(out.shape, generator=torch.Generator().manual_seed(1))).sum().backward()
    return [out.detach(), qkv.grad] + ([] if bias is None else [bias.grad])


@pytest.mark.parametrize("batch,heads,length,dim,with_bias", [
    (3, 4, 37, 16, True),   # a length that is no multiple of 4 or of the vector width
    (2, 4, 128, 64, True),  # the benchmark's head size and length
    (2, 3, 9, 5, False),    # an odd head size, no bias
])
def test_packed_attention_matches_the_kernel_on_the_biased_parts(batch, heads, length, dim, with_bias):
    gen = torch.Generator().manual_seed(0)
    qkv = torch.randn(batch, length, 3 * heads * dim, generator=gen)
    bias = torch.randn(3 * heads * dim, generator=gen) if with_bias else None
    mask = padding_mask(batch, length, length)
    ours = packed_run(qkv, bias, heads, mask, 0.3, dim ** -0.5, packed=True)
    unpacked = packed_run(qkv, bias, heads, mask, 0.3, dim ** -0.5, packed=False)
    assert ours[0].shape == (batch, length, heads, dim) and ours[1].shape == qkv.shape
    for name, a, b in zip(["output", "d qkv", "d bias"], ours, unpacked):
        tolerance = 2e-6 * max(1.0, batch * length / 10)  # the bias gradient sums over every position
        assert torch.allclose(a, b, atol=tolerance, rtol=1e-5), (name, (a - b).abs().max().item())
    # negative control: the bias matters
    if with_bias:
        assert not torch.allclose(packed_run(qkv, None, heads, mask, 0.3, dim ** -0.5, packed=True)[0], ours[0], atol=1e-3)


def test_packed_results_do_not_depend_on_the_thread_count():
    gen = torch.Generator().manual_seed(0)
    qkv, bias = torch.randn(4, 64, 3 * 4 * 32, generator=gen), torch.randn(3 * 4 * 32, generator=gen)
    mask = padding_mask(4, 64, 64)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = packed_run(qkv, bias, 4, mask, 0.1, 0.2, packed=True)
        torch.set_num_threads(2)
        two = packed_run(qkv, bias, 4, mask, 0.1, 0.2, packed=True)
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(a, b) for a, b in zip(one, two))


def test_sublayer_inputs_take_the_residual_gradient_inside_the_input_gradient_product():
    """Each sublayer's input feeds its first product and the residual add: with the patches its two
    gradients are summed inside the input-gradient product (addmm_, one per sublayer), so backward
    has no separate [batch, seq, hidden] addition for them; the stock model has one per sublayer."""
    from torch.utils._python_dispatch import TorchDispatchMode
    from transformers import BertConfig, BertModel

    from ernie_cl.model import fused_blocks

    class Count(TorchDispatchMode):
        def __init__(self, shape):
            super().__init__()
            self.shape, self.adds, self.accumulating = shape, 0, 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func is torch.ops.aten.add.Tensor and all(getattr(a, "shape", None) == self.shape for a in args[:2]):
                self.adds += 1
            if func is torch.ops.aten.addmm_.default:
                self.accumulating += 1
            return func(*args, **(kwargs or {}))

    config = BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                        max_position_embeddings=40)
    ids = torch.randint(3, 50, (3, 12), generator=torch.Generator().manual_seed(3))
    counts = {}
    for patched in (True, False):
        torch.manual_seed(0)
        backbone = BertModel(config, add_pooling_layer=False)
        dropout.install(backbone, fused_attention=True)
        if patched:
            fused_blocks.install(backbone)
        backbone.train()
        out = backbone(ids).last_hidden_state
        with Count(out.shape) as count:
            out.sum().backward()
        counts[patched] = (count.adds, count.accumulating)
    layers = config.num_hidden_layers
    assert counts[True] == (0, 2 * layers)
    assert counts[False][0] >= 2 * layers  # the control: autograd adds them when the patches are off


@pytest.mark.parametrize("model", ["bert", "roberta"])
def test_packed_self_attention_trains_the_same_as_the_three_projections(monkeypatch, model):
    """fused_blocks.install gives BERT-style self-attention one product of the three weights and the
    packed kernel: same masks, same outputs and gradients (to float rounding) as the modules' own
    three linear layers and the unpacked kernel; the packed kernel really runs in training, and
    evaluation keeps the stock path."""
    from transformers import AutoConfig, AutoModel

    from ernie_cl.model import fused_blocks

    config = AutoConfig.for_model(model, vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=64, max_position_embeddings=40)
    ids = torch.randint(3, 50, (3, 12), generator=torch.Generator().manual_seed(3))
    mask = torch.ones_like(ids)
    mask[2, 8:] = 0
    calls = []
    kernel = fused.packed_attention
    monkeypatch.setattr(fused, "packed_attention", lambda *args: calls.append(1) or kernel(*args))
    results = []
    for packed in (True, False):
        torch.manual_seed(0)
        backbone = AutoModel.from_config(config, add_pooling_layer=False, attn_implementation="sdpa")
        dropout.install(backbone, fused_attention=True)
        if packed:
            assert fused_blocks.install(backbone) == 4 * config.num_hidden_layers  # + two output blocks and the widening
        backbone.train()
        torch.manual_seed(11)
        out = backbone(ids, attention_mask=mask).last_hidden_state
        (out * torch.randn(out.shape, generator=torch.Generator().manual_seed(2))).sum().backward()
        results.append((out.detach(), [p.grad for p in backbone.parameters()], list(backbone.state_dict())))
        if packed:
            assert len(calls) == config.num_hidden_layers
            backbone.eval()
            with torch.no_grad():
                backbone(ids, attention_mask=mask)
            assert len(calls) == config.num_hidden_layers  # evaluation: the stock SDPA path
    (out_on, grads_on, keys_on), (out_off, grads_off, keys_off) = results
    assert keys_on == keys_off
    assert torch.allclose(out_on, out_off, atol=1e-5)
    assert all((a - b).abs().max() <= 1e-5 * max(1.0, b.abs().max().item()) for a, b in zip(grads_on, grads_off))


def test_zero3_parameters_keep_the_three_projections(monkeypatch):
    """A ZeRO-3 parameter (ds_id) is gathered by its own module's forward hook, so self-attention
    holding one calls its three linear layers, not the packed kernel."""
    from transformers import BertConfig, BertModel

    from ernie_cl.model import fused_blocks

    calls = []
    kernel = fused.packed_attention
    monkeypatch.setattr(fused, "packed_attention", lambda *args: calls.append(1) or kernel(*args))
    backbone = BertModel._from_config(BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                                                 intermediate_size=64), add_pooling_layer=False, attn_implementation="sdpa")
    dropout.install(backbone, fused_attention=True)
    fused_blocks.install(backbone)
    backbone.train()
    ids = torch.randint(3, 50, (2, 10), generator=torch.Generator().manual_seed(3))
    backbone(ids)
    assert len(calls) == 1
    backbone.encoder.layer[0].attention.self.key.weight.ds_id = 7
    backbone(ids)
    assert len(calls) == 1
