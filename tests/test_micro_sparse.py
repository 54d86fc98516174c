"""Pruned weights on the device: the sparse fully connected kernel is bit-exact with the
integer reference, stores fewer bytes and, at 90% sparsity, runs in at most a third of the
dense SIMD kernel's estimated cycles on the emulated Cortex-M4."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from tinytamer.micro import codegen, reference, toolchain
from tinytamer.micro.builder import GraphBuilder
from tinytamer.micro.ir import Graph
from tinytamer.micro.ops import OPS, Dense
from tinytamer.micro.session import Session

needs_gcc = pytest.mark.skipif(shutil.which("gcc") is None, reason="host gcc is not installed")
arm = pytest.mark.skipif(not toolchain.arm_available(),
                         reason="arm-none-eabi-gcc missing: run scripts/install-micro-toolchain.sh")


def _fc(out_n: int, in_n: int, density: float, seed: int = 0, zero_rows: int = 0,
        kernel: str | None = None) -> Graph:
    rng = np.random.default_rng(seed)
    b = GraphBuilder((in_n,), 0.02, 3)
    w = rng.integers(-127, 128, (out_n, in_n))
    w[rng.random((out_n, in_n)) >= density] = 0
    w[:zero_rows] = 0  # rows whose every weight was pruned
    o = b.dense(b.input, w, rng.uniform(0.002, 0.02, out_n), rng.normal(0, 1, out_n), 0.1, 1)
    g = b.graph(o)
    if kernel is not None:
        g.ops[0].schedule = {"kernel": kernel}
    return g


def _inputs(g: Graph, n: int, seed: int = 5) -> np.ndarray:
    return np.random.default_rng(seed).integers(-128, 128, (n, g.tensors[g.input].size)
                                                ).astype(np.int8)


def _want(g: Graph, xs: np.ndarray) -> np.ndarray:
    return np.stack([reference.run(g, x).reshape(-1) for x in xs])


def _device_run(g: Graph, x: np.ndarray, tmp_path) -> tuple[np.ndarray, int]:
    cm = codegen.generate(g, dsp=True)
    with Session("cortex-m4", cm, workdir=tmp_path, count=True) as sess:
        t_in, t_out = sess.alloc(cm.input_size), sess.alloc(cm.output_size)
        sess.write(t_in, x)
        r = sess.call("tt_model_run", t_in, t_out)
        return sess.read(t_out), r.est_cycles


def test_sparse_is_the_default_below_the_break_even_density():
    d = OPS[Dense]
    for dsp in (False, True):
        assert d.resolve(_fc(8, 64, 0.1).ops[0], dsp)["kernel"] == "sparse"
        assert d.resolve(_fc(8, 64, 0.4).ops[0], dsp)["kernel"] != "sparse"
        assert "sparse" not in d.space(_fc(8, 64, 0.9).ops[0], dsp)["kernel"]


def test_sparse_weights_take_fewer_bytes():
    g = _fc(64, 256, 0.1)
    op, d = g.ops[0], OPS[Dense]
    sparse = d.weight_array(op, True).nbytes + 2 * op.weight.shape[0]  # + row counts
    op.schedule = {"kernel": "simd"}
    dense = d.weight_array(op, True).nbytes
    assert sparse < 0.5 * dense


@needs_gcc
@pytest.mark.parametrize(("density", "zero_rows"), [(0.0, 0), (0.1, 3), (0.5, 2), (1.0, 1)])
def test_sparse_kernel_is_bit_exact_on_the_host(tmp_path, density, zero_rows):
    g = _fc(7, 37, density, seed=int(density * 10), zero_rows=zero_rows, kernel="sparse")
    cm = codegen.generate(g)
    xs = _inputs(g, 4)
    exe = toolchain.host_build(cm, tmp_path)
    np.testing.assert_array_equal(toolchain.host_run(exe, xs, cm.output_size), _want(g, xs))


@arm
@pytest.mark.parametrize(("density", "zero_rows"), [(0.0, 0), (0.1, 5), (1.0, 1)])
def test_sparse_kernel_is_bit_exact_on_the_device(tmp_path, density, zero_rows):
    # 37 inputs: the 4-wide unpacking and the 4-wide multiply loop both have a tail.
    g = _fc(21, 37, density, seed=3, zero_rows=zero_rows, kernel="sparse")
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
        g = _fc(128, 512, 0.1, kernel=kernel)
        out, cycles[kernel] = _device_run(g, x, tmp_path / kernel)
        np.testing.assert_array_equal(out, _want(g, x[None])[0])
    assert cycles["sparse"] <= cycles["simd"] / 3, cycles
