"""The channel gather op (tinytamer.micro.ops.gather): split, concatenation and channel
shuffle lower from PyTorch, its numpy reference is bit-exact with its C kernel, and what it
cannot run is refused by name."""

from __future__ import annotations

import random
import re
import shutil

import numpy as np
import pytest
import torch
from torch import nn

from tinytamer.compress.int8 import quantize_ptq
from tinytamer.errors import ModelError
from tinytamer.micro import codegen, ops, reference, toolchain
from tinytamer.micro.builder import GraphBuilder
from tinytamer.micro.lower import lower, op_agreement
from tinytamer.micro.ops.gather import Gather, add_gather, check_runs
from tinytamer.micro.program import MicroProgram

torch.set_num_threads(1)
needs_gcc = pytest.mark.skipif(shutil.which("gcc") is None, reason="host gcc is not installed")
needs_arm = pytest.mark.skipif(shutil.which("arm-none-eabi-gcc") is None, reason="arm-none-eabi-gcc is not installed")


def _graph(seed: int = 0):
    """Two maps at different scales, split, concatenated and shuffled (every run shape)."""
    rng = np.random.default_rng(seed)
    b = GraphBuilder((5, 4, 6), 0.02, 3)
    y = b.conv(b.input, rng.integers(-127, 128, (4, 6, 1, 1)), rng.uniform(0.002, 0.02, 4), None, 0.05, -7)
    half = add_gather(b, [b.input], [(0, 2, 1, 0, 1, 3)], 0.02, 3, name="split")  # same quantization: copied
    cat = add_gather(b, [half, y], [(0, 0, 1, 0, 1, 3), (1, 0, 1, 3, 1, 4)], 0.03, 1, name="cat")
    out = add_gather(b, [cat], [(0, 0, 1, 0, 7, 1), (0, 1, 1, 1, 1, 6)], 0.03, 1, name="rotate")
    sh = add_gather(b, [out], [(0, 0, 1, 0, 1, 7)], 0.04, -2, (-100, 90), name="requant")
    return b.graph(sh)


def test_gather_is_in_the_op_table_with_its_kernel():
    d = ops.OPS[Gather]
    assert d.kernel_files == ("tt_gather.c",)
    assert "tt_gather.c" in toolchain.KERNEL_SOURCES
    header = (codegen.RUNTIME_DIR / "tt_kernels.h").read_text()
    g = _graph()
    op = next(o for o in g.ops if isinstance(o, Gather))
    site = ops.base.CallSite(g, 0, False, ["a", "b"], "out", "0", None)
    fn = re.match(r"(\w+)\(", d.emit_c(op, site)[1]).group(1)
    assert f" {fn}(" in header
    assert re.search(rf"^void {fn}\(", (codegen.RUNTIME_DIR / "tt_gather.c").read_text(), re.M)


def test_reference_moves_channels_and_requantizes():
    g = _graph()
    x = np.random.default_rng(0).integers(-128, 128, (5, 4, 6)).astype(np.int8)
    vals = reference.run(g, x, keep_all=True)
    split = next(o for o in g.ops if o.name == "split")
    assert split.tables == [None]  # same scale and zero point: a copy
    np.testing.assert_array_equal(vals[split.output], x[..., 2:5])
    cat = next(o for o in g.ops if o.name == "cat")
    assert cat.tables[0] is not None and vals[cat.output].shape == (5, 4, 7)
    want = np.clip(np.round((x[..., 2:5].astype(np.float64) - 3) * 0.02 / 0.03) + 1, -128, 127)
    assert np.abs(vals[cat.output][..., :3] - want).max() <= 1
    rot = next(o for o in g.ops if o.name == "rotate")
    np.testing.assert_array_equal(vals[rot.output][..., 1:], vals[cat.output][..., 1:])
    last = vals[g.output]
    assert last.min() >= -100 and last.max() <= 90


@needs_gcc
@pytest.mark.parametrize("seed", [0, 1])
def test_reference_matches_the_host_kernel(tmp_path, seed):
    g = _graph(seed)
    cm = codegen.generate(g)
    rng = np.random.default_rng(seed)
    x = rng.integers(-128, 128, (4, cm.input_size)).astype(np.int8)
    want = np.stack([reference.run(g, r.reshape(g.tensors[g.input].shape)).reshape(-1) for r in x])
    exe = toolchain.host_build(cm, tmp_path / "host", sanitize=True)
    np.testing.assert_array_equal(toolchain.host_run(exe, x, cm.output_size), want)


def test_runs_that_miss_or_repeat_a_channel_are_refused():
    with pytest.raises(ValueError, match="exactly once"):
        check_runs(np.array([[0, 0, 1, 0, 1, 2], [0, 0, 1, 1, 1, 1]]), [4], 3, "t")
    with pytest.raises(ValueError, match="leaves"):
        check_runs(np.array([[0, 3, 1, 0, 1, 2]]), [4], 2, "t")
    with pytest.raises(ValueError, match="input 1"):
        check_runs(np.array([[1, 0, 1, 0, 1, 2]]), [4], 2, "t")
    b = GraphBuilder((2, 2, 4), 0.1, 0)
    other = b.maxpool(b.input, (2, 2), (2, 2))
    with pytest.raises(ValueError, match="different maps"):
        add_gather(b, [b.input, other], [(0, 0, 1, 0, 1, 4), (1, 0, 1, 4, 1, 4)], 0.1, 0, name="bad")


class _Net(nn.Module):
    """slice / narrow + cat + ChannelShuffle, the ops of a ShuffleNetV2 unit, around convolutions."""

    def __init__(self, shuffle: nn.Module | None = None) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = nn.Conv2d(4, 4, 1)
        self.shuffle = shuffle if shuffle is not None else nn.ChannelShuffle(2)
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        x = torch.relu(self.a(x))
        kept = x[:, :4]
        y = torch.cat((kept, self.b(torch.narrow(x, 1, 4, 4))), 1)
        y = self.shuffle(y)
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(y, 1), 1))


def _quantized(model: nn.Module):
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    calib = [torch.randn(4, 3, 6, 6, generator=g) for _ in range(2)]
    return quantize_ptq(model.eval(), calib), torch.randn(3, 3, 6, 6, generator=g)


@needs_gcc
def test_split_concat_shuffle_lower_and_run_bit_exact(tmp_path):
    gm, x = _quantized(_Net())
    g = lower(gm, x[:1])
    assert sum(isinstance(op, Gather) for op in g.ops) == 4
    assert max(op_agreement(gm, g, x[:1]).values()) <= 1
    prog = MicroProgram(g, codegen.generate(g), "host", tmp_path)
    q = prog.quantize_input(x.numpy())
    exe = toolchain.host_build(prog.cmodel, tmp_path / "host")
    np.testing.assert_array_equal(toolchain.host_run(exe, q, prog.cmodel.output_size), prog.run_reference(q))


def test_shuffle_permutation_matches_pytorch():
    gm, x = _quantized(_Net())
    g = lower(gm, x[:1])
    sh = [op for op in g.ops if isinstance(op, Gather)][-1]
    c = g.tensors[sh.output].shape[-1]
    perm = np.empty(c, np.int64)
    for _, i0, istep, o0, ostep, n in sh.runs.tolist():
        perm[o0 + ostep * np.arange(n)] = i0 + istep * np.arange(n)
    want = nn.ChannelShuffle(2)(torch.arange(c, dtype=torch.float32).view(1, c, 1, 1)).view(-1).long().numpy()
    np.testing.assert_array_equal(perm, want)


class _BadNarrow(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)

    def forward(self, x):
        return torch.narrow(self.conv(x), 2, 0, 2)


class _BadSlice(_BadNarrow):
    def forward(self, x):
        return self.conv(x)[:, :, ::2]


class _BadCat(_BadNarrow):
    def forward(self, x):
        y = self.conv(x)
        return torch.cat((y, y), 3)


@pytest.mark.parametrize(
    ("model", "what"),
    [
        (_BadNarrow(), "a narrow along dim 2"),
        (_BadCat(), "a concatenation along dim 3"),
        (_BadSlice(), "function 'getitem' at node"),
    ],
)
def test_gathers_off_the_channels_are_refused_by_name(model, what):
    gm, x = _quantized(model)
    with pytest.raises(ModelError, match=what):
        lower(gm, x[:1])


@needs_arm
@pytest.mark.slow
def test_a_shufflenet_space_network_runs_bit_exact_on_the_emulated_cortex_m4(tmp_path):
    from tinytamer.micro.program import build_program
    from tinytamer.search.spaces import shufflenet_space

    net = shufflenet_space((3, 16, 16), 4, stem=8, stages=((8, 2, 2),), feat=16).eval()
    model = net.derive(net.sample(random.Random(0))).eval()
    g = torch.Generator().manual_seed(0)
    calib = [torch.randn(4, 3, 16, 16, generator=g)]
    gm = quantize_ptq(model, calib)
    x = torch.randn(2, 3, 16, 16, generator=g)
    prog = build_program(gm, x[:1], "cortex-m4", tmp_path)
    assert any(isinstance(op, Gather) for op in prog.graph.ops)
    q = prog.quantize_input(x.numpy())
    np.testing.assert_array_equal(prog.run_device(q), prog.run_reference(q))
