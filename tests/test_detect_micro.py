"""The detector on the micro path: nearest upsampling as a device op (reference bit-exact with
its C kernel), the single-output packing, and YOLO-FastestV2 lowered whole."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tinytamer.compress.int8 import quantize_ptq
from tinytamer.detect.decode import Head
from tinytamer.detect.packed import SingleOutput, for_micro, unpack
from tinytamer.micro import codegen, ops, toolchain
from tinytamer.micro.lower import lower, op_agreement
from tinytamer.micro.ops.upsample import Upsample
from tinytamer.micro.program import MicroProgram
from tinytamer.zoo import create

needs_gcc = pytest.mark.skipif(shutil.which("gcc") is None, reason="host gcc is not installed")


class _FPN(nn.Module):
    """Two scales joined as an FPN does: upsample the coarse map, concatenate, convolve."""

    def __init__(self) -> None:
        super().__init__()
        self.fine = nn.Conv2d(3, 4, 3, padding=1)
        self.coarse = nn.Conv2d(4, 6, 3, stride=2, padding=1)
        self.out = nn.Conv2d(10, 5, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = torch.relu(self.fine(x))
        c = torch.relu(self.coarse(f))
        return self.out(torch.cat((F.interpolate(c, scale_factor=2.0, mode="nearest"), f), 1))


def _settle_batchnorm(model: nn.Module, shape: tuple[int, ...]) -> None:
    """Running BN statistics from a few batches, as training leaves them: an untrained net's
    activations otherwise shrink layer by layer to scales no int32 bias can follow."""
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = None  # a cumulative average
    model.train()
    with torch.no_grad():
        for _ in range(4):
            model(torch.rand(4, *shape, generator=g))
    model.eval()


def _quantized(model: nn.Module, shape: tuple[int, ...]) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    calib = [torch.rand(4, *shape, generator=g) for _ in range(2)]
    return quantize_ptq(model.eval(), calib), torch.rand(3, *shape, generator=g)


def test_upsample_is_in_the_op_table_with_its_kernel() -> None:
    d = ops.OPS[Upsample]
    assert d.kernel_files == ("tt_upsample.c",) and "tt_upsample.c" in toolchain.KERNEL_SOURCES
    assert " tt_upsample_s8(" in (codegen.RUNTIME_DIR / "tt_kernels.h").read_text()


def test_reference_repeats_pixels() -> None:
    from tinytamer.micro.ir import Graph

    x = np.arange(2 * 3 * 2, dtype=np.int8).reshape(2, 3, 2)
    op = Upsample("u", ["x"], "y", (2, 3), None)
    y = ops.OPS[Upsample].reference(Graph.__new__(Graph), op, [x])
    assert y.shape == (4, 9, 2)
    np.testing.assert_array_equal(y[3, 8], x[1, 2])
    table = np.clip(np.arange(-128, 128) // 2, -128, 127).astype(np.int8)
    op = Upsample("u", ["x"], "y", (1, 1), table)
    np.testing.assert_array_equal(ops.OPS[Upsample].reference(Graph.__new__(Graph), op, [x]), x // 2)


@needs_gcc
def test_fpn_join_lowers_and_runs_bit_exact(tmp_path: Path) -> None:
    gm, x = _quantized(_FPN(), (3, 8, 8))
    g = lower(gm, x[:1])
    assert sum(isinstance(op, Upsample) for op in g.ops) == 1
    assert max(op_agreement(gm, g, x[:1]).values()) <= 1
    prog = MicroProgram(g, codegen.generate(g), "host", tmp_path)
    q = prog.quantize_input(x.numpy())
    exe = toolchain.host_build(prog.cmodel, tmp_path / "host", sanitize=True)
    np.testing.assert_array_equal(toolchain.host_run(exe, q, prog.cmodel.output_size), prog.run_reference(q))


def test_bilinear_upsampling_is_refused_by_name() -> None:
    class Bilinear(_FPN):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            f = torch.relu(self.fine(x))
            c = torch.relu(self.coarse(f))
            return self.out(torch.cat((F.interpolate(c, scale_factor=2.0, mode="bilinear"), f), 1))

    gm, x = _quantized(Bilinear(), (3, 8, 8))
    with pytest.raises(Exception, match="nearest"):
        lower(gm, x[:1])


def test_single_output_unpacks_to_the_detector_maps() -> None:
    det = create("yolofastest", num_classes=2, input_size=64).eval()
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        p16, p32 = det(x)
        packed = SingleOutput(det)(x)
    assert packed.shape == (2, 2 * 17, 4, 4)
    a, b = unpack(packed.numpy(), Head.of(det))
    np.testing.assert_array_equal(a, p16.numpy())
    np.testing.assert_array_equal(b, p32.numpy())


@needs_gcc
@pytest.mark.slow
def test_yolofastest_lowers_whole_and_runs_bit_exact(tmp_path: Path) -> None:
    det = create("yolofastest", num_classes=1, input_size=64)
    _settle_batchnorm(det, (3, 64, 64))
    gm, x = _quantized(for_micro(det), (3, 64, 64))
    g = lower(gm, x[:1])
    # Integer ops agree with the fake-quantized model within a few steps (biases in range).
    assert max(op_agreement(gm, g, x[:1]).values()) <= 4
    prog = MicroProgram(g, codegen.generate(g), "host", tmp_path)
    q = prog.quantize_input(x[:1].numpy())
    exe = toolchain.host_build(prog.cmodel, tmp_path / "host")
    np.testing.assert_array_equal(toolchain.host_run(exe, q, prog.cmodel.output_size), prog.run_reference(q))
