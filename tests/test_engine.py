"""The engine's speed choices change no result: one process skips DeepSpeed's gradient all-reduce
(an identity at world size 1) bitwise-exactly, and the optimizer is torch's fused AdamW."""

from __future__ import annotations

import copy

import pytest
import torch

from ernie_cl.config.schedule import TrainingConfig
from ernie_cl.training.engine import create_engine


class Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(50, 16)
        self.layer = torch.nn.Linear(16, 16)
        self.out = torch.nn.Linear(16, 5)

    def forward(self, ids: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.cross_entropy(self.out(torch.relu(self.layer(self.embed(ids)))).mean(1), targets)


def train_steps(model: torch.nn.Module, allreduce: bool) -> dict[str, torch.Tensor]:
    training = TrainingConfig(batch_size=4, lr=1e-2, warmup_steps=0)
    engine = create_engine(model, {"zero_optimization": {"stage": 0}}, training, total_steps=5)
    engine.enable_backward_allreduce = allreduce
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


def test_a_single_process_engine_uses_fused_adamw_and_no_allreduce():
    training = TrainingConfig(batch_size=4)
    engine = create_engine(Tiny(), {"zero_optimization": {"stage": 0}}, training, total_steps=5)
    assert engine.enable_backward_allreduce is False
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
