"""Pruned weights on the device: the sparse weight forms (tinytamer.micro.weights) are chosen
per layer from the weights, their fully connected and convolution kernels are bit-exact with
the integer reference, they store fewer bytes and, at 90% sparsity, a fully connected layer
runs in at most a third of the dense SIMD kernel's estimated cycles on the emulated
Cortex-M4."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from tinytamer.micro import codegen, reference, toolchain, weights
from tinytamer.micro.builder import GraphBuilder
from tinytamer.micro.ir import Graph
from tinytamer.micro.ops import OPS, Conv2D, Dense
from tinytamer.micro.session import Session

needs_gcc = pytest.mark.skipif(shutil.which("gcc") is None, reason="host gcc is not installed")
arm = pytest.mark.skipif(
    not toolchain.arm_available(), reason="arm-none-eabi-gcc missing: run scripts/install-micro-toolchain.sh"
)


def _pruned(rng, shape, density: float, values: int | None = None) -> np.ndarray:
    """Int weights with about ``density`` non-zeros; ``values``: drawn from that many
    (k-means shared), else from all of int8."""
    pool = rng.integers(-127, 128, values) if values else np.arange(-127, 128)
    w = rng.choice(pool[pool != 0], size=shape)
    w[rng.random(shape) >= density] = 0
    return w


def _fc(
    out_n: int,
    in_n: int,
    density: float,
    seed: int = 0,
    zero_rows: int = 0,
    form: str | None = None,
    values: int | None = None,
) -> Graph:
    rng = np.random.default_rng(seed)
    b = GraphBuilder((in_n,), 0.02, 3)
    w = _pruned(rng, (out_n, in_n), density, values)
    w[:zero_rows] = 0  # rows whose every weight was pruned
    o = b.dense(b.input, w, rng.uniform(0.002, 0.02, out_n), rng.normal(0, 1, out_n), 0.1, 1)
    return _form(b.graph(o), form)


def _conv(form: str | None, density: float, seed: int = 0, values: int | None = None, pointwise: bool = False) -> Graph:
    """A padded strided 3x3 conv with a residual add fused into the next (pointwise or 3x3)
    conv: the patch edges, the fused output and the 4-wide unpacking's tails (7 channels)."""
    rng = np.random.default_rng(seed)
    b = GraphBuilder((9, 11, 7), 0.02, 2)
    c1 = b.conv(
        b.input,
        _pruned(rng, (13, 7, 3, 3), density, values),
        rng.uniform(0.002, 0.02, 13),
        rng.normal(0, 1, 13),
        0.05,
        -4,
        stride=(2, 1),
        padding=(1, 1),
        relu="relu",
        name="c1",
    )
    k = 1 if pointwise else 3
    c2 = b.conv(
        c1,
        _pruned(rng, (13, 13, k, k), density, values),
        rng.uniform(0.002, 0.02, 13),
        None,
        0.06,
        3,
        padding=(k // 2, k // 2),
        name="c2",
    )
    return _form(b.graph(b.add(c2, c1, 0.07, -1, name="res")), form)


def _form(g: Graph, form: str | None) -> Graph:
    if form is not None:
        for op in g.ops:
            if hasattr(op, "weight_form"):
                op.weight_form = form
    return g


def _inputs(g: Graph, n: int, seed: int = 5) -> np.ndarray:
    return np.random.default_rng(seed).integers(-128, 128, (n, g.tensors[g.input].size)).astype(np.int8)


def _want(g: Graph, xs: np.ndarray) -> np.ndarray:
    shape = g.tensors[g.input].shape
    return np.stack([reference.run(g, x.reshape(shape)).reshape(-1) for x in xs])


def _device_run(g: Graph, x: np.ndarray, tmp_path) -> tuple[np.ndarray, int]:
    cm = codegen.generate(g, dsp=True)
    with Session("cortex-m4", cm, workdir=tmp_path, count=True) as sess:
        t_in, t_out = sess.alloc(cm.input_size), sess.alloc(cm.output_size)
        sess.write(t_in, x)
        r = sess.call("tt_model_run", t_in, t_out)
        return sess.read(t_out), r.est_cycles


# ----------------------------------------------------------------------------- the forms


@pytest.mark.parametrize("form", ["sparse", "sparse_shared"])
def test_sparse_forms_unpack_to_the_same_integers(form):
    rng = np.random.default_rng(0)
    for shape, density, values in [
        ((7, 37), 0.1, None),
        ((120, 400), 0.08, 16),
        ((5, 1), 0.0, None),
        ((6, 25), 0.3, 4),
        ((3, 900), 0.01, 3),
        ((4, 300), 1.0, 200),
    ]:
        w = _pruned(rng, shape, density, values).astype(np.int8)
        w[0] = 0  # an empty row
        p = weights.pack(w, form)
        np.testing.assert_array_equal(p.unpack(), w)
        assert (p.entries if form == "sparse_shared" else int(p.counts.sum())) >= np.count_nonzero(w)


def test_sparse_shared_layout_gaps_fillers_and_codebooks():
    rng = np.random.default_rng(1)
    # Gaps longer than the widest gap field (1% density over 900 columns): filler entries
    # skip them; the stream runs across row ends with no per-row counts.
    w = _pruned(rng, (3, 900), 0.01, 3).astype(np.int8)
    p = weights.pack(w, "sparse_shared")
    assert p.entries > np.count_nonzero(w) and p.counts is None
    assert (p.idx_bits, p.cb_stride, p.groups) == (2, 0, None)  # 3 values: one 4-entry codebook
    # The int8 quantizer's per-channel scales on a k-means layer: a channel's integers are
    # its scale class's (the largest centroid it holds); 4 classes of 8 values, 64 rows.
    centroids = rng.normal(0, 1, 8)
    classes = [np.round(centroids / (np.abs(centroids).max() * f / 127)) for f in (1.0, 1.3, 1.7, 2.2)]
    rows = np.array([rng.choice(classes[i % 4], 400) * (rng.random(400) < 0.1) for i in range(64)], np.int8)
    p = weights.pack(rows, "sparse_shared")
    assert (p.idx_bits, p.cb_stride, len(p.codebook)) == (3, 8, 4)
    np.testing.assert_array_equal(p.unpack(), rows)
    # Codebooks (4 x 8) and a codebook number per row instead of 64 codebooks of 8.
    assert p.flash_bytes == 4 * 8 + 64 + p.stream.size


def test_group_codebooks_puts_every_row_in_one_codebook():
    rng = np.random.default_rng(7)
    sets = [np.unique(rng.choice(np.arange(-127, 128), n, replace=False)) for n in rng.integers(1, 17, 50)]
    for bits in (4, 5, 8):
        table, sizes, books = weights.group_codebooks(sets, bits)
        assert table.shape[1] == 1 << bits and len(books) == len(sets)
        for s, b in zip(sets, books, strict=True):
            assert set(s.tolist()) <= set(table[b, : sizes[b]].tolist())
    assert len(weights.group_codebooks(sets, 8)[0]) == 1  # 8 bits: one codebook of every value
    # More than 256 codebooks would be needed: the width is not usable.
    many = [np.array([a, b]) for a in range(-127, 128, 2) for b in range(-126, 128, 2)][:300]
    assert weights.group_codebooks(many, 1) is None


def test_choose_picks_sparse_forms_per_layer():
    rng = np.random.default_rng(2)
    pruned = _pruned(rng, (64, 256), 0.1)  # pruned only: all of int8's values
    # The relative indices alone (gap + 8-bit index) are far smaller than the words.
    assert weights.choose(pruned, 8) == "sparse_shared"
    assert weights.pack(pruned, "sparse_shared").flash_bytes < 0.6 * weights.pack(pruned, "sparse").flash_bytes
    # An op with no sparse kernel: each row holds few values (about 26 and zero), so narrow
    # indices into a few shared codebooks beat int8.
    assert weights.choose(pruned, 8, sparse=False) == "shared"
    assert weights.pack(pruned, "shared").bits < 8
    assert weights.choose(_pruned(rng, (64, 256), 0.4), 8) == "int8"  # above break-even
    # Pruned and shared (16 values): the stream with a codebook, far smaller than the words.
    ds = _pruned(rng, (64, 256), 0.1, 16)
    assert weights.choose(ds, 8) == "sparse_shared"
    assert weights.choose(ds, 8, sparse=False) == "shared"
    assert weights.pack(ds, "sparse_shared").flash_bytes < weights.pack(ds, "sparse").flash_bytes / 3
    # Dense and shared stays shared: the sparse forms only hold sparse layers.
    assert weights.choose(_pruned(rng, (64, 256), 1.0, 16), 8) == "shared"


def test_the_form_decides_the_kernel():
    for op_def, g in ((OPS[Dense], _fc(8, 64, 0.1, form="sparse")), (OPS[Conv2D], _conv("sparse_shared", 0.1))):
        op = g.ops[0]
        for dsp in (False, True):
            assert op_def.resolve(op, dsp)["kernel"] == "sparse"
        op.weight_form = "int8"
        assert "sparse" not in op_def.space(op, True)["kernel"]


def test_sparse_weights_take_fewer_bytes():
    g = _fc(64, 256, 0.1, form="sparse")
    op, d = g.ops[0], OPS[Dense]
    sparse = weights.pack(op.weight, "sparse").flash_bytes  # words + row counts
    op.schedule = {"kernel": "simd"}
    dense = d.weight_array(op, True).nbytes
    assert sparse < 0.5 * dense


# ----------------------------------------------------------------------------- kernels


@needs_gcc
@pytest.mark.parametrize("form", ["sparse", "sparse_shared"])
@pytest.mark.parametrize(("density", "zero_rows"), [(0.0, 0), (0.1, 3), (0.5, 2), (1.0, 1)])
def test_sparse_fc_is_bit_exact_on_the_host(tmp_path, form, density, zero_rows):
    g = _fc(7, 37, density, seed=int(density * 10), zero_rows=zero_rows, form=form)
    cm = codegen.generate(g)
    xs = _inputs(g, 4)
    exe = toolchain.host_build(cm, tmp_path)
    np.testing.assert_array_equal(toolchain.host_run(exe, xs, cm.output_size), _want(g, xs))


@needs_gcc
@pytest.mark.parametrize("form", ["sparse", "sparse_shared"])
@pytest.mark.parametrize(("density", "pointwise"), [(0.1, False), (0.1, True), (0.6, False)])
def test_sparse_conv_is_bit_exact_on_the_host(tmp_path, form, density, pointwise):
    g = _conv(form, density, values=12 if form == "sparse_shared" else None, pointwise=pointwise)
    cm = codegen.generate(g)
    assert "".join(cm.files.values()).count("tt_conv2d_s8_sparse(") >= 2
    xs = _inputs(g, 3)
    exe = toolchain.host_build(cm, tmp_path)
    np.testing.assert_array_equal(toolchain.host_run(exe, xs, cm.output_size), _want(g, xs))


@arm
@pytest.mark.parametrize("form", ["sparse", "sparse_shared"])
@pytest.mark.parametrize(("density", "zero_rows"), [(0.0, 0), (0.1, 5), (1.0, 1)])
def test_sparse_fc_is_bit_exact_on_the_device(tmp_path, form, density, zero_rows):
    # 37 inputs: the 4-wide unpacking and the 4-wide multiply loop both have a tail.
    g = _fc(21, 37, density, seed=3, zero_rows=zero_rows, form=form)
    x = _inputs(g, 1)[0]
    out, _ = _device_run(g, x, tmp_path)
    np.testing.assert_array_equal(out, _want(g, x[None])[0])


@arm
@pytest.mark.parametrize("form", ["sparse", "sparse_shared"])
@pytest.mark.parametrize("pointwise", [False, True])
def test_sparse_conv_is_bit_exact_on_the_device(tmp_path, form, pointwise):
    g = _conv(form, 0.1, seed=4, values=12 if form == "sparse_shared" else None, pointwise=pointwise)
    x = _inputs(g, 1)[0]
    out, _ = _device_run(g, x, tmp_path)
    np.testing.assert_array_equal(out, _want(g, x[None])[0])


@arm
def test_90_percent_sparse_fc_runs_in_a_third_of_the_dense_cycles(tmp_path):
    """Figures (cortex-m4 cycle table, ideal memory, 128 x 512, 6,553 non-zeros):
    simd 156,297 est. cycles (129,871 instructions), sparse 50,322 (35,934): 0.32x."""
    x = _inputs(_fc(128, 512, 0.1), 1)[0]
    cycles = {}
    for kernel in ("simd", "sparse"):
        g = _fc(128, 512, 0.1, form="sparse")
        g.ops[0].schedule = {"kernel": kernel}
        out, cycles[kernel] = _device_run(g, x, tmp_path / kernel)
        np.testing.assert_array_equal(out, _want(g, x[None])[0])
    assert cycles["sparse"] <= cycles["simd"] / 3, cycles


def test_deep_compressed_lenet5_weights_take_an_eighth_of_int8():
    """Caffe LeNet-5 as Deep Compression leaves it (Han et al. 2016, Table 3: 66% / 12% / 8%
    / 19% kept, 8-bit conv and 5-bit fc k-means), then the int8 quantizer's per-channel
    scales (a channel's largest centroid maps to 127): the chosen forms store the weights,
    indices, codebooks and codebook numbers in at most 1/8 of the int8 weights' bytes (the
    retrained model, linked: 0.123x, benchmarks/micro_compressed.py)."""
    rng = np.random.default_rng(0)
    layers = [((20, 25), 0.66, 256), ((50, 500), 0.12, 256), ((500, 800), 0.08, 32), ((10, 500), 0.19, 32)]
    total = dense = 0
    for shape, keep, k in layers:
        centroids = rng.normal(0, 0.05, k - 1)  # zero is the k-th value of a pruned layer
        wf = rng.choice(centroids, shape) * (rng.random(shape) < keep)
        w = np.round(wf / (np.abs(wf).max(1, keepdims=True) / 127)).astype(np.int8)
        form = weights.choose(w, 8)
        total += weights.FORMS[form].flash_bytes(w)
        dense += w.size
    assert total <= dense / 8, total / dense
