"""The engine's speed choices change no result: one process skips DeepSpeed's gradient all-reduce
(an identity at world size 1) bitwise-exactly, and the optimizer is torch's fused AdamW."""

from __future__ import annotations

import copy

import pytest
import torch

from ernie_cl.config.schedule import TrainingConfig
from ernie_cl.training.engine import clip_gradients, create_engine


class Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(50, 16)
        self.layer = torch.nn.Linear(16, 16)
        self.out = torch.nn.Linear(16, 5)

    def forward(self, ids: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.cross_entropy(self.out(torch.relu(self.layer(self.embed(ids)))).mean(1), targets)


def train_steps(model: torch.nn.Module, allreduce: bool, grad_clip: float = 1.0,
                deepspeed_clipping: bool = False) -> dict[str, torch.Tensor]:
    training = TrainingConfig(batch_size=4, lr=1e-2, warmup_steps=0, grad_clip=grad_clip)
    engine = create_engine(model, {"zero_optimization": {"stage": 0}}, training, total_steps=5)
    engine.enable_backward_allreduce = allreduce
    if deepspeed_clipping:
        del engine.clip_fp32_gradients  # back to DeepSpeed's own method
    generator = torch.Generator().manual_seed(0)
    for _ in range(3):
        ids, targets = torch.randint(0, 50, (4, 6), generator=generator), torch.randint(0, 5, (4,), generator=generator)
        engine.backward(engine(ids, targets))
        engine.step()
    return {k: v.detach().clone() for k, v in engine.module.state_dict().items()}


def test_one_process_skips_the_gradient_allreduce_without_changing_a_bit():
    torch.manual_seed(0)
    model = Tiny()
    start = copy.deepcopy(model.state_dict())
    skipped = train_steps(model, allreduce=False)
    control = Tiny()
    control.load_state_dict(start)
    reduced = train_steps(control, allreduce=True)
    assert any(not torch.equal(skipped[k], start[k]) for k in start)  # the steps did train
    assert all(torch.equal(skipped[k], reduced[k]) for k in skipped)


@pytest.mark.parametrize("scale", [1e-5, 1.0, 30.0])
def test_clip_gradients_is_deepspeeds_clipping_bit_for_bit(scale):
    from deepspeed.runtime.utils import clip_grad_norm_

    from ernie_cl.training.engine import init_distributed

    init_distributed()  # DeepSpeed's version all-reduces over its (one-process) group
    generator = torch.Generator().manual_seed(0)
    shapes = [(3000, 64), (64,), (256, 64), (3, 7)]
    grads = [torch.randn(*shape, generator=generator) * scale for shape in shapes]
    ours = [torch.nn.Parameter(torch.zeros(*shape)) for shape in shapes]
    theirs = [torch.nn.Parameter(torch.zeros(*shape)) for shape in shapes]
    for a, b, g in zip(ours, theirs, grads):
        a.grad, b.grad = g.clone(), g.clone()
    before = torch.stack([g.norm() for g in grads]).norm().item()
    clip_gradients(ours, 1.0)
    clip_grad_norm_(theirs, 1.0)
    assert all(torch.equal(a.grad, b.grad) for a, b in zip(ours, theirs))
    norm = torch.stack([a.grad.norm() for a in ours]).norm().item()
    if before > 1:  # clipped (the control that the comparison saw a clipping)
        assert norm == pytest.approx(1.0, rel=1e-4)
    else:  # below the limit: untouched
        assert all(torch.equal(a.grad, g) for a, g in zip(ours, grads))


def test_training_with_our_clipping_matches_deepspeeds_bit_for_bit():
    torch.manual_seed(0)
    model = Tiny()
    start = copy.deepcopy(model.state_dict())
    ours = train_steps(model, allreduce=False, grad_clip=0.05)  # small enough that every step clips
    control = Tiny()
    control.load_state_dict(start)
    theirs = train_steps(control, allreduce=False, grad_clip=0.05, deepspeed_clipping=True)
    assert any(not torch.equal(ours[k], start[k]) for k in start)
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_a_single_process_engine_uses_fused_adamw_and_no_allreduce():
    training = TrainingConfig(batch_size=4)
    engine = create_engine(Tiny(), {"zero_optimization": {"stage": 0}}, training, total_steps=5)
    assert engine.enable_backward_allreduce is False
    assert "clip_fp32_gradients" in vars(engine)  # ours, not DeepSpeed's per-parameter loop
    assert all(group["fused"] for group in engine.basic_optimizer.param_groups)


# DeepSpeed's ZeRO-3 calls collectives that torch 2.13 deprecates; nothing of ours to act on
@pytest.mark.filterwarnings("ignore:`torch.distributed.:FutureWarning")
def test_a_finished_run_lets_its_model_go_under_zero3(tmp_path, tmp_path_factory, monkeypatch):
    """``ernie-cl compare`` trains its strategies one after another in one process. DeepSpeed's ZeRO-3
    keeps a finished engine's model reachable (parameter hooks, a module-level stack, a class-level
    cache) unless the trainer releases it; three runs in a row kept three models before it did."""
    import gc
    import weakref

    from test_distributed import shared_cache, write_schedule

    from ernie_cl.training import trainer

    models = []
    build = trainer.build_model

    def watched(*args, **kwargs):
        model = build(*args, **kwargs)
        models.append(weakref.ref(model))
        return model

    monkeypatch.setattr(trainer, "build_model", watched)
    schedule = write_schedule(tmp_path, "zero3", checkpoint_every=0)
    for run in ("a", "b"):
        summary = trainer.train(schedule, tmp_path / run, wandb_mode="disabled", cache_dir=shared_cache(tmp_path_factory),
                                show_progress=False)
        assert summary["stages"]  # it trained
        gc.collect()
        assert [ref() for ref in models] == [None] * len(models), f"after run {run}: a model is still alive"
    assert len(models) == 2
