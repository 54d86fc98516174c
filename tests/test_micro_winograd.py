"""Winograd F(2x2, 3x3) on the device (tinytamer.micro.winograd, runtime/tt_winograd.c): the
integer identity in numpy, the weight layout, when it is offered, and every edge shape bit-exact
against the integer reference on the emulated Cortex-M4, fused residual adds included."""

from __future__ import annotations

import numpy as np
import pytest

from tinytamer.micro import codegen, reference, schedule, toolchain, tuning, winograd
from tinytamer.micro.builder import GraphBuilder
from tinytamer.micro.ir import Conv2D

arm = pytest.mark.skipif(
    not toolchain.arm_available(), reason="arm-none-eabi-gcc missing: run scripts/install-micro-toolchain.sh"
)


def test_the_scaled_transform_is_the_direct_convolution_exactly():
    rng = np.random.default_rng(0)
    w = rng.integers(-128, 128, (5, 3, 3, 8))  # [OC, KH, KW, IC]
    # The extreme inputs too: x - zero point spans [-255, 255].
    for tile in (rng.integers(-255, 256, (4, 4, 8)), np.full((4, 4, 8), 255), np.full((4, 4, 8), -255)):
        direct = np.array(
            [[[np.sum(tile[p : p + 3, q : q + 3] * w[o]) for q in range(2)] for p in range(2)] for o in range(5)]
        )
        np.testing.assert_array_equal(winograd.conv_tile_reference(tile, w), direct)
    u = winograd.transform_weights(w)
    assert np.abs(u).max() <= 9 * 128 and u.shape == (5, 16, 8)


def test_weights_are_int16_pairs_in_the_sxtb16_lane_order():
    w = np.random.default_rng(1).integers(-128, 128, (2, 3, 3, 8))
    words = winograd.weight_words(w)
    assert words.dtype == np.int32 and words.shape == (2 * 16 * 8 // 2,)
    lanes = words.view("<i2").reshape(2, 16, 8).astype(np.int64)
    u = winograd.transform_weights(w)
    np.testing.assert_array_equal(lanes[..., :4], u[..., [0, 2, 1, 3]])
    np.testing.assert_array_equal(lanes[..., 4:], u[..., [4, 6, 5, 7]])
    odd = winograd.weight_words(w[:1]).view("<i2").reshape(2, 16, 8)
    assert not odd[1].any()  # an odd last channel is paired with a zero row


def _conv_graph(rng, shape, oc, k=3, stride=1, pad=1, relu=None):
    b = GraphBuilder(shape, 0.02, 3)
    y = b.conv(
        b.input,
        rng.integers(-128, 128, (oc, shape[2], k, k)),
        rng.uniform(0.002, 0.01, oc),
        rng.normal(0, 1, oc),
        0.05,
        -7,
        stride=(stride, stride),
        padding=(pad, pad),
        relu=relu,
        name="c",
    )
    return b.graph(y)


def test_offered_only_where_it_applies():
    rng = np.random.default_rng(2)
    assert "winograd" in schedule.space(_conv_graph(rng, (6, 6, 8), 4).ops[0], True)["kernel"]
    assert "winograd" not in schedule.space(_conv_graph(rng, (6, 6, 8), 4).ops[0], False)["kernel"]
    assert "winograd" not in schedule.space(_conv_graph(rng, (6, 6, 6), 4).ops[0], True)["kernel"]  # 6 channels
    assert "winograd" not in schedule.space(_conv_graph(rng, (6, 6, 8), 4, stride=2).ops[0], True)["kernel"]
    assert "winograd" not in schedule.space(_conv_graph(rng, (6, 6, 8), 4, k=1, pad=0).ops[0], True)["kernel"]
    op = _conv_graph(rng, (6, 6, 8), 4).ops[0]
    assert schedule.resolve(op, True)["kernel"] == "mm"  # not the default: the tuner weighs its flash
    op.schedule = {"kernel": "winograd"}
    assert schedule.scratch_bytes(None, op, True) == 2 * 16 * 8 * 2  # two tiles


EDGE_SHAPES = [
    # (input HWC, out channels, padding, relu)
    ((8, 8, 16), 16, 1, "relu"),  # ResNet-8's layer 1, scaled down
    ((7, 5, 4), 7, 1, None),  # odd rows and columns, an odd last channel
    ((6, 6, 8), 8, 0, None),  # no padding: 4 x 4 outputs
    ((3, 3, 12), 3, 1, "relu"),  # a single partial tile column and row
]


@arm
@pytest.mark.parametrize("case", EDGE_SHAPES, ids=lambda c: "x".join(map(str, c[0])) + f"-{c[1]}")
def test_winograd_kernel_edge_shapes_are_bit_exact(tmp_path, case):
    shape, oc, pad, relu = case
    g = _conv_graph(np.random.default_rng(sum(shape) + oc), shape, oc, pad=pad, relu=relu)
    # _measure checks every candidate's output bit for bit against the reference.
    costs = tuning._measure(g, g.ops[0], "cortex-m4", [{"kernel": "winograd"}, {"kernel": "mm"}], tmp_path)
    assert all(c > 0 for c, _ in costs)


def _block(conv_scale: float, other_scale: float, relu: str | None):
    """conv x -> conv -> conv y, y + x fused into y's conv -> conv (every conv on Winograd)."""
    rng = np.random.default_rng(4)
    b = GraphBuilder((6, 5, 8), 0.02, 3)

    def conv(x, scale, zp, name):
        w = rng.integers(-127, 128, (8, 8, 3, 3))
        return b.conv(x, w, np.full(8, 0.004), rng.normal(0, 50, 8), scale, zp, padding=(1, 1), name=name)

    x = conv(b.input, other_scale, 9, "c0")
    y = conv(conv(x, 0.05, -128, "c1"), conv_scale, -4, "c2")
    # A layer after the add: the add is fused only where its output is not the model's.
    g = b.graph(conv(b.add(y, x, 0.08, -3, relu=relu, name="add"), 0.05, 0, "c3"))
    for op in g.ops:
        if isinstance(op, Conv2D):
            op.schedule = {"kernel": "winograd"}
    return g


@arm
@pytest.mark.parametrize(
    ("conv_scale", "other_scale", "relu", "entry"),
    [
        (0.07, 0.03, None, 2),  # the add in single-multiply form, whole-range clamps
        (0.07, 0.03, "relu", 3),  # the same, the add's ReLU
        (0.03, 0.07, None, 4),  # the conv's side by table: the any-form path
    ],
)
def test_fused_residual_adds_are_bit_exact(device_matches_reference, conv_scale, other_scale, relu, entry):
    g = _block(conv_scale, other_scale, relu)
    cm = codegen.generate(g, dsp=True)
    src = cm.files["model.c"]
    assert src.count("tt_conv2d_s8_wino(") == 4 and ".res = &r" in src  # the add is fused
    xs = np.random.default_rng(5).integers(-128, 128, (4, *g.tensors[g.input].shape)).astype(np.int8)
    assert len(np.unique([reference.run(g, v) for v in xs])) > 5  # not a saturated output
    device_matches_reference(cm, g, xs)
