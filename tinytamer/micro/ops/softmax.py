"""Softmax over a vector, TensorFlow Lite's int8 lookup-table form; kernel tt_softmax_s8 in
runtime/tt_softmax.c (64-bit integer division, no floating point)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx, nn

from tinytamer.micro.ir import Graph, Op
from tinytamer.micro.ops.base import (
    CallSite,
    DeviceOp,
    Pending,
    Quant,
    c_array,
    c_struct,
    call_args,
    node_shape,
)


@dataclass
class Softmax(Op):
    """Softmax over a vector, TensorFlow Lite's int8 lookup-table form (its optimized
    ``SoftmaxInt8LUT``): ``table[d]`` = round(2^30 exp(-in_scale d)) is exp of the difference
    d = max - x in input steps, computed once when the graph is built; the output
    round(table[d] * multiplier / (sum * 2^16)) + zero point uses ``multiplier`` =
    round(2^16 / out_scale).  Integer arithmetic only on the device."""

    table: np.ndarray  # int64 [256]
    multiplier: int
    act_min: int
    act_max: int


class SoftmaxOp(DeviceOp):
    ir = Softmax
    kernel_files = ("tt_softmax.c",)
    lowers_from = {
        nn.Softmax: "from_module",
        F.softmax: "from_call",
        torch.softmax: "from_call",
        "softmax": "from_call",
    }
    fuses_relu = False

    def from_module(self, lw, node: fx.Node, _) -> Pending:
        return self._lower(lw, node, lw.mod(node).dim)

    def from_call(self, lw, node: fx.Node, _) -> Pending:
        return self._lower(lw, node, call_args(node, ("input", "dim")).get("dim"))

    def _lower(self, lw, node: fx.Node, dim) -> Pending:
        x = lw.quant(node, node.args[0])
        if len(lw.b.tensors[x].shape) != 1 or dim not in (1, -1):
            raise lw.fail(
                node,
                f"a softmax over dim {dim} of a {node_shape(node)} tensor (only over the classes of an N x F vector)",
            )
        if node.kwargs.get("dtype") is not None:
            raise lw.fail(node, "a softmax with a dtype argument")
        return Pending(self, node, [x])

    def finish(self, lw, p: Pending, q: Quant) -> str:
        return lw.b.softmax(p.inputs[0], q.scale, q.zero_point, qrange=q.qrange, name=p.node.name)

    def reference(self, g: Graph, op: Softmax, args: list[np.ndarray]) -> np.ndarray:
        v = args[0].reshape(-1).astype(np.int64)
        e = op.table[v.max() - v]  # exp(in_scale * (x - max)) in Q30
        den = int(e.sum()) << 16
        q = (e * op.multiplier + (den >> 1)) // den  # round half up; every term is >= 0
        out = q + g.tensors[op.output].zero_point
        return np.clip(out, op.act_min, op.act_max).astype(np.int8)

    def emit_c(self, op: Softmax, site: CallSite) -> tuple[list[str], str]:
        i, t_out = site.i, site.g.tensors[op.output]
        fields = dict(
            n=t_out.size, out_zp=t_out.zero_point, multiplier=op.multiplier, act_min=op.act_min, act_max=op.act_max
        )
        return (
            [c_array(f"sm{i}", "int32_t", op.table), c_struct("tt_softmax_params", f"p{i}", fields)],
            f"tt_softmax_s8(&p{i}, {site.args[0]}, {site.out}, sm{i})",
        )
