"""training.fast_dropout: the cheap dropout masks (ernie_cl/model/dropout.py) and their wiring
(the attention function itself: test_attention.py)."""

from __future__ import annotations

import pytest
import torch

from ernie_cl.model import attention, dropout


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


def test_install_swaps_every_dropout_keeps_the_weights_and_matches_the_stock_model_in_eval():
    stock, cheap = tiny_bert(), tiny_bert()
    # embeddings + per layer: attention probabilities (only its p is read, SDPA gets it), attention output, feed-forward
    assert dropout.install(cheap) == 1 + 3 * 2 and attention.install(cheap)
    assert not any(type(m) is torch.nn.Dropout for m in cheap.modules())
    assert list(cheap.state_dict()) == list(stock.state_dict())
    assert cheap.config._attn_implementation == attention.ATTENTION_NAME
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
    attention.install(model)
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
