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
def test_keep_mask_keeps_one_minus_p_in_every_16_bit_lane(p):
    """Each int64 draw gives four masks; every lane (the top one has only 15 random bits) must keep
    1 - p of its elements. 4 sigma bounds on 2^20 elements per lane."""
    torch.manual_seed(1)
    keep = dropout.keep_mask((4 << 20,), p)
    assert keep.dtype == torch.bool and keep.shape == (4 << 20,)
    expected = 1 - round(p * 32768) / 32768
    sigma = (expected * (1 - expected) / (1 << 20)) ** 0.5
    for lane in range(4):
        assert abs(keep.view(-1, 4)[:, lane].float().mean().item() - expected) < 4 * sigma, lane
    # neighbouring elements (same draw, different lanes) are independent: P(both kept) = expected^2
    both = (keep.view(-1, 4)[:, 0] & keep.view(-1, 4)[:, 3]).float().mean().item()
    assert abs(both - expected ** 2) < 4 * (expected ** 2 * (1 - expected ** 2) / (1 << 20)) ** 0.5


def test_keep_mask_follows_the_default_generator():
    torch.manual_seed(7)
    first, second = dropout.keep_mask((3, 1001), 0.2), dropout.keep_mask((3, 1001), 0.2)
    torch.manual_seed(7)
    assert torch.equal(dropout.keep_mask((3, 1001), 0.2), first)  # seeded: reproducible (so resume is exact)
    assert not torch.equal(first, second)  # and it advances the generator


def test_cheap_dropout_scales_kept_elements_and_routes_the_gradient_through_the_same_mask():
    x = torch.randn(5, 7, 9, requires_grad=True)
    torch.manual_seed(3)
    out = dropout.cheap_dropout(x, 0.3)
    torch.manual_seed(3)
    keep = dropout.keep_mask(x.shape, 0.3)
    assert torch.allclose(out, x * keep / 0.7)
    out.backward(torch.ones_like(out))
    assert torch.allclose(x.grad, keep.float() / 0.7)
    assert dropout.cheap_dropout(x, 0.3, training=False) is x and dropout.cheap_dropout(x, 0.0) is x
    assert torch.equal(dropout.cheap_dropout(x, 1.0), torch.zeros_like(x))


def test_the_attention_math_path_is_sdpa_when_nothing_is_dropped():
    """With p below 1/65536 the cheap mask keeps everything, so the math path must give what SDPA
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
    keep = dropout.keep_mask((2, 4, 6, 6), 0.5)
    probs = torch.softmax((q @ k.transpose(-1, -2) * 0.3).masked_fill(~mask, torch.finfo(q.dtype).min), -1)
    assert torch.allclose(dropped, ((probs * keep / 0.5) @ v).transpose(1, 2), atol=1e-6)


def test_install_swaps_every_dropout_keeps_the_weights_and_matches_the_stock_model_in_eval():
    stock, cheap = tiny_bert(), tiny_bert()
    # embeddings + per layer: attention probabilities (only its p is read, SDPA gets it), attention output, feed-forward
    assert dropout.install(cheap) == 1 + 3 * 2
    assert not any(type(m) is torch.nn.Dropout for m in cheap.modules())
    assert list(cheap.state_dict()) == list(stock.state_dict())
    assert cheap.config._attn_implementation == dropout.ATTENTION_NAME
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
