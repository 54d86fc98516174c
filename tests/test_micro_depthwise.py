"""The SIMD depthwise kernel (runtime/tt_depthwise.c): weights [C/4][KH][KW][4], channel
groups outermost, whole 3 x 3 windows as one nine-tap block and clipped windows row by row.
Every window shape it distinguishes runs bit-exact against the integer reference: strides,
paddings, kernels other than 3 x 3, maps too narrow for any whole window, and the three
output forms (whole int8 range, a narrower activation range)."""

from __future__ import annotations

import numpy as np
import pytest

from tinytamer.micro import codegen, reference, toolchain
from tinytamer.micro.builder import GraphBuilder
from tinytamer.micro.ops import op_def

arm = pytest.mark.skipif(
    not toolchain.arm_available(), reason="arm-none-eabi-gcc missing: run scripts/install-micro-toolchain.sh"
)


def _dw(shape, k, stride, pad, relu, seed=0):
    rng = np.random.default_rng(seed)
    c = shape[2]
    b = GraphBuilder(shape, 0.02, 3)
    y = b.conv(
        b.input,
        rng.integers(-127, 128, (c, 1, *k)),
        rng.uniform(0.002, 0.01, c),
        rng.normal(0, 40, c),
        0.05,
        -128 if relu else 5,
        stride=stride,
        padding=pad,
        groups=c,
        relu=relu,
        name="dw",
    )
    g = b.graph(y)
    g.ops[0].schedule = {"kernel": "simd"}
    return g, rng.integers(-128, 128, (3, *shape)).astype(np.int8)


def test_weights_are_laid_out_one_channel_group_at_a_time():
    g, _ = _dw((5, 5, 8), (3, 3), (1, 1), (1, 1), None)
    op = g.ops[0]
    w = op_def(op).weight_array(op, True)
    # Group 1 (channels 4..7), tap (ky=2, kx=1): channels 4..7 at that tap, contiguous.
    at = (1 * 9 + 2 * 3 + 1) * 4
    np.testing.assert_array_equal(w.reshape(-1)[at : at + 4], op.weight[4:8, 2, 1, 0])


@arm
@pytest.mark.parametrize(
    ("shape", "k", "stride", "pad", "relu"),
    [
        ((25, 5, 16), (3, 3), (1, 1), (1, 1), "relu"),  # DS-CNN's shape
        ((7, 6, 8), (3, 3), (2, 2), (1, 1), None),  # strided, odd sizes
        ((6, 7, 8), (3, 3), (1, 2), (0, 1), "relu"),  # mixed strides, padding on one side only
        ((2, 2, 4), (3, 3), (1, 1), (1, 1), None),  # no whole window anywhere
        ((6, 6, 8), (5, 5), (1, 1), (2, 2), None),  # not 3 x 3: clipped path only
        ((5, 4, 4), (1, 3), (1, 1), (0, 1), "relu"),  # one-row windows
    ],
)
def test_every_window_shape_is_bit_exact(device_matches_reference, shape, k, stride, pad, relu):
    g, xs = _dw(shape, k, stride, pad, relu)
    cm = codegen.generate(g, dsp=True)
    assert "tt_depthwise_s8_dsp(" in cm.files["model.c"]
    device_matches_reference(cm, g, xs)


@arm
@pytest.mark.skipif(not toolchain.qemu_available(), reason="qemu-system-arm missing")
def test_unoptimized_build_is_bit_exact(tmp_path):
    """At -O0 the asm tap blocks give way to C of the same arithmetic."""
    g, xs = _dw((6, 5, 8), (3, 3), (1, 1), (1, 1), "relu", seed=3)
    want = np.stack([reference.run(g, v).reshape(-1) for v in xs])
    cm = codegen.generate(g, dsp=True)
    build = toolchain.arm_build(cm, tmp_path, "cortex-m4", inputs=xs.reshape(len(xs), -1), opt="-O0")
    np.testing.assert_array_equal(toolchain.qemu_run(build, cm.output_size), want)
