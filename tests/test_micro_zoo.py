"""Zoo models through the micro path: lowered, host-built C bit-exact with the reference."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from tinytamer import zoo
from tinytamer.compress.int8 import quantize_ptq
from tinytamer.errors import ModelError
from tinytamer.micro import codegen, toolchain
from tinytamer.micro.lower import lower, op_agreement
from tinytamer.micro.program import MicroProgram

torch.set_num_threads(1)

CASES = {
    "democnn": ({"in_channels": 1, "input_size": 16}, (1, 16, 16)),
    "lenet5": ({"in_channels": 1, "input_size": 28}, (1, 28, 28)),
    "dscnn": ({"in_channels": 1, "num_classes": 12}, (1, 49, 10)),
    "resnet8": ({"in_channels": 3}, (3, 32, 32)),
    "mobilenetv2": ({"in_channels": 3, "input_size": 32}, (3, 32, 32)),
}


def _quantized(name: str):
    kw, shape = CASES[name]
    torch.manual_seed(0)
    model = zoo.create(name, **kw).eval()
    g = torch.Generator().manual_seed(0)
    calib = [torch.randn(4, *shape, generator=g) for _ in range(2)]
    return quantize_ptq(model, calib), torch.randn(4, *shape, generator=g)


@pytest.mark.skipif(shutil.which("gcc") is None, reason="host gcc is not installed")
@pytest.mark.parametrize(
    "name",
    [
        "democnn",
        "lenet5",
        "dscnn",
        "resnet8",
        pytest.param("mobilenetv2", marks=pytest.mark.slow),
    ],
)
def test_zoo_model_host_bit_exact(tmp_path, name):
    gm, x = _quantized(name)
    g = lower(gm, x[:1])
    prog = MicroProgram(g, codegen.generate(g), "host", tmp_path)
    q = prog.quantize_input(x.numpy())
    ref = prog.run_reference(q)
    exe = toolchain.host_build(prog.cmodel, tmp_path / "host")
    np.testing.assert_array_equal(toolchain.host_run(exe, q, prog.cmodel.output_size), ref)
    # Every op agrees with the fake-quantized PyTorch op within one output step.
    assert max(op_agreement(gm, g, x[:1]).values()) <= 1


@pytest.mark.skipif(shutil.which("gcc") is None, reason="host gcc is not installed")
def test_zoo_model_sanitizer_build_is_clean(tmp_path):
    gm, x = _quantized("democnn")
    g = lower(gm, x[:1])
    prog = MicroProgram(g, codegen.generate(g), "host", tmp_path)
    q = prog.quantize_input(x.numpy())
    exe = toolchain.host_build(prog.cmodel, tmp_path / "san", sanitize=True)
    # host_run raises on any sanitizer report.
    np.testing.assert_array_equal(toolchain.host_run(exe, q, prog.cmodel.output_size), prog.run_reference(q))


def test_option_a_shortcut_is_refused_by_name():
    torch.manual_seed(0)
    model = zoo.create("resnet20", in_channels=3).eval()
    calib = [torch.randn(2, 3, 32, 32)]
    gm = quantize_ptq(model, calib)
    with pytest.raises(ModelError, match="function 'getitem' at node 'getitem'"):
        lower(gm, calib[0][:1])
