"""Residual add: both inputs rescaled to a common scale (TFLite's int8 ADD).

Kernels in runtime/tt_add.c: ``tt_add_s8`` computes each input's rescaling per element;
``tt_add_s8_lut`` (schedule ``kernel`` "lut", the default) reads it from two 256-entry
tables in flash.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass

import numpy as np
import torch
from torch import fx

from tinytamer.micro.fixedpoint import RQ_MAX_RSHIFT, requantize
from tinytamer.micro.ir import Graph, Op
from tinytamer.micro.ops.base import (
    CallSite,
    DeviceOp,
    Pending,
    Quant,
    c_array,
    c_struct,
    requant_clamp,
)


@dataclass
class Add(Op):
    """Residual add with both inputs rescaled to a common scale (TFLite's int8 ADD)."""

    left_shift: int
    in1_multiplier: int
    in1_shift: int
    in2_multiplier: int
    in2_shift: int
    out_multiplier: int
    out_shift: int
    act_min: int
    act_max: int


def add_tables(op: Add, g: Graph) -> tuple[np.ndarray, np.ndarray]:
    """For the "lut" add: each input's rescaled value for all 256 int8 codes (computed by
    the reference's own fixed-point functions, so the kernel stays bit-exact)."""
    codes = np.arange(-128, 128, dtype=np.int64)
    za, zb = (g.tensors[t].zero_point for t in op.inputs)
    ta = requantize((codes - za) << op.left_shift, op.in1_multiplier, op.in1_shift)
    tb = requantize((codes - zb) << op.left_shift, op.in2_multiplier, op.in2_shift)
    return ta.astype(np.int32), tb.astype(np.int32)


def affine_table(table: np.ndarray) -> tuple[int, int] | None:
    """(mul, add) with ``mul * c + add == table[c + 128]`` for every int8 code c (in
    wrapping int32 arithmetic, as the kernel computes it), or None where the table is not
    affine.  The input of the larger scale always is: its multiplier is one half, so its
    rescale is exactly (c - zp) << (left_shift - 1)."""
    t = table.astype(np.int64)
    mul, add = int(t[129] - t[128]), int(t[128])
    codes = np.arange(-128, 128, dtype=np.int64)
    wrapped = (codes * mul + add + (1 << 31)) % (1 << 32) - (1 << 31)
    if not (np.array_equal(wrapped, t) and -(1 << 31) <= mul < 1 << 31 and -(1 << 31) <= add < 1 << 31):
        return None
    return mul, add


def add_fast_requant(op: Add, g: Graph) -> np.ndarray | None:
    """The (0, mult, rshift, offset) record of :func:`~tinytamer.micro.ops.conv.fast_requant`
    for a residual add's final requantization (the sum of its two table values), or None
    where it is not exact."""
    ta, tb = add_tables(op, g)
    if int(np.abs(ta.astype(np.int64)).max()) + int(np.abs(tb.astype(np.int64)).max()) >= 1 << 30:
        return None
    e = 1 if op.out_multiplier == 0 else -op.out_shift
    if not 1 <= e <= RQ_MAX_RSHIFT:
        return None
    offset = (1 << (e - 1)) + (g.tensors[op.output].zero_point << e)
    return np.array([0, op.out_multiplier, e, offset], dtype=np.int32)


def add_params(g: Graph, op: Add, i: int) -> str:
    """The ``tt_add_params p<i>`` of the add (also read by a convolution it is fused into)."""
    t_in = [g.tensors[n] for n in op.inputs]
    t_out = g.tensors[op.output]
    fields = dict(
        size=t_out.size,
        left_shift=op.left_shift,
        in1_zp=t_in[0].zero_point,
        in1_multiplier=op.in1_multiplier,
        in1_shift=op.in1_shift,
        in2_zp=t_in[1].zero_point,
        in2_multiplier=op.in2_multiplier,
        in2_shift=op.in2_shift,
        out_zp=t_out.zero_point,
        out_multiplier=op.out_multiplier,
        out_shift=op.out_shift,
        act_min=op.act_min,
        act_max=op.act_max,
    )
    return c_struct("tt_add_params", f"p{i}", fields)


class AddOp(DeviceOp):
    ir = Add
    kernel_files = ("tt_add.c",)
    lowers_from = {
        operator.add: "from_function",
        operator.iadd: "from_function",
        torch.add: "from_function",
        "add": "from_method",
        "add_": "from_method",
    }
    in_place = True
    residual = True

    def from_function(self, lw, node: fx.Node, _) -> Pending:
        a, b = node.args[:2]
        if len(node.args) > 2 or node.kwargs:
            raise lw.fail(node, "an add with alpha or extra arguments")
        return Pending(self, node, [lw.quant(node, a), lw.quant(node, b)])

    def from_method(self, lw, node: fx.Node, _) -> Pending:
        if len(node.args) != 2 or node.kwargs:
            raise lw.fail(node, "an add with alpha or extra arguments")
        return Pending(self, node, [lw.quant(node, a) for a in node.args])

    def finish(self, lw, p: Pending, q: Quant) -> str:
        b = lw.b
        a, c = p.inputs
        if b.tensors[a].shape != b.tensors[c].shape:
            raise lw.fail(p.node, f"an add of shapes {b.tensors[a].shape} and {b.tensors[c].shape} (broadcasting)")
        return b.add(a, c, q.scale, q.zero_point, relu=p.relu, qrange=q.qrange, name=p.node.name)

    def reference(self, g: Graph, op: Add, args: list[np.ndarray]) -> np.ndarray:
        a, b = args
        ta, tb = (g.tensors[n] for n in op.inputs)
        sa = requantize((a.astype(np.int64) - ta.zero_point) << op.left_shift, op.in1_multiplier, op.in1_shift)
        sb = requantize((b.astype(np.int64) - tb.zero_point) << op.left_shift, op.in2_multiplier, op.in2_shift)
        return requant_clamp(
            sa + sb, op.out_multiplier, op.out_shift, g.tensors[op.output].zero_point, op.act_min, op.act_max
        )

    def space(self, op: Add, dsp: bool) -> dict[str, list]:
        return {"kernel": ["lut", "direct"]}

    def emit_c(self, op: Add, site: CallSite) -> tuple[list[str], str]:
        i, a = site.i, site.args
        data = []
        lut = self.resolve(op, site.dsp)["kernel"] == "lut"
        if lut:
            ta, tb = add_tables(op, site.g)
            data += [c_array(f"ta{i}", "int32_t", ta), c_array(f"tb{i}", "int32_t", tb)]
        data.append(add_params(site.g, op, i))
        if lut:
            return data, f"tt_add_s8_lut(&p{i}, {a[0]}, {a[1]}, {site.out}, ta{i}, tb{i})"
        return data, f"tt_add_s8(&p{i}, {a[0]}, {a[1]}, {site.out})"
