"""The "pairs" convolution kernel (tt_conv2d_s8_mx: two channels' int8 weights in one word,
2 channels x 3 pixels per pass) and the depthwise kernel's straight-line taps: the weight
layout's identity in numpy, and every edge shape bit-exact against the integer reference
on the emulated Cortex-M4."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from tinytamer.micro import codegen, reference, schedule, toolchain, tuning
from tinytamer.micro.builder import GraphBuilder
from tinytamer.micro.ir import Conv2D
from tinytamer.micro.session import Session

arm = pytest.mark.skipif(
    not toolchain.arm_available(), reason="arm-none-eabi-gcc missing: run scripts/install-micro-toolchain.sh"
)


def _conv_graph(rng, shape, oc, k, stride=1, pad=0, relu=None):
    kh, kw = (k, k) if isinstance(k, int) else k
    ph, pw = (pad, pad) if isinstance(pad, int) else pad
    b = GraphBuilder(shape, 0.02, 3)
    y = b.conv(
        b.input,
        rng.integers(-128, 128, (oc, shape[2], kh, kw)),
        rng.uniform(0.002, 0.01, oc),
        rng.normal(0, 1, oc),
        0.05,
        -7,
        stride=(stride, stride),
        padding=(ph, pw),
        relu=relu,
        name="c",
    )
    return b.graph(y)


@pytest.mark.parametrize("pack", ["channel", "flat"])
def test_pairs_words_give_both_channels(pack):
    """S = sum SMLAD(x, word) and T = sum SMLAD(x, SXTB16(word ROR 8)) over the column words
    give channel B as T and channel A as S - 256 T - 128 sum x, in wrapping int32."""
    rng = np.random.default_rng(0)
    g = _conv_graph(rng, (5, 5, 6), 5, 3)
    op = g.ops[0]
    op.schedule = {"kernel": "mm", "weights": "pairs", "pack": pack}
    words = schedule.weight_array(op, True).view(np.uint32).astype(np.int64)
    oc, kh, kw, ic = op.weight.shape
    flat = pack == "flat"
    k = -(-kh * kw * ic // 4) * 4 if flat else kh * kw * -(-ic // 4) * 4
    nw = k // 2
    assert words.size == -(-oc // 2) * nw  # the int8 layout's bytes (+ a zero channel: odd oc)
    # The column a kernel builds for one receptive field x (k values): word j's lanes.
    x = rng.integers(-255, 256, k)
    w = op.weight.reshape(oc, -1) if flat else np.pad(op.weight, ((0, 0), (0, 0), (0, 0), (0, k // (kh * kw) - ic)))
    w = np.pad(w.reshape(oc, -1), ((0, 0), (0, k - w.reshape(oc, -1).shape[1]))).astype(np.int64)
    order = np.arange(k).reshape(-1, 4)[:, [0, 1, 2, 3] if flat else [0, 2, 1, 3]].reshape(-1, 2)
    lanes = x[order]  # [nw, 2]

    def s16(v):
        return ((v & 0xFFFF) ^ 0x8000) - 0x8000

    for pair in range(-(-oc // 2)):
        wd = words[pair * nw : (pair + 1) * nw]
        lo, hi = s16(wd), s16(wd >> 16)
        s = (lanes[:, 0] * lo + lanes[:, 1] * hi).sum()
        b_lo = ((wd >> 8 & 0xFF) ^ 0x80) - 0x80
        b_hi = ((wd >> 24 & 0xFF) ^ 0x80) - 0x80
        t = (lanes[:, 0] * b_lo + lanes[:, 1] * b_hi).sum()
        a = s - 256 * t - 128 * x.sum()
        a_wrapped = ((a & 0xFFFFFFFF) ^ 0x80000000) - 0x80000000
        assert a_wrapped == w[2 * pair] @ x
        if 2 * pair + 1 < oc:
            assert t == w[2 * pair + 1] @ x
        else:
            assert t == 0  # the zero channel an odd last one pairs with


EDGE_SHAPES = [
    # (input HWC, out channels, kernel, stride, padding, relu)
    ((6, 6, 16), 16, 3, 1, 1, "relu"),  # 72 column words: whole unrolled passes
    ((7, 5, 3), 16, 3, 1, 1, None),  # a 3-channel stem: 27 -> 28 values
    ((9, 7, 5), 7, 3, 2, 1, None),  # odd channels in and out, stride 2, odd widths
    ((5, 5, 8), 6, 1, 1, 0, "relu"),  # pointwise
    ((8, 8, 1), 8, (10, 4), 2, (4, 1), None),  # the DS-CNN stem's shape
    ((4, 4, 32), 33, 3, 1, 1, None),  # 16 pixels (a last block of one), 33 channels
    ((1, 1, 8), 2, 1, 1, 0, None),  # a single pixel
    ((3, 3, 128), 4, 3, 1, 1, None),  # 96-word rows: the unpacker's sum folds mid-row
]


@arm
@pytest.mark.parametrize("case", EDGE_SHAPES, ids=lambda c: "x".join(map(str, c[0])) + f"-{c[1]}")
def test_pairs_kernel_edge_shapes_are_bit_exact(tmp_path, case):
    shape, oc, k, stride, pad, relu = case
    g = _conv_graph(np.random.default_rng(sum(shape)), shape, oc, k, stride, pad, relu)
    scheds = [
        {"kernel": "mm", "unroll": u, "weights": "pairs", "pack": p}
        for u, p in itertools.product([2, 4], ["channel", "flat"])
    ]
    # _measure checks every candidate's output bit for bit against the reference.
    costs = tuning._measure(g, g.ops[0], "cortex-m4", scheds, tmp_path)
    assert all(c > 0 for c, _ in costs)


def _model_graph(seed: int = 0):
    """Every output mode of the pairs kernel: a narrow ReLU range, a fused add in the
    single-multiply form, a fused add in the general form, general-form and constant
    channels; and depthwise layers with whole and clipped 3 x 3 windows, stride 2 and a
    5 x 5 kernel."""
    rng = np.random.default_rng(seed)

    def w(*shape):
        return rng.integers(-127, 128, size=shape)

    def sc(n):
        return rng.uniform(0.002, 0.02, size=n)

    b = GraphBuilder((7, 8, 8), 0.02, 3)
    x = b.conv(b.input, w(8, 1, 3, 3), sc(8), rng.normal(0, 1, 8), 0.04, 1, padding=(1, 1), groups=8, name="dw")
    a = b.conv(x, w(8, 8, 3, 3), sc(8), rng.normal(0, 1, 8), 0.05, -100, padding=(1, 1), relu="relu", name="narrow")
    c1 = b.conv(a, w(8, 8, 1, 1), sc(8), None, 0.06, 5, name="pw_full")
    s = b.add(a, c1, 0.06, -128, name="add_full")
    d = b.conv(s, w(8, 1, 5, 5), sc(8), None, 0.05, 0, padding=(2, 2), groups=8, name="dw5")
    e = b.conv(d, w(8, 1, 3, 3), sc(8), None, 0.05, 3, stride=(2, 2), padding=(1, 1), groups=8, name="dw_s2")
    f = b.conv(e, w(5, 8, 3, 3), sc(5), rng.normal(0, 1, 5), 0.08, -3, padding=(1, 1), name="odd")
    pw = w(5, 5, 1, 1)
    pw[2] = 0  # a pruned channel: a constant record
    h = b.conv(f, pw, sc(5), None, 0.07, 2, name="pw_general")
    s2 = b.add(f, h, 2.0, 0, name="add_general")  # final multiplier ~2^-24: general form
    o = b.conv(s2, w(3, 5, 1, 1), np.full(3, 0.01), None, 0.03, 0, name="head")  # multiplier 0.5..1
    return b.graph(o)


@arm
@pytest.mark.parametrize("layout", ["pairs", "quads"])
def test_pairs_and_depthwise_in_a_model_are_bit_exact(tmp_path, layout):
    g = _model_graph()
    for op in g.ops:
        if isinstance(op, Conv2D):
            want = "simd" if op.depthwise else "mm"
            assert schedule.resolve(op, True)["kernel"] == want, op.name
            if not op.depthwise:
                assert schedule.resolve(op, True)["weights"] == "quads"  # the default
                op.schedule = {"weights": layout}
    rng = np.random.default_rng(1)
    xs = rng.integers(-128, 128, (3, *g.tensors[g.input].shape)).astype(np.int8)
    want = np.stack([reference.run(g, x).reshape(-1) for x in xs])
    assert len(np.unique(want)) > 5
    cm = codegen.generate(g, dsp=True)
    src = cm.files["model.c"]
    # The quads kernel has one entry point per output mode (plain, fused add, any other).
    kernels = ["tt_conv2d_s8_mx("] if layout == "pairs" else [f"tt_conv2d_s8_qx{m}(" for m in ("", "_plain", "_add")]
    assert sum(src.count(k) for k in kernels) == 5 and src.count("tt_depthwise_s8_dsp(") == 3
    with Session("cortex-m4", cm, workdir=tmp_path) as sess:
        t_in, t_out = sess.alloc(cm.input_size), sess.alloc(cm.output_size)
        for x, ref in zip(xs, want, strict=True):
            sess.write(t_in, x.reshape(-1))
            sess.call("tt_model_run", t_in, t_out)
            np.testing.assert_array_equal(sess.read(t_out), ref)


@arm
def test_pairs_kernel_is_faster_than_the_int8_layout(tmp_path):
    """The reason the layout exists: fewer estimated cycles on a 16 -> 16 channel 3 x 3
    convolution, at the int8 layout's flash."""
    g = _conv_graph(np.random.default_rng(5), (12, 12, 16), 16, 3, 1, 1)
    pairs = {"kernel": "mm", "unroll": 4, "weights": "pairs", "pack": "channel"}
    int8 = {**pairs, "weights": "int8"}
    (c_pairs, _), (c_int8, _) = tuning._measure(g, g.ops[0], "cortex-m4", [pairs, int8], tmp_path)
    assert c_pairs < 0.95 * c_int8
    assert tuning.const_bytes(g, 0, pairs) == tuning.const_bytes(g, 0, int8)


@arm
@pytest.mark.parametrize(
    "shape,k",
    [
        ((8, 8, 64), 8),  # ResNet-8's global pool: the SIMD path
        ((6, 5, 8), 2),  # strided windows, odd width
        ((6, 6, 6), 3),  # 6 channels: the portable path
        ((20, 20, 4), 20),  # 400 values per window: past the int16 lanes, portable
    ],
)
def test_average_pool_is_bit_exact(tmp_path, shape, k):
    b = GraphBuilder(shape, 0.02, 3)
    g = b.graph(b.avgpool(b.input, (k, k), (k, k), 0.015, -5, name="p"))
    tuning._measure(g, g.ops[0], "cortex-m4", [{}], tmp_path)  # raises unless bit-exact
