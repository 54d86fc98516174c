"""Dynamic / static fixed point (Qiu et al. 2016): rounding, format choice, greedy data formats."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tinytamer.compress import fixedpoint as fxp
from tinytamer.compress.fixedpoint import FixedPointConv2d, FixedPointLinear
from tinytamer.errors import CompressError, DataError, ModelError


def test_rounding_and_saturation_exact() -> None:
    # bits=4, fl=2: step 0.25, integers -8..7, so values in [-2, 1.75].
    x = torch.tensor([0.1, 0.125, 0.13, 0.375, -0.6, 1.7, 1.9, 5.0, -2.0, -2.2, -9.0])
    got = fxp.to_fixed(x, 4, 2)
    expect = torch.tensor([0.0, 0.0, 0.25, 0.5, -0.5, 1.75, 1.75, 1.75, -2.0, -2.0, -2.0])
    assert torch.equal(got, expect)
    # Negative fl: step 2^3 = 8 at 6 bits -> range [-256, 248].
    assert fxp.to_fixed(torch.tensor([13.0, 1000.0, -1000.0]), 6, -3).tolist() == [16.0, 248.0, -256.0]


def test_weight_fl_matches_brute_force() -> None:
    g = torch.Generator().manual_seed(0)
    for bits in (4, 6, 8, 16):
        for scale in (0.003, 0.2, 7.0):
            w = torch.randn(64, 3, 3, 3, generator=g) * scale
            brute = min(range(-40, 48), key=lambda fl, w=w, b=bits: (fxp.fixed_error(w, w, b, fl), -fl))
            assert fxp.best_fl([w], [w], bits) == brute, (bits, scale)


def _net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(8 * 4 * 4, 10),
    )
    with torch.no_grad():  # very different ranges per layer: where dynamic formats pay off
        model[0].weight.mul_(20.0)
        model[3].weight.mul_(0.05)
        model[7].weight.mul_(3.0)
    return model.eval()


def test_quantize_records_formats_and_exact_grid() -> None:
    model = _net()
    x = torch.randn(64, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    q = fxp.quantize(model, [x[:32], x[32:]], bits=8, mode="dynamic")
    assert isinstance(q[0], FixedPointConv2d) and isinstance(q[7], FixedPointLinear)
    assert type(model[0]) is nn.Conv2d  # the input model is untouched
    forms = fxp.formats(q)
    assert set(forms) == {"0", "3", "7"}
    assert len({f["w_fl"] for f in forms.values()}) == 3  # one format per layer
    for name in forms:
        layer = q.get_submodule(name)
        ints = layer.weight.detach() * 2.0**layer.w_fl
        assert torch.equal(ints, torch.round(ints))  # exactly integer * 2^-fl
        assert int(ints.abs().max()) <= 128
        assert torch.equal(layer.int_weight().float(), ints)
        assert layer.int_weight().dtype == torch.int8
    # The data format of each layer is what eq. 3 picks on its (greedy) input.
    with torch.no_grad():
        out = q(x)
    assert torch.isfinite(out).all()


def test_dynamic_at_least_as_good_as_static() -> None:
    model = _net()
    g = torch.Generator().manual_seed(2)
    calib = [torch.randn(32, 1, 8, 8, generator=g) for _ in range(2)]
    test = torch.randn(128, 1, 8, 8, generator=g)
    with torch.no_grad():
        ref = model(test)
    errs = {}
    for mode in ("static", "dynamic"):
        q = fxp.quantize(model, calib, bits=6, mode=mode)
        with torch.no_grad():
            errs[mode] = float(F.mse_loss(q(test), ref))
        if mode == "static":
            forms = fxp.formats(q).values()
            assert len({f["w_fl"] for f in forms}) == 1 and len({f["a_fl"] for f in forms}) == 1
    assert errs["dynamic"] <= errs["static"]


def test_greedy_data_format_compares_with_float() -> None:
    model = _net()
    x = torch.randn(32, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    q = fxp.quantize(model, [x], bits=8)
    # The first layer sees the raw input: its a_fl is eq. 3 on the input itself.
    assert q[0].a_fl == fxp.best_fl([x], [x], 8)
    # The second conv's output format (BN folded into it) minimises the error of its output in
    # the fixed-point network, before rounding, against the float network's BN output.
    seen = {}
    fl, q[3].out_fl = q[3].out_fl, None
    h = q[3].register_forward_hook(lambda m, a, out: seen.setdefault("q", out))
    h2 = model[4].register_forward_hook(lambda m, a, out: seen.setdefault("f", out))
    with torch.no_grad():
        q(x)
        model(x)
    h.remove()
    h2.remove()
    errs = {f: fxp.fixed_error(seen["f"], seen["q"], 8, f) for f in range(-10, 30)}
    assert errs[fl] == min(errs.values())
    # The linear layer takes that format for its input (through ReLU, flatten).
    assert q[7].a_fl == fl and q[7].a_bits == 8


class _Res(nn.Module):
    """A residual net: one add held by the ReLU module after it, one add feeding a conv
    directly (through zero padding and slicing), an average pool, the logits."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(2, 4, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(2, 4, 3, padding=1)
        self.relu = nn.ReLU()
        self.conv3 = nn.Conv2d(4, 4, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = self.relu(self.bn1(self.conv1(x)) + self.conv2(x))
        c = F.pad(b[:, :2], (0, 0, 0, 0, 1, 1)) + b
        return self.fc(self.flatten(self.pool(self.conv3(c))))


def _res_model() -> nn.Module:
    torch.manual_seed(0)
    model = _Res().eval()
    with torch.no_grad():
        model.bn1.running_mean.uniform_(-1, 1)
        model.bn1.running_var.uniform_(0.5, 2)
    return model


def _on_grid(t: torch.Tensor, bits: int, fl: int) -> bool:
    ints = t * 2.0**fl
    return bool(
        torch.equal(ints, torch.round(ints)) and ints.min() >= -(2 ** (bits - 1)) and ints.max() < 2 ** (bits - 1)
    )


@pytest.mark.parametrize("mode", ["dynamic", "static"])
def test_adds_pools_and_logits_are_fixed_point(mode: str) -> None:
    model = _res_model()
    x = torch.randn(16, 2, 6, 6, generator=torch.Generator().manual_seed(5)) * 3
    q = fxp.quantize(model, [x], bits=8, data_bits=6, mode=mode)
    data = fxp.data_formats(q)
    assert set(data) == {"relu", "pool"}  # the add after conv2 (held by the ReLU) and the pool
    layers = fxp.formats(q)
    # The second add feeds conv3 directly: conv3 rounds its input to that add's format.
    assert layers["conv3"]["a_fl"] is not None
    assert all(f["out_bits"] == 6 and f["bits"] == 8 for f in layers.values())
    assert isinstance(q.bn1, nn.Identity)  # folded into conv1
    seen = {}
    hooks = [
        q.relu.register_forward_hook(lambda m, a, out: seen.setdefault("add", out)),
        q.pool.register_forward_hook(lambda m, a, out: seen.setdefault("pool", out)),
        q.conv3.register_forward_pre_hook(lambda m, a: seen.setdefault("add2", a[0])),
    ]
    with torch.no_grad():
        out = q(x)
    for h in hooks:
        h.remove()
    assert _on_grid(seen["add"], 6, data["relu"]["fl"]) and not _on_grid(seen["add"] * 1.001, 6, data["relu"]["fl"])
    assert _on_grid(seen["pool"], 6, data["pool"]["fl"])
    assert _on_grid(out, 6, layers["fc"]["out_fl"])  # the logits
    # The second add is not on a grid before conv3, which rounds it (and so changes the result).
    assert not _on_grid(seen["add2"], 6, layers["conv3"]["a_fl"])
    with torch.no_grad():
        rounded = q.conv3(seen["add2"])
        q.conv3.a_fl = None
        assert not torch.equal(q.conv3(seen["add2"]), rounded)
    if mode == "dynamic":  # one coarse format for all data loses more
        with torch.no_grad():
            ref = model(x)
        assert float((out - ref).abs().max()) < 0.1 * float(ref.abs().max())


def test_fixed_point_model_saves_and_loads(tmp_path) -> None:
    from tinytamer.checkpoint import load_checkpoint, save_checkpoint

    model = _res_model()
    x = torch.randn(8, 2, 6, 6)
    q = fxp.quantize(model, [x], bits=6)
    loaded = load_checkpoint(save_checkpoint(q, tmp_path / "q.safetensors"), allow=["test_fixedpoint."])
    assert fxp.formats(loaded) == fxp.formats(q) and fxp.data_formats(loaded) == fxp.data_formats(q)
    with torch.no_grad():
        assert torch.equal(loaded(x), q(x))


class _Bare(nn.Module):
    def __init__(self, reuse: bool) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)
        self.relu = nn.ReLU()
        self.reuse = reuse

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        if self.reuse:
            return self.relu(self.relu(y + 1.0) + y)
        return y + y  # nothing after the add could hold its format


def test_data_points_without_a_holder_are_refused() -> None:
    x = torch.randn(2, 1, 5, 5)
    with pytest.raises(CompressError, match=r"output of 'add' reaches 'output'"):
        fxp.quantize(_Bare(reuse=False), [x])
    with pytest.raises(CompressError, match=r"module 'relu' is called 2 times"):
        fxp.quantize(_Bare(reuse=True), [x])


def test_lower_bits_lose_more() -> None:
    model = _net()
    x = torch.randn(64, 1, 8, 8, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        ref = model(x)
        errs = [float(F.mse_loss(fxp.quantize(model, [x], bits=b)(x), ref)) for b in (16, 8, 4)]
    assert errs[0] < errs[1] < errs[2]
    assert errs[0] < 1e-6 * float(ref.square().mean())


def test_per_layer_bits_override_and_selection() -> None:
    model = _net()
    x = torch.randn(16, 1, 8, 8)
    q = fxp.quantize(model, [x], bits=8, select={"exclude": ["^0$"], "overrides": {"7": {"bits": 4}}})
    assert type(q[0]) is nn.Conv2d
    assert q[3].bits == 8 and q[7].bits == 4
    assert int(q[7].int_weight().abs().max()) <= 8


def test_errors() -> None:
    model = _net()
    x = torch.randn(4, 1, 8, 8)
    with pytest.raises(CompressError, match="mode"):
        fxp.quantize(model, [x], mode="wild")  # type: ignore[arg-type]
    with pytest.raises(CompressError, match="bit width"):
        fxp.quantize(model, [x], bits=1)
    with pytest.raises(CompressError, match="data_bits: fixed-point bit width"):
        fxp.quantize(model, [x], data_bits=17)
    with pytest.raises(CompressError, match="layer '7' data_bits"):
        fxp.quantize(model, [x], select={"overrides": {"7": {"data_bits": True}}})
    with pytest.raises(ModelError, match="does not run through"):
        fxp.quantize(model, [torch.randn(4, 3, 8, 8)])
    with pytest.raises(DataError, match="calibration"):
        fxp.quantize(model, [])


def test_finetune_stays_on_grid() -> None:
    model = _net()
    x = torch.randn(32, 1, 8, 8)
    y = torch.randint(0, 10, (32,))
    q = fxp.quantize(model, [x], bits=6).train()
    opt = torch.optim.SGD(q.parameters(), lr=0.01)
    loss = F.cross_entropy(q(x), y)
    loss.backward()
    assert q[3].weight.grad is not None and q[3].weight.grad.abs().sum() > 0
    opt.step()
    q.eval()
    layer = q[3]
    wq = fxp.to_fixed(layer.weight.detach(), layer.bits, layer.w_fl)
    layer.snap()
    assert torch.equal(layer.weight.detach(), wq)
