"""The int8 softmax: integer reference vs float softmax, C (host and emulated Cortex-M4)
bit-exact with the reference, lowering of nn.Softmax / F.softmax / .softmax, and errors."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from torch import nn

from tinytamer.compress.int8 import quantize_ptq
from tinytamer.errors import ModelError
from tinytamer.micro import codegen, reference, toolchain
from tinytamer.micro.builder import GraphBuilder
from tinytamer.micro.ir import Softmax
from tinytamer.micro.lower import lower
from tinytamer.micro.program import MicroProgram
from tinytamer.micro.session import Session

torch.set_num_threads(1)
needs_gcc = pytest.mark.skipif(shutil.which("gcc") is None, reason="host gcc is not installed")
arm = pytest.mark.skipif(
    not toolchain.arm_available(), reason="arm-none-eabi-gcc missing: run scripts/install-micro-toolchain.sh"
)


def _softmax_graph(in_scale: float, n: int, out_scale: float = 1 / 256, out_zp: int = -128):
    b = GraphBuilder((n,), in_scale, 0)
    return b.graph(b.softmax(b.input, out_scale, out_zp))


def _float_softmax_q(g, x: np.ndarray) -> np.ndarray:
    """Float softmax of the dequantized input, quantized to the output (round half even)."""
    tin, tout = g.tensors[g.input], g.tensors[g.output]
    v = (x.astype(np.float64) - tin.zero_point) * tin.scale
    p = np.exp(v - v.max())
    p /= p.sum()
    return np.clip(np.round(p / tout.scale) + tout.zero_point, -128, 127)


@pytest.mark.parametrize(
    "in_scale,n,out_scale,out_zp",
    [
        (0.1, 10, 1 / 256, -128),
        (0.02, 10, 1 / 256, -128),
        (0.5, 12, 1 / 256, -128),
        (0.05, 1000, 1 / 256, -128),
        (0.1, 10, 0.0045, -100),
    ],
)
def test_reference_agrees_with_float_softmax(in_scale, n, out_scale, out_zp):
    """Within one output step everywhere; exact for almost every value."""
    g = _softmax_graph(in_scale, n, out_scale, out_zp)
    rng = np.random.default_rng(n)
    diffs = []
    for _ in range(200):
        x = rng.integers(-128, 128, n).astype(np.int8)
        diffs.append(np.abs(reference.run(g, x).astype(np.int64) - _float_softmax_q(g, x)))
    d = np.concatenate(diffs)
    assert d.max() <= 1
    assert (d == 0).mean() >= 0.99


def test_builder_rejects_maps_and_unrepresentable_scales():
    b = GraphBuilder((2, 2, 3), 0.1, 0)
    with pytest.raises(ModelError, match="only a vector"):
        b.softmax(b.input, 1 / 256, -128, name="sm")
    b = GraphBuilder((4,), 0.1, 0)
    with pytest.raises(ModelError, match="output scale"):
        b.softmax(b.input, 1e-6, -128, name="sm")


@needs_gcc
def test_host_c_softmax_is_bit_exact(tmp_path):
    for k, (scale, n) in enumerate([(0.1, 10), (0.03, 37), (0.8, 5)]):
        g = _softmax_graph(scale, n)
        rng = np.random.default_rng(k)
        xs = rng.integers(-128, 128, (50, n)).astype(np.int8)
        xs[0] = 7  # all equal: every probability 1 / n
        xs[1] = -128
        xs[1, 0] = 127  # one dominant class: probability ~1, the others ~0
        want = np.stack([reference.run(g, x) for x in xs])
        cm = codegen.generate(g)
        exe = toolchain.host_build(cm, tmp_path / f"h{k}", sanitize=k == 0)
        np.testing.assert_array_equal(toolchain.host_run(exe, xs, n), want)


class Classifier(nn.Module):
    def __init__(self, how: str) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.fc = nn.Linear(4 * 4 * 4, 10)
        self.sm = nn.Softmax(dim=1)
        self.how = how

    def forward(self, x):
        y = self.fc(torch.flatten(torch.relu(self.conv(x)), 1))
        if self.how == "module":
            return self.sm(y)
        if self.how == "function":
            return nn.functional.softmax(y, dim=-1)
        return y.softmax(1)


@pytest.mark.parametrize("how", ["module", "function", "method"])
def test_lowered_softmax_agrees_with_fake_quant_model(tmp_path, how):
    torch.manual_seed(0)
    m = Classifier(how).eval()
    gm = quantize_ptq(m, [torch.randn(16, 1, 6, 6) * 2 for _ in range(3)])
    x = torch.randn(32, 1, 6, 6) * 2
    g = lower(gm, x[:1])
    assert isinstance(g.ops[-1], Softmax)
    prog = MicroProgram(g, codegen.generate(g), "host", tmp_path)
    q = prog.quantize_input(x.numpy())
    ref = prog.run_reference(q)
    with torch.no_grad():
        want = gm(x).numpy()
    got = prog.dequantize_output(ref)
    step = g.tensors[g.output].scale
    assert np.abs(got - want).max() <= 2 * step * 1.001
    assert (got.argmax(1) == want.argmax(1)).mean() >= 0.9
    np.testing.assert_allclose(got.sum(1), 1.0, atol=10 * step)


@arm
def test_softmax_on_the_emulated_cortex_m4(tmp_path):
    g = _softmax_graph(0.1, 10)
    rng = np.random.default_rng(3)
    xs = rng.integers(-128, 128, (20, 10)).astype(np.int8)
    cm = codegen.generate(g, dsp=True)
    with Session("cortex-m4", cm, workdir=tmp_path) as sess:
        t_in, t_out = sess.alloc(10), sess.alloc(10)
        for x in xs:
            sess.write(t_in, x)
            sess.call("tt_model_run", t_in, t_out)
            np.testing.assert_array_equal(sess.read(t_out), reference.run(g, x))


class MapSoftmax(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3)

    def forward(self, x):
        return torch.softmax(self.conv(x), dim=1)


class LogSoftmax(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 4)

    def forward(self, x):
        return nn.functional.log_softmax(self.fc(x), dim=1)


def test_unsupported_softmax_forms_name_the_node():
    torch.manual_seed(0)
    gm = quantize_ptq(MapSoftmax().eval(), [torch.randn(4, 1, 6, 6)])
    with pytest.raises(ModelError, match=r"softmax over dim 1 of a .* tensor .* at node 'softmax'"):
        lower(gm, torch.randn(1, 1, 6, 6))
    gm = quantize_ptq(LogSoftmax().eval(), [torch.randn(4, 6)])
    with pytest.raises(ModelError, match=r"function 'log_softmax' at node 'log_softmax'"):
        lower(gm, torch.randn(1, 6))
