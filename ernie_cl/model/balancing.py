"""Loss balancing between the tasks that train in the same optimizer step.

A stage picks a method with ``balancing: {method: NAME, OPTION: VALUE}`` (``fixed`` when absent)::

    balancer = balancer_from_spec({"method": "dwa", "window": 50}, ["km", "sr"])
    loss, weights = balancer.combine({"km": km_loss, "sr": sr_loss},
                                     accuracies={"km": 0.41, "sr": 0.77},  # read by dtp only
                                     shared_params=last_layer_params)       # read by gradnorm only
    engine.backward(loss)                                                   # weights: floats, for logs

  fixed        ``weights: {task: w}``, unlisted tasks 1.0.
  uncertainty  Kendall et al. 2018: loss = sum_i exp(-s_i) L_i / 2 + s_i / 2; weight exp(-s_i) / 2.
  dwa          Liu et al. 2019: w_i = T softmax_i(r_i / ``temperature`` (2)), r_i = Lbar_i(t-1) / Lbar_i(t-2),
               Lbar a task's mean loss over ``window`` (50) steps in which it appeared; 1.0 until every
               task in the step has two complete windows.
  gradnorm     Chen et al. 2018: G_i* = mean(G) r_i^``alpha`` (1.5), r_i = (L_i(t) / L_i(0)) / mean_j(...),
               L_i(0) the first loss seen; the weights have their own Adam (``lr`` 0.025).
  dtp          Guo et al. 2018: w_i = -(1 - k_i)^``gamma`` (2) log k_i, k_i the EMA (``beta`` 0.9, seeded
               with the first value, this step's accuracy included) of the task's training accuracy,
               clamped to [``eps``, 1 - ``eps``] (1e-3). Needs ``accuracies`` for every task in the step.

``make_balancer(method, tasks, options)`` and ``balancer_from_spec(spec, tasks)`` build one;
``validate_balancing(spec, tasks)`` checks a spec for the schedule validator. Errors are one-line
``BalancingError``s (a ``ConfigError`` and a ``ValueError``). A new method subclasses ``Balancer``, sets
``method`` and ``OPTIONS``, implements ``_combine`` and is decorated with ``@register``: nothing else.

Decisions:
- T is the number of tasks *in the step*, any subset of the stage's. A task alone in its step gets
  weight 1.0 from fixed/dwa/gradnorm/dtp (nothing to balance: it trains as unbalanced training would),
  while their state (windows, EMA, first losses) still advances.
- uncertainty keeps its formula for a task alone (weight exp(-s_i) / 2, 0.5 at first): its objective is
  a sum of independent per-task terms, so the company a task keeps changes nothing in its term, and
  s_i keeps tracking the task's noise level in single-task stages too.
- uncertainty's s_i are ``nn.Parameter``s, so the model's optimizer must step them: the trainer adds the
  balancer as a submodule of the model *before* ``deepspeed.initialize`` (build every stage's balancer
  up front, e.g. in an ``nn.ModuleList``: DeepSpeed fixes its parameter groups at initialisation) and
  keeps them out of weight decay, which would pull s_i to 0.
- gradnorm's weights are plain tensors, not parameters: the model loss uses them detached, and weight
  decay or ZeRO's zero-filled gradients would still move them if the model's optimizer saw them.
  ``combine`` takes ||grad_W L_i|| on the shared parameters with ``torch.autograd.grad(retain_graph=True)``
  (the model's backward still works afterwards; no ``.grad`` is touched) and forms G_i = w_i ||grad_W L_i||,
  which equals ||grad_W (w_i L_i)|| for w_i > 0 and has the same derivative in w_i, without the
  double-backward graph through the model that ``create_graph=True`` would keep. sum_i |G_i - G_i*|,
  G_i* = mean(G) r_i^alpha held constant, is differentiated w.r.t. the step's weights only and stepped
  with Adam; then the weights are floored at 1e-3 and rescaled to sum to T. This step's loss uses the
  weights from before the update. Tasks absent from a step keep their weight and Adam state.
- Resuming: all non-parameter state (windows, EMA, first losses, gradnorm weights and Adam moments) is
  JSON-serialisable extra state, so ``state_dict()`` / ``load_state_dict()`` continue a run bit for bit.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Mapping, Optional, Sequence

import torch
from torch import Tensor, nn

from ernie_cl.errors import ConfigError, did_you_mean

Losses = Mapping[str, Tensor]
Combined = tuple[Tensor, dict[str, float]]  # (loss to back-propagate, weight per task in the step)
_TINY = 1e-12  # guards loss ratios against a zero denominator


class BalancingError(ConfigError, ValueError):
    """A bad balancing spec or call: a ConfigError for the CLI's one-line report, a ValueError for callers."""


def _number(ok: Callable[[float], bool]) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and ok(v)


def _task_weights(value: Any) -> bool:
    return isinstance(value, Mapping) and all(isinstance(k, str) and _number(lambda w: w >= 0)(v)
                                              for k, v in value.items())


@dataclass(frozen=True)
class Option:
    default: Any
    accepts: Callable[[Any], bool]
    need: str  # what a valid value is, for the error message


_REGISTRY: dict[str, type[Balancer]] = {}


def register(cls: type[Balancer]) -> type[Balancer]:
    """Class decorator adding a method to the registry; refuses a missing or duplicate name."""
    if not isinstance(getattr(cls, "method", None), str) or cls.method in _REGISTRY:
        raise TypeError(f"{cls.__name__}: needs a class attribute 'method' naming a method not yet registered")
    _REGISTRY[cls.method] = cls
    return cls


def _lookup(method: Any) -> type[Balancer]:
    if not isinstance(method, str) or method not in _REGISTRY:
        raise BalancingError(f"balancing: unknown method '{method}'{did_you_mean(method, _REGISTRY)}; "
                             f"known: {', '.join(_REGISTRY)}")
    return _REGISTRY[method]


def check_options(method: str, options: Mapping[str, Any], tasks: Optional[Sequence[str]] = None) -> None:
    """Raise a one-line BalancingError for an unknown method, option or task, or a bad value."""
    known = _lookup(method).OPTIONS
    for key, value in options.items():
        if key not in known:
            raise BalancingError(f"balancing ({method}): unknown option '{key}'{did_you_mean(key, known)}; "
                                 f"known options: {', '.join(known) or 'none'}")
        if not known[key].accepts(value):
            raise BalancingError(f"balancing ({method}): option '{key}' must be {known[key].need}, got {value!r}")
    for task in options.get("weights", {}) if tasks is not None else ():
        if task not in tasks:
            raise BalancingError(f"balancing ({method}): weights for task '{task}' not in this stage"
                                 f"{did_you_mean(task, tasks)}; stage tasks: {', '.join(tasks)}")


def validate_balancing(spec: Optional[Mapping[str, Any]], tasks: Optional[Sequence[str]] = None) -> None:
    """Check a schedule's ``balancing`` mapping (None means fixed); give ``tasks`` to check weight keys."""
    if spec is None:
        return
    if not isinstance(spec, Mapping):
        raise BalancingError(f"balancing: give a mapping like {{method: dwa, window: 50}}, got {spec!r}")
    options = dict(spec)
    check_options(options.pop("method", "fixed"), options, tasks)


class Balancer(nn.Module):
    """Base class: validated options, the step's task list, and the extra state that resuming needs."""

    method: ClassVar[str]
    OPTIONS: ClassVar[dict[str, Option]] = {}

    def __init__(self, tasks: Sequence[str], **options: Any) -> None:
        super().__init__()
        if not tasks or len(set(tasks)) != len(tasks) or not all(isinstance(t, str) for t in tasks):
            raise BalancingError(f"balancing ({self.method}): tasks must be distinct names, got {list(tasks)!r}")
        check_options(self.method, options, tasks)
        self.tasks = list(tasks)
        self.index = {task: i for i, task in enumerate(self.tasks)}
        self.opts = {key: options.get(key, option.default) for key, option in self.OPTIONS.items()}

    def combine(self, losses: Losses, *, accuracies: Optional[Mapping[str, float]] = None,
                shared_params: Optional[Sequence[Tensor]] = None) -> Combined:
        """Return (the loss to back-propagate, each step task's weight). ``accuracies``: training
        accuracy in [0, 1] per task; ``shared_params``: the last shared layer's parameters."""
        if not losses:
            raise BalancingError(f"balancing ({self.method}): combine() got no losses")
        for task in losses:
            if task not in self.index:
                raise BalancingError(f"balancing ({self.method}): loss for task '{task}' not in this stage; "
                                     f"stage tasks: {', '.join(self.tasks)}")
        names = [task for task in self.tasks if task in losses]  # stage order: a reproducible sum
        return self._combine(names, losses, accuracies or {}, shared_params)

    def _combine(self, names: list[str], losses: Losses, accuracies: Mapping[str, float],
                 shared: Optional[Sequence[Tensor]]) -> Combined:
        raise NotImplementedError

    @staticmethod
    def _weighted(losses: Losses, weights: Mapping[str, float]) -> Combined:
        return sum(losses[task] * weight for task, weight in weights.items()), dict(weights)

    def _state(self) -> dict[str, Any]:
        return {}

    def _load_state(self, state: dict[str, Any]) -> None:
        pass

    def get_extra_state(self) -> dict[str, Any]:  # nn.Module puts this in state_dict()
        # Through JSON: proves it serialisable and hands out a copy, not the live dicts.
        return json.loads(json.dumps({"method": self.method, "tasks": self.tasks, **self._state()}))

    def set_extra_state(self, state: dict[str, Any]) -> None:
        if state.get("method") != self.method or list(state.get("tasks", [])) != self.tasks:
            raise BalancingError(f"balancing: saved state is for {state.get('method')} over {state.get('tasks')}, "
                                 f"not {self.method} over {self.tasks}")
        self._load_state(state)


@register
class FixedBalancer(Balancer):
    method = "fixed"
    OPTIONS = {"weights": Option({}, _task_weights, "a mapping of task name to a number >= 0")}

    def _combine(self, names: list[str], losses: Losses, accuracies: Mapping[str, float],
                 shared: Optional[Sequence[Tensor]]) -> Combined:
        given = self.opts["weights"]
        return self._weighted(losses, {t: 1.0 if len(names) == 1 else float(given.get(t, 1.0)) for t in names})


@register
class UncertaintyBalancer(Balancer):
    method = "uncertainty"

    def __init__(self, tasks: Sequence[str], **options: Any) -> None:
        super().__init__(tasks, **options)
        self.log_vars = nn.Parameter(torch.zeros(len(self.tasks)))  # s_i, stepped by the model's optimizer

    def _combine(self, names: list[str], losses: Losses, accuracies: Mapping[str, float],
                 shared: Optional[Sequence[Tensor]]) -> Combined:
        total, weights = 0, {}
        for task in names:
            s = self.log_vars[self.index[task]]
            total = total + torch.exp(-s) / 2 * losses[task] + s / 2
            weights[task] = math.exp(-s.item()) / 2
        return total, weights


@register
class DWABalancer(Balancer):
    method = "dwa"
    OPTIONS = {"window": Option(50, lambda v: _number(lambda n: n >= 1)(v) and isinstance(v, int), "an integer >= 1"),
               "temperature": Option(2.0, _number(lambda v: v > 0), "a number > 0")}

    def __init__(self, tasks: Sequence[str], **options: Any) -> None:
        super().__init__(tasks, **options)
        self.window_sum = {t: 0.0 for t in self.tasks}
        self.window_count = {t: 0 for t in self.tasks}
        self.averages: dict[str, list[float]] = {t: [] for t in self.tasks}  # last two full windows, oldest first

    def _combine(self, names: list[str], losses: Losses, accuracies: Mapping[str, float],
                 shared: Optional[Sequence[Tensor]]) -> Combined:
        weights = {t: 1.0 for t in names}
        if len(names) > 1 and all(len(self.averages[t]) == 2 for t in names):  # past windows only
            logits = [self.averages[t][1] / max(self.averages[t][0], _TINY) / self.opts["temperature"] for t in names]
            exps = [math.exp(x - max(logits)) for x in logits]  # shifted against overflow; same softmax
            weights = {t: len(names) * e / sum(exps) for t, e in zip(names, exps)}
        for task in names:
            self.window_sum[task] += losses[task].item()
            self.window_count[task] += 1
            if self.window_count[task] == self.opts["window"]:
                self.averages[task] = [*self.averages[task], self.window_sum[task] / self.window_count[task]][-2:]
                self.window_sum[task], self.window_count[task] = 0.0, 0
        return self._weighted(losses, weights)

    def _state(self) -> dict[str, Any]:
        return {"window_sum": self.window_sum, "window_count": self.window_count, "averages": self.averages}

    def _load_state(self, state: dict[str, Any]) -> None:
        self.window_sum = {t: float(v) for t, v in state["window_sum"].items()}
        self.window_count = {t: int(v) for t, v in state["window_count"].items()}
        self.averages = {t: [float(x) for x in a] for t, a in state["averages"].items()}


@register
class GradNormBalancer(Balancer):
    method = "gradnorm"
    OPTIONS = {"alpha": Option(1.5, _number(lambda v: v >= 0), "a number >= 0"),
               "lr": Option(0.025, _number(lambda v: v > 0), "a number > 0")}
    MIN_WEIGHT = 1e-3  # floor before renormalising, so no weight reaches 0 or below

    def __init__(self, tasks: Sequence[str], **options: Any) -> None:
        super().__init__(tasks, **options)
        # One CPU float64 scalar per task: Adam skips a task absent from the step (its grad stays None),
        # and a handful of scalars is cheaper here than on the accelerator.
        self.loss_weights = [torch.ones((), dtype=torch.float64, requires_grad=True) for _ in self.tasks]
        self.optimizer = torch.optim.Adam(self.loss_weights, lr=self.opts["lr"])
        self.initial_losses: dict[str, float] = {}  # L_i(0), the first loss seen for each task
        self.last_grad_norms: dict[str, float] = {}  # G_i at the latest update, for logging

    def _combine(self, names: list[str], losses: Losses, accuracies: Mapping[str, float],
                 shared: Optional[Sequence[Tensor]]) -> Combined:
        values = {t: losses[t].item() for t in names}
        for task in names:
            if not 0 <= values[task] < math.inf:  # a ratio to L_i(0) means nothing otherwise
                raise BalancingError(f"balancing (gradnorm): loss of '{task}' is {values[task]}; "
                                     f"GradNorm needs finite losses >= 0")
            self.initial_losses.setdefault(task, values[task])
        if len(names) == 1:
            return self._weighted(losses, {names[0]: 1.0})
        if not shared:
            raise BalancingError("balancing (gradnorm): combine() needs shared_params, "
                                 "the last shared layer's parameters")
        self._renormalise(names)  # weights of a different subset than last step's may not sum to T
        weights = {t: self.loss_weights[self.index[t]].item() for t in names}
        self._update(names, losses, values, list(shared))
        return self._weighted(losses, weights)

    def _update(self, names: list[str], losses: Losses, values: dict[str, float], shared: list[Tensor]) -> None:
        squares = []
        for task in names:  # retain_graph: the model's own backward runs on this graph afterwards
            grads = torch.autograd.grad(losses[task], shared, retain_graph=True, allow_unused=True)
            zero = torch.zeros((), device=losses[task].device)
            squares.append(sum((g.detach().float().pow(2).sum() for g in grads if g is not None), zero))
        norms = torch.stack(squares).sqrt().cpu().double()  # one device sync for all tasks
        rates = torch.tensor([values[t] / max(self.initial_losses[t], _TINY) for t in names], dtype=torch.float64)
        inverse_rate = rates / rates.mean().clamp_min(_TINY)  # r_i
        weights = [self.loss_weights[self.index[t]] for t in names]
        grad_norms = torch.stack(weights) * norms  # G_i
        target = (grad_norms.mean() * inverse_rate ** self.opts["alpha"]).detach()
        for weight, grad in zip(weights, torch.autograd.grad((grad_norms - target).abs().sum(), weights)):
            weight.grad = grad
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self._renormalise(names)
        self.last_grad_norms = dict(zip(names, grad_norms.tolist()))

    @torch.no_grad()
    def _renormalise(self, names: list[str]) -> None:
        weights = [self.loss_weights[self.index[t]].clamp_(min=self.MIN_WEIGHT) for t in names]
        scale = len(names) / sum(w.item() for w in weights)
        for weight in weights:
            weight.mul_(scale)

    def _state(self) -> dict[str, Any]:  # Adam's per-weight state is 0-d tensors: step and two moments
        adam = {str(i): {k: v.item() for k, v in s.items()} for i, s in self.optimizer.state_dict()["state"].items()}
        weights = [w.item() for w in self.loss_weights]
        return {"loss_weights": weights, "initial_losses": self.initial_losses, "adam": adam}

    @torch.no_grad()
    def _load_state(self, state: dict[str, Any]) -> None:
        for weight, value in zip(self.loss_weights, state["loss_weights"]):
            weight.fill_(float(value))
        self.initial_losses = {t: float(v) for t, v in state["initial_losses"].items()}
        adam = self.optimizer.state_dict()  # Adam reads step with .item() and casts moments to float64
        adam["state"] = {int(i): {k: torch.tensor(float(v), dtype=torch.float64) for k, v in s.items()}
                         for i, s in state["adam"].items()}
        self.optimizer.load_state_dict(adam)


@register
class DTPBalancer(Balancer):
    method = "dtp"
    OPTIONS = {"gamma": Option(2.0, _number(lambda v: v >= 0), "a number >= 0"),
               "beta": Option(0.9, _number(lambda v: 0 <= v < 1), "a number in [0, 1)"),
               "eps": Option(1e-3, _number(lambda v: 0 < v < 0.5), "a number in (0, 0.5)")}

    def __init__(self, tasks: Sequence[str], **options: Any) -> None:
        super().__init__(tasks, **options)
        self.kpi: dict[str, float] = {}  # EMA of training accuracy, from a task's first accuracy on

    def _combine(self, names: list[str], losses: Losses, accuracies: Mapping[str, float],
                 shared: Optional[Sequence[Tensor]]) -> Combined:
        missing = [t for t in names if t not in accuracies]
        if missing and len(names) > 1:  # a task alone weighs 1.0 anyway, so its accuracy is optional
            raise BalancingError(f"balancing (dtp): combine() needs the accuracy of every task in the step; "
                                 f"missing: {', '.join(missing)}")
        beta, eps = self.opts["beta"], self.opts["eps"]
        for task in (t for t in names if t in accuracies):
            accuracy = float(accuracies[task])
            if not 0.0 <= accuracy <= 1.0:
                raise BalancingError(f"balancing (dtp): accuracy of '{task}' must be in [0, 1], got {accuracy}")
            self.kpi[task] = beta * self.kpi[task] + (1 - beta) * accuracy if task in self.kpi else accuracy
        if len(names) == 1:
            return self._weighted(losses, {names[0]: 1.0})
        clamped = {t: min(max(self.kpi[t], eps), 1 - eps) for t in names}  # log 0, and weight 0 at k = 1
        return self._weighted(losses, {t: -((1 - k) ** self.opts["gamma"]) * math.log(k) for t, k in clamped.items()})

    def _state(self) -> dict[str, Any]:
        return {"kpi": self.kpi}

    def _load_state(self, state: dict[str, Any]) -> None:
        self.kpi = {t: float(v) for t, v in state["kpi"].items()}


BALANCING_METHODS: tuple[str, ...] = tuple(_REGISTRY)


def make_balancer(method: str, tasks: Sequence[str], options: Optional[Mapping[str, Any]] = None) -> Balancer:
    """Build the named method's balancer for a stage's tasks; a one-line BalancingError if anything is wrong."""
    return _lookup(method)(tasks, **dict(options or {}))


def balancer_from_spec(spec: Optional[Mapping[str, Any]], tasks: Sequence[str]) -> Balancer:
    """Build from a schedule's ``balancing`` mapping (``{method: NAME, OPTION: VALUE}``; None means fixed)."""
    validate_balancing(spec, tasks)
    options = dict(spec or {})
    return make_balancer(options.pop("method", "fixed"), tasks, options)
