"""The fast kernels' requantization per channel: every channel exact, none silently slow.

A multiplier of 0.5 or more (no right shift after SRDHM, or a left shift before it), one too
small for the single-multiply form's offset, and a pruned all-zero channel with a huge bias
each keep the layer on its fast kernel: constant channels as a record, the rest in the
general form for that channel alone, reported."""

from __future__ import annotations

import numpy as np
import pytest

from tinytamer.micro import codegen, reference, schedule, toolchain
from tinytamer.micro.builder import GraphBuilder
from tinytamer.micro.fixedpoint import (
    RQ_GENERAL,
    apply_records,
    fast_records,
    quantize_multiplier,
    requantize,
)

qemu = pytest.mark.skipif(
    not (toolchain.arm_available() and toolchain.qemu_available()),
    reason="ARM toolchain or QEMU missing: run scripts/install-micro-toolchain.sh",
)

# (real multiplier, bias, sum |w|) per channel: the cases the single-multiply form refuses,
# and two it takes.
CHANNELS = [
    (0.75, 1000, 2000),  # [0.5, 1): e = 0, nothing to round after SRDHM
    (0.5, -77, 300),  # exactly 0.5
    (3.7, 5, 40),  # a left shift of 2 before SRDHM
    (2.0**-27, 0, 30000),  # tiny: constant over its accumulators
    (2.0**-25 * 1.3, 0, 2_000_000),  # tiny, yet not constant: the general form
    (0.01, (1 << 31) - 1, 0),  # a pruned channel with a huge bias: constant
    (0.01, -(1 << 31), 0),
    (0.0, 123, 50),  # multiplier 0: the zero point
    (0.004, 12345, 9000),  # the single-multiply form
    (2.0**-22 * 1.9, -999, 10000),
]


def _records(zp: int):
    mult, shift = zip(*(quantize_multiplier(m) for m, _, _ in CHANNELS), strict=True)
    bias = np.array([b for _, b, _ in CHANNELS], np.int64)
    wsum = np.array([s for _, _, s in CHANNELS], np.int64)
    return fast_records(bias, np.array(mult), np.array(shift), wsum, zp), bias, mult, shift, wsum


@pytest.mark.parametrize("zp", [-128, -5, 0, 127])
def test_every_channel_record_equals_the_reference(zp):
    rq, bias, mult, shift, wsum = _records(zp)
    assert rq.records.dtype == np.int32 and rq.records.shape == (len(CHANNELS), 4)
    assert (rq.general, rq.constant) == (4, 3)
    assert [int(r[2]) for r in rq.records[:3]] == [RQ_GENERAL] * 3
    rng = np.random.default_rng(zp & 0xFF)
    for c, rec in enumerate(rq.records):
        lo, hi = (
            max(int(bias[c]) - 255 * int(wsum[c]), -(1 << 31)),
            min(int(bias[c]) + 255 * int(wsum[c]), (1 << 31) - 1),
        )
        acc = np.concatenate([rng.integers(lo, hi + 1, 5000), [lo, hi, bias[c], 0, -1, 1]])
        acc = acc[(acc >= lo) & (acc <= hi)]
        if rec[0] == 0 and rec[1] == 0:  # a constant record: the kernel's sum leaves out bias
            got = apply_records(acc - bias[c], rec)
        else:
            got = apply_records(acc, rec)
        want = requantize(acc, mult[c], shift[c]) + zp
        np.testing.assert_array_equal(
            np.clip(got, -128, 127), np.clip(want, -128, 127), err_msg=f"channel {c}: {CHANNELS[c]}"
        )


@pytest.mark.parametrize("zp", [-128, 0, 127])
def test_the_sum_sign_rounding_of_the_quads_output_equals_the_records(zp):
    """The quads kernel's assembly output (TT_QX_RQ2, TT_QX_ADD1) adds the offset inside
    SMMLAR and takes the rounding's sign term from the doubled sum, not from the product:
    equal to tt_rq_chan on every single-multiply and constant record, small negative sums
    (products that round to 0) included."""
    rq, *_ = _records(zp)
    rng = np.random.default_rng(7)
    acc = np.concatenate([np.arange(-4096, 4097), rng.integers(-(1 << 29), 1 << 29, 20000)])
    checked = 0
    for rec in rq.records:
        _, m, e, off = (int(v) for v in rec)
        if e == RQ_GENERAL:
            continue
        two = 2 * acc
        smmlar = (two * m + (off << 32) + (1 << 31)) >> 32
        np.testing.assert_array_equal((smmlar + (two >> 31)) >> e, apply_records(acc, rec), err_msg=str(rec))
        checked += 1
    assert checked == len(CHANNELS) - 4


def _bit_exact_on_qemu(tmp_path, g, rng: np.random.Generator) -> str:
    """Three random inputs through the ARM build of ``g`` on QEMU, equal to the integer
    reference (whose outputs must vary); returns the generated model.c."""
    xs = rng.integers(-128, 128, (3, *g.tensors[g.input].shape)).astype(np.int8)
    want = np.stack([reference.run(g, x).reshape(-1) for x in xs])
    assert len(np.unique(want)) > 5
    cm = codegen.generate(g, dsp=True)
    build = toolchain.arm_build(cm, tmp_path, "cortex-m4", inputs=xs.reshape(len(xs), -1))
    np.testing.assert_array_equal(toolchain.qemu_run(build, cm.output_size), want)
    return cm.files["model.c"]


def _layer_graph(seed: int = 0):
    """A pointwise ("mm") and a depthwise ("simd") convolution whose channels take every
    record kind: multipliers >= 0.5, tiny ones, an all-zero channel with a huge bias."""
    rng = np.random.default_rng(seed)
    b = GraphBuilder((5, 5, 8), 0.02, 3)
    w = rng.integers(-127, 128, (8, 8, 1, 1))
    w[6] = 0  # a pruned channel
    x = b.conv(b.input, w, np.full(8, 0.002), rng.normal(0, 1, 8), 0.03, -4, name="pw")
    dw = rng.integers(-127, 128, (8, 1, 3, 3))
    dw[5] = 0
    y = b.conv(x, dw, np.full(8, 0.003), rng.normal(0, 1, 8), 0.05, 2, padding=(1, 1), groups=8, name="dw")
    g = b.graph(y)
    for op in g.ops:
        real = [0.75, 1.6, 0.004, 2.0**-30, 0.5, 0.006, 0.002, 0.005]
        m, s = zip(*(quantize_multiplier(r) for r in real), strict=True)
        op.multiplier[:] = m
        op.shift[:] = s
        zero = 6 if op.name == "pw" else 5
        op.bias[zero] = (1 << 31) - 1 if op.name == "pw" else -(1 << 31)
    return g


def test_fallback_is_per_channel_and_reported():
    g = _layer_graph()
    for op in g.ops:
        assert schedule.resolve(op, True)["kernel"] == ("mm" if op.name == "pw" else "simd")
    # 0.75, 1.6 and 0.5 take the general form; 2^-30 and the all-zero channel are constant.
    assert schedule.requant_fallback(g, True) == {"pw": 3, "dw": 3}
    plan = schedule.requant_plan(g.ops[0], g.tensors[g.ops[0].output].zero_point)
    assert plan.constant == 2
    for op in g.ops:
        op.schedule = {"kernel": "im2col" if op.name == "pw" else "direct"}
    assert schedule.requant_fallback(g, True) == {}  # the general kernels: nothing to report


def test_packed_forms_report_their_fast_kernels_fallback():
    """A shared pointwise convolution ("blocks"), an int4 depthwise one (the packed kernel's
    SIMD groups) and a packed fully connected layer (general requantization: nothing to
    report) side by side: each fast kernel's general channels are reported, the others
    are skipped."""
    g = _layer_graph()
    rng = np.random.default_rng(2)
    pw, dw = g.ops
    pw.weight = rng.choice(rng.integers(-127, 128, 16), pw.weight.shape)
    pw.weight[6] = 0
    pw.weight_form = "shared"
    dw.weight = rng.integers(-8, 8, dw.weight.shape)
    dw.weight[5] = 0
    dw.weight_form = "int4"
    assert schedule.resolve(pw, True)["kernel"] == "blocks"
    assert schedule.resolve(dw, True)["kernel"] == "packed"
    assert schedule.requant_fallback(g, True) == {"pw": 3, "dw": 3}
    b = GraphBuilder((37,), 0.02, 3)
    fc = b.dense(b.input, rng.integers(-8, 8, (5, 37)), np.full(5, 0.002), np.zeros(5), 0.1, 1)
    gf = b.graph(fc)
    gf.ops[0].weight_form = "int4"
    assert schedule.resolve(gf.ops[0], True)["kernel"] == "packed"
    assert schedule.requant_fallback(gf, True) == {}


@qemu
@pytest.mark.parametrize("weights", ["int8", "int16"])
def test_fast_kernels_are_bit_exact_with_every_record_kind(tmp_path, weights):
    g = _layer_graph()
    g.ops[0].schedule = {"kernel": "mm", "weights": weights}
    src = _bit_exact_on_qemu(tmp_path, g, np.random.default_rng(1))
    assert "tt_conv2d_s8_mm(" in src and "tt_depthwise_s8_dsp(" in src


def test_a_deploy_warns_of_each_layer_with_general_channels():
    from types import SimpleNamespace

    from tinytamer.targets.micro import _requant_fallback

    prog = SimpleNamespace(graph=_layer_graph(), device="cortex-m4")
    with pytest.warns(UserWarning) as caught:
        assert _requant_fallback("cortex-m4", prog) == {"pw": 3, "dw": 3}
    assert [str(w.message)[:52] for w in caught] == [
        f"target 'cortex-m4': layer '{n}' requantizes 3 channel" for n in ("pw", "dw")
    ]
    assert _requant_fallback("micro-host", SimpleNamespace(graph=_layer_graph(), device="host")) == {}


def _quads_graph(general: bool, weights: str = "quads", seed: int = 3):
    """Two pointwise convolutions on the quads kernel (``weights``: its int8, quads4 or
    quads2 layout), the second with a residual add fused into it (the plain and the
    fused-add entry's modes), and either every channel in the single-multiply form or three
    of eight in the general form; a head after the add."""
    rng = np.random.default_rng(seed)
    hi = {"quads": 128, "quads4": 8, "quads2": 2}[weights]
    b = GraphBuilder((5, 5, 8), 0.02, 3)
    x = b.conv(b.input, rng.integers(-hi, hi, (8, 8, 1, 1)), np.full(8, 0.002), rng.normal(0, 1, 8), 0.03, -4)
    y = b.conv(x, rng.integers(-hi, hi, (8, 8, 1, 1)), np.full(8, 0.002), rng.normal(0, 1, 8), 0.04, 1, name="c2")
    z = b.add(y, x, 0.05, 2)
    g = b.graph(b.conv(z, rng.integers(-127, 128, (4, 8, 1, 1)), np.full(4, 0.002), None, 0.1, 0, name="head"))
    if general:
        for op in g.ops[:2]:
            real = [0.75, 0.004, 1.6, 0.005, 0.5, 0.006, 0.002, 0.005]
            m, s = zip(*(quantize_multiplier(r) for r in real), strict=True)
            op.multiplier[:] = m
            op.shift[:] = s
            # Small biases, so that the general channels' outputs do not all saturate.
            op.bias[:] = np.clip(op.bias, -60, 60)
    for op in g.ops[:2]:
        op.weight_form = {"quads": "int8", "quads4": "int4", "quads2": "int2"}[weights]
        op.schedule = {"kernel": "mm", "weights": weights}
    return g


@qemu
@pytest.mark.parametrize("weights", ["quads", "quads4", "quads2"])
@pytest.mark.parametrize("general", [False, True])
def test_quads_layers_with_general_channels_take_the_any_mode_entry(tmp_path, general, weights):
    """The plain and fused-add entries' output code (assembly, every layout) holds only the
    single-multiply form; a layer with a channel in the general form goes to the entry that
    has it, bit-exact."""
    g = _quads_graph(general, weights)
    s8 = {"quads": "s8", "quads4": "s4", "quads2": "s2"}[weights]
    assert [schedule.requant_plan(op, g.tensors[op.output].zero_point).general > 0 for op in g.ops[:2]] == [general] * 2
    src = _bit_exact_on_qemu(tmp_path, g, np.random.default_rng(4))
    if general:
        assert src.count(f"tt_conv2d_{s8}_qx(") == 2 and f"tt_conv2d_{s8}_qx_add(" not in src
    else:
        assert f"tt_conv2d_{s8}_qx_plain(" in src and f"tt_conv2d_{s8}_qx_add(" in src


@qemu
def test_shared_blocks_with_general_channels_are_bit_exact(tmp_path):
    """The "blocks" kernel (shared weights unpacked onto the quads kernel) checks the records
    at run time: a layer with general channels takes the any-mode instance."""
    g = _layer_graph()
    rng = np.random.default_rng(2)
    pw = g.ops[0]
    pw.weight = rng.choice(np.r_[rng.integers(-127, 128, 13), -1, 0, 1], pw.weight.shape)
    # The general channels (multipliers 0.75, 1.6, 0.5) get small sums and biases, so that
    # their outputs do not all saturate (where the single-multiply form would agree by chance).
    pw.weight[[0, 1, 4]] = rng.choice([-1, 0, 1], pw.weight[[0, 1, 4]].shape)
    pw.bias[[0, 1, 4]] = [5, -7, 3]
    pw.weight[6] = 0
    pw.weight_form = "shared"
    assert schedule.resolve(pw, True)["kernel"] == "blocks"
    assert "tt_conv2d_s8_qxb(" in _bit_exact_on_qemu(tmp_path, g, rng)
