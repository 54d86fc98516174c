"""The SIMD depthwise kernel (runtime/tt_depthwise.c): weights [C/4][KH][KW][4], channel
groups outermost, whole 3 x 3 windows as one nine-tap block and clipped windows row by row.
Every window shape it distinguishes runs bit-exact against the integer reference: strides,
paddings, kernels other than 3 x 3, maps too narrow for any whole window, and the three
output forms (whole int8 range, a narrower activation range).  The packed weight forms
(int4, int2, shared: runtime/tt_depthwise_packed.c) run the same group kernel on each
group's unpacked rows: bit-exact on the same shapes, at about int8's cycles."""

from __future__ import annotations

import numpy as np
import pytest

from tinytamer.micro import codegen, reference, toolchain
from tinytamer.micro.builder import GraphBuilder
from tinytamer.micro.ops import op_def
from tinytamer.micro.session import Session

arm = pytest.mark.skipif(
    not toolchain.arm_available(), reason="arm-none-eabi-gcc missing: run scripts/install-micro-toolchain.sh"
)


# Weight values per form: the range of int4 / int2, or 16 values shared by the layer.
_RANGES = {"int8": (-127, 128), "int4": (-8, 8), "int2": (-2, 2)}


def _weights(rng, form, shape):
    if form == "shared":
        return rng.choice(rng.integers(-127, 128, 16), shape)
    return rng.integers(*_RANGES[form], shape)


def _dw(shape, k, stride, pad, relu, seed=0, form="int8"):
    rng = np.random.default_rng(seed)
    c = shape[2]
    b = GraphBuilder(shape, 0.02, 3)
    y = b.conv(
        b.input,
        _weights(rng, form, (c, 1, *k)),
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
    if form != "int8":
        g.ops[0].weight_form = form
        g.ops[0].schedule = {}  # the form's own kernel, "packed", is the default
    return g, rng.integers(-128, 128, (3, *shape)).astype(np.int8)


def test_weights_are_laid_out_one_channel_group_at_a_time():
    g, _ = _dw((5, 5, 8), (3, 3), (1, 1), (1, 1), None)
    op = g.ops[0]
    w = op_def(op).weight_array(op, True)
    # Group 1 (channels 4..7), tap (ky=2, kx=1): channels 4..7 at that tap, contiguous.
    at = (1 * 9 + 2 * 3 + 1) * 4
    np.testing.assert_array_equal(w.reshape(-1)[at : at + 4], op.weight[4:8, 2, 1, 0])


_SHAPES = pytest.mark.parametrize(
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


@arm
@_SHAPES
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


@arm
@_SHAPES
@pytest.mark.parametrize("form", ["int4", "int2", "shared"])
def test_packed_forms_run_the_group_kernel_bit_exact(device_matches_reference, form, shape, k, stride, pad, relu):
    g, xs = _dw(shape, k, stride, pad, relu, seed=1, form=form)
    src = codegen.generate(g, dsp=True).files["model.c"]
    assert "tt_depthwise_s8_packed_groups(" in src and "(const tt_rq *)(const void *)q0)" in src
    assert "static const int32_t b0[" not in src  # the records hold the bias: no b / m / s
    device_matches_reference(codegen.generate(g, dsp=True), g, xs)


@arm
def test_packed_portable_path_for_channels_not_a_multiple_of_4(device_matches_reference):
    """6 channels: no whole groups, so the packed kernel walks channel rows in C."""
    g, xs = _dw((5, 5, 6), (3, 3), (1, 1), (1, 1), "relu", seed=2, form="int4")
    src = codegen.generate(g, dsp=True).files["model.c"]
    assert "tt_depthwise_s8_packed(" in src and "_groups(" not in src  # the portable loop
    device_matches_reference(codegen.generate(g, dsp=True), g, xs)


@arm
def test_packed_forms_cost_about_what_int8_costs(tmp_path):
    """DS-CNN's depthwise shape (25 x 5 x 64, 3 x 3): the group kernel's cycles plus one
    unpacking per group of 4 channels.  Figures (cortex-m4 cycle table, ideal memory):
    int8 "simd" 581,291 est. cycles; int4 600,512, int2 599,936, shared 593,792 (1.02-1.03x);
    the portable packed loop this replaced took 4.4x int8 (int2 2,616,130)."""
    cycles = {}
    for form in ("int8", "int4", "int2", "shared"):
        g, xs = _dw((25, 5, 64), (3, 3), (1, 1), (1, 1), "relu", seed=4, form=form)
        cm = codegen.generate(g, dsp=True)
        with Session("cortex-m4", cm, workdir=tmp_path / form, count=True) as sess:
            t_in, t_out = sess.alloc(cm.input_size), sess.alloc(cm.output_size)
            sess.write(t_in, xs[0].reshape(-1))
            cycles[form] = sess.call("tt_model_run", t_in, t_out).est_cycles
            np.testing.assert_array_equal(sess.read(t_out), reference.run(g, xs[0]).reshape(-1))
    for form in ("int4", "int2", "shared"):
        assert cycles[form] <= 1.1 * cycles["int8"], cycles
