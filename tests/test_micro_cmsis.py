"""The cmsis-nn kernel backend: CMSIS-NN's s8 kernels on the same graph and memory plan,
bit-exact with the integer reference (host gcc and Cortex-M4 under QEMU).

CMSIS-NN is read from the unmodified copy beside the repository (../shared/peers/cmsis-nn,
see PEERS.md there); without it these tests skip.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from tinytamer.deploy import int8_quantizer
from tinytamer.errors import ModelError
from tinytamer.micro import cmsis, codegen, reference, toolchain
from tinytamer.micro.builder import GraphBuilder, random_graph
from tinytamer.micro.ir import Graph

PEER = Path(__file__).resolve().parents[2] / "shared" / "peers" / "cmsis-nn"

pytestmark = [
    pytest.mark.skipif(
        not (PEER / "Include" / "arm_nnfunctions.h").is_file(),
        reason=f"no CMSIS-NN tree at {PEER} (see ../shared/peers/PEERS.md)",
    ),
    pytest.mark.skipif(shutil.which("gcc") is None, reason="host gcc is not installed"),
]
needs_arm = pytest.mark.skipif(
    not (toolchain.arm_available() and toolchain.qemu_available()),
    reason="arm-none-eabi-gcc / qemu-system-arm not installed",
)


def _w(rng, *shape):
    return rng.integers(-127, 128, size=shape)


def _sc(rng, n):
    return rng.uniform(0.002, 0.02, size=n)


def lenet5_like(seed: int = 0) -> Graph:
    """LeNet-5's shape at 16 x 16: conv 5x5, max pool, conv 5x5, max pool, three dense."""
    rng = np.random.default_rng(seed)
    b = GraphBuilder((16, 16, 1), 0.02, -5)
    x = b.conv(
        b.input,
        _w(rng, 6, 1, 5, 5),
        _sc(rng, 6),
        rng.normal(0, 1, 6),
        0.05,
        -128,
        padding=(2, 2),
        relu="relu",
        name="c1",
    )
    x = b.maxpool(x, (2, 2), (2, 2), name="p1")
    x = b.conv(x, _w(rng, 16, 6, 5, 5), _sc(rng, 16), rng.normal(0, 1, 16), 0.06, -128, relu="relu", name="c2")
    x = b.maxpool(x, (2, 2), (2, 2), name="p2")
    x = b.reshape(x, (2 * 2 * 16,))
    x = b.dense(x, _w(rng, 24, 64), _sc(rng, 24), rng.normal(0, 1, 24), 0.07, -128, relu="relu", name="f1")
    x = b.dense(x, _w(rng, 10, 24), _sc(rng, 10), rng.normal(0, 1, 10), 0.1, 3, name="f2")
    return b.graph(x)


def dscnn_like(seed: int = 0) -> Graph:
    """DS-CNN's shape on a 16 x 8 map: a strided conv, two depthwise-separable blocks
    (3x3 depthwise + 1x1), a global average pool, a dense layer."""
    rng = np.random.default_rng(seed)
    c = 8
    b = GraphBuilder((16, 8, 1), 0.03, 2)
    x = b.conv(
        b.input,
        _w(rng, c, 1, 4, 4),
        _sc(rng, c),
        rng.normal(0, 1, c),
        0.05,
        -128,
        stride=(2, 2),
        padding=(1, 1),
        relu="relu",
        name="stem",
    )
    for k in range(2):
        x = b.conv(
            x,
            _w(rng, c, 1, 3, 3),
            _sc(rng, c),
            rng.normal(0, 1, c),
            0.05,
            -128,
            padding=(1, 1),
            groups=c,
            relu="relu",
            name=f"dw{k}",
        )
        x = b.conv(x, _w(rng, c, c, 1, 1), _sc(rng, c), rng.normal(0, 1, c), 0.05, -128, relu="relu", name=f"pw{k}")
    h, w, _ = b.tensors[x].shape
    x = b.avgpool(x, (h, w), (1, 1), 0.04, -3, name="gap")
    x = b.reshape(x, (c,))
    x = b.dense(x, _w(rng, 12, c), _sc(rng, 12), rng.normal(0, 1, 12), 0.1, 0, name="fc")
    return b.graph(x)


def _want(g: Graph, x: np.ndarray) -> np.ndarray:
    shape = g.tensors[g.input].shape
    return np.stack([reference.run(g, xi.reshape(shape)).reshape(-1) for xi in x])


def _inputs(g: Graph, n: int, seed: int = 1) -> np.ndarray:
    size = g.tensors[g.input].size
    return np.random.default_rng(seed).integers(-128, 128, size=(n, size)).astype(np.int8)


# ----------------------------------------------------------------------------- the tree


def test_tree_from_option_or_environment(monkeypatch, tmp_path):
    monkeypatch.delenv(cmsis.ENV, raising=False)
    with pytest.raises(ModelError, match="cmsis_nn_root"):
        cmsis.find_root(None)
    with pytest.raises(ModelError, match="not a usable CMSIS-NN tree"):
        cmsis.find_root(tmp_path)
    assert cmsis.find_root(PEER) == PEER.resolve()
    monkeypatch.setenv(cmsis.ENV, str(PEER))
    assert cmsis.find_root(None) == PEER.resolve()


def test_buffer_sizes_are_cmsis_nns_own():
    """The sizes come from the tree's *_get_buffer_size functions; for the DSP build they
    match the documented formulas (im2col of 2 columns of int16, rounded up to 4 inputs)."""
    root = PEER.resolve()
    conv = "c 16 16 3 8 3 3 16 16 1 1 1 1"  # 3x3 conv, 3 input channels
    dw = "d 16 16 8 8 3 3 16 16 1 1 1 1"  # 3x3 depthwise: arm_depthwise_conv_3x3_s8
    fc = "f 64 10"
    assert cmsis.buffer_sizes(root, True, [conv, dw, fc]) == [2 * 2 * 28, 0, 0]
    assert all(s >= 0 for s in cmsis.buffer_sizes(root, False, [conv, dw, fc]))


# ----------------------------------------------------------------------------- exactness


def test_layers_cmsis_nn_would_round_differently_stay_on_our_kernels():
    g = random_graph(0)
    be = cmsis.backend(PEER, dsp=False)
    conv = next(op for op in g.ops if op.name == "stem")
    assert be.refuses(g, conv) is None
    # A left shift whose worst-case accumulator overflows: CMSIS-NN wraps, we saturate.
    conv.shift = conv.shift.copy()
    conv.shift[0] = 16
    assert "left shift" in be.refuses(g, conv)
    conv.shift[0] = -31
    assert "31" in be.refuses(g, conv)
    # An average pool: CMSIS-NN rounds the mean once, the graph's requantization twice.
    assert "two roundings" in be.refuses(g, next(op for op in g.ops if op.name == "ap"))


@pytest.mark.parametrize("make", [random_graph, lenet5_like, dscnn_like])
def test_host_outputs_equal_the_reference(tmp_path, make):
    g = make(0)
    be = cmsis.backend(PEER, dsp=False)
    cm = codegen.generate(g, backend=be)
    assert cm.kernels == "cmsis-nn"
    ran = set(be.functions.values())
    assert {"arm_convolve_wrapper_s8"} <= ran
    if make is dscnn_like:
        assert "arm_depthwise_conv_wrapper_s8" in ran
        assert set(cm.fallbacks) == {"gap"}
    if make is random_graph:  # every op kind; the requantized pools stay on our kernel
        assert {"arm_elementwise_add_s8", "arm_max_pool_s8", "arm_fully_connected_per_channel_s8"} <= ran
        assert set(cm.fallbacks) == {"ap", "gap"}
    x = _inputs(g, 24)
    exe = toolchain.host_build(cm, tmp_path)
    np.testing.assert_array_equal(toolchain.host_run(exe, x, cm.output_size), _want(g, x))


def test_zoo_models_host_bit_exact(tmp_path):
    """LeNet-5 and DS-CNN from the zoo, quantized and lowered as a deploy does."""
    from tinytamer import zoo
    from tinytamer.compress.int8 import quantize_ptq
    from tinytamer.micro.lower import lower
    from tinytamer.micro.program import MicroProgram

    for name, kw, shape in (
        ("lenet5", {"in_channels": 1, "input_size": 28}, (1, 28, 28)),
        ("dscnn", {"in_channels": 1, "num_classes": 12}, (1, 49, 10)),
    ):
        torch.manual_seed(0)
        gen = torch.Generator().manual_seed(0)
        gm = quantize_ptq(zoo.create(name, **kw).eval(), [torch.randn(4, *shape, generator=gen) for _ in range(2)])
        x = torch.randn(4, *shape, generator=gen)
        g = lower(gm, x[:1])
        cm = codegen.generate(g, backend=cmsis.backend(PEER, dsp=False))
        prog = MicroProgram(g, cm, "host", tmp_path / name)
        q = prog.quantize_input(x.numpy())
        exe = toolchain.host_build(cm, tmp_path / name / "host")
        np.testing.assert_array_equal(toolchain.host_run(exe, q, cm.output_size), prog.run_reference(q))


@needs_arm
@pytest.mark.parametrize("make", [lenet5_like, dscnn_like])
def test_cortex_m4_outputs_equal_the_reference(tmp_path, make):
    """The DSP (SMLAD) paths of CMSIS-NN, built by arm-none-eabi-gcc and run on QEMU."""
    g = make(0)
    cm = codegen.generate(g, dsp=True, backend=cmsis.backend(PEER, dsp=True))
    x = _inputs(g, 3)
    build = toolchain.arm_build(cm, tmp_path, "cortex-m4", inputs=x)
    np.testing.assert_array_equal(toolchain.qemu_run(build, cm.output_size), _want(g, x))


def test_micro_host_target_option(tmp_path, monkeypatch):
    """``kernels: cmsis-nn`` on a micro target: the deploy's own bit-exact check passes and the
    program says which layers kept tinytamer's kernels; a missing tree is a clear error."""
    from torch import nn

    from tinytamer.targets.base import get_target

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(4, 4, 3, padding=1, groups=4),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 5),
    ).eval()
    gen = torch.Generator().manual_seed(1)
    calib = [torch.randn(8, 1, 8, 8, generator=gen) for _ in range(2)]
    target = get_target("micro-host")
    monkeypatch.delenv(cmsis.ENV, raising=False)
    with pytest.raises(ModelError, match="cmsis_nn_root"):
        target.compile(
            model, [calib[0][:1]], tmp_path / "none", calib=calib, kernels="cmsis-nn", quantize=int8_quantizer
        )
    dep = target.compile(
        model,
        [calib[0][:1]],
        tmp_path / "ok",
        calib=calib,
        kernels="cmsis-nn",
        cmsis_nn_root=str(PEER),
        quantize=int8_quantizer,
    )
    info = dep.program.info
    assert info["kernels"] == "cmsis-nn" and dep.info["bit_exact_inputs"] > 0
    assert list(info["kernel_fallbacks"]) == [op.name for op in dep.program.graph.ops if type(op).__name__ == "AvgPool"]
    assert "arm_nnfunctions.h" in dep.program.cmodel.files["model.c"]


def int4_convs(seed: int = 0) -> Graph:
    """Convolutions in the packed int4 form: an odd receptive field (25: rows start
    mid-byte in CMSIS-NN's layout), an even one (150) and a 1x1, then int4 dense (stays on
    our kernel: arm_fully_connected_s4 takes one multiplier for the layer)."""
    rng = np.random.default_rng(seed)
    b = GraphBuilder((12, 12, 1), 0.02, -5)
    x = b.conv(b.input, rng.integers(-8, 8, (6, 1, 5, 5)), _sc(rng, 6), rng.normal(0, 1, 6), 0.05, -128, name="c1")
    x = b.conv(x, rng.integers(-8, 8, (8, 6, 5, 5)), _sc(rng, 8), rng.normal(0, 1, 8), 0.06, -128, name="c2")
    x = b.conv(x, rng.integers(-8, 8, (5, 8, 1, 1)), _sc(rng, 5), rng.normal(0, 1, 5), 0.07, 2, name="c3")
    x = b.reshape(x, (4 * 4 * 5,))
    x = b.dense(x, rng.integers(-8, 8, (10, 80)), _sc(rng, 10), rng.normal(0, 1, 10), 0.1, 3, name="f")
    g = b.graph(x)
    for op in g.ops:
        if hasattr(op, "weight_form"):
            op.weight_form = "int4"
    return g


def test_s4_weights_pack_the_whole_tensor():
    w = np.array([[1, -2, 3], [-8, 7, 0]], np.int8)
    np.testing.assert_array_equal(cmsis.s4_weights(w).view(np.uint8), [0xE1, 0x83, 0x07])


@pytest.mark.parametrize("dsp", [False, pytest.param(True, marks=needs_arm)], ids=["host", "cortex-m4"])
def test_int4_convolutions_run_cmsis_nn_s4(tmp_path, dsp):
    g = int4_convs()
    be = cmsis.backend(PEER, dsp=dsp)
    cm = codegen.generate(g, dsp=dsp, backend=be)
    assert [be.functions.get(i) for i in range(len(g.ops)) if hasattr(g.ops[i], "weight_form")][:3] == [
        "arm_convolve_wrapper_s4"
    ] * 3
    assert "int4" in cm.fallbacks["f"]
    x = _inputs(g, 3)
    if dsp:
        build = toolchain.arm_build(cm, tmp_path, "cortex-m4", inputs=x)
        out = toolchain.qemu_run(build, cm.output_size)
    else:
        out = toolchain.host_run(toolchain.host_build(cm, tmp_path), x, cm.output_size)
    np.testing.assert_array_equal(out, _want(g, x))
