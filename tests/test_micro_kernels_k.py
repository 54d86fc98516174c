"""The quads convolution's per-mode entry points: a model links only the output code its
layers run (tt_conv2d_s8_qx_plain, tt_conv2d_s8_qx_add, or the any-mode tt_conv2d_s8_qx),
and every entry stays bit-exact against the integer reference on the emulated Cortex-M4."""

from __future__ import annotations

import subprocess

import numpy as np
import pytest

from tinytamer.micro import codegen, reference, toolchain
from tinytamer.micro.builder import GraphBuilder
from tinytamer.micro.session import Session

arm = pytest.mark.skipif(
    not toolchain.arm_available(), reason="arm-none-eabi-gcc missing: run scripts/install-micro-toolchain.sh"
)


def _residual_block(rng, out_zp: int, relu: str | None):
    """conv (plain or clamped) -> conv -> conv + residual add of the first conv's output (the
    add fused into that conv, as in ResNet-8's first block) -> conv."""
    b = GraphBuilder((6, 5, 8), 0.02, 3)

    def conv(x, zp, relu, name):
        w = rng.integers(-127, 128, (8, 8, 3, 3))
        return b.conv(x, w, np.full(8, 0.004), None, 0.05, zp, padding=(1, 1), relu=relu, name=name)

    x = conv(b.input, out_zp, relu, "c0")
    y = conv(conv(x, -128, "relu", "c1"), 2, None, "c2")
    # A layer after the add: the planner fuses no add that writes the graph's output.
    return b.graph(conv(b.add(y, x, 0.08, -3, name="add"), 0, None, "c3"))


def _entries(cm) -> set[str]:
    src = cm.files["model.c"]
    return {e for e in ("tt_conv2d_s8_qx_plain(", "tt_conv2d_s8_qx_add(", "tt_conv2d_s8_qx(") if e in src}


def test_each_layer_calls_the_entry_of_its_output_mode():
    rng = np.random.default_rng(0)
    # Whole int8 range: the plain entry, and the fused add's own entry.
    assert _entries(codegen.generate(_residual_block(rng, -7, None), dsp=True)) == {
        "tt_conv2d_s8_qx_plain(",
        "tt_conv2d_s8_qx_add(",
    }
    # A ReLU that clamps above -128: that layer needs the any-mode entry.
    assert "tt_conv2d_s8_qx(" in _entries(codegen.generate(_residual_block(rng, -7, "relu"), dsp=True))


@arm
@pytest.mark.parametrize("relu", [None, "relu"])
def test_entries_are_bit_exact_and_link_only_their_modes(tmp_path, relu):
    rng = np.random.default_rng(1)
    g = _residual_block(rng, -7, relu)
    cm = codegen.generate(g, dsp=True)
    build = toolchain.arm_build(cm, tmp_path, "cortex-m4")
    xs = rng.integers(-128, 128, (3, *g.tensors[g.input].shape)).astype(np.int8)
    want = np.stack([reference.run(g, v).reshape(-1) for v in xs])
    with Session("cortex-m4", elf=build.elf, count=False) as sess:
        t_in, t_out = sess.alloc(cm.input_size), sess.alloc(cm.output_size)
        got = []
        for v in xs:
            sess.write(t_in, v.reshape(-1))
            sess.call("tt_model_run", t_in, t_out)
            got.append(sess.read(t_out))
    np.testing.assert_array_equal(np.stack(got), want)
    nm = subprocess.run(["arm-none-eabi-nm", str(build.elf)], capture_output=True, text=True, check=True).stdout
    linked = {line.split()[-1] for line in nm.splitlines()}
    # The any-mode block (every mode's output code) only where a layer needs it.
    assert ("tt_qx_blockn" in linked) == (relu == "relu")
