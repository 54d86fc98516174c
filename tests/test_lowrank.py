"""Low-rank approximation (Zhang et al. 2015): solvers, rank selection, model surgery."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tinytamer.compress import lowrank
from tinytamer.errors import ModelError, RecipeError
from tinytamer.zoo import count

SHAPE = (3, 16, 16)


class ResCNN(nn.Module):
    """conv-BN-ReLU, a residual block (conv-BN + 1x1 shortcut, then ReLU), conv-ReLU, fc."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 24, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(24)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(24, 32, 3, stride=2, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(32)
        self.shortcut = nn.Conv2d(24, 32, 1, stride=2)
        self.conv3 = nn.Conv2d(32, 32, 3, padding=1)
        self.fc = nn.Linear(32, 10)

    def features(self, x: Tensor) -> Tensor:
        x = self.relu1(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)) + self.shortcut(x))
        return torch.relu(self.conv3(x))

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.features(x).mean((2, 3)))


def smooth_images(n: int, seed: int) -> Tensor:
    """Low-frequency random images: neighbouring pixels correlate, as in natural images."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randn(n, 3, 4, 4, generator=g)
    return F.interpolate(coarse, size=SHAPE[1:], mode="bilinear", align_corners=False) + 0.05 * torch.randn(
        n, *SHAPE, generator=g
    )


@pytest.fixture(scope="module")
def model() -> nn.Module:
    torch.manual_seed(0)
    net = ResCNN()
    net.train()
    with torch.no_grad():  # non-trivial BN statistics to fold
        for i in range(4):
            net(smooth_images(32, 100 + i))
    return net.eval()


@pytest.fixture(scope="module")
def calib() -> list[Tensor]:
    return [smooth_images(32, i) for i in range(4)]


def rel_error(a: Tensor, b: Tensor) -> float:
    return float(((a - b) ** 2).sum() / (b**2).sum())


# -- the solvers ------------------------------------------------------------------------------


def test_full_rank_responses_are_exact() -> None:
    g = torch.Generator().manual_seed(0)
    y = torch.randn(500, 12, generator=g) @ torch.randn(12, 12, generator=g) + 0.5
    for relu in (False, True):
        f = lowrank.solve_responses(y, None, 12, relu=relu)
        assert f.error < 1e-8
    # Asymmetric: inputs related to the originals by an invertible map are undone exactly.
    y_hat = y @ torch.randn(12, 12, generator=g) + 1.0
    assert lowrank.solve_responses(y, y_hat, 12, relu=True).error < 1e-6
    pca = lowrank.solve_responses(y, None, 12, relu=False, nonlinear=False)
    assert pca.error < 1e-8 and torch.allclose(pca.P @ pca.Qt, torch.eye(12, dtype=torch.float64), atol=1e-6)


def test_nonlinear_solution_beats_linear_on_rectified_responses() -> None:
    g = torch.Generator().manual_seed(1)
    y = torch.randn(2000, 6, generator=g) @ torch.randn(6, 16, generator=g) - 0.5
    linear = lowrank.solve_responses(y, None, 3, relu=True, nonlinear=False)
    nonlinear = lowrank.solve_responses(y, None, 3, relu=True, iters=15)
    assert nonlinear.error < linear.error
    assert nonlinear.P.shape == (16, 3) and nonlinear.Qt.shape == (3, 16)
    with pytest.raises(RecipeError, match="rank must be in 1..16"):
        lowrank.solve_responses(y, None, 17, relu=True)


# -- rank selection ---------------------------------------------------------------------------


def test_select_ranks_meets_budget_and_favours_fast_decaying_spectra() -> None:
    decaying = lowrank.RankCandidate("a", 0.5 ** torch.arange(32.0), macs=32 * 288, macs_per_rank=320)
    flat = lowrank.RankCandidate("b", torch.ones(32), macs=32 * 288, macs_per_rank=320)
    budget = 0.6 * 2 * 32 * 288
    ranks = lowrank.select_ranks([decaying, flat], budget)
    cost = sum(ranks.get(c.name, 0) * c.macs_per_rank or c.macs for c in (decaying, flat))
    assert cost <= budget
    assert ranks["a"] < ranks.get("b", 32)
    assert lowrank.select_ranks([decaying, flat], 10**9) == {}
    with pytest.raises(ModelError, match="cannot get below"):
        lowrank.select_ranks([decaying, flat], 100)


# -- the model --------------------------------------------------------------------------------


@pytest.mark.parametrize("speedup", [1.5, 2.5])
def test_speedup_target_is_met_and_macs_follow_the_ranks(model, calib, speedup) -> None:
    before = count(model, SHAPE).macs
    result = lowrank.approximate(model, calib, speedup=speedup, samples_per_batch=256, iters=3)
    after = count(result.model, SHAPE).macs
    assert after <= before / speedup
    assert result.macs_before == before and result.macs_after == after
    # MACs drop by exactly what the chosen ranks say: d'(k^2 c + d) per output position.
    positions = {"conv1": 256, "conv2": 64, "shortcut": 64, "conv3": 64, "fc": 1}
    saved = 0
    for rep in result.layers:
        if rep.rank is None:
            continue
        old = getattr(model, rep.name)
        if isinstance(old, nn.Conv2d):
            per_rank = old.in_channels * old.kernel_size[0] * old.kernel_size[1] + old.out_channels
        else:
            per_rank = old.in_features + old.out_features
        assert rep.macs_after == rep.rank * per_rank * positions[rep.name]
        assert rep.rank < rep.break_even
        saved += rep.macs_before - rep.macs_after
    assert after == before - saved
    assert result.model(calib[0]).shape == model(calib[0]).shape


def test_structure_and_bn_folding(model, calib) -> None:
    result = lowrank.approximate(model, calib, ranks={"conv1": 6, "conv2": 8, "conv3": 8})
    new = result.model
    head, tail = new.conv2
    assert isinstance(head, nn.Conv2d) and (head.in_channels, head.out_channels) == (24, 8)
    assert head.kernel_size == (3, 3) and head.stride == (2, 2) and head.padding == (1, 1)
    assert head.bias is None
    assert tail.kernel_size == (1, 1) and (tail.in_channels, tail.out_channels) == (8, 32)
    assert isinstance(new.bn1, nn.BatchNorm2d) and isinstance(new.bn2, nn.BatchNorm2d)  # kept after the pairs
    reps = {r.name: r for r in result.layers}
    assert reps["conv1"].bn_kept and reps["conv2"].bn_kept and not reps["conv3"].bn_kept
    assert reps["conv1"].bn_folded == "bn1" and reps["conv1"].relu
    assert reps["conv2"].bn_folded == "bn2" and not reps["conv2"].relu  # the add comes first
    assert reps["conv3"].relu and reps["conv3"].bn_folded is None
    assert reps["shortcut"].rank is None and reps["fc"].rank is None
    assert isinstance(model.bn1, nn.BatchNorm2d) and isinstance(model.conv2, nn.Conv2d)  # input untouched


@pytest.mark.parametrize("scheme", ["channel", "spatial"])
def test_kept_bn_is_exactly_the_folded_solution(model, calib, scheme) -> None:
    """Keeping the BN after the pair changes no output in eval mode, and only the BN-free
    variant replaces the BNs by identities."""
    ranks = {"conv1": 6, "conv2": 8, "conv3": 8}
    kept = lowrank.decompose(model, calib, ranks=ranks, speedup=None, scheme=scheme).eval()
    folded = lowrank.decompose(model, calib, ranks=ranks, speedup=None, scheme=scheme, keep_bn=False).eval()
    assert isinstance(folded.bn1, nn.Identity) and isinstance(folded.bn2, nn.Identity)
    assert isinstance(kept.bn1, nn.BatchNorm2d)
    with torch.no_grad():
        torch.testing.assert_close(kept(calib[0]), folded(calib[0]), rtol=1e-4, atol=1e-5)


def test_asymmetric_nonlinear_beats_weight_svd_at_the_same_ranks(model, calib) -> None:
    ranks = {"conv1": 5, "conv2": 8, "conv3": 8}
    held_out = smooth_images(64, 999)
    with torch.no_grad():
        ref = model.features(held_out)
        errors = {}
        for method in ("nonlinear-asymmetric", "linear", "svd"):
            new = lowrank.decompose(model, calib, ranks=ranks, method=method, iters=10)
            errors[method] = rel_error(new.features(held_out), ref)
    # Held-out error of the last feature map (after the ReLU), relative to its energy.
    assert errors["nonlinear-asymmetric"] < 0.25
    assert errors["nonlinear-asymmetric"] < errors["linear"] < 0.5 * errors["svd"]


def test_fully_connected_truncated_svd() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(64, 48), nn.ReLU(), nn.Linear(48, 10))
    with torch.no_grad():  # an exactly rank-4 weight comes back exactly at rank 4
        net[0].weight.copy_(torch.randn(48, 4) @ torch.randn(4, 64))
    x = torch.randn(16, 64)
    result = lowrank.approximate(net, [x], ranks={"0": 4})
    first = result.model[0]
    assert isinstance(first, nn.Sequential)
    assert first[0].weight.shape == (4, 64) and first[0].bias is None
    assert first[1].weight.shape == (48, 4)
    assert torch.allclose(result.model(x), net(x), atol=1e-4)
    assert result.layers[0].macs_after == 4 * (64 + 48)


def test_skips_and_errors(model, calib) -> None:
    result = lowrank.approximate(model, calib, ranks={"conv3": 30})
    rep = next(r for r in result.layers if r.name == "conv3")
    assert rep.rank is None and "break-even" in rep.skipped
    with pytest.raises(RecipeError, match="method must be one of"):
        lowrank.approximate(model, calib, method="tucker")
    with pytest.raises(ModelError, match="did not pick"):
        lowrank.approximate(model, calib, ranks={"conv9": 3})
    with pytest.raises(RecipeError, match="speedup must be > 1"):
        lowrank.approximate(model, calib, speedup=0.5)
    with pytest.raises(ModelError, match="speedup 50 is out of reach"):
        lowrank.approximate(model, calib, speedup=50.0, select={"types": ["Conv2d"], "names": ["conv1"]})
    # A selector override fixes a rank just like ``ranks``.
    via_override = lowrank.approximate(model, calib, select={"overrides": {"conv3": {"rank": 4}}})
    assert via_override.ranks == {"conv3": 4}


# -- spatial decomposition (Jaderberg et al. 2014, scheme 2) ---------------------------------


@pytest.mark.parametrize(
    "conv",
    [
        nn.Conv2d(5, 7, 3, padding=1),
        nn.Conv2d(4, 6, (3, 5), stride=(2, 1), padding=(1, 2), bias=False),
        nn.Conv2d(3, 8, 3, stride=2, padding=2, dilation=2),
    ],
    ids=["3x3", "3x5-stride-no-bias", "dilated"],
)
def test_spatial_pair_is_exact_at_full_rank(conv: nn.Conv2d) -> None:
    torch.manual_seed(0)
    conv.reset_parameters()
    x = torch.randn(2, conv.in_channels, 11, 12)
    c, d, (kh, kw) = conv.in_channels, conv.out_channels, conv.kernel_size
    full = min(c * kh, d * kw)
    pair = lowrank.spatial_pair(conv, full)
    vertical, horizontal = pair
    assert vertical.kernel_size == (kh, 1) and horizontal.kernel_size == (1, kw)
    assert vertical.bias is None and (horizontal.bias is None) == (conv.bias is None)
    with torch.no_grad():
        assert torch.allclose(pair(x), conv(x), atol=1e-5)
        lower = lowrank.spatial_pair(conv, full - 1)(x)
    assert not torch.allclose(lower, conv(x), atol=1e-3)  # a lower rank is an approximation
    with pytest.raises(RecipeError, match=f"spatial rank must be in 1..{full}"):
        lowrank.spatial_pair(conv, full + 1)


def test_spatial_pair_recovers_a_separable_filter_bank_at_its_rank() -> None:
    torch.manual_seed(1)
    conv = nn.Conv2d(4, 6, 3, padding=1)
    V, H = torch.randn(2, 4, 3), torch.randn(6, 2, 3)  # rank-2: W_n(c,y,x) = sum_k H_n^k(x) V_k^c(y)
    with torch.no_grad():
        conv.weight.copy_(torch.einsum("kcy,nkx->ncyx", V, H))
    x = torch.randn(2, 4, 9, 9)
    with torch.no_grad():
        assert torch.allclose(lowrank.spatial_pair(conv, 2)(x), conv(x), atol=1e-4)


def test_spatial_scheme_in_the_model_meets_the_speedup_and_mixes_per_layer(model, calib) -> None:
    before = count(model, SHAPE).macs
    result = lowrank.approximate(model, calib, speedup=1.5, scheme="spatial", select={"exclude": ["fc"]})
    assert count(result.model, SHAPE).macs <= before / 1.5
    reps = {r.name: r for r in result.layers}
    assert reps["shortcut"].skipped and "k x k kernel" in reps["shortcut"].skipped  # 1x1: nothing to split
    for name, rep in reps.items():
        if rep.rank is None:
            continue
        assert rep.scheme == "spatial"
        vertical, horizontal = getattr(result.model, name)
        assert vertical.kernel_size == (3, 1) and horizontal.kernel_size == (1, 3)
        # cost per rank: c k_h H_out W_in (vertical) + d k_w H_out W_out (horizontal)
        old = getattr(model, name)
        h_out, w_in = {"conv1": (16, 16), "conv2": (8, 16), "conv3": (8, 8)}[name]
        per_rank = old.in_channels * 3 * h_out * w_in + old.out_channels * 3 * h_out * (8 if name != "conv1" else 16)
        assert rep.macs_after == rep.rank * per_rank
    # Per layer: one conv spatial, the others by channels.
    mixed = lowrank.approximate(
        model, calib, ranks={"conv2": 8, "conv3": 8}, select={"overrides": {"conv2": {"scheme": "spatial"}}}
    )
    assert mixed.model.conv2[0].kernel_size == (3, 1) and mixed.model.conv3[1].kernel_size == (1, 1)
    with pytest.raises(RecipeError, match="scheme must be one of"):
        lowrank.approximate(model, calib, scheme="tucker")
    with pytest.raises(RecipeError, match="scheme of layer 'conv2'"):
        lowrank.approximate(model, calib, select={"overrides": {"conv2": {"scheme": 3}}})
