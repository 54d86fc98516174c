"""Magnitude pruning: masks held in retraining, per-layer targets, std thresholds, schedules."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tinytamer.compress import masks, prune
from tinytamer.errors import ModelError, RecipeError


def mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4))


def data(n: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 16, generator=g)
    return x, (x[:, :4].argmax(1))


def train(model: nn.Module, steps: int = 20, after_step=()) -> None:
    x, y = data()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    for it in range(1, steps + 1):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        for hook in after_step:
            hook(model, it)


def zeros(model: nn.Module, name: str) -> int:
    return int((dict(model.named_modules())[name].weight == 0).sum())


def test_exact_sparsity_per_layer_and_float() -> None:
    model = mlp()
    result = prune.magnitude(model, 0.75)
    assert set(result.layers) == {"0", "2", "4"}
    for name, layer in result.layers.items():
        assert layer.zeros == round(0.75 * layer.numel)
        assert zeros(model, name) == layer.zeros
        assert layer.threshold is not None and layer.threshold > 0
    assert result.sparsity == pytest.approx(0.75, abs=1e-3)
    assert result.physical is False


def test_smallest_magnitudes_are_the_ones_removed() -> None:
    model = mlp()
    w = model[2].weight.detach().clone()
    prune.magnitude(model, {"2": 0.5})
    kept = model[2].weight.detach() != 0
    assert w.abs()[~kept].max() <= w.abs()[kept].min()
    assert zeros(model, "0") == 0  # layers not named in the dict are untouched


def test_selector_overrides_and_dict() -> None:
    model = mlp()
    sel = {"overrides": {"^4$": {"sparsity": 0.25}}}
    result = prune.magnitude(model, 0.9, select=sel)
    assert result.layers["4"].sparsity == pytest.approx(0.25, abs=0.01)
    assert result.layers["0"].sparsity == pytest.approx(0.9, abs=0.01)
    with pytest.raises(ModelError, match="nope"):
        prune.magnitude(mlp(), {"nope": 0.5})
    with pytest.raises(RecipeError, match="sparsity"):
        prune.magnitude(mlp(), 1.5)


def test_std_threshold_mode() -> None:
    model = mlp()
    w = model[0].weight.detach().clone()
    result = prune.magnitude(model, threshold_mode="std", quality=0.5)
    threshold = 0.5 * float(w.std())
    assert result.layers["0"].threshold == pytest.approx(threshold)
    assert zeros(model, "0") == int((w.abs() <= threshold).sum())
    with pytest.raises(RecipeError, match="quality"):
        prune.magnitude(mlp(), threshold_mode="std")


def test_masks_held_through_sgd_with_momentum_and_weight_decay() -> None:
    model = mlp()
    prune.magnitude(model, 0.8)
    pruned = {n: dict(model.named_modules())[n].weight == 0 for n in ("0", "2", "4")}
    before = {n: dict(model.named_modules())[n].weight.detach().clone() for n in pruned}
    train(model, steps=15)
    for name, was_zero in pruned.items():
        w = dict(model.named_modules())[name].weight
        assert (w[was_zero] == 0).all()
        assert not torch.equal(w[~was_zero], before[name][~was_zero])  # the rest did train
    touched = prune.remove_masks(model)
    assert sorted(touched) == ["0", "2", "4"]
    assert not any(masks.is_masked(m) for m in model.modules())
    assert isinstance(model[0].weight, nn.Parameter)
    for name, was_zero in pruned.items():
        assert (dict(model.named_modules())[name].weight[was_zero] == 0).all()
    assert set(model.state_dict()) == set(mlp().state_dict())  # plain keys again


def test_pruning_again_keeps_old_zeros() -> None:
    model = mlp()
    prune.magnitude(model, 0.5)
    first = model[0].weight == 0
    train(model, steps=5)
    prune.magnitude(model, 0.3)  # lower target: nothing pruned earlier comes back
    assert (model[0].weight[first] == 0).all()
    prune.magnitude(model, 0.7)
    assert (model[0].weight[first] == 0).all()
    assert prune.layer_sparsity(model).layers["0"].sparsity == pytest.approx(0.7, abs=0.01)


def test_agp_schedule_values() -> None:
    s = prune.AGPSchedule(initial=0.0, final=0.8, start=10, end=50, frequency=10)
    assert s.sparsity_at(0) == 0.0
    assert s.sparsity_at(10) == pytest.approx(0.0)
    assert s.sparsity_at(30) == pytest.approx(0.8 - 0.8 * 0.5**3)  # half way: 1/8 left to go
    assert s.sparsity_at(35) == s.sparsity_at(30)  # held between pruning steps
    assert s.sparsity_at(50) == pytest.approx(0.8)
    assert s.sparsity_at(99) == pytest.approx(0.8)
    assert s.sparsity_at(30, final=0.4) == pytest.approx(0.4 - 0.4 * 0.5**3)
    values = [s.sparsity_at(t) for t in range(0, 60)]
    assert values == sorted(values)
    assert [t for t in range(60) if s.is_pruning_step(t)] == [10, 20, 30, 40, 50]
    uneven = prune.AGPSchedule(final=0.5, start=0, end=25, frequency=10)
    assert [t for t in range(30) if uneven.is_pruning_step(t)] == [0, 10, 20, 25]
    with pytest.raises(ValueError):
        prune.AGPSchedule(final=0.5, start=10, end=5)


def test_gradual_pruner_as_after_step_hook() -> None:
    model = mlp()
    schedule = prune.AGPSchedule(initial=0.1, final=0.9, start=2, end=12, frequency=2)
    hook = prune.GradualPruner(model, schedule, select={"overrides": {"^4$": {"sparsity": 0.5}}})
    seen = []
    train(model, steps=16, after_step=[hook, lambda m, it: seen.append((it, float((m[0].weight == 0).float().mean())))])
    seen = dict(seen)
    assert seen[1] == 0.0
    assert seen[2] == pytest.approx(0.1, abs=0.01)
    assert 0.1 < seen[6] < 0.9
    assert seen[12] == pytest.approx(0.9, abs=0.01) and seen[16] == pytest.approx(0.9, abs=0.01)
    assert prune.layer_sparsity(model).layers["4"].sparsity == pytest.approx(0.5, abs=0.01)
    assert hook.last_step == 12


def test_gradual_pruner_finish_when_training_stops_early() -> None:
    model = mlp()
    hook = prune.GradualPruner(model, prune.AGPSchedule(final=0.6, start=0, end=100, frequency=5))
    train(model, steps=10, after_step=[hook])
    assert prune.layer_sparsity(model).sparsity < 0.6
    result = hook.finish(model)
    assert result.sparsity == pytest.approx(0.6, abs=0.01)


def test_iterative_rounds_reach_target_and_retrain() -> None:
    model = mlp()
    levels = []

    def finetune(m: nn.Module) -> None:
        levels.append(prune.layer_sparsity(m).sparsity)
        train(m, steps=5)

    result = prune.iterative(model, finetune, 0.875, rounds=3)
    # density halves every round: 1/2, 1/4, 1/8 of the weights left
    assert levels == pytest.approx([0.5, 0.75, 0.875], abs=0.01)
    assert result.sparsity == pytest.approx(0.875, abs=0.01)
    assert prune.layer_sparsity(model).sparsity == pytest.approx(0.875, abs=0.01)


def test_pruned_model_exports() -> None:
    model = mlp()
    prune.magnitude(model, 0.5)
    prune.remove_masks(model)
    exported = torch.export.export(model.eval(), (torch.randn(2, 16),))
    x = torch.randn(2, 16)
    assert torch.allclose(exported.module()(x), model(x))


def test_iterative_std_mode_ramps_quality_and_overrides() -> None:
    model = mlp()
    levels = []
    sel = {"overrides": {"^4$": {"quality": 0.2}}}
    prune.iterative(
        model,
        lambda m: levels.append(prune.layer_sparsity(m).layers),
        rounds=2,
        select=sel,
        threshold_mode="std",
        quality=1.0,
    )
    first, second = levels
    assert first["0"].sparsity < second["0"].sparsity
    assert second["4"].sparsity < second["0"].sparsity  # the override's lower quality
    assert first["4"].sparsity <= second["4"].sparsity
