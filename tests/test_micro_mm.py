"""The "mm" convolution kernel: single-multiply requantization, weight layouts, and every
knob combination bit-exact against the integer reference on the emulated Cortex-M4."""

from __future__ import annotations

import copy
import itertools

import numpy as np
import pytest

from tinytamer.micro import codegen, reference, schedule, toolchain
from tinytamer.micro.builder import GraphBuilder, random_graph
from tinytamer.micro.fixedpoint import requantize
from tinytamer.micro.ir import Conv2D

arm = pytest.mark.skipif(
    not toolchain.arm_available(), reason="arm-none-eabi-gcc missing: run scripts/install-micro-toolchain.sh"
)
qemu = pytest.mark.skipif(
    not (toolchain.arm_available() and toolchain.qemu_available()),
    reason="ARM toolchain or QEMU missing: run scripts/install-micro-toolchain.sh",
)


def _c_rq(acc: np.ndarray, rq: np.ndarray) -> np.ndarray:
    """tt_rq_apply in int64 numpy: t = SMMULR(2 acc, m); (t + offset + (t >> 31)) >> e."""
    _, m, e, off = (np.int64(v) for v in rq)
    t = (2 * acc.astype(np.int64) * m + (1 << 31)) >> 32
    return (t + off + (t >> 31)) >> e  # |t| < 2^31, so t >> 31 is C's sign word


def _conv_op(rng, oc, k, mult, shift, bias_scale=1000):
    w = rng.integers(-127, 128, (oc, k, k, 8)).astype(np.int8)
    return Conv2D(
        "c",
        ["x"],
        "y",
        w,
        rng.integers(-bias_scale, bias_scale, oc).astype(np.int32),
        np.asarray(mult, np.int32),
        np.asarray(shift, np.int32),
        (1, 1),
        (0, 0),
        1,
        -128,
        127,
    )


def test_fast_requant_equals_reference_requantization():
    """Over random and extreme accumulators, multipliers, shifts and zero points."""
    rng = np.random.default_rng(0)
    for e in range(1, schedule.RQ_MAX_RSHIFT + 1):
        mult = np.array([1 << 30, (1 << 31) - 1, int(rng.integers(1 << 30, 1 << 31)), 0])
        op = _conv_op(rng, 4, 3, mult, np.full(4, -e))
        for zp in (-128, -7, 0, 127):
            rq = schedule.fast_requant(op, zp)
            assert rq is not None and rq.dtype == np.int32
            bound = int(
                np.abs(op.bias.astype(np.int64)).max()
                + 255 * np.abs(op.weight.astype(np.int64)).reshape(4, -1).sum(1).max()
            )
            acc = np.concatenate([rng.integers(-bound, bound + 1, 2000), [-bound, bound, 0, -1, 1]]).astype(np.int64)
            for c in range(4):
                want = requantize(acc, int(op.multiplier[c]), int(op.shift[c])) + zp
                np.testing.assert_array_equal(_c_rq(acc, rq[c]), want)
                assert rq[c][0] == op.bias[c]


def test_fast_requant_marks_what_it_cannot_do_exactly_per_channel():
    """A channel the single-multiply form cannot take gets a general-form record (rshift 0);
    the layer keeps the fast kernel (tests/test_micro_requant.py: every record kind)."""
    rng = np.random.default_rng(1)
    # A left shift (real multiplier >= 0.5) or one of 0.5..1 (rshift 0).
    assert schedule.fast_requant(_conv_op(rng, 2, 1, [1 << 30] * 2, [-1, 0]))[1][2] == 0
    assert schedule.fast_requant(_conv_op(rng, 2, 1, [1 << 30] * 2, [-1, 2]))[1][2] == 0
    # An accumulator that could reach 2^30: 2 acc would overflow in SMMULR.
    big = _conv_op(rng, 2, 1, [1 << 30] * 2, [-3, -3])
    big.bias[1] = 1 << 30
    assert schedule.fast_requant(big)[1][2] == 0
    assert schedule.resolve(big, True)["kernel"] == "mm"


@pytest.mark.parametrize("pack", ["channel", "flat"])
def test_int16_weights_are_the_int8_words_unpacked(pack):
    """The pre-expanded layout holds exactly what SXTB16 / SXTB16 ROR 8 make of the int8 one."""
    rng = np.random.default_rng(2)
    op = _conv_op(rng, 5, 3, [1 << 30] * 5, [-5] * 5)
    op.schedule = {"kernel": "mm", "pack": pack, "weights": "int8"}
    w8 = schedule.weight_array(op, True).view(np.uint32)
    op.schedule = {"kernel": "mm", "pack": pack, "weights": "int16"}
    w16 = schedule.weight_array(op, True)
    b = w8.view(np.int8).reshape(-1, 4).astype(np.int64)

    def pair(lo, hi):
        return ((lo & 0xFFFF) | (hi << 16)).astype(np.int64)

    expanded = np.stack([pair(b[:, 0], b[:, 2]), pair(b[:, 1], b[:, 3])], axis=1)  # per word
    # int8 layout: words of a channel pair interleave word by word; int16: pair by pair.
    oc = 5
    k4 = w8.size // oc
    want = []
    for p0 in range(0, oc - 1, 2):
        words = expanded[p0 * k4 : (p0 + 2) * k4].reshape(k4, 2, 2)  # [group][channel][lane]
        want.append(words.reshape(-1))
    want.append(expanded[(oc - 1) * k4 :].reshape(-1))
    np.testing.assert_array_equal(w16.astype(np.int64) & 0xFFFFFFFF, np.concatenate(want) & 0xFFFFFFFF)
    assert w16.nbytes == 2 * w8.nbytes


def _mode_graph(seed: int = 0):
    """Convolutions in every output mode of the kernel (and a depthwise one in its fast
    form): ReLU with a narrow range, a fused add
    whose both clamps are the whole int8 range, plain full range with odd channels, and a
    fused add whose final multiplier is too small for the single-multiply form, and a last
    convolution whose multiplier is in [0.5, 1) (general-form records in the "mm" kernel)."""
    rng = np.random.default_rng(seed)

    def w(*shape):
        return rng.integers(-127, 128, size=shape)

    def sc(n):
        return rng.uniform(0.002, 0.02, size=n)

    b = GraphBuilder((7, 7, 4), 0.02, 3)
    # Depthwise, whole int8 range: the SIMD depthwise kernel's SSAT-only output path.
    x = b.conv(b.input, w(4, 1, 3, 3), sc(4), rng.normal(0, 1, 4), 0.04, 1, padding=(1, 1), groups=4, name="dw_full")
    a = b.conv(x, w(6, 4, 3, 3), sc(6), rng.normal(0, 1, 6), 0.05, -100, padding=(1, 1), relu="relu", name="narrow")
    c1 = b.conv(a, w(6, 6, 1, 1), sc(6), None, 0.06, 5, name="pw_full")
    s = b.add(a, c1, 0.06, -128, name="add_full")
    c = b.conv(s, w(5, 6, 3, 3), sc(5), rng.normal(0, 1, 5), 0.08, -3, stride=(2, 2), padding=(1, 1), name="odd")
    d = b.conv(c, w(5, 5, 1, 1), sc(5), None, 0.07, 2, name="pw_general")
    s2 = b.add(c, d, 2.0, 0, name="add_general")  # final multiplier ~2^-24: general form
    # w_scale ~0.01: a real multiplier of 0.5..1, outside the single-multiply form.
    o = b.conv(s2, w(3, 5, 1, 1), np.full(3, 0.01), None, 0.03, 0, name="head")
    return b.graph(o)


@qemu
@pytest.mark.parametrize("unroll,weights,pack", list(itertools.product([2, 4], ["int8", "int16"], ["channel", "flat"])))
def test_every_mm_schedule_is_bit_exact(tmp_path, unroll, weights, pack):
    for k, g in enumerate([_mode_graph(0), random_graph(5, size=7, channels=5)]):
        rng = np.random.default_rng(k)
        xs = rng.integers(-128, 128, (3, *g.tensors[g.input].shape)).astype(np.int8)
        want = np.stack([reference.run(g, x).reshape(-1) for x in xs])
        assert len(np.unique(want)) > 5  # not a saturated or constant output
        for op in g.ops:
            if isinstance(op, Conv2D) and not op.depthwise:
                op.schedule = {"kernel": "mm", "unroll": unroll, "weights": weights, "pack": pack}
                # "head"'s multiplier is in [0.5, 1): general-form records, still "mm".
                assert schedule.resolve(op, True)["kernel"] == "mm", op.name
        cm = codegen.generate(g, dsp=True)
        if k == 0:
            src = cm.files["model.c"]
            assert "(const tt_rq *)(const void *)qa" in src  # add_full: single-multiply form
            assert src.count("(const tt_rq *)(const void *)qa") == 1  # add_general: general
            # the depthwise SIMD kernel: weights, output and its records, no b/m/s arrays
            assert "w0, (tt_arena + " in src and "(const tt_rq *)(const void *)q0)" in src
        build = toolchain.arm_build(cm, tmp_path / f"g{k}", "cortex-m4", inputs=xs.reshape(len(xs), -1))
        np.testing.assert_array_equal(toolchain.qemu_run(build, cm.output_size), want)


@arm
def test_tuner_finds_a_better_schedule_than_the_default(tmp_path):
    """An 8 -> 8 channel pointwise convolution: 2 groups of 4 inputs, so the default 4-group
    unroll enters its loop part-way and the 2-group one pays; the tuner must find that by
    measuring, bit-exact.  (Its ReLU clamps above -128: the plain output mode, whose loop
    length is fixed, would leave the unroll nothing to win.)"""
    from tinytamer.micro.tuning import tune

    rng = np.random.default_rng(3)
    b = GraphBuilder((6, 6, 8), 0.02, 3)
    y = b.conv(
        b.input,
        rng.integers(-127, 128, (8, 8, 1, 1)),
        np.full(8, 0.005),
        None,
        0.05,
        -100,
        relu="relu",
        name="c",
    )
    g = b.graph(y)
    r = tune(g, "cortex-m4", log=tmp_path / "log.jsonl", workdir=tmp_path / "w")["c"]
    assert r["measured"] >= 4
    assert r["est_cycles"] < r["default_est_cycles"]
    default = copy.copy(g.ops[0])
    default.schedule = {}  # tune() set the op's schedule to the winner
    assert r["schedule"] != schedule.resolve(default, True)
    assert r["schedule"]["kernel"] == "mm" and r["schedule"]["unroll"] == 2
