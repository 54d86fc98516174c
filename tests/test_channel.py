"""Structured channel pruning: physically smaller layers, consistent graphs, exportable."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tinytamer.compress.channel import channel_counts, kept_channels, output_layer, prune_channels
from tinytamer.errors import CompressError, ModelError


class TinyNet(nn.Module):
    """A stem, a depthwise-separable branch added back residually, a stride-2 conv, a classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 32, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(32)
        self.dw = nn.Conv2d(32, 32, 3, padding=1, groups=32, bias=False)
        self.bn_dw = nn.BatchNorm2d(32)
        self.pw = nn.Conv2d(32, 32, 1, bias=False)
        self.bn_pw = nn.BatchNorm2d(32)
        self.conv = nn.Conv2d(32, 64, 3, stride=2, padding=1)
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn(self.stem(x)))
        y = self.relu(self.bn_dw(self.dw(x)))
        x = self.relu(x + self.bn_pw(self.pw(y)))
        x = self.relu(self.conv(x))
        return self.fc(self.pool(x).flatten(1))


def tiny() -> TinyNet:
    torch.manual_seed(0)
    model = TinyNet()
    with torch.no_grad():  # distinct BN scales so bn_scale has something to rank
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.1, 1.0)
    return model


def macs(model: nn.Module, x: torch.Tensor) -> int:
    total = 0

    def hook(m, inp, out) -> None:
        nonlocal total
        total += out.numel() * (m.weight[0].numel())

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    return total


X = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))


def test_kept_channels_rounding() -> None:
    assert kept_channels(64, 0.5, 8) == 32
    assert kept_channels(64, 0.3, 8) == 40  # 44.8 kept -> 44 -> rounded down to 40
    assert kept_channels(16, 0.75, 8) == 8  # never below one multiple
    assert kept_channels(8, 0.5, 8) == 8  # too small to thin in multiples of 8
    assert kept_channels(10, 0.5, None) == 5
    assert kept_channels(10, 0.99, None) == 1


@pytest.mark.parametrize("importance", ["l1", "l2", "bn_scale"])
def test_residual_and_depthwise_shrink_consistently(importance: str) -> None:
    model = tiny()
    before = channel_counts(model)
    pruned = prune_channels(model, X, ratio=0.5, importance=importance)
    assert channel_counts(model) == before  # the original is untouched
    after = channel_counts(pruned)
    # bn_scale ranks channels by the BN after them: 'conv' has none, so it stays whole
    conv = 64 if importance == "bn_scale" else 32
    assert after == {"stem": 16, "dw": 16, "pw": 16, "conv": conv, "fc": 10}
    assert pruned.dw.groups == 16 and pruned.dw.in_channels == 16
    assert pruned.bn.num_features == 16 and pruned.bn_pw.num_features == 16
    assert pruned.stem.weight.shape == (16, 3, 3, 3)
    assert pruned.fc.weight.shape == (10, conv)
    assert pruned(X).shape == (2, 10)
    assert macs(pruned, X) < 0.5 * macs(model, X)
    assert sum(p.numel() for p in pruned.parameters()) < sum(p.numel() for p in model.parameters())
    assert pruned.training  # train/eval mode preserved


def test_kept_channels_are_the_important_ones() -> None:
    model = tiny()
    with torch.no_grad():
        model.conv.weight[:5].mul_(100.0)  # five filters much larger than the rest
    big = model.conv.weight[:5].detach().clone()
    pruned = prune_channels(model, X, ratio=0.75, round_to=None, select={"names": ["conv"]})
    assert pruned.conv.out_channels == 16
    kept = pruned.conv.weight.detach()
    assert all(any(torch.equal(b, k) for k in kept) for b in big)
    assert channel_counts(pruned)["stem"] == 32  # only the named layer was thinned


def test_rounding_to_multiple_and_per_layer_ratios() -> None:
    model = tiny()
    pruned = prune_channels(model, X, ratio={"conv": 0.3}, round_to=8)
    assert pruned.conv.out_channels == 40 and pruned.stem.out_channels == 32
    pruned = prune_channels(model, X, ratio=0.3, round_to=4, select={"overrides": {"^conv$": {"ratio": 0.6}}})
    assert pruned.stem.out_channels == 20  # 22.4 -> 22 -> 20
    assert pruned.conv.out_channels == 24  # 25.6 -> 25 -> 24
    assert all(c % 4 == 0 for c in channel_counts(pruned).values() if c != 10)


def test_global_pruning() -> None:
    model = tiny()
    with torch.no_grad():
        model.stem.weight.mul_(50.0)  # a globally important layer loses fewer channels
    pruned = prune_channels(model, X, ratio=0.5, global_pruning=True, round_to=None)
    counts = channel_counts(pruned)
    assert counts["fc"] == 10
    assert counts["stem"] > counts["conv"] / 2
    assert sum(counts.values()) < sum(channel_counts(model).values())
    with pytest.raises(CompressError, match="global"):
        prune_channels(model, X, ratio={"conv": 0.5}, global_pruning=True)


def test_unselected_coupled_layers_keep_their_channels() -> None:
    model = tiny()
    # pw is coupled to stem through the residual add: excluding it protects the whole group
    pruned = prune_channels(model, X, ratio=0.5, select={"exclude": ["pw"]})
    counts = channel_counts(pruned)
    assert counts["stem"] == 32 and counts["pw"] == 32 and counts["conv"] == 32


def test_output_layer_and_errors() -> None:
    model = tiny()
    assert output_layer(model, X) == "fc"
    with pytest.raises(ModelError, match="nope"):
        prune_channels(model, X, ignore=["nope"])
    with pytest.raises(CompressError, match="ratio"):
        prune_channels(model, X, ratio=1.0)
    with pytest.raises(ModelError, match="no conv/linear"):
        prune_channels(model, X, select={"names": ["fc"]})


def test_export_after_pruning() -> None:
    pruned = prune_channels(tiny(), X, ratio=0.5).eval()
    exported = torch.export.export(pruned, (X,))
    assert torch.allclose(exported.module()(X), pruned(X), atol=1e-5)


@pytest.mark.parametrize("name", ["resnet8", "mobilenetv2"])
def test_zoo_models(name: str) -> None:
    zoo = pytest.importorskip("tinytamer.zoo")
    model = zoo.create(name, num_classes=10, in_channels=3, input_size=32)
    x = torch.randn(1, 3, 32, 32)
    pruned = prune_channels(model, x, ratio=0.5, round_to=8)
    before, after = zoo.count(model, (3, 32, 32)), zoo.count(pruned, (3, 32, 32))
    assert after.macs < 0.5 * before.macs and after.params < 0.5 * before.params
    assert pruned(x).shape == model.eval()(x).shape == (1, 10)
    assert all(c % 8 == 0 for n, c in channel_counts(pruned).items() if c != 10), channel_counts(pruned)
    if name == "resnet8":  # exporting mobilenetv2 too would double this file's run time
        torch.export.export(pruned.eval(), (x,))


def test_untraceable_model_gives_model_error() -> None:
    class Shuffle(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Conv2d(3, 16, 1)
            self.b = nn.Conv2d(16, 16, 1)
            self.fc = nn.Linear(16, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.a(x)
            n, c, h, w = x.shape  # channel shuffle: a reshape that mixes channels
            x = x.view(n, 2, c // 2, h, w).transpose(1, 2).reshape(n, c, h, w)
            return self.fc(self.b(x).mean((2, 3)))

    model = Shuffle()
    try:
        pruned = prune_channels(model, torch.randn(1, 3, 4, 4), ratio=0.5, round_to=None)
    except ModelError as exc:
        assert "channel_prune" in str(exc)
    else:  # if the tracer does follow the shuffle, the result must be right
        assert pruned(torch.randn(1, 3, 4, 4)).shape == (1, 2)
