"""The device op table (tinytamer.micro.ops): every op has all its parts, its kernels are
built, and every op's numpy reference is bit-exact with its C kernel on the host."""

from __future__ import annotations

import dataclasses
import inspect
import re
import shutil

import numpy as np
import pytest

from tinytamer.micro import codegen, ops, reference, toolchain
from tinytamer.micro.builder import GraphBuilder
from tinytamer.micro.ir import Graph, Op
from tinytamer.micro.ops.base import DeviceOp

needs_gcc = pytest.mark.skipif(shutil.which("gcc") is None, reason="host gcc is not installed")
HEADER = (codegen.RUNTIME_DIR / "tt_kernels.h").read_text()


def _w(rng, *shape):
    return rng.integers(-127, 128, size=shape)


def _conv(b, rng):
    return b.conv(
        b.input,
        _w(rng, 6, 3, 3, 3),
        rng.uniform(0.002, 0.02, 6),
        rng.normal(0, 1, 6),
        0.05,
        3,
        stride=(2, 1),
        padding=(1, 1),
        relu="relu",
    )


def _depthwise(b, rng):
    return b.conv(
        b.input,
        _w(rng, 3, 1, 3, 3),
        rng.uniform(0.002, 0.02, 3),
        rng.normal(0, 1, 3),
        0.05,
        -2,
        padding=(1, 1),
        groups=3,
        relu="relu6",
    )


def _dense(b, rng):
    f = b.reshape(b.input, (b.tensors[b.input].size,))
    return b.dense(f, _w(rng, 5, b.tensors[f].size), rng.uniform(0.002, 0.02, 5), rng.normal(0, 1, 5), 0.1, 1)


def _maxpool(b, rng):
    return b.maxpool(b.input, (3, 3), (2, 2), (1, 1))


def _avgpool(b, rng):
    return b.avgpool(b.input, (2, 2), (2, 2), 0.03, 4)


def _add(b, rng):
    x = b.maxpool(b.input, (1, 1), (1, 1))
    return b.add(b.input, x, 0.04, -3, relu="relu")


def _softmax(b, rng):
    f = b.reshape(b.input, (b.tensors[b.input].size,))
    return b.softmax(f, 1 / 256, -128)


def _upsample(b, rng):
    from tinytamer.micro.ops.upsample import add_upsample

    return add_upsample(b, b.input, (2, 3), 0.03, -5, (-120, 100), name="up")


def _gather(b, rng):
    from tinytamer.micro.ops.gather import add_gather

    c = b.tensors[b.input].shape[-1]
    # Rotate the channels by one: two runs, the second input channel range first.
    return add_gather(b, [b.input], [(0, 0, 1, 1, 1, c - 1), (0, c - 1, 1, 0, 1, 1)], 0.03, 2, name="rotate")


# One small graph per op of the table (more than one where the op has several C kernels).
CASES = {
    ops.Conv2D: [_conv, _depthwise],
    ops.Dense: [_dense],
    ops.MaxPool: [_maxpool],
    ops.AvgPool: [_avgpool],
    ops.Add: [_add],
    ops.Softmax: [_softmax],
    ops.Reshape: [_dense],
    ops.Upsample: [_upsample],
    ops.Gather: [_gather],
}


def test_every_op_record_is_in_the_table():
    records = {
        obj
        for mod in (ops.add, ops.conv, ops.dense, ops.gather, ops.pool, ops.reshape, ops.softmax, ops.upsample)
        for obj in vars(mod).values()
        if inspect.isclass(obj) and issubclass(obj, Op) and obj is not Op
    }
    assert records == set(ops.OPS)
    assert set(CASES) == set(ops.OPS), "every op in the table needs a reference test here"


@pytest.mark.parametrize("ir", list(ops.OPS), ids=lambda t: t.__name__)
def test_every_op_has_all_its_parts(ir):
    d = ops.OPS[ir]
    assert d.ir is ir and dataclasses.is_dataclass(ir)
    assert d.lowers_from, f"{ir.__name__}: no fx pattern lowers to it"
    for pattern, method in d.lowers_from.items():
        assert callable(getattr(d, method, None)), f"{ir.__name__}: {pattern} -> {method}?"
    own = type(d).__dict__
    assert "reference" in own
    if d.aliases_input:
        assert d.kernel_files == ()  # no code: the output is the input's buffer
        return
    assert "emit_c" in own
    assert d.kernel_files and all((codegen.RUNTIME_DIR / f).is_file() for f in d.kernel_files)
    assert set(d.kernel_files) <= set(toolchain.KERNEL_SOURCES)


def test_patterns_are_unique_across_the_table():
    seen: dict = {}
    for d in ops.OPS.values():
        for p in d.lowers_from:
            assert p not in seen, f"{p} lowers to both {seen[p]} and {type(d).__name__}"
            seen[p] = type(d).__name__


def test_every_generated_call_is_declared_and_defined_in_its_op_file():
    """Each kernel an op calls (with every schedule) is in tt_kernels.h and in its own files."""
    rng = np.random.default_rng(0)
    for ir, builders in CASES.items():
        d = ops.OPS[ir]
        for make in builders:
            b = GraphBuilder((6, 6, 3), 0.02, 1)
            g = b.graph(make(b, rng))
            for op in (o for o in g.ops if type(o) is ir and not d.aliases_input):
                for dsp in (False, True):
                    for sched in _schedules(d, op, dsp):
                        op.schedule = sched
                        site = ops.base.CallSite(g, 0, dsp, ["in"] * len(op.inputs), "out", "0", None)
                        fn = re.match(r"(\w+)\(", d.emit_c(op, site)[1]).group(1)
                        assert f" {fn}(" in HEADER, fn
                        src = "".join((codegen.RUNTIME_DIR / f).read_text() for f in d.kernel_files)
                        assert re.search(rf"^void {fn}\(", src, re.M), (fn, d.kernel_files)
                op.schedule = {}


def _schedules(d: DeviceOp, op: Op, dsp: bool) -> list[dict]:
    knobs = d.space(op, dsp)
    return [{"kernel": k} for k in knobs.get("kernel", [])] or [{}]


@needs_gcc
@pytest.mark.parametrize("ir", list(ops.OPS), ids=lambda t: t.__name__)
def test_op_reference_matches_its_host_kernel(tmp_path, ir):
    rng = np.random.default_rng(1)
    for j, make in enumerate(CASES[ir]):
        b = GraphBuilder((6, 6, 3), 0.02, 1)
        g: Graph = b.graph(make(b, rng))
        assert any(type(op) is ir for op in g.ops)
        cm = codegen.generate(g)
        x = rng.integers(-128, 128, (4, cm.input_size)).astype(np.int8)
        want = np.stack([reference.run(g, r.reshape(g.tensors[g.input].shape)).reshape(-1) for r in x])
        exe = toolchain.host_build(cm, tmp_path / f"case{j}")
        np.testing.assert_array_equal(toolchain.host_run(exe, x, cm.output_size), want)
