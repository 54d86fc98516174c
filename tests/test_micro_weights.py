"""Weight forms (tinytamer.micro.weights): packed int4 / int2 and k-means shared weights,
chosen per layer at lowering, executed bit-exact by their kernels, and measured in flash."""

from __future__ import annotations

import re
import shutil
import subprocess

import numpy as np
import pytest
import torch
from torch import nn

from tinytamer.micro import codegen, reference, schedule, toolchain, weights
from tinytamer.micro.builder import GraphBuilder
from tinytamer.micro.ir import Graph
from tinytamer.micro.lower import lower

needs_gcc = pytest.mark.skipif(shutil.which("gcc") is None, reason="host gcc is not installed")
needs_arm = pytest.mark.skipif(
    not (toolchain.arm_available() and toolchain.qemu_available()),
    reason="arm-none-eabi-gcc / qemu-system-arm not installed",
)

# Integer weights of each form, and the w_bits the quantizer would have used.
BITS = {"int8": 8, "int4": 4, "int2": 2, "shared": 8}


def _weights(form: str, rng, *shape) -> np.ndarray:
    if form == "int4":
        return rng.integers(-7, 8, size=shape)
    if form == "int2":
        return rng.integers(-1, 2, size=shape)
    if form == "shared":  # a 16-entry codebook for the whole layer
        return rng.choice(rng.integers(-127, 128, 16), size=shape)
    return rng.integers(-127, 128, size=shape)


def _lenet5(form: str, seed: int = 0) -> Graph:
    """LeNet-5's shapes (28 x 28 x 1, conv 6@5x5, conv 16@5x5, fc 400-120-84-10)."""
    rng = np.random.default_rng(seed)

    def sc(n):
        return rng.uniform(0.001, 0.01, n)

    b = GraphBuilder((28, 28, 1), 0.02, -3)
    x = b.conv(
        b.input,
        _weights(form, rng, 6, 1, 5, 5),
        sc(6),
        rng.normal(0, 1, 6),
        0.05,
        -128,
        padding=(2, 2),
        relu="relu",
        name="conv1",
    )
    x = b.maxpool(x, (2, 2), (2, 2))
    x = b.conv(x, _weights(form, rng, 16, 6, 5, 5), sc(16), rng.normal(0, 1, 16), 0.08, 5, relu="relu", name="conv2")
    x = b.maxpool(x, (2, 2), (2, 2))
    x = b.reshape(x, (400,))
    x = b.dense(x, _weights(form, rng, 120, 400), sc(120), rng.normal(0, 1, 120), 0.1, -2, relu="relu", name="fc1")
    x = b.dense(x, _weights(form, rng, 84, 120), sc(84), rng.normal(0, 1, 84), 0.1, 1, relu="relu", name="fc2")
    x = b.dense(x, _weights(form, rng, 10, 84), sc(10), rng.normal(0, 1, 10), 0.2, 0, name="fc3")
    return _assign(b.graph(x), form)


def _depthwise(form: str, seed: int = 0) -> Graph:
    """A depthwise then a grouped convolution with a residual add fused into it."""
    rng = np.random.default_rng(seed)
    b = GraphBuilder((9, 9, 8), 0.02, 2)
    d = b.conv(
        b.input,
        _weights(form, rng, 8, 1, 3, 3),
        rng.uniform(0.002, 0.02, 8),
        rng.normal(0, 1, 8),
        0.05,
        -4,
        padding=(1, 1),
        groups=8,
        relu="relu6",
        name="dw",
    )
    c = b.conv(
        d,
        _weights(form, rng, 8, 4, 3, 3),
        rng.uniform(0.002, 0.02, 8),
        None,
        0.06,
        3,
        padding=(1, 1),
        groups=2,
        name="grouped",
    )
    return _assign(b.graph(b.add(c, b.input, 0.07, -1, name="res")), form)


def _assign(g: Graph, form: str) -> Graph:
    for op in g.ops:
        if hasattr(op, "weight_form"):
            op.weight_form = weights.choose(op.weight, BITS[form])
            assert op.weight_form == form, (op.name, op.weight_form)
    return g


def _want(g: Graph, x: np.ndarray) -> np.ndarray:
    shape = g.tensors[g.input].shape
    return np.stack([reference.run(g, r.reshape(shape)).reshape(-1) for r in x])


# ----------------------------------------------------------------------------- packing


@pytest.mark.parametrize("form", ["int4", "int2", "shared"])
def test_pack_unpacks_to_the_same_integers(form):
    rng = np.random.default_rng(0)
    for shape in [(6, 1, 5, 5), (3, 7), (5, 1), (4, 3, 3, 1)]:  # odd row lengths included
        w = _weights(form, rng, *shape).astype(np.int8)
        p = weights.pack(w, form)
        np.testing.assert_array_equal(p.unpack(), weights.as_rows(w))
        assert p.data.size == shape[0] * p.row_bytes


def test_shared_index_bits_and_codebooks():
    rng = np.random.default_rng(1)
    for b in range(1, 9):  # at most 2^b values in the layer: b-bit indices, one codebook
        w = rng.choice(np.arange(-128, 128), 1 << b, replace=False)[rng.integers(0, 1 << b, (64, 64))]
        p = weights.pack(w.astype(np.int8), "shared")
        assert (p.bits, p.cb_stride) == (max(1, int(np.ceil(np.log2(len(np.unique(w)))))), 0)
        np.testing.assert_array_equal(p.unpack(), w)
    # A float k-means layer quantized per channel: a channel's scale follows its largest
    # centroid, so channels that miss a different extreme centroid map the same 8 centroids
    # to different integers; the layer has many, each channel at most 8: a codebook per row.
    centroids = rng.normal(0, 1, 8)
    wf = np.stack([rng.choice(rng.choice(centroids, 6, replace=False), 200) for _ in range(32)])
    wq = np.round(wf / (np.abs(wf).max(1, keepdims=True) / 127)).astype(np.int8)
    assert len(np.unique(wq)) > 8
    p = weights.pack(wq, "shared")
    assert (p.bits, p.cb_stride) == (3, 8)
    np.testing.assert_array_equal(p.unpack(), wq)
    assert weights.choose(wq, 8) == "shared"


def test_choose_follows_w_bits_and_values():
    rng = np.random.default_rng(2)
    assert weights.choose(rng.integers(-7, 8, (16, 100)), 4) == "int4"
    assert weights.choose(rng.integers(-1, 2, (16, 100)), 2) == "int2"
    assert weights.choose(rng.integers(-127, 128, (16, 100)), 8) == "int8"
    # 8-bit weights that happen to hold 15 values are not int4 (the quantizer's bits decide
    # the plain form) but shared, found from the values: 4-bit indices into a codebook.
    assert weights.choose(rng.integers(-7, 8, (16, 1000)), 8) == "shared"
    # A shared form is taken only when it saves at least MIN_SAVING of the plain bytes:
    # 3 values in a tiny layer cost their codebook more than they save.
    assert weights.choose(np.array([[1, -1, 0, 1]]), 8) == "int8"
    assert weights.choose(rng.choice([-90, -10, 30, 100], (16, 100)), 8) == "shared"


def test_lowering_picks_the_form_from_w_bits():
    from tinytamer.compress.int8 import quantize_ptq

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 10))
    calib = [torch.randn(4, 1, 8, 8) for _ in range(2)]
    gm = quantize_ptq(model, calib, select={"overrides": {"0": {"bits": 4}, "3": {"bits": 2}}})
    g = lower(gm, calib[0][:1])
    forms = {op.name: op.weight_form for op in g.ops if hasattr(op, "weight_form")}
    assert forms == {"0": "int4", "3": "int2"}


def test_a_layer_wide_grid_gives_a_shared_layer_one_codebook():
    from tinytamer.compress.int8 import quantize_ptq

    # A k-means-shared layer: every weight one of 8 values, each row's largest different,
    # so per-channel scales map the same centroids to different integers in each row.
    rng = np.random.default_rng(5)
    centroids = np.linspace(-1.0, 1.0, 8)
    w = centroids[rng.integers(0, 8, (24, 64))]
    w[np.arange(24), 0] = centroids[rng.integers(4, 8, 24)]
    w[np.arange(24), 1] = -w[np.arange(24), 0]
    w[:, 2:] = np.clip(w[:, 2:], -np.abs(w[:, :1]), np.abs(w[:, :1]))
    model = nn.Sequential(nn.Linear(64, 24))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor(w, dtype=torch.float32))
    calib = [torch.randn(8, 64)]
    books = {}
    for per_channel in (True, False):
        gm = quantize_ptq(model, calib, select={"overrides": {"0": {"per_channel": per_channel}}})
        rows = gm.get_submodule("0").int_weight().numpy()
        packed = weights.pack(rows, "shared")
        np.testing.assert_array_equal(packed.unpack(), rows)
        books[per_channel] = (len(packed.codebook), packed.groups is None, packed.flash_bytes)
    assert books[True][0] > 1 and not books[True][1]  # several codebooks and a byte per row
    assert books[False][:2] == (1, True)  # one codebook, no row numbers
    assert books[False][2] < books[True][2]


# ----------------------------------------------------------------------------- kernels


@needs_gcc
@pytest.mark.parametrize("form", ["int4", "int2", "shared"])
@pytest.mark.parametrize("make", [_lenet5, _depthwise], ids=["lenet5", "depthwise"])
def test_packed_kernels_match_the_reference_on_the_host(tmp_path, form, make):
    g = make(form)
    cm = codegen.generate(g)
    assert "_packed(" in cm.files["model.c"]
    rng = np.random.default_rng(3)
    x = rng.integers(-128, 128, (3, cm.input_size)).astype(np.int8)
    exe = toolchain.host_build(cm, tmp_path, sanitize=True)
    np.testing.assert_array_equal(toolchain.host_run(exe, x, cm.output_size), _want(g, x))


@needs_arm
def test_a_codebook_form_is_kept_only_where_it_pays_for_its_kernels(tmp_path):
    from tinytamer.compress.int8 import quantize_ptq
    from tinytamer.micro.program import build_program

    # A small shared conv (its codebook saves about 100 B, its blocks kernel costs kilobytes)
    # before a large shared fully connected layer (the packed kernel pays for itself).
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 256))
    with torch.no_grad():
        for layer, k in ((model[0], 4), (model[3], 16)):
            w = layer.weight
            values = torch.linspace(-1, 1, k) * w.abs().max()
            w.copy_(values[torch.randint(0, k, w.shape)])
    calib = [torch.randn(8, 1, 8, 8)]
    gm = quantize_ptq(model, calib, select={"overrides": {".": {"per_channel": False}}})
    chosen = {op.name: op.weight_form for op in lower(gm, calib[0][:1]).ops if hasattr(op, "weight_form")}
    assert chosen == {"0": "shared", "3": "shared"}
    prog = build_program(gm, calib[0][:1], "cortex-m4", tmp_path)
    assert prog.info["codebook_forms_reverted"] == {"shared Conv2D": ["0"]}
    forms = {op.name: op.weight_form for op in prog.graph.ops if hasattr(op, "weight_form")}
    assert forms == {"0": "int8", "3": "shared"}
    assert not list(tmp_path.glob("codebook-forms*"))
    x = prog.quantize_input(calib[0][:2].numpy())
    np.testing.assert_array_equal(prog.run_device(x), prog.run_reference(x))


def _weight_bytes(elf) -> int:
    """Bytes of the weight arrays (w<i>, packed wd<i> and codebooks wc<i>) in the linked ELF."""
    nm = subprocess.run(
        [toolchain.require("arm-none-eabi-nm"), "-S", str(elf)], capture_output=True, text=True, check=True
    ).stdout
    sizes = [int(m.group(1), 16) for m in re.finditer(r"^\w+ (\w+) \w (?:w|wd|wc)\d+$", nm, re.M)]
    assert sizes
    return sum(sizes)


@needs_arm
def test_lenet5_forms_on_cortex_m4_are_exact_and_shrink_flash(tmp_path):
    rng = np.random.default_rng(4)
    x = rng.integers(-128, 128, (2, 28 * 28)).astype(np.int8)
    plain = sum(int(np.prod(op.weight.shape)) for op in _lenet5("int8").ops if hasattr(op, "weight_form"))
    got = {}
    for form in ("int8", "int4", "int2", "shared"):
        g = _lenet5(form)
        cm = codegen.generate(g, dsp=True)
        build = toolchain.arm_build(cm, tmp_path / form, "cortex-m4", inputs=x)
        np.testing.assert_array_equal(toolchain.qemu_run(build, cm.output_size), _want(g, x))
        got[form] = _weight_bytes(build.elf)
        if form != "int8":
            # The image holds exactly the packed bytes and codebooks (int4 / int2
            # convolutions: the quads4 / quads2 words, channels past the last whole 4 in int8).
            assert got[form] == sum(
                schedule.weight_array(op, True).nbytes
                if schedule.resolve(op, True).get("weights") in ("quads4", "quads2")
                else weights.pack(op.weight, form).flash_bytes
                for op in g.ops
                if hasattr(op, "weight_form")
            )
    # int8 kernels pad rows to 4 for SIMD: a few bytes over one per weight.
    assert plain <= got["int8"] <= 1.02 * plain
    assert got["int4"] <= 0.51 * got["int8"]
    assert got["int2"] <= 0.26 * got["int8"]
    assert got["shared"] <= 0.52 * got["int8"]  # 4-bit indices plus five 16-byte codebooks
