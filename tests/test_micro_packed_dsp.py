"""The packed-weight kernels' Cortex-M4 DSP paths (runtime/tt_dense_packed.c,
tt_conv_packed.c, tt_dsp_unpack.h): int4 / int2 weights unpacked in registers into SMLAD,
codebook rows looked up in pairs; bit-exact with the integer reference on the emulated
Cortex-M4 for every form and the edge shapes (row tails, odd rows and pixels, groups, a
fused residual add, the extreme values), and fewer bits costing about what int8 costs."""

from __future__ import annotations

import numpy as np
import pytest

from tinytamer.micro import codegen, reference, toolchain, weights
from tinytamer.micro.builder import GraphBuilder
from tinytamer.micro.ir import Graph
from tinytamer.micro.session import Session

pytestmark = pytest.mark.skipif(
    not toolchain.arm_available(), reason="arm-none-eabi-gcc missing: run scripts/install-micro-toolchain.sh"
)


def _values(form: str, rng, shape) -> np.ndarray:
    if form == "int4":
        return rng.integers(-8, 8, shape)
    if form == "int2":
        return rng.integers(-2, 2, shape)
    if form == "int8":
        return rng.integers(-127, 128, shape)
    n = {"shared4": 16, "shared2": 4, "shared6": 40}[form]
    return rng.choice(rng.integers(-127, 128, n), shape)


def _set(g: Graph, form: str) -> Graph:
    for op in g.ops:
        if hasattr(op, "weight_form"):
            op.weight_form = "shared" if form.startswith("shared") else form
            if form == "int8":
                op.schedule = {"kernel": "simd" if op.weight.ndim == 2 else "mm"}
    return g


def _fc(out_n: int, in_n: int, form: str, seed: int = 0) -> Graph:
    rng = np.random.default_rng(seed)
    b = GraphBuilder((in_n,), 0.02, 3)
    w = _values(form, rng, (out_n, in_n))
    o = b.dense(b.input, w, rng.uniform(0.002, 0.02, out_n), rng.normal(0, 1, out_n), 0.1, 1)
    return _set(b.graph(o), form)


def _fc_chain(form: str, sizes=(37, 21, 64, 7, 3), seed: int = 0) -> Graph:
    """Fully connected layers with row tails, odd row counts, whole words and tiny rows."""
    rng = np.random.default_rng(seed)
    b = GraphBuilder((sizes[0],), 0.02, 3)
    x = b.input
    for i, (n_in, n_out) in enumerate(zip(sizes, sizes[1:], strict=False)):
        w = _values(form, rng, (n_out, n_in))
        x = b.dense(x, w, rng.uniform(0.002, 0.02, n_out), rng.normal(0, 1, n_out), 0.1, 1, name=f"fc{i}")
    return _set(b.graph(x), form)


def _conv(form: str, shape=(9, 11, 7), oc: int = 13, k: int = 3, groups: int = 1, seed: int = 0) -> Graph:
    """A padded strided conv, then a conv with a residual add fused into it."""
    rng = np.random.default_rng(seed)
    h, w, c = shape
    b = GraphBuilder(shape, 0.02, 2)
    c1 = b.conv(
        b.input,
        _values(form, rng, (oc, c // groups, k, k)),
        rng.uniform(0.002, 0.02, oc),
        rng.normal(0, 1, oc),
        0.05,
        -4,
        stride=(2, 1),
        padding=(k // 2, k // 2),
        groups=groups,
        relu="relu",
        name="c1",
    )
    c2 = b.conv(c1, _values(form, rng, (oc, oc, 1, 1)), rng.uniform(0.002, 0.02, oc), None, 0.06, 3, name="c2")
    return _set(b.graph(b.add(c2, c1, 0.07, -1, name="res")), form)


def _run(g: Graph, x: np.ndarray, tmp_path) -> tuple[np.ndarray, int]:
    cm = codegen.generate(g, dsp=True)
    with Session("cortex-m4", cm, workdir=tmp_path, count=True) as sess:
        t_in, t_out = sess.alloc(cm.input_size), sess.alloc(cm.output_size)
        sess.write(t_in, x)
        r = sess.call("tt_model_run", t_in, t_out)
        return sess.read(t_out), r.est_cycles


def _check(g: Graph, tmp_path, x: np.ndarray | None = None) -> int:
    size = g.tensors[g.input].size
    if x is None:
        x = np.random.default_rng(5).integers(-128, 128, size).astype(np.int8)
    out, cycles = _run(g, x, tmp_path)
    want = reference.run(g, x.reshape(g.tensors[g.input].shape)).reshape(-1)
    np.testing.assert_array_equal(out, want)
    return cycles


@pytest.mark.parametrize("form", ["int4", "int2", "shared4", "shared2", "shared6"])
def test_dense_packed_dsp_is_bit_exact(tmp_path, form):
    _check(_fc_chain(form), tmp_path)


@pytest.mark.parametrize(
    ("form", "shape", "oc", "k", "groups"),
    [
        ("int4", (9, 11, 7), 13, 3, 1),
        ("int2", (9, 11, 7), 13, 3, 1),
        ("shared4", (9, 11, 7), 13, 3, 1),
        ("int4", (7, 7, 1), 5, 5, 1),
        ("int4", (6, 5, 8), 6, 3, 2),
        ("int2", (6, 5, 8), 6, 3, 2),
    ],
    ids=["int4", "int2", "shared4", "int4-one-channel-5x5", "int4-grouped", "int2-grouped"],
)
def test_conv_packed_dsp_is_bit_exact(tmp_path, form, shape, oc, k, groups):
    g = _conv(form, shape, oc, k, groups)
    convs = [op for op in g.ops if getattr(op, "weight", np.zeros(0)).ndim == 4]
    for op in convs:  # int4 convolutions default to the quads4 kernel: ask for this one
        op.schedule = {"kernel": "packed"}
    assert "tt_conv2d_s8_packed(" in codegen.generate(g, dsp=True).files["model.c"]
    _check(g, tmp_path)
    if form in ("int4", "int2") and groups == 1:
        # The default: the quads4 / quads2 kernel, the add fused into the second convolution.
        for op in convs:
            op.schedule = {}
        src = codegen.generate(g, dsp=True).files["model.c"]
        entry = f"tt_conv2d_s{form[-1]}_qx"
        assert f"{entry}(" in src and f"{entry}_" in src
        _check(g, tmp_path / "quads")


@pytest.mark.parametrize("form", ["int4", "int2"])
def test_extreme_values_stay_exact(tmp_path, form):
    """The most negative weights against inputs 255 from the zero point: the products
    scaled by 2^(8 - bits) reach their largest magnitude."""
    lo = -8 if form == "int4" else -2
    b = GraphBuilder((64,), 0.02, -128)
    w = np.full((3, 64), lo)
    o = b.dense(b.input, w, np.full(3, 1e-4), np.zeros(3), 0.1, 0)
    g = _set(b.graph(o), form)
    _check(g, tmp_path, np.full(64, 127, np.int8))
    gc = _conv(form, (5, 5, 16), 4, 3)
    gc.ops[0].weight[:] = lo
    _check(gc, tmp_path, np.full(5 * 5 * 16, 127, np.int8))


def test_intn_form_refuses_sums_that_could_overflow():
    # 2^(8 - bits) * 255 * sum(|w|) must stay below 2^31: a row of 70,000 int4 -8s does not.
    rows = np.full((1, 70000), -8, np.int8)
    assert not weights.FORMS["int4"].fits(rows)
    assert weights.choose(rows, 4) != "int4"
    assert weights.FORMS["int4"].fits(np.full((4, 1000), -8, np.int8))


def test_fewer_bits_cost_about_what_int8_costs(tmp_path):
    """Figures (cortex-m4 cycle table, ideal memory): fully connected 120 x 400: int8 SIMD
    116 k est. cycles, int4 134 k, int2 126 k."""
    x = np.random.default_rng(1).integers(-128, 128, 400).astype(np.int8)
    cycles = {f: _check(_fc(120, 400, f), tmp_path / f, x) for f in ("int8", "int4", "int2")}
    assert cycles["int4"] <= 1.25 * cycles["int8"], cycles
    assert cycles["int2"] <= 1.25 * cycles["int8"], cycles


@pytest.mark.parametrize(
    ("shape", "oc", "k", "block", "pack"),
    [
        ((9, 11, 7), 13, 3, 8, None),  # flat field (7 inputs), 3 quads + an odd channel
        ((6, 5, 8), 14, 3, 4, "channel"),  # whole groups of inputs, a pair left over
        ((6, 6, 6), 10, 3, 16, "channel"),  # inputs padded 6 -> 8 per position, one block
        ((7, 7, 1), 5, 5, 8, None),  # one input channel, 5 x 5
    ],
    ids=["flat-odd", "channel-pairs", "channel-padded", "one-channel-5x5"],
)
def test_shared_conv_blocks_is_bit_exact(tmp_path, shape, oc, k, block, pack):
    """Shared convolutions on the quads kernel, the weights of `block` channels at a time
    unpacked into its layout (tt_conv2d_s8_qxb): the default for the shared form, with the
    residual add of the second convolution fused in."""
    g = _conv("shared4", shape, oc, k)
    for op in g.ops:
        if getattr(op, "weight", np.zeros(0)).ndim == 4:
            op.schedule = {"block": block, **({"pack": pack} if pack else {})}
    src = codegen.generate(g, dsp=True).files["model.c"]
    assert src.count("tt_conv2d_s8_qxb(") == 2, src
    _check(g, tmp_path)


def test_shared_conv_blocks_cost_a_fraction_of_the_packed_kernel(tmp_path):
    """LeNet-5's second convolution (20 -> 50 channels, 5 x 5, 12 x 12 map), 16 shared
    values.  Figures (cortex-m4 cycle table, ideal memory): int8 quads 1.78 M est. cycles;
    shared on "blocks" 2.92 M (1.64x int8; blocks of 8 channels: 2.56 M with 16, 3.64 M
    with 4); on the row-by-row "packed" kernel 17.4 M (9.8x)."""
    rng = np.random.default_rng(3)
    x = rng.integers(-128, 128, 12 * 12 * 20).astype(np.int8)
    cycles = {}
    for name, form, sched in (("int8", "int8", {}), ("blocks", "shared4", {}), ("packed", "shared4", None)):
        b = GraphBuilder((12, 12, 20), 0.02, 2)
        o = b.conv(b.input, _values(form, rng, (50, 20, 5, 5)), rng.uniform(0.002, 0.02, 50), None, 0.05, 0)
        g = _set(b.graph(o), form)
        g.ops[0].schedule = {"kernel": "packed"} if sched is None else sched
        cycles[name] = _check(g, tmp_path / name, x)
    assert cycles["blocks"] <= 1.8 * cycles["int8"], cycles
    assert cycles["blocks"] <= cycles["packed"] / 4, cycles
