"""The heads' cross-entropy (ernie_cl/kernels/cross_entropy.py): the fused CPU kernel against
F.cross_entropy, and the cases that must fall back to it."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ernie_cl.kernels import compiled
from ernie_cl.kernels.cross_entropy import cross_entropy, predictions


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
            loss, lse, predicted = torch.ops.ernie_cl.cross_entropy_forward(logits, targets)
            grad = torch.ops.ernie_cl.cross_entropy_backward(torch.full((301,), 0.5), logits, lse, targets)
            results.append((loss, lse, grad, predicted))
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


@pytest.mark.parametrize("width", [1, 7, 16, 17, 1000, 16000])
def test_the_kernel_predicts_what_max_indices_gives_ties_and_nans_included(width):
    """The first maximal index per row, a NaN counting as maximal (torch's max(-1).indices), at
    widths below, at and across the vector length; ties at the start, the end and past a vector;
    maxima of 0.0 next to the zero-filled lanes past a row's end."""
    torch.manual_seed(width)
    logits = torch.randn(12, width) * 3
    logits[1] = 0.0  # every entry tied, the maximum is 0.0
    logits[2, :] = -1.0
    logits[2, -1] = 0.0  # the maximum 0.0 in the last (partial-vector) lane
    if width > 1:
        logits[3, width // 2] = logits[3, -1] = 50.0  # a tie: the first one wins
        logits[4, 0] = float("nan")
        logits[5, -1] = float("nan")
        logits[6, width // 3] = logits[6, -1] = float("nan")  # two NaNs: the first one
        logits[7, 1] = -0.0
        logits[7, 0] = -5.0
        logits[7, 2:] = -3.0  # maximum -0.0 at 1
    targets = torch.randint(0, width, (12,))
    _, _, predicted = torch.ops.ernie_cl.cross_entropy_forward(logits, targets)
    assert torch.equal(predicted, logits.max(-1).indices)


def test_the_accuracy_takes_the_kernels_predictions_only_for_the_logits_they_came_from():
    torch.manual_seed(5)
    logits, targets = torch.randn(40, 300), torch.randint(0, 300, (40,))
    cross_entropy(logits, targets)
    found = predictions(logits.detach(), targets)  # a detached view is the same logits
    assert found is not None and torch.equal(found, logits.max(-1).indices)
    assert predictions(logits, targets) is None  # handed over once
    cross_entropy(logits, targets)
    assert predictions(logits.clone(), targets) is None  # equal values, another tensor: not taken
    cross_entropy(logits, targets)
    logits[0, 0] += 100.0  # changed in place after the loss: the stored predictions are stale
    assert predictions(logits, targets) is None
    cross_entropy(logits, targets)
    assert predictions(logits[:20], targets) is None  # another shape
    bf16 = logits.bfloat16()
    cross_entropy(bf16, targets)  # computed on a float32 copy: not these logits
    assert predictions(bf16, targets) is None


def test_the_tasks_accuracy_counts_are_the_same_with_and_without_the_kernels_predictions():
    from pretrain_tasks.base import PretrainTask

    torch.manual_seed(6)
    logits, targets = torch.randn(64, 500) * 2, torch.randint(0, 500, (64,))
    targets[:10] = logits[:10].argmax(-1)  # some hits
    task = PretrainTask.__new__(PretrainTask)
    plain = task.metric_counts(logits, targets)
    task.loss(logits, targets)
    assert getattr(targets, "_ernie_cl_predicted", None) is not None
    assert task.metric_counts(logits.detach(), targets) == plain
    assert getattr(targets, "_ernie_cl_predicted", None) is None  # taken
    assert plain[0] >= 10 and plain[1] == 64


def test_inference_tensors_keep_the_plain_accuracy():
    torch.manual_seed(7)
    with torch.inference_mode():
        logits, targets = torch.randn(8, 30), torch.randint(0, 30, (8,))
        cross_entropy(logits, targets)
        assert predictions(logits, targets) is None
