"""Trained ternary quantization (Zhu et al. 2017): threshold, gradients, layer choice, finalize."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tinytamer.compress import ttq
from tinytamer.compress.ttq import TernaryConv2d, TernaryLinear
from tinytamer.errors import ModelError, RecipeError


def _net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(8 * 6 * 6, 32),
        nn.ReLU(),
        nn.Linear(32, 4),
    )


def test_threshold_is_t_times_max() -> None:
    w = torch.tensor([[1.0, -2.0, 0.09, 0.11, -0.1, -0.11, 0.0]])
    # max|w| = 2, t = 0.05 -> Delta = 0.1; |w| == Delta is in the zero region.
    pos, neg = ttq.ternary_masks(w, 0.05)
    assert pos.tolist() == [[1, 0, 0, 1, 0, 0, 0]]
    assert neg.tolist() == [[0, 1, 0, 0, 0, 1, 0]]
    wt = ttq.ternarize_weight(w, torch.tensor([0.7]), torch.tensor([0.3]), 0.05)
    assert wt.tolist() == [
        [pytest.approx(0.7), pytest.approx(-0.3), 0.0, pytest.approx(0.7), 0.0, pytest.approx(-0.3), 0.0]
    ]


def test_gradients_match_paper_equations() -> None:
    torch.manual_seed(0)
    lin = nn.Linear(6, 5, bias=False)
    layer = ttq.ternarize(nn.Sequential(lin), t=0.3, select={})[0]
    assert isinstance(layer, TernaryLinear)
    with torch.no_grad():
        layer.wp.fill_(0.8)
        layer.wn.fill_(0.6)
    x = torch.randn(7, 6)
    r = torch.randn(7, 5)
    (layer(x) * r).sum().backward()
    # By hand: y = x w_t^T, L = sum(y * r)  =>  dL/dw_t = r^T x.
    g = r.T @ x
    w = layer.weight.detach()
    delta = 0.3 * w.abs().max()
    pos, neg = (w > delta).float(), (w < -delta).float()
    zero = 1 - pos - neg
    assert pos.sum() > 0 and neg.sum() > 0 and zero.sum() > 0
    # eq. 7 (with w_t = -Wn in I_n) and eq. 8.
    assert torch.allclose(layer.wp.grad, (g * pos).sum().reshape(1), atol=1e-5)
    assert torch.allclose(layer.wn.grad, -(g * neg).sum().reshape(1), atol=1e-5)
    assert torch.allclose(layer.weight.grad, g * (0.8 * pos + zero + 0.6 * neg), atol=1e-6)


def test_first_and_last_layers_stay_float() -> None:
    model = ttq.ternarize(_net())
    assert type(model[0]) is nn.Conv2d and type(model[7]) is nn.Linear
    assert isinstance(model[2], TernaryConv2d) and isinstance(model[5], TernaryLinear)
    info = ttq.ternary_layers(model)
    assert set(info) == {"2", "5"} and all(0 < v["sparsity"] < 1 for v in info.values())


def test_scales_start_at_mean_magnitudes_and_latent_weights_are_normalised() -> None:
    float_model = _net()
    w = float_model[2].weight.detach().clone()
    model = ttq.ternarize(copy.deepcopy(float_model), t=0.05)
    layer = model[2]
    delta = 0.05 * w.abs().max()
    assert float(layer.wp.detach()) == pytest.approx(float(w[w > delta].mean()), rel=1e-5)
    assert float(layer.wn.detach()) == pytest.approx(float(-w[w < -delta].mean()), rel=1e-5)
    # Latent weights divided by max|w| (Sec. 3): in [-1, 1], same masks, same ternary weights.
    latent = layer.weight.detach()
    assert torch.allclose(latent, w / w.abs().max()) and float(latent.abs().max()) == pytest.approx(1.0)
    expected = layer.wp.detach() * (w > delta) - layer.wn.detach() * (w < -delta)
    assert torch.allclose(layer.ternary_weight().detach(), expected)


def test_training_updates_scales_and_finalize_is_exact() -> None:
    torch.manual_seed(1)
    model = ttq.ternarize(_net())
    x = torch.randn(64, 1, 6, 6)
    y = (x.mean((1, 2, 3)) > 0).long() + 2 * (x[:, 0, 0, 0] > 0).long()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    wp0 = float(model[2].wp.detach())
    first = None
    for _ in range(30):
        loss = F.cross_entropy(model(x), y)
        first = first if first is not None else float(loss.detach())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(loss.detach()) < first
    assert float(model[2].wp.detach()) != wp0
    model.eval()
    with torch.no_grad():
        before = model(x)
    ttq.finalize(model)
    assert type(model[2]) is nn.Conv2d and type(model[5]) is nn.Linear
    for idx in (2, 5):
        values = model[idx].weight.detach().unique()
        assert len(values) == 3 and 0.0 in values.tolist()  # {-Wn, 0, +Wp}; a scale may change sign
    with torch.no_grad():
        assert torch.allclose(model(x), before, atol=1e-6)


def test_finalize_two_values_when_a_region_is_empty() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))
    with torch.no_grad():
        model[1].weight.copy_(torch.rand(4, 4) + 0.1)  # all positive
    ttq.ternarize(model, select={"names": ["1"]})
    ttq.finalize(model)
    assert len(model[1].weight.unique()) <= 2


def test_overrides_and_errors() -> None:
    model = ttq.ternarize(
        _net(), select={"exclude_first": True, "exclude_last": True, "overrides": {"^5$": {"t": 0.2}}}
    )
    assert model[2].t == 0.05 and model[5].t == 0.2
    with pytest.raises(RecipeError, match="threshold"):
        ttq.ternarize(_net(), t=1.5)
    with pytest.raises(ModelError):
        ttq.ternarize(nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2)))
