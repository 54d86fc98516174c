"""Lowering converted int8 GraphModules to the integer graph, and its errors."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from torch import nn

from tinytamer.compress.int8 import quantize_ptq
from tinytamer.errors import ModelError
from tinytamer.micro import codegen, reference, toolchain
from tinytamer.micro.ir import Add, AvgPool, Conv2D, Dense, MaxPool
from tinytamer.micro.lower import lower, op_agreement
from tinytamer.micro.program import MicroProgram

torch.set_num_threads(1)


class TinyRes(nn.Module):
    """Conv+BN+ReLU, depthwise+ReLU6, 1x1, residual add+ReLU, max pool, strided conv,
    global average pool, flatten, linear - every pattern the lowering fuses."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.b1 = nn.BatchNorm2d(8)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.pw = nn.Conv2d(8, 8, 1, bias=False)
        self.mp = nn.MaxPool2d(2)
        self.down = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = torch.relu(self.b1(self.c1(x)))
        y = self.pw(nn.functional.relu6(self.dw(x)))
        x = torch.relu(x + y)
        x = self.down(self.mp(x))
        return self.fc(torch.flatten(self.pool(x), 1))


class FlattenNet(nn.Module):
    """A flatten of a C x H x W map into a linear layer (the weights get permuted to HWC)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 5, 3)
        self.pool = nn.AvgPool2d(2)
        self.fc = nn.Linear(5 * 3 * 3, 7)

    def forward(self, x):
        x = self.pool(nn.functional.relu(self.conv(x)))
        return self.fc(x.view(x.size(0), -1))


def _quantized(model: nn.Module, shape, seed: int = 0):
    torch.manual_seed(seed)
    model.eval()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.3, 0.3)
            m.running_var.uniform_(0.5, 2.0)
    calib = [torch.randn(8, *shape) for _ in range(3)]
    return quantize_ptq(model, calib), torch.randn(16, *shape)


@pytest.mark.parametrize("net,shape", [(TinyRes, (3, 8, 8)), (FlattenNet, (2, 8, 8))])
def test_lowered_graph_agrees_with_fake_quant_model(tmp_path, net, shape):
    gm, x = _quantized(net(), shape)
    g = lower(gm, x[:1])
    prog = MicroProgram(g, codegen.generate(g), "host", tmp_path)
    q = prog.quantize_input(x.numpy())
    ref = prog.run_reference(q)
    with torch.no_grad():
        want = gm(x).numpy()
    got = prog.dequantize_output(ref)
    step = g.tensors[g.output].scale
    # Each op agrees within one step; end to end the steps may add up a little.
    assert max(op_agreement(gm, g, x[:1]).values()) <= 1
    assert np.abs(got - want).max() <= 3 * step * 1.001
    assert (got.argmax(1) == want.argmax(1)).mean() >= 0.9
    if shutil.which("gcc"):
        exe = toolchain.host_build(prog.cmodel, tmp_path / "host")
        np.testing.assert_array_equal(toolchain.host_run(exe, q, prog.cmodel.output_size), ref)


def test_lowering_fuses_and_names_layers():
    gm, x = _quantized(TinyRes(), (3, 8, 8))
    g = lower(gm, x[:1])
    kinds = [type(op).__name__ for op in g.ops]
    assert kinds == ["Conv2D", "Conv2D", "Conv2D", "Add", "MaxPool", "Conv2D", "AvgPool", "Reshape", "Dense"]
    c1, dw = g.ops[0], g.ops[1]
    assert isinstance(c1, Conv2D) and c1.name == "c1" and c1.act_min == max(-128, g.tensors[c1.output].zero_point)
    assert dw.depthwise and dw.act_min == max(-128, g.tensors[dw.output].zero_point)
    assert isinstance(g.ops[3], Add) and isinstance(g.ops[4], MaxPool)
    assert isinstance(g.ops[6], AvgPool) and isinstance(g.ops[8], Dense)
    # Max pool keeps the quantization of its input.
    mp_in, mp_out = (g.tensors[t] for t in (g.ops[4].inputs[0], g.ops[4].output))
    assert (mp_in.scale, mp_in.zero_point) == (mp_out.scale, mp_out.zero_point)


def test_integer_weights_come_from_the_quantized_layer():
    gm, x = _quantized(TinyRes(), (3, 8, 8))
    g = lower(gm, x[:1])
    w = gm.get_submodule("c1").int_weight().numpy()
    np.testing.assert_array_equal(g.ops[0].weight, w.transpose(0, 2, 3, 1))


class Sigmoidal(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)

    def forward(self, x):
        return torch.sigmoid(self.conv(x))


class LateRelu(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)
        self.mp = nn.MaxPool2d(2)

    def forward(self, x):
        return torch.relu(self.mp(self.conv(x)))


def test_unsupported_op_names_op_and_node():
    gm, x = _quantized(Sigmoidal(), (1, 6, 6))
    with pytest.raises(ModelError, match=r"function 'sigmoid' at node 'sigmoid'"):
        lower(gm, x[:1])


def test_unfusable_relu_is_an_error():
    gm, x = _quantized(LateRelu(), (1, 6, 6))
    with pytest.raises(ModelError, match="RELU that does not directly follow"):
        lower(gm, x[:1])


def test_float_layer_left_is_an_error():
    torch.manual_seed(0)
    model = TinyRes().eval()
    calib = [torch.randn(4, 3, 8, 8)]
    gm = quantize_ptq(model, calib, select={"names": ["c1", "dw", "pw", "down"]})
    with pytest.raises(ModelError, match="Linear left in float"):
        lower(gm, calib[0][:1])


def test_not_a_graph_module():
    with pytest.raises(ModelError, match="converted GraphModule"):
        lower(nn.Linear(2, 2), torch.zeros(1, 2))


def test_reference_runs_every_op_of_lowered_graph():
    gm, x = _quantized(TinyRes(), (3, 8, 8), seed=1)
    g = lower(gm, x[:1])
    prog = MicroProgram(g, codegen.generate(g), "host", None)
    values = reference.run(g, prog.quantize_input(x[:1].numpy())[0].reshape(8, 8, 3), keep_all=True)
    assert set(values) == set(g.tensors)
