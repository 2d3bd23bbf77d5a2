"""The per-head attention of ernie_cl/model/attention.py (training on CPU with attention dropout):
the same output and gradients as SDPA when nothing is dropped, the same as a reference with the
same keep mask when something is, and the stock SDPA function for every case it does not handle."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ernie_cl.model import attention, dropout

B, H, S, D = 3, 4, 10, 8


def projections(layout: str, seed: int = 0):
    """q, k, v as the model hands them over: [B, H, S, d] views of [B, S, H*d] projections
    (``strided``), or contiguous [B, H, S, d] tensors; leaves that collect gradients."""
    torch.manual_seed(seed)
    if layout == "strided":
        leaves = [torch.randn(B, S, H * D, requires_grad=True) for _ in range(3)]
        return leaves, [t.view(B, S, H, D).transpose(1, 2) for t in leaves]
    leaves = [torch.randn(B, H, S, D, requires_grad=True) for _ in range(3)]
    return leaves, leaves


def padding_mask() -> torch.Tensor:
    mask = torch.ones(B, 1, S, S, dtype=torch.bool)
    mask[1, :, :, 7:] = False  # the second sequence has 7 real tokens
    mask[2, :, :, 4:] = False
    return mask


def reference(q, k, v, mask, keep, p, scale):
    """The math path written with autograd ops: softmax(q k^T * scale, masked), dropout, times v."""
    scores = q @ k.transpose(-1, -2) * scale
    if mask is not None:
        scores = scores.masked_fill(~mask, torch.finfo(q.dtype).min)
    probs = torch.softmax(scores, -1)
    if keep is not None:
        probs = probs * keep / (1 - p)
    return (probs @ v).transpose(1, 2)


@pytest.mark.parametrize("layout", ["strided", "contiguous"])
@pytest.mark.parametrize("masked", [True, False])
def test_nothing_dropped_gives_sdpa_output_and_gradients(layout, masked):
    """p below 1/65536 keeps every element, so output and gradients must be SDPA's."""
    mask = padding_mask() if masked else None
    leaves, (q, k, v) = projections(layout)
    ours, weights = attention.attention_forward(torch.nn.Module(), q, k, v, mask, dropout=1e-9, scaling=0.3)
    assert weights is None and ours.shape == (B, S, H, D)
    upstream = torch.randn(B, S, H, D)
    ours.backward(upstream)
    stock_leaves, (q2, k2, v2) = projections(layout)
    stock = F.scaled_dot_product_attention(q2, k2, v2, attn_mask=mask, scale=0.3).transpose(1, 2)
    stock.backward(upstream)
    assert torch.allclose(ours, stock, atol=1e-5)
    for mine, theirs in zip(leaves, stock_leaves):
        assert torch.allclose(mine.grad, theirs.grad, atol=1e-5)


def test_dropout_uses_the_cheap_mask_in_forward_and_backward():
    mask = padding_mask()
    leaves, (q, k, v) = projections("strided", seed=1)
    torch.manual_seed(5)
    ours, _ = attention.attention_forward(torch.nn.Module(), q, k, v, mask, dropout=0.5, scaling=0.3)
    upstream = torch.randn(B, S, H, D)
    ours.backward(upstream)
    torch.manual_seed(5)
    keep = dropout.keep_mask((B, H, S, S), 0.5)
    assert 0.3 < keep.float().mean() < 0.7
    ref_leaves, (q2, k2, v2) = projections("strided", seed=1)
    expected = reference(q2, k2, v2, mask, keep, 0.5, 0.3)
    expected.backward(upstream)
    assert torch.allclose(ours, expected, atol=1e-5)
    for mine, theirs in zip(leaves, ref_leaves):
        assert torch.allclose(mine.grad, theirs.grad, atol=1e-5)


def test_a_float_mask_is_added_as_given():
    leaves, (q, k, v) = projections("contiguous", seed=2)
    bias = torch.randn(B, 1, S, S)
    ours, _ = attention.attention_forward(torch.nn.Module(), q, k, v, bias, dropout=1e-9)
    stock = F.scaled_dot_product_attention(q, k, v, attn_mask=bias).transpose(1, 2)
    assert torch.allclose(ours, stock, atol=1e-5)


@pytest.mark.parametrize("case", ["eval", "per_head_mask", "causal"])
def test_cases_it_does_not_handle_go_to_stock_sdpa(monkeypatch, case):
    from transformers.integrations import sdpa_attention

    calls = []
    stock = sdpa_attention.sdpa_attention_forward
    monkeypatch.setattr(sdpa_attention, "sdpa_attention_forward", lambda *a, **kw: calls.append(1) or stock(*a, **kw))
    _, (q, k, v) = projections("contiguous")
    module, mask, p = torch.nn.Module(), padding_mask(), 0.1
    if case == "eval":
        p = 0.0
    elif case == "per_head_mask":
        mask = mask.expand(B, H, S, S)
    else:
        module.is_causal, mask = True, None
    attention.attention_forward(module, q, k, v, mask, dropout=p)
    assert calls == [1]
    calls.clear()
    attention.attention_forward(torch.nn.Module(), q, k, v, padding_mask(), dropout=0.1)
    assert calls == []  # and the plain training case does not
