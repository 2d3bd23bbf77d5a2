"""The heads' cross-entropy (ernie_cl/kernels/cross_entropy.py): the fused CPU kernel against
F.cross_entropy, and the cases that must fall back to it."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ernie_cl.kernels import compiled
from ernie_cl.kernels.cross_entropy import cross_entropy


@pytest.fixture(autouse=True)
def kernel_built():
    if not compiled.load():
        pytest.skip("the CPU kernels could not be built here (no compiler)")


def loss_and_grad(fn, logits, targets, weight=None):
    x = logits.clone().requires_grad_(True)
    loss = fn(x, targets)
    (loss * (1.0 if weight is None else weight)).backward()
    return loss.detach(), x.grad


@pytest.mark.parametrize("rows,width,spread", [(1, 7, 1.0), (37, 1000, 5.0), (600, 16000, 30.0), (3, 50, 200.0)])
def test_value_and_gradient_match_torch(rows, width, spread):
    """Widths below and across the vector length, and logits up to +-200 (a max-shifted
    log-sum-exp must neither overflow nor lose the loss)."""
    torch.manual_seed(rows)
    logits = torch.randn(rows, width) * spread
    targets = torch.randint(0, width, (rows,))
    ours, ours_grad = loss_and_grad(cross_entropy, logits, targets, weight=0.37)
    ref, ref_grad = loss_and_grad(F.cross_entropy, logits, targets, weight=0.37)
    assert torch.isfinite(ours) and torch.allclose(ours, ref, rtol=1e-5, atol=1e-5)
    assert torch.allclose(ours_grad, ref_grad, rtol=1e-4, atol=1e-7)


def test_the_kernel_runs_and_does_not_depend_on_the_thread_count():
    torch.manual_seed(0)
    logits, targets = torch.randn(301, 5003) * 4, torch.randint(0, 5003, (301,))
    threads = torch.get_num_threads()
    results = []
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            loss, lse = torch.ops.ernie_cl.cross_entropy_forward(logits, targets)
            grad = torch.ops.ernie_cl.cross_entropy_backward(torch.full((301,), 0.5), logits, lse, targets)
            results.append((loss, lse, grad))
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(a, b) for a, b in zip(*results))
    # the per-row gradient rows sum to zero (softmax - one_hot), scaled by the incoming 0.5
    assert torch.allclose(results[0][2].sum(1), torch.zeros(301), atol=1e-5)
    assert torch.allclose(results[0][1], torch.logsumexp(logits, 1), rtol=1e-6)


def test_bf16_logits_are_computed_in_float32_like_the_reference():
    torch.manual_seed(1)
    logits, targets = (torch.randn(20, 300) * 3).bfloat16(), torch.randint(0, 300, (20,))
    assert torch.allclose(cross_entropy(logits, targets), F.cross_entropy(logits.float(), targets), rtol=1e-5)


def test_ignored_targets_fall_back_to_torch():
    torch.manual_seed(2)
    logits, targets = torch.randn(10, 40), torch.randint(0, 40, (10,))
    targets[3] = -100
    assert torch.equal(cross_entropy(logits, targets), F.cross_entropy(logits, targets))


def test_a_target_outside_the_vocabulary_is_an_error_not_a_wrong_loss():
    with pytest.raises(RuntimeError, match="out of range"):
        cross_entropy(torch.randn(4, 10), torch.tensor([1, 2, 10, 3]))
