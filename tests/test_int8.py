"""int8 / mixed-precision quantization: fake quant arithmetic, calibration, placement, PTQ, QAT."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tinytamer.compress import int8
from tinytamer.compress.int8 import FakeQuantAct, QuantConv2d, QuantLinear
from tinytamer.errors import ModelError, RecipeError
from tinytamer.qgraph import QuantizedGraph, as_graph_module


class ResCNN(nn.Module):
    """conv-bn-relu, residual block with add + relu, maxpool, avgpool, flatten, fc (8x8 input)."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv0 = nn.Conv2d(1, 8, 3, padding=1)
        self.bn0 = nn.BatchNorm2d(8)
        self.relu0 = nn.ReLU()
        self.conv1 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.pool = nn.MaxPool2d(2)
        self.gap = nn.AvgPool2d(2)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu0(self.bn0(self.conv0(x)))
        x = F.relu(self.bn1(self.conv1(x)) + x)
        x = self.pool(x)
        return self.fc(self.flatten(self.gap(x)))


def _randomize_bn(model: nn.Module) -> None:
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.3)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.2)


@pytest.fixture(scope="module")
def digits(digits_data: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = digits_data
    return (x - 0.3) / 0.4, y


@pytest.fixture(scope="module")
def trained(digits: tuple[torch.Tensor, torch.Tensor]) -> nn.Module:
    torch.manual_seed(0)
    x, y = digits
    model = ResCNN()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(4):
        for i in range(0, 1400, 64):
            loss = F.cross_entropy(model(x[i : i + 64]), y[i : i + 64])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


def _acc(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


# ----------------------------------------------------------------------------- arithmetic


def test_fake_quant_rounding_and_saturation_exact() -> None:
    x = torch.tensor([-3.0, -0.26, -0.25, 0.0, 0.1, 0.24, 0.26, 0.75, 31.0, 200.0])
    scale, zp = torch.tensor(0.5), torch.tensor(-100, dtype=torch.int32)
    # round(x/0.5) - 100, clamped to [-128, 127], minus zp, times 0.5.
    # -0.26/0.5=-0.52 -> -1; -0.25/0.5=-0.5 -> -0 (half to even); 0.75/0.5=1.5 -> 2;
    # 31/0.5=62 -> q=-38 -> 31; 200/0.5=400 -> q=300 clamped to 127 -> 113.5; -3 -> -6 -> -3.
    out = int8.fake_quant(x, scale, zp, -128, 127)
    expect = torch.tensor([-3.0, -0.5, 0.0, 0.0, 0.0, 0.0, 0.5, 1.0, 31.0, 113.5])
    assert torch.equal(out, expect)
    low = int8.fake_quant(torch.tensor([-200.0]), scale, torch.tensor(100, dtype=torch.int32), -128, 127)
    assert low.item() == (-128 - 100) * 0.5  # saturates at qmin


def test_fake_quant_act_module_matches_formula() -> None:
    fq = FakeQuantAct(8, mode="quant")
    fq.scale.fill_(0.1)
    fq.zero_point.fill_(3)
    x = torch.linspace(-20, 20, 101)
    expect = (torch.clamp(torch.round(x / 0.1) + 3, -128, 127) - 3) * 0.1
    assert torch.equal(fq(x), expect)


def test_per_channel_weight_scales_and_narrow_range() -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, 3)
    with torch.no_grad():
        conv.weight[2].zero_()
    q = QuantConv2d.from_float(conv, 8)
    amax = conv.weight.detach().abs().flatten(1).amax(1)
    expect = torch.where(amax > 0, amax / 127, torch.ones_like(amax))
    assert torch.allclose(q.w_scale, expect)
    iw = q.int_weight()
    assert iw.dtype == torch.int8
    assert int(iw.min()) >= -127 and int(iw.max()) <= 127
    # Each non-zero channel reaches +-127 exactly at its largest magnitude.
    assert torch.equal(iw.abs().flatten(1).amax(1), torch.tensor([127, 127, 0, 127], dtype=torch.int8))
    q.eval()
    wq = iw.float() * q.w_scale.view(-1, 1, 1, 1)
    assert torch.allclose(q.quant_weight(), wq)
    x = torch.randn(2, 3, 5, 5)
    assert torch.allclose(q(x), F.conv2d(x, wq, conv.bias), atol=1e-6)


def test_narrow_range_at_low_bits() -> None:
    lin = nn.Linear(5, 3)
    q = QuantLinear.from_float(lin, 2)
    assert set(q.int_weight().unique().tolist()) <= {-1, 0, 1}
    q4 = QuantLinear.from_float(lin, 4)
    assert torch.allclose(q4.w_scale, lin.weight.detach().abs().amax(1) / 7)
    assert int(q4.int_weight().min()) >= -7


def test_act_qparams_contain_zero() -> None:
    scale, zp = int8.act_qparams(0.0, 2.55, -128, 127)
    assert scale == pytest.approx(0.01) and zp == -128
    scale, zp = int8.act_qparams(1.0, 2.0, -128, 127)  # widened to [0, 2]
    assert scale == pytest.approx(2 / 255) and zp == -128
    scale, zp = int8.act_qparams(-1.0, 1.0, -128, 127)
    assert zp == 0 or zp == -1  # round(-128 + 127.5)


# ----------------------------------------------------------------------------- calibration


def _data_with_outlier() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(20000, generator=g)
    x[123] = 60.0
    return x


def test_percentile_clips_below_minmax() -> None:
    x = _data_with_outlier()
    ranges = {}
    for method in ("minmax", "percentile"):
        fq = FakeQuantAct(8)
        fq(x)
        fq.compute_qparams(method, percentile=99.9)
        ranges[method] = float(fq.scale)
    assert ranges["minmax"] == pytest.approx((60.0 - float(x.min())) / 255)
    assert ranges["percentile"] < ranges["minmax"] / 5


def test_mse_calibration_lowers_error() -> None:
    x = torch.randn(50000, generator=torch.Generator().manual_seed(0))
    errs, scales = {}, {}
    for method in ("minmax", "mse"):
        fq = FakeQuantAct(4)
        fq(x)
        fq.compute_qparams(method)
        fq.mode = "quant"
        errs[method] = float((fq(x) - x).square().mean())
        scales[method] = float(fq.scale)
    # At 4 bits the best clip of a Gaussian is well inside its extremes (about 2.5 sigma).
    assert scales["mse"] < 0.8 * scales["minmax"]
    assert errs["mse"] < 0.7 * errs["minmax"]


def test_calibrate_rejects_bad_method(trained: nn.Module) -> None:
    gm = int8.prepare(trained, torch.zeros(1, 1, 8, 8))
    with pytest.raises(RecipeError, match="calibration method"):
        int8.calibrate(gm, [torch.zeros(1, 1, 8, 8)], method="kl")  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- graph


def _fq_inputs(gm: torch.fx.GraphModule) -> list[str]:
    """Name of the node each FakeQuantAct quantizes, in graph order."""
    return [
        n.args[0].name
        for n in gm.graph.nodes
        if n.op == "call_module" and isinstance(gm.get_submodule(n.target), FakeQuantAct)
    ]


def test_bn_folding_exact() -> None:
    torch.manual_seed(0)
    model = ResCNN()
    _randomize_bn(model)
    model.eval()
    fused = int8.fuse_bn(model)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fused.modules())
    x = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        assert torch.allclose(fused(x), model(x), atol=1e-5)
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())  # input untouched


def test_placement_on_residual_cnn() -> None:
    torch.manual_seed(0)
    gm = int8.prepare(ResCNN().eval(), torch.randn(1, 1, 8, 8))
    # Input; conv0 after its ReLU module (fused); conv1 feeds the add, not a ReLU, so right
    # after conv1; the add after its F.relu; the average pool; fc.  Nothing after the
    # max-pool or flatten: they keep their input's scale.
    assert _fq_inputs(gm) == ["x", "relu0", "conv1", "relu", "gap", "fc"]
    names = {n.name: n for n in gm.graph.nodes}
    assert names["relu"].args[0].target.__name__ == "add"
    assert isinstance(gm.get_submodule("conv0"), QuantConv2d)
    assert isinstance(gm.get_submodule("fc"), QuantLinear)
    assert gm.get_submodule("aq_conv0") is gm.get_submodule(names["aq_conv0"].target)


def test_ptq_close_to_float(trained: nn.Module, digits: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, y = digits
    xt, yt = x[1400:], y[1400:]
    float_acc = _acc(trained, xt, yt)
    assert float_acc > 0.85
    calib = [x[i : i + 100] for i in range(0, 400, 100)]
    for method in ("minmax", "percentile", "mse"):
        q = int8.quantize_ptq(trained, calib, method=method)
        assert _acc(q, xt, yt) >= float_acc - 0.03, method
    q = int8.quantize_ptq(trained, calib)
    params = int8.quant_params(q)
    acts = [v for v in params.values() if v["kind"] == "act"]
    layers = [v for v in params.values() if v["kind"] != "act"]
    assert len(acts) == 6 and len(layers) == 3
    assert all(v["qmin"] == -128 and v["qmax"] == 127 for v in acts)
    # The fused ReLU points have zero_point at qmin (the range starts at 0).
    assert params["aq_conv0"]["zero_point"] == -128


def test_mixed_bits_via_overrides(trained: nn.Module, digits: tuple) -> None:
    x, _ = digits
    sel = {"overrides": {"conv1": {"bits": 3, "act_bits": 4}, "^fc$": {"bits": 5}}}
    q = int8.quantize_ptq(trained, [x[:200]], select=sel)
    assert q.get_submodule("conv0").w_bits == 8
    assert q.get_submodule("conv1").w_bits == 3
    assert q.get_submodule("fc").w_bits == 5
    assert int(q.get_submodule("conv1").int_weight().abs().max()) == 3
    aq = q.get_submodule("aq_conv1")
    assert (aq.bits, aq.qmin, aq.qmax) == (4, -8, 7)
    assert q.get_submodule("aq_conv0").bits == 8
    with torch.no_grad():
        vals = q.get_submodule("aq_conv1")(torch.randn(1000) * 5)
    assert vals.unique().numel() <= 16


def test_per_tensor_weight_scale_via_overrides(trained: nn.Module, digits: tuple, tmp_path) -> None:
    from tinytamer.checkpoint import load_checkpoint, save_checkpoint

    x, _ = digits
    q = int8.quantize_ptq(trained, [x[:200]], select={"overrides": {"^fc$": {"per_channel": False}}})
    fc, conv1 = q.get_submodule("fc"), q.get_submodule("conv1")
    assert (fc.w_per_channel, conv1.w_per_channel) == (False, True)
    # One grid for the layer: every channel's scale is the layer's max |w| / 127.
    want = trained.fc.weight.detach().abs().max() / 127
    assert torch.allclose(fc.w_scale, want.expand_as(fc.w_scale))
    assert int(fc.int_weight().abs().max()) == 127
    assert len(set(conv1.w_scale.tolist())) > 1
    # The flag is recorded and survives a checkpoint, so QAT on the reloaded model keeps it.
    params = int8.quant_params(q)
    assert [v["w_per_channel"] for v in params.values() if v["kind"] == "linear"] == [False]
    loaded = load_checkpoint(save_checkpoint(QuantizedGraph(q), tmp_path / "q.safetensors"))
    assert loaded.get_submodule("fc").w_per_channel is False
    with torch.no_grad():
        assert torch.equal(loaded(x[:20]), q(x[:20]))


def test_one_scale_overrides_find_the_shared_layers(trained: nn.Module, digits: tuple) -> None:
    import copy

    from tinytamer.compress import share

    x, _ = digits
    model = copy.deepcopy(trained)
    # conv1 is k-means shared but a BatchNorm follows it: folded, each channel has its own
    # 16 values (128 in all), so only fc (shared, nothing folded in) gets one scale.
    share.finalize(share.kmeans(model, select={"names": ["conv1", "fc"]}, conv_bits=4, linear_bits=4))
    overrides = int8.one_scale_overrides(model)
    assert overrides == {"^fc$": {"per_channel": False}}
    assert int8.one_scale_overrides(trained) == {}
    q = int8.quantize_ptq(model, [x[:64]], select={"overrides": overrides})
    assert (q.get_submodule("fc").w_per_channel, q.get_submodule("conv1").w_per_channel) == (False, True)
    # One scale: the layer's 16 float values stay 16 integers, where per-channel scales
    # give each class of channels its own.
    assert q.get_submodule("fc").int_weight().unique().numel() <= 16
    per_channel = int8.quantize_ptq(model, [x[:64]]).get_submodule("fc").int_weight()
    assert per_channel.unique().numel() > 16


def test_the_deploy_quantizer_gives_shared_layers_one_scale(trained: nn.Module, digits: tuple) -> None:
    import copy

    from tinytamer.compress import share
    from tinytamer.deploy import int8_quantizer

    x, _ = digits
    model = share.finalize(share.kmeans(copy.deepcopy(trained), select={"names": ["fc"]}, linear_bits=4))
    q = int8_quantizer(model, [x[:64]], "minmax")
    assert (q.get_submodule("fc").w_per_channel, q.get_submodule("conv0").w_per_channel) == (False, True)


def test_unknown_or_bad_override_keys_are_errors(trained: nn.Module) -> None:
    ex = torch.zeros(1, 1, 8, 8)
    with pytest.raises(RecipeError, match=r"overrides\['fc'\].*per_chanel"):
        int8.prepare(trained, ex, select={"overrides": {"fc": {"per_chanel": False}}})
    with pytest.raises(RecipeError, match="layer 'fc' per_channel"):
        int8.prepare(trained, ex, select={"overrides": {"fc": {"per_channel": "no"}}})


def test_bad_bits_and_selection_errors(trained: nn.Module) -> None:
    ex = torch.zeros(1, 1, 8, 8)
    with pytest.raises(RecipeError, match="bit width"):
        int8.prepare(trained, ex, weight_bits=9)
    with pytest.raises(RecipeError, match="conv0"):
        int8.prepare(trained, ex, select={"overrides": {"conv0": {"bits": 1}}})
    with pytest.raises(ModelError, match="nope"):
        int8.prepare(trained, ex, select={"names": ["nope"]})
    with pytest.raises(ModelError, match="example input"):
        int8.prepare(trained, torch.zeros(1, 3, 8, 8))


def test_excluded_layer_stays_float(trained: nn.Module, digits: tuple) -> None:
    x, _ = digits
    q = int8.quantize_ptq(trained, [x[:100]], select={"exclude_first": True})
    assert type(q.get_submodule("conv0")) is nn.Conv2d
    assert isinstance(q.get_submodule("conv1"), QuantConv2d)


def test_qat_trains_with_ste(trained: nn.Module, digits: tuple) -> None:
    torch.manual_seed(0)
    x, y = digits
    gm = int8.prepare_qat(trained, x[:1], weight_bits=4, act_bits=4)
    int8.calibrate(gm, [x[:256]])
    gm.train()
    opt = torch.optim.SGD(gm.parameters(), lr=0.02, momentum=0.9)
    before = _acc(int8.convert(gm), x[1400:], y[1400:])
    w0 = gm.get_submodule("conv1").weight.detach().clone()
    for i in range(0, 1400, 64):
        loss = F.cross_entropy(gm(x[i : i + 64]), y[i : i + 64])
        opt.zero_grad()
        loss.backward()
        grad = gm.get_submodule("conv1").weight.grad
        assert grad is not None and grad.abs().sum() > 0  # the STE lets gradients through
        opt.step()
    assert not torch.equal(w0, gm.get_submodule("conv1").weight)
    q = int8.convert(gm)
    assert all(m.mode == "quant" for m in q.modules() if isinstance(m, FakeQuantAct))
    after = _acc(q, x[1400:], y[1400:])
    assert after >= before - 0.02 and after > 0.8


def test_ste_gradient_is_clipped() -> None:
    x = torch.tensor([-200.0, -1.0, 0.0, 1.0, 200.0], requires_grad=True)
    out = int8.fake_quant(x, torch.tensor(0.5), torch.tensor(0, dtype=torch.int32), -128, 127)
    out.sum().backward()
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 1.0, 0.0]


def test_convert_requires_calibration(trained: nn.Module) -> None:
    gm = int8.prepare(trained, torch.zeros(1, 1, 8, 8))
    with pytest.raises(ModelError, match="calibrate"):
        int8.convert(gm)


def test_zoo_resnet8_placement() -> None:
    zoo = pytest.importorskip("tinytamer.zoo")
    torch.manual_seed(0)
    model = zoo.create("resnet8").eval()
    x = torch.randn(2, 3, 32, 32)
    q = int8.quantize_ptq(model, [x])
    pts = _fq_inputs(q)
    assert pts[0] == "x" and "layer1_0_relu2" in pts and "pool" in pts
    assert not any(isinstance(m, nn.BatchNorm2d) for m in q.modules())
    with torch.no_grad():
        ref, out = model(x), q(x)
    assert (out - ref).abs().max() < 0.1 * ref.abs().max()


def test_converted_model_exports(trained: nn.Module, digits: tuple) -> None:
    x, _ = digits
    q = int8.quantize_ptq(trained, [x[:100]])
    ep = torch.export.export(q, (x[:2],))
    with torch.no_grad():
        assert torch.equal(ep.module()(x[:2]), q(x[:2]))


def test_quantized_graph_saves_and_rebuilds(trained: nn.Module, digits: tuple, tmp_path) -> None:
    from tinytamer.checkpoint import load_checkpoint, save_checkpoint

    x, _ = digits
    gm = int8.quantize_ptq(trained, [x[:100]], select={"overrides": {"fc": {"bits": 4}}})
    saved = QuantizedGraph(gm)
    loaded = load_checkpoint(save_checkpoint(saved, tmp_path / "q.safetensors"))
    with torch.no_grad():
        assert torch.equal(loaded(x[:50]), gm(x[:50]))
    back = as_graph_module(loaded)
    assert isinstance(back, torch.fx.GraphModule)
    assert int8.quant_params(back) == int8.quant_params(gm)
    assert [n.op for n in back.graph.nodes] == [n.op for n in gm.graph.nodes]
    with pytest.raises(ModelError, match="not a quantized graph"):
        as_graph_module(trained)
