"""Integer graph, numpy reference, C generation and host builds of the micro path."""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest

from tinytamer.errors import ModelError
from tinytamer.micro import codegen, reference, toolchain
from tinytamer.micro.builder import GraphBuilder, random_graph
from tinytamer.micro.codegen import RUNTIME_DIR
from tinytamer.micro.fixedpoint import (
    INT32_MAX,
    INT32_MIN,
    quantize_multiplier,
    requantize,
)
from tinytamer.micro.ir import Add
from tinytamer.micro.planner import plan

needs_gcc = pytest.mark.skipif(shutil.which("gcc") is None, reason="host gcc is not installed")


def _srdhm_py(a: int, b: int) -> int:
    if a == b == INT32_MIN:
        return INT32_MAX
    ab = a * b
    nudge = (1 << 30) if ab >= 0 else 1 - (1 << 30)
    s = ab + nudge
    return int(s / (1 << 31)) if abs(s) < (1 << 52) else (abs(s) >> 31) * (1 if s >= 0 else -1)


def _rdbpot_py(x: int, e: int) -> int:
    mask = (1 << e) - 1
    rem = x & mask
    thr = (mask >> 1) + (1 if x < 0 else 0)
    return (x >> e) + (1 if rem > thr else 0)


def _requant_py(acc: int, m: int, shift: int) -> int:
    left, right = max(shift, 0), max(-shift, 0)
    x = min(max(acc * (1 << left), INT32_MIN), INT32_MAX)
    return _rdbpot_py(_srdhm_py(x, m), right)


def _cases(n: int = 3000) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    acc = rng.integers(INT32_MIN, INT32_MAX, n, endpoint=True)
    acc[:200] = rng.integers(-5000, 5000, 200)
    acc[200:210] = [INT32_MIN, INT32_MAX, 0, -1, 1, -(1 << 30), 1 << 30, -3, 3, 2]
    reals = np.exp(rng.uniform(np.log(1e-9), np.log(50.0), n))
    pairs = [quantize_multiplier(float(r)) for r in reals]
    mult = np.array([p[0] for p in pairs], dtype=np.int64)
    shift = np.array([p[1] for p in pairs], dtype=np.int64)
    mult[:5] = INT32_MIN  # exercise the saturating corner
    return acc, mult, shift


def test_quantize_multiplier_round_trips():
    for real in (1e-6, 0.0123, 0.5, 0.75, 1.0, 3.7, 1 - 1e-12):
        m, s = quantize_multiplier(real)
        assert (1 << 30) <= m < (1 << 31)
        assert m * 2.0 ** (s - 31) == pytest.approx(real, rel=1e-9)
    assert quantize_multiplier(0.0) == (0, 0)
    with pytest.raises(ValueError):
        quantize_multiplier(-1.0)


def test_numpy_requantize_matches_gemmlowp_definition():
    acc, mult, shift = _cases()
    got = requantize(acc, mult, shift)
    want = [_requant_py(int(a), int(m), int(s)) for a, m, s in zip(acc, mult, shift, strict=True)]
    assert got.tolist() == want


@needs_gcc
def test_c_requant_matches_numpy(tmp_path):
    acc, mult, shift = _cases()
    main = tmp_path / "rq.c"
    main.write_text(
        '#include <stdio.h>\n#include "tt_kernels.h"\n'
        'int main(void){long a,m,s;while(scanf("%ld %ld %ld",&a,&m,&s)==3)'
        'printf("%ld\\n",(long)tt_requant((int32_t)a,(int32_t)m,(int32_t)s));return 0;}\n'
    )
    exe = tmp_path / "rq"
    subprocess.run(
        [
            "gcc",
            "-std=c99",
            "-O2",
            "-fsanitize=undefined",
            "-fno-sanitize-recover=all",
            "-I",
            str(RUNTIME_DIR),
            str(main),
            str(RUNTIME_DIR / "tt_kernels.c"),
            "-o",
            str(exe),
        ],
        check=True,
    )
    text = "\n".join(f"{a} {m} {s}" for a, m, s in zip(acc, mult, shift, strict=True))
    out = subprocess.run([str(exe)], input=text, capture_output=True, text=True, check=True)
    assert out.stderr == ""
    assert [int(v) for v in out.stdout.split()] == requantize(acc, mult, shift).tolist()


def test_reference_conv_matches_torch_convolution():
    """With unit scales the integer conv is the exact convolution (stride, padding, groups)."""
    import torch

    rng = np.random.default_rng(3)
    b = GraphBuilder((6, 5, 4), 1.0, 2)
    w = rng.integers(-1, 2, (6, 2, 3, 3))
    out = b.conv(b.input, w, np.ones(6), None, 1.0, 0, stride=(2, 1), padding=(1, 1), groups=2)
    g = b.graph(out)
    x = rng.integers(-2, 5, (6, 5, 4)).astype(np.int8)
    xs = torch.tensor(x.astype(np.float64) - 2).permute(2, 0, 1)[None]
    want = (
        torch.nn.functional.conv2d(xs, torch.tensor(w, dtype=torch.float64), stride=(2, 1), padding=1, groups=2)[0]
        .permute(1, 2, 0)
        .numpy()
    )
    np.testing.assert_array_equal(reference.run(g, x), want.astype(np.int8))


def test_reference_rejects_bad_input():
    g = random_graph(0)
    with pytest.raises(ModelError, match="int8 of shape"):
        reference.run(g, np.zeros((8, 8, 3), np.float32))


def test_planner_reuses_memory_and_adds_in_place():
    g = random_graph(0, size=8, channels=4)
    p = plan(g)
    sizes = {t: g.tensors[t].size for t in g.tensors}
    assert p.arena_size < sum(sizes.values()) - sizes[g.output]
    add = next(op for op in g.ops if isinstance(op, Add))
    assert p.location[add.output] in (p.location[add.inputs[0]], p.location[add.inputs[1]])
    # No two tensors alive at the same op overlap in the arena.
    for i, _ in enumerate(g.ops):
        live = [b for b in p.buffers if b.first <= i <= b.last]
        spans = sorted((b.offset, b.offset + b.size) for b in live)
        assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:], strict=False))
    assert "peak at op" in p.report(g)


def test_the_input_lives_in_the_arena_and_its_bytes_are_reused():
    """The input is an arena buffer from the start to its last reader; later buffers may
    take its bytes.  Left to the caller, it is not in the arena at all."""
    g = random_graph(0, size=8, channels=4)
    p = plan(g)
    kind, off = p.location[g.input]
    buf = next(b for b in p.buffers if b.name == g.input)
    assert kind == "arena" and buf.offset == off and buf.first == 0
    assert buf.last == max(i for i, op in enumerate(g.ops) if g.input in op.inputs)
    later = [b for b in p.buffers if b.first > buf.last]
    assert any(b.offset < off + buf.size and off < b.offset + b.size for b in later)
    caller = plan(g, input_in_arena=False)
    assert caller.location[g.input] == ("in", 0) and all(b.name != g.input for b in caller.buffers)
    assert caller.arena_size <= p.arena_size


@needs_gcc
@pytest.mark.parametrize("seed", [0, 1])
def test_host_build_is_bit_exact(tmp_path, seed):
    g = random_graph(seed, size=9 + seed, channels=3 + seed)
    rng = np.random.default_rng(seed)
    xs = rng.integers(-128, 128, (12, *g.tensors[g.input].shape)).astype(np.int8)
    want = np.stack([reference.run(g, x) for x in xs])
    cm = codegen.generate(g)
    exe = toolchain.host_build(cm, tmp_path)
    got = toolchain.host_run(exe, xs.reshape(len(xs), -1), cm.output_size)
    np.testing.assert_array_equal(got, want)
    assert "tt_model_run" in cm.files["model.h"]
    assert "malloc" not in cm.files["model.c"] and "float" not in cm.files["model.c"]


@needs_gcc
def test_sanitizer_build_reports_nothing(tmp_path):
    g = random_graph(2, size=7, channels=5)
    rng = np.random.default_rng(2)
    xs = rng.integers(-128, 128, (6, *g.tensors[g.input].shape)).astype(np.int8)
    cm = codegen.generate(g)
    exe = toolchain.host_build(cm, tmp_path, sanitize=True)
    # host_run raises if the sanitizers print anything.
    got = toolchain.host_run(exe, xs.reshape(len(xs), -1), cm.output_size)
    np.testing.assert_array_equal(got, np.stack([reference.run(g, x) for x in xs]))


def test_graph_validate_names_the_op():
    g = random_graph(0)
    g.ops[1].inputs = ["missing"]
    with pytest.raises(ModelError, match="'dw' reads 'missing'"):
        g.validate()
