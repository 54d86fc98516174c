"""The "quads" convolution kernel (tt_conv2d_s8_qx: 4 channels x 2 pixels per pass, the
"pairs" words of two channel pairs interleaved): the layout in numpy, its scratch (the 2 x 2
kernel's, so peak SRAM is no worse than with it), every edge shape bit-exact against the
integer reference on the emulated Cortex-M4, and the runtime's unoptimized build (no
register-hungry asm) bit-exact too.  The same for "quads4", the kernel over packed int4
weights (tt_conv2d_s4_qx*): its words' nibbles give back 16 times the quads words, the
bound that keeps its 16-times sums exact, the default for int4 convolutions, the extreme
values."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from tinytamer.micro import codegen, reference, schedule, toolchain, tuning
from tinytamer.micro.builder import GraphBuilder
from tinytamer.micro.ir import Conv2D
from tinytamer.micro.ops.conv import pair_builders, quads_packed_fits
from tinytamer.micro.session import Session

arm = pytest.mark.skipif(
    not toolchain.arm_available(), reason="arm-none-eabi-gcc missing: run scripts/install-micro-toolchain.sh"
)


def _conv_graph(rng, shape, oc, k, stride=1, pad=0, relu=None, bits=8):
    """One convolution; ``bits`` 4 or 2: weights in that range, stored in the int4 / int2 form."""
    kh, kw = (k, k) if isinstance(k, int) else k
    ph, pw = (pad, pad) if isinstance(pad, int) else pad
    b = GraphBuilder(shape, 0.02, 3)
    lim = 1 << (bits - 1)
    y = b.conv(
        b.input,
        rng.integers(-lim, lim, (oc, shape[2], kh, kw)),
        rng.uniform(0.002, 0.01, oc),
        rng.normal(0, 1, oc),
        0.05,
        -7,
        stride=(stride, stride),
        padding=(ph, pw),
        relu=relu,
        name="c",
    )
    g = b.graph(y)
    if bits != 8:
        g.ops[0].weight_form = f"int{bits}"
    return g


@pytest.mark.parametrize("oc", [1, 2, 3, 4, 6, 7, 8, 13])
def test_quads_interleave_the_pairs_words(oc):
    """Channel pairs (4q, 4q+1) and (4q+2, 4q+3) alternate word by word; the channels past
    the last whole quad keep the pairs layout, so the flash is the pairs layout's.  (Flat
    packing differs in lane order too: the quads kernel gathers the field as bytes.)"""
    g = _conv_graph(np.random.default_rng(oc), (4, 4, 5), oc, 3)
    op = g.ops[0]
    op.schedule = {"kernel": "mm", "weights": "pairs", "pack": "channel"}
    pairs = schedule.weight_array(op, True)
    op.schedule = {**op.schedule, "weights": "quads"}
    quads = schedule.weight_array(op, True)
    assert quads.dtype == np.int32 and quads.shape == pairs.shape
    n_pairs = -(-oc // 2)
    nw = pairs.size // n_pairs
    by_pair = pairs.reshape(n_pairs, nw)
    whole = oc // 4
    for q in range(whole):
        got = quads[2 * q * nw : 2 * (q + 1) * nw].reshape(nw, 2)
        np.testing.assert_array_equal(got[:, 0], by_pair[2 * q])
        np.testing.assert_array_equal(got[:, 1], by_pair[2 * q + 1])
    np.testing.assert_array_equal(quads[2 * whole * nw :], by_pair[2 * whole :].reshape(-1))


def test_quads_take_the_2x2_kernels_scratch():
    """A third less than the 3-pixel pairs kernel: the reason the layout is the default."""
    g = _conv_graph(np.random.default_rng(0), (16, 16, 32), 32, 3, 1, 1)
    op = g.ops[0]
    sizes = {}
    for w in ("quads", "pairs", "int8"):
        op.schedule = {"kernel": "mm", "weights": w}
        sizes[w] = schedule.scratch_bytes(g, op, True)
    assert sizes["quads"] == sizes["int8"] == 2 * 2 * 288
    assert sizes["pairs"] == 3 * 2 * 288
    op.schedule = {}
    assert schedule.resolve(op, True)["weights"] == "quads"


@pytest.mark.parametrize(
    ("shape", "k", "stride", "pad", "pack", "want"),
    [
        ((6, 6, 16), 3, 1, 1, "channel", "tt_qx_pairs"),  # 3 x 3 windows overlap by 2 pixels per row
        ((9, 8, 32), 3, 2, 1, "channel", "tt_qx_pairs"),  # stride 2: by one
        ((6, 8, 20), 3, 1, 1, "channel", "tt_qx_pairs"),  # channels a multiple of 4, not of 16
        ((5, 5, 8), 1, 1, 0, "channel", None),  # pointwise: nothing shared
        ((5, 7, 8), 3, 1, 1, "channel", None),  # an odd width: pairs would straddle rows
        ((3, 3, 128), 3, 1, 1, "channel", None),  # a 384-byte kernel row: lane sums overflow
        ((6, 6, 8), 5, 1, 2, "channel", None),  # windows 2 pixels into the padding, stride 1
        ((6, 6, 3), 3, 1, 1, "flat", "tt_qx_rgb_pairs"),  # an RGB 3 x 3 stem's flat fields
        ((7, 5, 3), 3, 1, 1, "flat", None),  # the same with an odd width
        ((6, 6, 4), 3, 1, 1, "flat", None),  # another flat field
    ],
)
def test_only_layers_whose_pixel_pairs_share_input_name_the_pair_builders(shape, k, stride, pad, pack, want):
    """The generator names a pair builders struct in a layer's parameters exactly where the
    quads kernel builds its pixels' columns in pairs (the runtime takes every pixel of such a
    layer in pairs, trusting it); an image whose layers name none links no pair builder (1.4
    KB less flash on DS-CNN, whose layers have none)."""
    g = _conv_graph(np.random.default_rng(0), shape, 8, k, stride, pad)
    op = g.ops[0]
    op.schedule = {"kernel": "mm", "weights": "quads", "pack": pack}
    in_w, out_w = g.tensors[op.inputs[0]].shape[1], g.tensors[op.output].shape[1]
    assert pair_builders(op, schedule.resolve(op, True), in_w, out_w) == want
    src = codegen.generate(g, dsp=True).files["model.c"]
    for name in ("tt_qx_pairs", "tt_qx_rgb_pairs"):
        assert (f"&{name}" in src) is (name == want)


@arm
@pytest.mark.parametrize("pairs", [True, False])
def test_the_pair_builders_are_linked_only_where_named(tmp_path, pairs):
    import subprocess

    shape, k = ((6, 6, 16), 3) if pairs else ((5, 5, 8), 1)
    g = _conv_graph(np.random.default_rng(0), shape, 8, k, 1, 1 if pairs else 0)
    cm = codegen.generate(g, dsp=True)
    elf = toolchain.arm_build(cm, tmp_path, "cortex-m4").elf
    nm = subprocess.run(["arm-none-eabi-nm", str(elf)], capture_output=True, text=True, check=True).stdout
    linked = {ln.split()[-1].split(".")[0] for ln in nm.splitlines()}
    assert ({"tt_qx_pairs", "tt_qx_pair_in", "tt_qx_pair_edge"} <= linked) is pairs
    assert ("tt_qx_pair_in" in linked) is pairs


def test_resnet8_peak_sram_is_the_2x2_kernels():
    """The default schedules' arena is no larger than with every convolution on the 2 x 2
    int8 kernel (MLPerf Tiny's ResNet-8: its peak sits at a 3 x 3 convolution's scratch)."""
    from tinytamer import zoo
    from tinytamer.compress.int8 import quantize_ptq
    from tinytamer.micro.lower import lower

    torch.manual_seed(0)
    m = zoo.create("resnet8", num_classes=10, in_channels=3).eval()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    g = lower(quantize_ptq(m, [x]), x[:1])
    default = codegen.generate(g, dsp=True).plan.arena_size
    for op in g.ops:
        if isinstance(op, Conv2D) and not op.depthwise:
            op.schedule = {"kernel": "mm", "weights": "int8"}
    assert default <= codegen.generate(g, dsp=True).plan.arena_size


EDGE_SHAPES = [
    # (input HWC, out channels, kernel, stride, padding, relu)
    ((6, 6, 16), 16, 3, 1, 1, "relu"),  # 72 column words: whole unrolled passes
    ((7, 5, 3), 16, 3, 1, 1, None),  # a 3-channel stem: 27 -> 28 values
    ((9, 7, 5), 7, 3, 2, 1, None),  # odd channels in and out (a quad + 3), stride 2
    ((5, 5, 8), 6, 1, 1, 0, "relu"),  # pointwise, a quad + a pair; 25 pixels: a last one
    ((8, 8, 1), 8, (10, 4), 2, (4, 1), None),  # the DS-CNN stem's shape
    ((3, 3, 8), 5, 1, 1, 0, None),  # a quad + one channel paired with zeros
    ((1, 1, 8), 2, 1, 1, 0, None),  # a single pixel, no whole quad
    ((3, 3, 128), 4, 3, 1, 1, None),  # 96-word rows: the unpacker's sum folds mid-row
    ((9, 8, 32), 12, 3, 2, 1, "relu"),  # stride 2: inside and edge windows, 24-word rows
    ((5, 6, 16), 4, (2, 3), 1, 0, None),  # no padding: every window inside
    ((6, 10, 48), 4, 3, 1, 1, None),  # pixel pairs unpacked together, 12-word pixels
    ((7, 12, 16), 8, 5, 2, 2, "relu"),  # pairs whose 5-wide windows share 3 pixels
    ((5, 7, 8), 4, 3, 1, 1, None),  # 8 channels, an odd width: edge pixels one by one
    ((6, 8, 20), 4, 3, 1, 1, None),  # 20 channels: the pairs' runs end in single words
]


@arm
@pytest.mark.parametrize("weights", ["quads", "quads4", "quads2"])
@pytest.mark.parametrize("case", EDGE_SHAPES, ids=lambda c: "x".join(map(str, c[0])) + f"-{c[1]}")
def test_quads_kernel_edge_shapes_are_bit_exact(tmp_path, case, weights):
    shape, oc, k, stride, pad, relu = case
    bits = {"quads4": 4, "quads2": 2}.get(weights, 8)
    g = _conv_graph(np.random.default_rng(sum(shape) + oc), shape, oc, k, stride, pad, relu, bits)
    scheds = [
        {"kernel": "mm", "unroll": u, "weights": weights, "pack": p}
        for u, p in itertools.product([2, 4], ["channel", "flat"])
    ]
    # _measure checks every candidate's output bit for bit against the reference.
    costs = tuning._measure(g, g.ops[0], "cortex-m4", scheds, tmp_path)
    assert all(c > 0 for c, _ in costs)


@arm
def test_quads_kernel_is_faster_than_pairs_on_whole_quads(tmp_path):
    g = _conv_graph(np.random.default_rng(5), (12, 12, 16), 16, 3, 1, 1)
    quads = {"kernel": "mm", "unroll": 4, "weights": "quads", "pack": "channel"}
    pairs = {**quads, "weights": "pairs"}
    (c_quads, _), (c_pairs, _) = tuning._measure(g, g.ops[0], "cortex-m4", [quads, pairs], tmp_path)
    assert c_quads < c_pairs
    assert tuning.const_bytes(g, 0, quads) == tuning.const_bytes(g, 0, pairs)


@arm
@pytest.mark.skipif(not toolchain.qemu_available(), reason="qemu-system-arm missing")
def test_unoptimized_runtime_build_is_bit_exact(tmp_path):
    """At -O0 (a frame pointer: 13 free registers) the 13- and 14-register loops of the
    pairs, quads, quads4, quads2 and Winograd kernels give way to C of the same arithmetic; all still
    run exactly (and the Winograd transforms' C builds without optimization)."""
    rng = np.random.default_rng(2)
    b = GraphBuilder((5, 6, 8), 0.02, 3)
    x = b.conv(
        b.input, rng.integers(-127, 128, (8, 8, 3, 3)), np.full(8, 0.004), None, 0.05, 1, padding=(1, 1), name="q"
    )
    x = b.conv(x, rng.integers(-127, 128, (8, 8, 3, 3)), np.full(8, 0.004), None, 0.05, 3, padding=(1, 1), name="w")
    x = b.conv(x, rng.integers(-127, 128, (6, 8, 3, 3)), np.full(6, 0.004), None, 0.05, -2, padding=(1, 1), name="p")
    x = b.conv(x, rng.integers(-8, 8, (7, 6, 3, 3)), np.full(7, 0.004), None, 0.05, 2, padding=(1, 1), name="n")
    y = b.conv(x, rng.integers(-2, 2, (9, 7, 3, 3)), np.full(9, 0.004), None, 0.05, 0, padding=(1, 1), name="t")
    g = b.graph(y)
    g.ops[1].schedule = {"kernel": "winograd"}
    g.ops[2].schedule = {"weights": "pairs"}
    g.ops[3].weight_form = "int4"
    g.ops[4].weight_form = "int2"
    xs = rng.integers(-128, 128, (2, *g.tensors[g.input].shape)).astype(np.int8)
    want = np.stack([reference.run(g, v).reshape(-1) for v in xs])
    cm = codegen.generate(g, dsp=True)
    src = cm.files["model.c"]
    assert all(
        k in src
        for k in ("tt_conv2d_s8_qx", "tt_conv2d_s8_mx(", "tt_conv2d_s8_wino(", "tt_conv2d_s4_qx", "tt_conv2d_s2_qx")
    )
    build = toolchain.arm_build(cm, tmp_path, "cortex-m4", inputs=xs.reshape(len(xs), -1), opt="-O0")
    np.testing.assert_array_equal(toolchain.qemu_run(build, cm.output_size), want)


PACKED = [("quads4", 4), ("quads2", 2)]


@pytest.mark.parametrize(("layout", "bits"), PACKED)
@pytest.mark.parametrize(("oc", "pack"), [(4, "channel"), (8, "flat"), (7, "channel"), (13, "flat"), (2, "channel")])
def test_packed_quads_words_unpack_to_the_scaled_quads_words(oc, pack, layout, bits):
    """Each packed word's fields, shifted and masked as the kernel does, are the quads
    layout's words for the weights times 2^(8 - bits), in the loop's order (AB, CD of each
    column word)."""
    g = _conv_graph(np.random.default_rng(oc), (4, 4, 5), oc, 3, bits=bits)
    op = g.ops[0]
    sched = {"kernel": "mm", "weights": layout, "pack": pack, "unroll": 4}
    op.schedule = sched
    got = schedule.weight_array(op, True).view(np.uint32)
    op.schedule = {**sched, "weights": "quads"}
    plain = schedule.weight_array(op, True)
    op.weight = (op.weight.astype(np.int16) << (8 - bits)).astype(np.int8)
    scaled = schedule.weight_array(op, True).view(np.uint32)
    per, quads = 8 // bits, oc // 4
    n = 2 * quads * (plain.size // -(-oc // 2))  # the whole quads' int8 words
    head = got[: n // per]
    mask = {4: 0xF0F0F0F0, 2: 0xC0C0C0C0}[bits]
    for j in range(per):
        np.testing.assert_array_equal((head << (8 - bits * (j + 1))) & mask, scaled[j:n:per])
    # The channels past the last whole quad: the int8 pairs words, unscaled.
    np.testing.assert_array_equal(got[n // per :].view(np.int32), plain[n:])


@pytest.mark.parametrize(("layout", "bits"), PACKED)
def test_packed_quads_are_the_default_and_shrink_the_weights(layout, bits):
    g = _conv_graph(np.random.default_rng(0), (8, 8, 16), 16, 3, 1, 1, bits=bits)
    op = g.ops[0]
    op.schedule = {}
    chosen = schedule.resolve(op, True)
    assert chosen["kernel"] == "mm" and chosen["weights"] == layout
    packed = tuning.const_bytes(g, 0, chosen)
    q8 = tuning.const_bytes(g, 0, {**chosen, "weights": "quads"})
    records = 16 * 4 * 4  # bias, mult, shift, offset per channel
    assert packed - records == (q8 - records) * bits // 8 == 16 * 144 * bits // 8
    # An int8 layer is never offered the packed layouts.
    op.weight_form = "int8"
    assert not {"quads4", "quads2"} & set(schedule.space(op, True)["weights"])


@pytest.mark.parametrize(("layout", "bits"), PACKED)
def test_packed_quads_refuse_sums_that_scaled_leave_int32(layout, bits):
    g = _conv_graph(np.random.default_rng(0), (4, 4, 8), 4, 3, bits=bits)
    op = g.ops[0]
    assert quads_packed_fits(op, bits)
    op.bias = op.bias.copy()
    op.bias[2] = 1 << (23 + bits)  # 2^(8 - bits) x the bias alone reaches 2^31
    assert not quads_packed_fits(op, bits)
    assert layout not in schedule.space(op, True).get("weights", [])
    op.bias[2] = 0
    op.weight = op.weight.copy()
    op.weight[0, 0, 0, 0] = 1 << (bits - 1)  # out of the form's range
    assert not quads_packed_fits(op, bits)


@arm
@pytest.mark.parametrize("bits", [4, 2])
def test_packed_quads_extreme_values_stay_exact(tmp_path, bits):
    """Every weight at its most negative against inputs 255 from the zero point, and large
    biases: the scaled sums at their largest."""
    b = GraphBuilder((6, 6, 64), 0.02, -128)
    lo = -(1 << (bits - 1))
    y = b.conv(b.input, np.full((8, 64, 3, 3), lo), np.full(8, 1e-4), np.full(8, 7.0), 0.5, 0, padding=(1, 1))
    g = b.graph(y)
    op = g.ops[0]
    op.weight_form = f"int{bits}"
    assert quads_packed_fits(op, bits) and np.abs(op.bias).max() > 100_000
    cm = codegen.generate(g, dsp=True)
    assert f"tt_conv2d_s{bits}_qx" in cm.files["model.c"]
    x = np.full(6 * 6 * 64, 127, np.int8)
    with Session("cortex-m4", cm, workdir=tmp_path) as sess:
        t_in, t_out = sess.alloc(cm.input_size), sess.alloc(cm.output_size)
        sess.write(t_in, x)
        sess.call("tt_model_run", t_in, t_out)
        got = sess.read(t_out)
    np.testing.assert_array_equal(got, reference.run(g, x.reshape(6, 6, 64)).reshape(-1))


@arm
@pytest.mark.parametrize(("layout", "bits"), PACKED)
def test_packed_quads_are_faster_than_the_packed_kernel(tmp_path, layout, bits):
    g = _conv_graph(np.random.default_rng(5), (12, 12, 16), 16, 3, 1, 1, bits=bits)
    sched = {"kernel": "mm", "unroll": 4, "weights": layout, "pack": "channel"}
    (c_packed_quads, _), (c_packed, _), (c_q8, _) = tuning._measure(
        g, g.ops[0], "cortex-m4", [sched, {"kernel": "packed"}, {**sched, "weights": "quads"}], tmp_path
    )
    assert c_packed_quads < c_packed
    assert c_packed_quads < 1.25 * c_q8  # 17 / 17.5 cycles per 16 MACs in the loop against 15
