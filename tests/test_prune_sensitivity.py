"""Layer sensitivity analysis: curves, the choice of per-layer sparsity, the plot."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tinytamer.compress import prune, sensitivity
from tinytamer.errors import DataError, RecipeError


def trained_model() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    x = torch.randn(400, 8)
    y = (x[:, 0] + x[:, 1] > 0).long()
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 2))
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    for _ in range(150):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return model, x, y


def accuracy(x: torch.Tensor, y: torch.Tensor):
    def evaluate(model: nn.Module) -> float:
        with torch.no_grad():
            return float((model(x).argmax(1) == y).float().mean())

    return evaluate


def test_analyze_curves_restore_and_choose(tmp_path) -> None:
    model, x, y = trained_model()
    evaluate = accuracy(x, y)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    result = sensitivity.analyze(model, evaluate, sparsities=[0.9, 0.5, 0.99, 0.2])
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), f"{k} not restored"
    assert result.baseline > 0.95
    assert set(result.curves) == {"0", "2"}
    for curve in result.curves.values():
        assert [s for s, _ in curve] == [0.2, 0.5, 0.9, 0.99]
        # mild pruning costs little, near-total pruning costs a lot
        assert curve[0][1] >= result.baseline - 0.05
        assert curve[-1][1] < curve[0][1]

    chosen = sensitivity.choose_sparsities(result, max_drop=0.02)
    assert set(chosen) == {"0", "2"}
    for name, s in chosen.items():
        accs = dict(result.curves[name])
        assert s == 0.0 or accs[s] >= result.baseline - 0.02
        assert s < 0.99
    pruned = prune.magnitude(model, {n: s for n, s in chosen.items() if s > 0})
    for name, layer in pruned.layers.items():
        assert layer.sparsity == pytest.approx(chosen[name], abs=0.01)

    path = result.save(tmp_path / "sens.json")
    again = sensitivity.SensitivityResult.load(path)
    assert again.curves == result.curves and again.baseline == result.baseline


def test_choose_requires_whole_prefix_within_budget() -> None:
    result = sensitivity.SensitivityResult(
        baseline=0.9, curves={"a": [(0.2, 0.9), (0.4, 0.7), (0.6, 0.9)], "b": [(0.2, 0.5)]}
    )
    assert sensitivity.choose_sparsities(result, max_drop=0.05) == {"a": 0.2, "b": 0.0}


def test_plot_writes_png(tmp_path) -> None:
    result = sensitivity.SensitivityResult(
        baseline=0.9, curves={"conv1": [(0.5, 0.88), (0.9, 0.4)], "fc": [(0.5, 0.9), (0.9, 0.8)]}
    )
    path = sensitivity.plot(result, tmp_path / "curves.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert path.stat().st_size > 5000
    assert not list(tmp_path.glob("*.tmp"))


def test_errors(tmp_path) -> None:
    model, x, y = trained_model()
    with pytest.raises(RecipeError, match="sparsities"):
        sensitivity.analyze(model, accuracy(x, y), sparsities=[1.5])
    bad = tmp_path / "bad.json"
    bad.write_text('{"curves": {}}')
    with pytest.raises(DataError, match="bad.json"):
        sensitivity.SensitivityResult.load(bad)
    prune.magnitude(model, 0.5)
    with pytest.raises(RecipeError, match="masked"):
        sensitivity.analyze(model, accuracy(x, y))
