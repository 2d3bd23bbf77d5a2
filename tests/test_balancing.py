"""Loss balancing: each method's weights against its published formula computed here independently,
learned weights moving the way the formula says, bitwise resume (with a negative control), and the
validator's one-line errors."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from ernie_cl.errors import ConfigError
from ernie_cl.model.balancing import BALANCING_METHODS, balancer_from_spec, make_balancer, validate_balancing


@pytest.fixture(autouse=True)
def one_thread():
    """Tensors here are tiny: extra intra-op threads only fight over a busy machine's cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def scalars(**values: float) -> dict[str, torch.Tensor]:
    return {task: torch.tensor(value) for task, value in values.items()}


def test_the_five_methods_are_registered_in_order():
    assert BALANCING_METHODS == ("fixed", "uncertainty", "dwa", "gradnorm", "dtp")


def test_fixed_uses_hand_set_weights_and_one_for_unlisted_tasks():
    balancer = make_balancer("fixed", ["a", "b", "c"], {"weights": {"a": 2.0, "b": 0.5}})
    loss, weights = balancer.combine(scalars(a=1.0, b=2.0, c=3.0))
    assert weights == {"a": 2.0, "b": 0.5, "c": 1.0}
    assert loss.item() == 2.0 * 1.0 + 0.5 * 2.0 + 1.0 * 3.0
    assert balancer_from_spec(None, ["a", "b"]).combine(scalars(a=1.0, b=4.0))[1] == {"a": 1.0, "b": 1.0}


@pytest.mark.parametrize("method, options", [("fixed", {"weights": {"a": 3.0}}), ("dwa", {"window": 1}),
                                             ("gradnorm", {}), ("dtp", {})])
def test_a_task_alone_in_its_step_gets_weight_one(method, options):
    balancer = make_balancer(method, ["a", "b"], options)
    for value in (2.0, 1.0, 0.5):  # let dwa fill its windows and dtp its EMA
        loss, weights = balancer.combine(scalars(a=value), accuracies={"a": 0.3})
        assert weights == {"a": 1.0} and loss.item() == value
    if method != "fixed":  # the state still advances (windows, first losses, accuracy EMA)
        assert balancer.get_extra_state() != make_balancer(method, ["a", "b"], options).get_extra_state()


def test_uncertainty_keeps_its_formula_for_a_task_alone():
    loss, weights = make_balancer("uncertainty", ["a", "b"], {}).combine(scalars(a=3.0))
    assert weights == {"a": 0.5} and loss.item() == pytest.approx(1.5)


def test_uncertainty_weights_and_loss_follow_kendall():
    balancer = make_balancer("uncertainty", ["a", "b"], {})
    with torch.no_grad():
        balancer.log_vars.copy_(torch.tensor([0.3, -0.7]))
    loss, weights = balancer.combine(scalars(a=2.0, b=0.5))
    expected = math.exp(-0.3) * 2.0 / 2 + 0.3 / 2 + math.exp(0.7) * 0.5 / 2 - 0.7 / 2
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert weights == pytest.approx({"a": math.exp(-0.3) / 2, "b": math.exp(0.7) / 2}, rel=1e-6)


def test_uncertainty_log_variances_are_learned_towards_log_of_each_loss():
    balancer = make_balancer("uncertainty", ["a", "b"], {})
    optimizer = torch.optim.Adam(balancer.parameters(), lr=0.05)
    for _ in range(400):  # d/ds [exp(-s) L / 2 + s / 2] = 0 at s = log L
        loss, weights = balancer.combine(scalars(a=4.0, b=0.25))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    s_a, s_b = balancer.log_vars.tolist()
    assert s_a == pytest.approx(math.log(4.0), abs=0.05) and s_b == pytest.approx(math.log(0.25), abs=0.05)
    assert weights["a"] < weights["b"]  # the task with the larger loss is down-weighted


def test_only_uncertainty_hands_parameters_to_the_model_optimizer():
    model = nn.Module()  # the trainer registers the balancer as a submodule before deepspeed.initialize
    model.balancer = make_balancer("uncertainty", ["a", "b"], {})
    assert [name for name, _ in model.named_parameters()] == ["balancer.log_vars"]
    assert model.balancer.log_vars.tolist() == [0.0, 0.0]
    for method in ("fixed", "dwa", "gradnorm", "dtp"):  # gradnorm's weights have their own optimizer
        assert list(make_balancer(method, ["a", "b"], {}).parameters()) == []


def test_dwa_equal_weights_until_two_windows_then_softmax_of_loss_ratios():
    balancer = make_balancer("dwa", ["a", "b"], {"window": 3})  # temperature 2 by default
    rng = np.random.default_rng(0)
    history = {"a": rng.integers(8, 40, 12) / 8, "b": rng.integers(8, 40, 12) / 8}  # exact in float32
    for step in range(12):
        _, weights = balancer.combine(scalars(a=history["a"][step], b=history["b"][step]))
        done = step // 3  # complete windows before this step
        if done < 2:
            assert weights == {"a": 1.0, "b": 1.0}
            continue
        ratio = {t: history[t][3 * (done - 1):3 * done].mean() / history[t][3 * (done - 2):3 * (done - 1)].mean()
                 for t in "ab"}
        z = sum(math.exp(r / 2) for r in ratio.values())
        assert weights == pytest.approx({t: 2 * math.exp(ratio[t] / 2) / z for t in "ab"}, rel=1e-12)
        assert weights["a"] + weights["b"] == pytest.approx(2.0)


def test_dwa_windows_count_only_the_steps_where_the_task_appeared():
    balancer = make_balancer("dwa", ["a", "b"], {"window": 2})
    for value in (4.0, 4.0, 1.0, 1.0):  # a: windows 4 then 1 -> ratio 0.25
        balancer.combine(scalars(a=value))
    assert balancer.combine(scalars(a=1.0, b=1.0))[1] == {"a": 1.0, "b": 1.0}  # b has no window yet
    for value in (1.0, 2.0, 2.0):  # b: windows (1+1)/2 = 1 then 2 -> ratio 2
        balancer.combine(scalars(b=value))
    weights = balancer.combine(scalars(a=9.0, b=9.0))[1]
    z = math.exp(0.25 / 2) + math.exp(2.0 / 2)
    assert weights == pytest.approx({"a": 2 * math.exp(0.125) / z, "b": 2 * math.exp(1.0) / z}, rel=1e-12)


def test_dtp_weights_are_focal_on_the_accuracy_ema_with_clamping():
    balancer = make_balancer("dtp", ["a", "b", "c"], {})  # beta 0.9, gamma 2, eps 1e-3
    accuracy = {"a": [0.2, 0.6, 0.5], "b": [0.9, 0.95, 0.99], "c": [1.0, 1.0, 1.0]}
    kpi: dict[str, float] = {}
    for step in range(3):
        _, weights = balancer.combine(scalars(a=1.0, b=1.0, c=1.0),
                                      accuracies={t: accuracy[t][step] for t in "abc"})
        for t in "abc":
            kpi[t] = accuracy[t][0] if step == 0 else 0.9 * kpi[t] + 0.1 * accuracy[t][step]
        clamped = {t: min(max(k, 1e-3), 1 - 1e-3) for t, k in kpi.items()}
        assert weights == pytest.approx({t: -(1 - k) ** 2 * math.log(k) for t, k in clamped.items()}, rel=1e-12)
    assert weights["c"] == pytest.approx(-(1e-3 ** 2) * math.log(1 - 1e-3))  # perfect accuracy: clamped, tiny
    assert weights["a"] > weights["b"] > weights["c"]  # the harder task is prioritised
    low = make_balancer("dtp", ["a", "b"], {}).combine(scalars(a=1.0, b=1.0), accuracies={"a": 0.0, "b": 0.5})[1]
    assert low["a"] == pytest.approx(-(1 - 1e-3) ** 2 * math.log(1e-3))


def test_dtp_refuses_missing_or_out_of_range_accuracies():
    balancer = make_balancer("dtp", ["a", "b"], {})
    with pytest.raises(ValueError, match="missing: b"):
        balancer.combine(scalars(a=1.0, b=1.0), accuracies={"a": 0.5})
    with pytest.raises(ValueError, match=r"must be in \[0, 1\]"):
        balancer.combine(scalars(a=1.0, b=1.0), accuracies={"a": 0.5, "b": 50.0})


def shared_layer_losses(scale_a: float, scale_b: float) -> tuple[nn.Linear, dict[str, torch.Tensor], np.ndarray]:
    """A bias-free Linear shared by two heads: L_a = scale_a * (sum(Wx) + 10), L_b = scale_b * sum((Wx)^2) / 2."""
    layer = nn.Linear(3, 2, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[0.5, -1.0, 2.0], [1.5, 0.25, -0.5]]))
    x = torch.tensor([1.0, 2.0, -1.0])
    h = layer(x)
    return layer, {"a": scale_a * (h.sum() + 10), "b": scale_b * (h ** 2).sum() / 2}, x.numpy()


def test_gradnorm_first_step_matches_a_hand_computation():
    layer, losses, x = shared_layer_losses(3.0, 0.5)
    balancer = make_balancer("gradnorm", ["a", "b"], {})
    loss, weights = balancer.combine(losses, shared_params=[layer.weight])
    h = layer.weight.detach().numpy() @ x
    # dL_a/dW = 3 * 1 x^T, dL_b/dW = 0.5 * h x^T: Frobenius norms of outer products
    expected = {"a": 3.0 * math.sqrt(2) * np.linalg.norm(x), "b": 0.5 * np.linalg.norm(h) * np.linalg.norm(x)}
    assert balancer.last_grad_norms == pytest.approx(expected, rel=1e-6)
    assert weights == {"a": 1.0, "b": 1.0}  # this step's loss uses the weights before the update
    # r_i = 1 at the first step, so the target is mean(G) for both; Adam's first step is lr * sign(grad)
    big, small = ("a", "b") if expected["a"] > expected["b"] else ("b", "a")
    after = dict(zip(balancer.tasks, (w.item() for w in balancer.loss_weights)))
    assert after[big] == pytest.approx(1 - 0.025, abs=1e-6) and after[small] == pytest.approx(1 + 0.025, abs=1e-6)
    assert sum(after.values()) == pytest.approx(2.0, abs=1e-12)
    assert layer.weight.grad is None  # the balancer never touches the model's .grad
    unweighted = torch.autograd.grad(sum(losses.values()), layer.weight, retain_graph=True)[0]
    loss.backward()  # the graph was retained for the model's own backward; weights 1.0 used this step
    assert torch.equal(layer.weight.grad, unweighted)


def test_gradnorm_raises_the_weight_of_the_task_that_trains_slower():
    layer, _, _ = shared_layer_losses(1.0, 1.0)
    balancer = make_balancer("gradnorm", ["slow", "fast"], {})
    ratios = []
    for step in range(40):  # same shared gradient direction; only the loss decay rates differ
        base = layer(torch.tensor([1.0, 2.0, -1.0])).pow(2).sum()
        balancer.combine({"slow": base * 0.99 ** step, "fast": base * 0.9 ** step}, shared_params=[layer.weight])
        slow, fast = (w.item() for w in balancer.loss_weights)
        assert slow + fast == pytest.approx(2.0, abs=1e-12) and fast > 0
        ratios.append(slow / fast)
    assert ratios[0] == 1.0  # equal losses and gradients at step 0: nothing to correct
    assert ratios[-1] > ratios[20] > ratios[5] > 1.0


def test_gradnorm_weights_are_learned_on_a_toy_model():
    torch.manual_seed(0)
    shared, heads = nn.Linear(4, 8), nn.ModuleDict({"clean": nn.Linear(8, 1), "noisy": nn.Linear(8, 1)})
    x = torch.randn(64, 4)
    targets = {"clean": x @ torch.tensor([[1.0], [-2.0], [0.5], [1.5]]), "noisy": torch.randn(64, 1)}
    optimizer = torch.optim.SGD([*shared.parameters(), *heads.parameters()], lr=0.05)
    balancer = make_balancer("gradnorm", ["clean", "noisy"], {})
    for _ in range(150):
        hidden = torch.tanh(shared(x))
        losses = {t: nn.functional.mse_loss(heads[t](hidden), targets[t]) for t in heads}
        loss, weights = balancer.combine(losses, shared_params=list(shared.parameters()))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    # noise cannot be fitted: its loss ratio L(t)/L(0) stays high, so GradNorm gives it more weight
    assert losses["clean"].item() / balancer.initial_losses["clean"] < losses["noisy"].item() / balancer.initial_losses["noisy"]
    assert weights["noisy"] > 1.2 > 0.8 > weights["clean"] > 0


def drive(balancer, optimizer, steps: range) -> list[dict[str, float]]:
    """Deterministic losses per step (some steps with one task) and the weights each step got."""
    weight = torch.tensor([[0.5, -1.0], [1.5, 0.25]], requires_grad=True)
    record = []
    for step in steps:
        base = (weight @ torch.tensor([1.0, 2.0])).pow(2).sum()
        losses = {"a": base * (1 + math.sin(step)) + 0.1, "b": base * 0.95 ** step + 0.2}
        if step % 4 == 3:
            losses.pop("b")
        accuracies = {"a": 0.5 + 0.4 * math.sin(step), "b": min(1.0, 0.05 * step)}
        loss, weights = balancer.combine(losses, accuracies=accuracies, shared_params=[weight])
        if optimizer is not None:
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        record.append(weights)
    return record


@pytest.mark.parametrize("method, options", [("uncertainty", {}), ("dwa", {"window": 3}), ("gradnorm", {}),
                                             ("dtp", {})])
def test_resume_from_state_dict_continues_bitwise_like_an_uninterrupted_run(method, options):
    def fresh():
        balancer = make_balancer(method, ["a", "b"], options)
        params = list(balancer.parameters())
        return balancer, (torch.optim.Adam(params, lr=0.1) if params else None)

    balancer, optimizer = fresh()
    uninterrupted = drive(balancer, optimizer, range(20))

    first, first_opt = fresh()
    drive(first, first_opt, range(10))
    saved = first.state_dict()
    saved["_extra_state"] = json.loads(json.dumps(saved["_extra_state"]))  # a checkpoint stores it as JSON
    resumed, resumed_opt = fresh()
    resumed.load_state_dict(saved)
    if resumed_opt is not None:
        resumed_opt.load_state_dict(first_opt.state_dict())
    assert drive(resumed, resumed_opt, range(10, 20)) == uninterrupted[10:]

    control, control_opt = fresh()  # negative control: the same steps without the saved state
    assert drive(control, control_opt, range(10, 20)) != uninterrupted[10:]


def test_saved_state_of_another_method_or_task_list_is_refused():
    state = make_balancer("dwa", ["a", "b"], {}).state_dict()
    with pytest.raises(ValueError, match="saved state is for dwa"):
        make_balancer("dtp", ["a", "b"], {}).load_state_dict(state)
    with pytest.raises(ValueError, match="saved state is for dwa"):
        make_balancer("dwa", ["a", "c"], {}).load_state_dict(state)


@pytest.mark.parametrize("spec, message", [
    ({"method": "dwaa"}, "balancing: unknown method 'dwaa' (did you mean 'dwa'?); known: fixed, uncertainty, dwa, gradnorm, dtp"),
    ({"method": "dwa", "windw": 5}, "balancing (dwa): unknown option 'windw' (did you mean 'window'?); known options: window, temperature"),
    ({"method": "dwa", "window": 2.5}, "balancing (dwa): option 'window' must be an integer >= 1, got 2.5"),
    ({"method": "gradnorm", "alpha": True}, "balancing (gradnorm): option 'alpha' must be a number >= 0, got True"),
    ({"method": "dtp", "beta": 1.0}, "balancing (dtp): option 'beta' must be a number in [0, 1), got 1.0"),
    ({"method": "uncertainty", "lr": 0.1}, "balancing (uncertainty): unknown option 'lr'; known options: none"),
    ({"weights": {"a": -1}}, "balancing (fixed): option 'weights' must be a mapping of task name to a number >= 0, got {'a': -1}"),
    ({"weights": {"mask": 2}}, "balancing (fixed): weights for task 'mask' not in this stage (did you mean 'masking'?); stage tasks: masking, reorder"),
    ("dwa", "balancing: give a mapping like {method: dwa, window: 50}, got 'dwa'"),
])
def test_validator_errors_are_one_line_and_name_the_fix(spec, message):
    with pytest.raises(ValueError) as caught:
        validate_balancing(spec, ["masking", "reorder"])
    assert str(caught.value) == message and "\n" not in message
    assert isinstance(caught.value, ConfigError)  # the CLI prints it as a one-line config error


def test_valid_specs_pass_and_build_the_same_checks():
    for spec in (None, {}, {"method": "dwa", "window": 10, "temperature": 1}, {"method": "gradnorm", "lr": 0.01},
                 {"weights": {"a": 0.5}}):
        validate_balancing(spec, ["a", "b"])
    with pytest.raises(ValueError, match="unknown option 'gama'.*did you mean 'gamma'"):
        make_balancer("dtp", ["a"], {"gama": 2})
    with pytest.raises(ValueError, match="loss for task 'z' not in this stage; stage tasks: a"):
        make_balancer("fixed", ["a"], {}).combine(scalars(z=1.0))
    with pytest.raises(ValueError, match="got no losses"):
        make_balancer("fixed", ["a"], {}).combine({})
    with pytest.raises(ValueError, match="GradNorm needs finite losses >= 0"):
        make_balancer("gradnorm", ["a", "b"], {}).combine(scalars(a=-1.0, b=1.0), shared_params=[torch.zeros(1)])
    with pytest.raises(ValueError, match="needs shared_params"):
        make_balancer("gradnorm", ["a", "b"], {}).combine(scalars(a=1.0, b=1.0))
