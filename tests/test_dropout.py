"""training.fast_dropout: the cheap dropout masks (ernie_cl/model/dropout.py) and their wiring."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ernie_cl.model import dropout


def tiny_bert(attention_dropout: float = 0.1, hidden_dropout: float = 0.1):
    from transformers import BertConfig, BertModel

    config = BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                        max_position_embeddings=32, attention_probs_dropout_prob=attention_dropout,
                        hidden_dropout_prob=hidden_dropout)
    torch.manual_seed(0)
    return BertModel._from_config(config, add_pooling_layer=False, attn_implementation="sdpa")


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_hash_mask_keeps_one_minus_p_in_every_16_bit_lane(p):
    """Each 64-bit hash gives four masks; every lane must keep 1 - p of its elements, and two lanes
    of the same hash must be independent. 4 sigma bounds on 2^20 elements per lane."""
    keep = dropout.hash_keep_mask((4 << 20,), seed=987654321, limit=dropout.threshold(p))
    assert keep.dtype == torch.bool and keep.shape == (4 << 20,)
    expected = 1 - round(p * 65536) / 65536
    sigma = (expected * (1 - expected) / (1 << 20)) ** 0.5
    for lane in range(4):
        assert abs(keep.view(-1, 4)[:, lane].float().mean().item() - expected) < 4 * sigma, lane
    both = (keep.view(-1, 4)[:, 0] & keep.view(-1, 4)[:, 3]).float().mean().item()
    assert abs(both - expected ** 2) < 4 * (expected ** 2 * (1 - expected ** 2) / (1 << 20)) ** 0.5
    # neighbouring hashes (counters one apart) are independent too
    words = keep.view(-1, 4)[:, 0]
    pairs = (words[:-1] & words[1:]).float().mean().item()
    assert abs(pairs - expected ** 2) < 4 * (expected ** 2 * (1 - expected ** 2) / (1 << 20)) ** 0.5


def test_the_hash_mask_is_splitmix64_of_the_counter():
    """Lane k of word w is bits 16k..16k+15 of splitmix64(seed + w * gamma), computed here with
    Python integers (no wrapping tricks) as an independent check of the torch-op recipe."""
    def splitmix64(z):
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) % (1 << 64)
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) % (1 << 64)
        return z ^ (z >> 31)
    seed, limit, count = (1 << 62) + 12345, 20000, 4 * 300 + 3
    expected = [(splitmix64((seed + (i // 4) * 0x9E3779B97F4A7C15) % (1 << 64)) >> (16 * (i % 4))) & 0xFFFF >= limit
                for i in range(count)]
    assert dropout.hash_keep_mask((count,), seed, limit).tolist() == expected


def kernel_or_skip():
    from ernie_cl.kernels import compiled as kernels

    if not kernels.load():
        pytest.skip("the CPU kernel could not be built here (no compiler); the torch-op path is tested elsewhere")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("shape", [(1,), (7, 3), (5, 1031), (3, 4, 128, 128)])
def test_the_kernel_equals_the_torch_op_recipe_bit_for_bit(dtype, shape):
    """Sizes below, at and across the kernel's 1024-element blocks, with a tail that is not a whole
    hash; the same seed must give the same output on 1 and 2 threads."""
    kernel_or_skip()
    x = torch.randn(shape).to(dtype)
    x.view(-1)[0] = float("nan")  # a dropped NaN is 0 on both paths
    seed, limit, scale = 2 ** 63 - 5, dropout.threshold(0.3), 1 / 0.7
    reference = torch.where(dropout.hash_keep_mask(shape, seed, limit), x, 0.0).mul_(scale)
    threads = torch.get_num_threads()
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            out = torch.ops.ernie_cl.hash_dropout(x, seed, limit, scale)
            assert out.dtype == dtype and torch.equal(out.nan_to_num(7.0), reference.nan_to_num(7.0)), n
    finally:
        torch.set_num_threads(threads)
    # a non-contiguous input is read in its logical order
    t = torch.randn(64, 48).t()
    assert torch.equal(torch.ops.ernie_cl.hash_dropout(t, 9, limit, scale),
                       torch.where(dropout.hash_keep_mask(t.shape, 9, limit), t, 0.0).mul_(scale))


def test_cheap_dropout_follows_the_default_generator():
    x = torch.randn(3, 1001)
    torch.manual_seed(7)
    first, second = dropout.cheap_dropout(x, 0.2), dropout.cheap_dropout(x, 0.2)
    torch.manual_seed(7)
    assert torch.equal(dropout.cheap_dropout(x, 0.2), first)  # seeded: reproducible (so resume is exact)
    assert not torch.equal(first, second)  # and it advances the generator


@pytest.mark.parametrize("kernel", [True, False])
def test_cheap_dropout_scales_kept_elements_and_routes_the_gradient_through_the_same_mask(kernel, monkeypatch):
    from ernie_cl.kernels import compiled as kernels

    if kernel:
        kernel_or_skip()
    else:
        monkeypatch.setattr(kernels, "load", lambda: False)
    x = torch.randn(5, 7, 9, requires_grad=True)
    torch.manual_seed(3)
    out = dropout.cheap_dropout(x, 0.3)
    torch.manual_seed(3)
    keep = dropout.hash_keep_mask(x.shape, dropout.draw_seed(), dropout.threshold(0.3))
    assert torch.equal(out, torch.where(keep, x, 0.0) * (1 / 0.7))
    out.backward(torch.ones_like(out))
    assert torch.equal(x.grad, keep.float() * (1 / 0.7))
    assert dropout.cheap_dropout(x, 0.3, training=False) is x and dropout.cheap_dropout(x, 0.0) is x
    assert torch.equal(dropout.cheap_dropout(x, 1.0), torch.zeros_like(x))


def test_the_attention_math_path_is_sdpa_when_nothing_is_dropped():
    """With p below 1/131072 the cheap mask keeps everything, so the math path must give what SDPA
    gives: same mask meaning (True = attend), same scaling, same output layout [B, S, H, d]."""
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 4, 6, 8) for _ in range(3))
    mask = torch.ones(2, 1, 6, 6, dtype=torch.bool)
    mask[1, :, :, 4:] = False  # padding in the second sequence
    module = torch.nn.Module()
    ours, _ = dropout._attention(module, q, k, v, mask, dropout=1e-9, scaling=0.3)
    stock = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=0.3).transpose(1, 2)
    assert ours.shape == (2, 6, 4, 8) and torch.allclose(ours, stock, atol=1e-6)
    torch.manual_seed(5)
    dropped, _ = dropout._attention(module, q, k, v, mask, dropout=0.5, scaling=0.3)
    torch.manual_seed(5)
    keep = dropout.hash_keep_mask((2, 4, 6, 6), dropout.draw_seed(), dropout.threshold(0.5))
    probs = torch.softmax((q @ k.transpose(-1, -2) * 0.3).masked_fill(~mask, torch.finfo(q.dtype).min), -1)
    assert torch.allclose(dropped, ((probs * keep / 0.5) @ v).transpose(1, 2), atol=1e-6)


def test_install_swaps_every_dropout_keeps_the_weights_and_matches_the_stock_model_in_eval():
    stock, cheap = tiny_bert(), tiny_bert()
    # embeddings + per layer: attention probabilities (only its p is read, SDPA gets it), attention output, feed-forward
    assert dropout.install(cheap) == 1 + 3 * 2
    assert not any(type(m) is torch.nn.Dropout for m in cheap.modules())
    assert list(cheap.state_dict()) == list(stock.state_dict())
    assert cheap.config._attn_implementation == dropout.FUSED_ATTENTION_NAME
    assert dropout.install(tiny_bert(), fused_attention=False) == 1 + 3 * 2
    assert "attn_implementation" not in str(cheap.config.to_dict())  # an export's config.json stays plain
    ids = torch.randint(1, 50, (3, 12))
    mask = torch.ones_like(ids)
    mask[2, 8:] = 0
    stock.eval(), cheap.eval()
    with torch.no_grad():
        assert torch.allclose(stock(ids, attention_mask=mask).last_hidden_state,
                              cheap(ids, attention_mask=mask).last_hidden_state, atol=1e-6)


def test_a_training_step_of_the_installed_model_drops_and_is_reproducible():
    model = tiny_bert()
    dropout.install(model)
    model.train()
    ids = torch.randint(1, 50, (3, 12))
    mask = torch.ones_like(ids)
    mask[2, 8:] = 0
    outs = []
    for seed in (11, 11, 12):
        torch.manual_seed(seed)
        out = model(ids, attention_mask=mask).last_hidden_state
        out.sum().backward()
        outs.append(out.detach())
    assert torch.equal(outs[0], outs[1]) and not torch.allclose(outs[0], outs[2])
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_without_the_kernel_the_torch_op_path_runs(tmp_path):
    """ERNIE_CL_NO_KERNELS=1 (or a machine without a compiler): nothing is built and dropout still
    works, with the same output as the kernel."""
    import os
    import subprocess
    import sys

    code = ("import torch; from ernie_cl.model import dropout; from ernie_cl.kernels import compiled; assert not compiled.load();"
            "x = torch.arange(4000.).view(40, 100); torch.manual_seed(2); y = dropout.cheap_dropout(x, 0.25);"
            "torch.save(y, r'%s')" % (tmp_path / "y.pt"))
    env = {**os.environ, "ERNIE_CL_NO_KERNELS": "1"}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "compiling" not in result.stderr
    x = torch.arange(4000.).view(40, 100)
    torch.manual_seed(2)
    assert torch.equal(torch.load(tmp_path / "y.pt"), dropout.cheap_dropout(x, 0.25))
