"""A residual add fused into a convolution keeps a 256-entry rescale table only for the side
that needs one: the side of the larger scale (multiplier one half) is affine in the int8
code and computed by one multiply-add, 1 KB less flash per add.  The affine form is checked
against the table for every code; kernels stay bit-exact in both orientations (the conv's
side computed: the fast quads entry; the other side computed: the any-mode path)."""

from __future__ import annotations

import subprocess

import numpy as np
import pytest

from tinytamer.micro import codegen, reference, toolchain, tuning
from tinytamer.micro.builder import GraphBuilder
from tinytamer.micro.ir import Conv2D
from tinytamer.micro.ops.add import add_tables, affine_table
from tinytamer.micro.planner import _device_arena, order_residual_branches
from tinytamer.micro.program import MicroProgram
from tinytamer.micro.session import Session

arm = pytest.mark.skipif(
    not toolchain.arm_available(), reason="arm-none-eabi-gcc missing: run scripts/install-micro-toolchain.sh"
)


def _block(seed: int, conv_scale: float, other_scale: float, relu: str | None = None):
    """conv x -> conv -> conv y (scale conv_scale), y + x fused into y's conv -> conv."""
    rng = np.random.default_rng(seed)
    b = GraphBuilder((6, 5, 8), 0.02, 3)

    def conv(x, scale, zp, relu, name):
        w = rng.integers(-127, 128, (8, 8, 3, 3))
        return b.conv(x, w, np.full(8, 0.004), None, scale, zp, padding=(1, 1), relu=relu, name=name)

    x = conv(b.input, other_scale, 9, None, "c0")
    y = conv(conv(x, 0.05, -128, "relu", "c1"), conv_scale, -4, None, "c2")
    return b.graph(conv(b.add(y, x, 0.08, -3, relu=relu, name="add"), 0.05, 0, None, "c3"))


def _add(g):
    return next(op for op in g.ops if not isinstance(op, Conv2D))


@pytest.mark.parametrize(("conv_scale", "other_scale"), [(0.07, 0.03), (0.03, 0.07), (0.05, 0.05)])
def test_the_larger_scale_side_is_affine_for_every_code(conv_scale, other_scale):
    g = _block(0, conv_scale, other_scale)
    add = _add(g)
    ta, tb = add_tables(add, g)  # ta: the conv's side (y is the add's first input)
    larger, smaller = (ta, tb) if conv_scale >= other_scale else (tb, ta)
    mul, off = affine_table(larger)
    codes = np.arange(-128, 128, dtype=np.int64)
    np.testing.assert_array_equal(codes * mul + off, larger)
    assert mul == 1 << (add.left_shift - 1)  # multiplier one half: (c - zp) << (left_shift - 1)
    if conv_scale != other_scale:
        assert affine_table(smaller) is None  # a rounded rescale: it keeps its table


def test_a_table_off_by_one_anywhere_is_not_affine():
    codes = np.arange(-128, 128, dtype=np.int64)
    for i in (0, 1, 128, 255):
        t = codes * 8 + 5
        t[i] += 1
        assert affine_table(t) is None
    # A wrapping product that equals the table in int32 is still exact for the kernel.
    assert affine_table((codes * (1 << 24) + (1 << 31)) % (1 << 32) - (1 << 31)) is not None


@pytest.mark.parametrize(("conv_scale", "other_scale"), [(0.07, 0.03), (0.03, 0.07)])
def test_fused_add_emits_one_table(conv_scale, other_scale):
    g = _block(1, conv_scale, other_scale)
    src = codegen.generate(g, dsp=True).files["model.c"]
    tables = [line for line in src.splitlines() if line.startswith("static const int32_t t") and "[256]" in line]
    assert len(tables) == 1
    conv_computed = conv_scale > other_scale
    assert (".t_conv = 0" in src) == conv_computed and (".t_other = 0" in src) != conv_computed
    # The fast quads entry takes the conv's side computed, the other from its table.
    assert ("tt_conv2d_s8_qx_add(" in src) == conv_computed


@arm
@pytest.mark.parametrize(
    ("conv_scale", "other_scale", "relu", "kernel"),
    [
        (0.07, 0.03, None, None),  # quads, fast add entry (mode 2)
        (0.03, 0.07, None, None),  # quads, mirrored entry (the other side computed: mode 5)
        (0.07, 0.03, "relu", None),  # quads, narrower add clamps (mode 3)
        (0.03, 0.07, "relu", None),  # quads, mirrored entry, narrower clamps (mode 6)
        (0.07, 0.03, None, "pairs"),
        (0.03, 0.07, None, "int8"),  # the 2 x 2 kernel's output code
        (0.07, 0.03, None, "direct"),  # portable kernel: tt_fuse
        (0.03, 0.07, "relu", "direct"),
    ],
)
def test_fused_add_is_bit_exact_in_both_orientations(tmp_path, conv_scale, other_scale, relu, kernel):
    g = _block(2, conv_scale, other_scale, relu)
    for op in g.ops:
        if isinstance(op, Conv2D) and kernel is not None:
            op.schedule = {"kernel": "direct"} if kernel == "direct" else {"kernel": "mm", "weights": kernel}
    cm = codegen.generate(g, dsp=True)
    rng = np.random.default_rng(3)
    xs = rng.integers(-128, 128, (4, *g.tensors[g.input].shape)).astype(np.int8)
    want = np.stack([reference.run(g, v).reshape(-1) for v in xs])
    assert len(np.unique(want)) > 5
    with Session("cortex-m4", cm, workdir=tmp_path) as sess:
        t_in, t_out = sess.alloc(cm.input_size), sess.alloc(cm.output_size)
        for v, ref in zip(xs, want, strict=True):
            sess.write(t_in, v.reshape(-1))
            sess.call("tt_model_run", t_in, t_out)
            np.testing.assert_array_equal(sess.read(t_out), ref)


@arm
@pytest.mark.parametrize("bits", [8, 4, 2])
@pytest.mark.parametrize(
    ("shape", "c"),
    [
        ((6, 6, 8), 6),  # pixel pairs row by row; 2 channels past the last whole quad
        ((5, 5, 8), 7),  # an odd width (one pixel at a time), a missing last pixel, 3 past
        ((4, 6, 8), 2),  # no whole quad at all
        ((3, 5, 8), 12),  # three quads, a missing last pixel
    ],
)
def test_the_assembly_block_instances_are_bit_exact_at_their_edges(tmp_path, shape, c, bits):
    """The int8, quads4 and quads2 block instances for plain and fused-add layers
    (tt_qx_block02, tt_qx4_block02, tt_qx2_block02, assembly): the last out_c % 4 channels
    (in C, the fused add included), the second pixel of the last pair missing (its outputs
    not stored, in place of the add's other input too), and layers with no whole quad, on
    the fast entries (`_plain`, `_add`)."""
    rng = np.random.default_rng(5)
    b = GraphBuilder(shape, 0.02, 3)
    lim = 1 << (bits - 1)

    def conv(x, cin, scale, zp, relu, name):
        w = rng.integers(-lim + 1, lim, (c, cin, 3, 3))
        bias = rng.integers(-300, 300, c).astype(np.float64) * 0.0001
        return b.conv(x, w, np.full(c, 0.5 / lim), bias, scale, zp, padding=(1, 1), relu=relu, name=name)

    x = conv(b.input, shape[2], 0.03, 9, None, "c0")
    y = conv(conv(x, c, 0.05, -128, "relu", "c1"), c, 0.07, -4, None, "c2")
    g = b.graph(conv(b.add(y, x, 0.08, -3, name="add"), c, 0.05, 0, None, "c3"))
    for op in g.ops:
        if isinstance(op, Conv2D):
            op.weight_form = f"int{bits}"
    cm = codegen.generate(g, dsp=True)
    src = cm.files["model.c"]
    assert f"tt_conv2d_s{bits}_qx_add(" in src and f"tt_conv2d_s{bits}_qx_plain(" in src
    xs = rng.integers(-128, 128, (3, *shape)).astype(np.int8)
    want = np.stack([reference.run(g, v).reshape(-1) for v in xs])
    assert len(np.unique(want)) > 5
    guard = np.full(16, 0x5A, np.uint8).view(np.int8)  # after the output: a missing pixel's bytes
    with Session("cortex-m4", cm, workdir=tmp_path) as sess:
        t_in, t_out = sess.alloc(cm.input_size), sess.alloc(cm.output_size + guard.size)
        for v, ref in zip(xs, want, strict=True):
            sess.write(t_in, v.reshape(-1))
            sess.write(t_out, np.concatenate([np.zeros(cm.output_size, np.int8), guard]))
            sess.call("tt_model_run", t_in, t_out)
            got = sess.read(t_out)
            np.testing.assert_array_equal(got[: cm.output_size], ref)
            np.testing.assert_array_equal(got[cm.output_size :], guard)


@arm
@pytest.mark.parametrize("relu", [None, "relu"])
def test_a_mirrored_fused_add_costs_about_what_the_usual_one_does(tmp_path, relu):
    """The conv's side by its table and the other input's affine (modes 5 and 6) run their
    own quads entry; the add costs at most 2x the instructions of the usual orientation on
    top of the convolution (it cost 3.2x on the general path; 1.28x before the usual
    orientation's constant term moved into its table, one add less per value there, which
    the mirrored C output stage does not save; 1.86x since the usual orientation's instance
    is written whole in asm, with no C between a quad's sums and its outputs).  Exact
    counts, not time."""

    def add_instructions(conv_scale, other_scale):
        g = _block(2, conv_scale, other_scale, relu)
        cm = codegen.generate(g, dsp=True)
        d = tmp_path / f"{conv_scale}"
        prog = MicroProgram(g, cm, "cortex-m4", d)
        prog.arm = toolchain.arm_build(cm, d, "cortex-m4")
        x = np.random.default_rng(0).integers(-128, 128, g.tensors[g.input].size).astype(np.int8)
        layers = {r["layer"]: r["instructions"] for r in prog.profile(x, per_layer=True)["layers"]}
        nm = subprocess.run(["arm-none-eabi-nm", str(prog.arm.elf)], capture_output=True, text=True, check=True)
        return cm.files["model.c"], layers["c2+add"] - layers["c1"], {ln.split()[-1] for ln in nm.stdout.splitlines()}

    src, mirrored, linked = add_instructions(0.03, 0.07)
    assert "tt_conv2d_s8_qx_mirror(" in src
    # The mirrored entry links its own block instances, not the any-mode one (4 KB more).
    assert "tt_qx_blockn" not in linked and ({"tt_qx_block5", "tt_qx_block6"} & linked)
    _, usual, _ = add_instructions(0.07, 0.03)
    assert 0 < mirrored <= 2 * usual


@arm
@pytest.mark.parametrize(
    ("k", "kernel", "fused"),
    [(3, "mm", False), (1, "direct", False), (1, "mm", True)],
)
def test_a_conv_reading_the_adds_other_input_is_fused_only_where_safe(device_matches_reference, k, kernel, fused):
    """y = conv(x) + x: fused, the outputs overwrite the x the conv still reads (a 3 x 3 conv
    got a tenth of its outputs wrong on every kernel before the planner refused it).  A
    pointwise conv whose kernel gathers each pixel's input first ("mm") may still fuse."""
    rng = np.random.default_rng(6)
    b = GraphBuilder((6, 5, 8), 0.02, 3)
    x = b.conv(b.input, rng.integers(-127, 128, (8, 8, 3, 3)), np.full(8, 0.004), None, 0.03, 9, padding=(1, 1))
    pad = (k // 2, k // 2)
    y = b.conv(x, rng.integers(-127, 128, (8, 8, k, k)), np.full(8, 0.004), None, 0.07, -4, padding=pad, name="y")
    s = b.add(y, x, 0.08, -3, name="add")
    g = b.graph(b.conv(s, rng.integers(-127, 128, (8, 8, 1, 1)), np.full(8, 0.004), None, 0.05, 0))
    next(op for op in g.ops if op.name == "y").schedule = {"kernel": kernel}
    cm = codegen.generate(g, dsp=True)
    assert (".res = &r" in cm.files["model.c"]) == fused
    device_matches_reference(cm, g, rng.integers(-128, 128, (3, *g.tensors[g.input].shape)).astype(np.int8))


def _downsample_block(main_scale: float, short_scale: float):
    """x -> conv a -> conv b (main, scale main_scale); x -> 1x1 stride-2 shortcut (scale
    short_scale), run after b as a model's forward lists it; b + shortcut -> conv."""
    rng = np.random.default_rng(11)
    b = GraphBuilder((8, 8, 8), 0.02, 3)
    w = lambda o, i, k: rng.integers(-127, 128, (o, i, k, k))  # noqa: E731
    scale = np.full(16, 0.004)
    a = b.conv(b.input, w(16, 8, 3), scale, None, 0.05, -128, stride=(2, 2), padding=(1, 1), relu="relu", name="a")
    m = b.conv(a, w(16, 16, 3), scale, None, main_scale, 2, padding=(1, 1), name="b")
    sc = b.conv(b.input, w(16, 8, 1), scale, None, short_scale, -1, stride=(2, 2), name="shortcut")
    s = b.add(m, sc, 0.09, -128, relu="relu", name="add")
    return b.graph(b.conv(s, w(8, 16, 1), np.full(8, 0.004), None, 0.05, 0, name="head"))


@pytest.mark.parametrize(("main_scale", "short_scale", "swapped"), [(0.08, 0.031, True), (0.031, 0.08, False)])
def test_the_branch_fused_with_the_add_is_the_one_whose_side_is_affine(main_scale, short_scale, swapped):
    """The add is fused into the conv that runs just before it; the plain fused output
    paths want that conv's side affine (the larger scale).  Where only one side is, that
    decides the order, whatever the arena; the graph computes the same."""
    g = _downsample_block(main_scale, short_scale)
    xs = np.random.default_rng(0).integers(-128, 128, (3, 8, 8, 8)).astype(np.int8)
    before = [reference.run(g, v) for v in xs]
    assert order_residual_branches(g) == (["shortcut"] if swapped else [])
    g.validate()
    names = [op.name for op in g.ops]
    assert names == (["a", "shortcut", "b", "add", "head"] if swapped else ["a", "b", "shortcut", "add", "head"])
    fused_conv, add = g.ops[2], g.ops[3]
    conv_t, other_t = add_tables(add, g)
    if add.inputs[0] != fused_conv.output:
        conv_t, other_t = other_t, conv_t
    assert affine_table(conv_t) is not None and affine_table(other_t) is None
    for v, want in zip(xs, before, strict=True):
        np.testing.assert_array_equal(reference.run(g, v), want)


def test_with_both_sides_affine_the_order_with_the_smaller_arena_runs():
    """Equal scales: both sides' rescales are affine.  Run after conv b, the shortcut keeps
    the block input alive through b (and b's scratch); run first, it frees it."""
    g = _downsample_block(0.05, 0.05)
    t_a, t_b = add_tables(g.ops[3], g)
    assert affine_table(t_a) is not None and affine_table(t_b) is not None
    xs = np.random.default_rng(0).integers(-128, 128, (3, 8, 8, 8)).astype(np.int8)
    before = [reference.run(g, v) for v in xs]
    arena_before = _device_arena(g, True)
    assert order_residual_branches(g) == ["shortcut"]
    assert [op.name for op in g.ops] == ["a", "shortcut", "b", "add", "head"]
    assert _device_arena(g, True) < arena_before
    for v, want in zip(xs, before, strict=True):
        np.testing.assert_array_equal(reference.run(g, v), want)


def test_where_neither_form_nor_arena_decides_the_models_order_stays():
    """Both branches read the same tensor at equal scales: either order keeps the same
    tensors alive, and both sides are affine."""
    rng = np.random.default_rng(3)
    b = GraphBuilder((8, 8, 8), 0.02, 3)
    w = rng.integers(-127, 128, (8, 8, 3, 3))
    a = b.conv(b.input, w, np.full(8, 0.004), None, 0.05, -128, padding=(1, 1), relu="relu", name="a")
    y1 = b.conv(a, w, np.full(8, 0.004), None, 0.05, 2, padding=(1, 1), name="y1")
    y2 = b.conv(a, w, np.full(8, 0.004), None, 0.05, -1, padding=(1, 1), name="y2")
    g = b.graph(b.add(y1, y2, 0.09, -128, relu="relu", name="add"))
    assert order_residual_branches(g) == []
    assert [op.name for op in g.ops] == ["a", "y1", "y2", "add"]


@arm
@pytest.mark.parametrize(("main_scale", "short_scale"), [(0.08, 0.031), (0.05, 0.05)])
def test_reordered_branches_run_fused_bit_exact(device_matches_reference, main_scale, short_scale):
    g = _downsample_block(main_scale, short_scale)
    assert order_residual_branches(g) == ["shortcut"]
    cm = codegen.generate(g, dsp=True)
    assert ".res = &r3" in cm.files["model.c"]  # b runs fused with the add
    device_matches_reference(cm, g, np.random.default_rng(1).integers(-128, 128, (3, 8, 8, 8)).astype(np.int8))


def _stem(shape, stride, pad, in_zp, seed=0):
    rng = np.random.default_rng(seed)
    b = GraphBuilder(shape, 0.02, in_zp)
    w = rng.integers(-128, 128, (8, 3, 3, 3))
    y = b.conv(
        b.input,
        w,
        rng.uniform(0.002, 0.01, 8),
        rng.normal(0, 1, 8),
        0.05,
        -7,
        stride=(stride, stride),
        padding=(pad, pad),
        name="stem",
    )
    return b.graph(y)


@arm
@pytest.mark.parametrize(
    ("shape", "stride", "pad", "in_zp"),
    [
        ((7, 5, 3), 1, 1, 3),  # edge windows (the general gather) and inside ones
        ((9, 8, 3), 2, 1, -128),  # stride 2, the lowest zero point
        ((3, 3, 3), 1, 0, 127),  # one window, the whole input: the highest zero point
        ((4, 6, 3), 1, 0, 0),  # every window inside, rows 18 bytes apart (unaligned)
    ],
)
def test_rgb_stem_gather_is_bit_exact(tmp_path, shape, stride, pad, in_zp):
    g = _stem(shape, stride, pad, in_zp)
    sched = {"kernel": "mm", "unroll": 4, "weights": "quads", "pack": "flat"}
    # _measure checks the output bit for bit against the reference (several inputs).
    ((cost, _),) = tuning._measure(g, g.ops[0], "cortex-m4", [sched], tmp_path)
    assert cost > 0


def _calls(tmp_path, g, function: str) -> int:
    """How many times one inference enters ``function`` (the emulator's block counts at its
    first address)."""
    cm = codegen.generate(g, dsp=True)
    build = toolchain.arm_build(cm, tmp_path, "cortex-m4")
    nm = subprocess.run(["arm-none-eabi-nm", str(build.elf)], capture_output=True, text=True, check=True).stdout
    addr = {line.split()[-1]: int(line.split()[0], 16) & ~1 for line in nm.splitlines()}.get(function)
    if addr is None:
        return 0
    with Session("cortex-m4", elf=build.elf, count=True) as sess:
        t_in, t_out = sess.alloc(cm.input_size), sess.alloc(cm.output_size)
        sess.write(t_in, np.zeros(cm.input_size, dtype=np.int8))
        sess.call("tt_model_run", t_in, t_out)
        return sum(n for (a, _), n in sess._counter.blocks.items() if a == addr)


@arm
def test_rgb_stem_gathers_inside_windows_directly(tmp_path):
    """A 3 x 3 stem over 3 channels gathers each window wholly inside the input with
    tt_qx_rgb33 (6 x 6, padding 1: the 4 x 4 inside ones), the edge ones as before; a layer
    of another shape never enters it."""
    g = _stem((6, 6, 3), 1, 1, 5)
    g.ops[0].schedule = {"kernel": "mm", "weights": "quads", "pack": "flat"}
    assert _calls(tmp_path / "stem", g, "tt_qx_rgb33") == 16
    assert _calls(tmp_path / "other", _block(0, 0.07, 0.03), "tt_qx_rgb33") == 0


@pytest.mark.parametrize(("main_scale", "short_scale"), [(0.08, 0.031), (0.031, 0.08)])
def test_the_affine_sides_constant_is_folded_into_the_other_sides_table(main_scale, short_scale):
    """Where one side of a fused add keeps a table, the other side's constant term lives in
    that table (its add is 0): every kernel sums the sides, so for every pair of int8 codes
    the sum is the unfolded one, in the kernels' wrapping int32 arithmetic."""
    from tinytamer.micro.ops.conv import _residual_sides

    g = _downsample_block(main_scale, short_scale)
    order_residual_branches(g)
    conv, add = g.ops[2], g.ops[3]
    conv_t, other_t = add_tables(add, g)
    if add.inputs[0] != conv.output:
        conv_t, other_t = other_t, conv_t
    sides = _residual_sides(g, conv, 3)
    tables, affine = (sides[0][0], sides[1][0]), (sides[0][1], sides[1][1])
    kept = 0 if tables[0] is not None else 1
    mul, off = affine[1 - kept]
    assert off == 0 and affine[kept] is None and tables[1 - kept] is None
    full_kept, full_affine = (conv_t, other_t) if kept == 0 else (other_t, conv_t)
    codes = np.arange(-128, 128, dtype=np.int64)

    def wrap(v):
        return (v + (1 << 31)) % (1 << 32) - (1 << 31)

    want = wrap(full_kept.astype(np.int64)[:, None] + full_affine.astype(np.int64)[None, :])
    got = wrap(tables[kept].astype(np.int64)[:, None] + codes[None, :] * mul + off)
    np.testing.assert_array_equal(got, want)
