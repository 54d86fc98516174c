"""Nearest-neighbour upsampling of an HWC map by whole factors (an FPN's ``F.interpolate``).

Every output pixel ``(y, x)`` copies input pixel ``(y // fh, x // fw)``.  The output has its
own (scale, zero point) - a FakeQuantAct follows the interpolation - so each code goes through
a 256-entry table of output codes computed here with the reference's fixed-point functions
(:func:`tinytamer.micro.ops.gather.requant_table`; the kernel only reads it, so it is
bit-exact); an input already at the output's quantization is copied.  Kernel
``tt_upsample_s8`` in runtime/tt_upsample.c.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch.nn.functional as F
from torch import fx, nn

from tinytamer.micro.ir import Graph, Op
from tinytamer.micro.ops.base import CallSite, DeviceOp, Pending, Quant, c_array, c_struct, call_args, node_shape
from tinytamer.micro.ops.gather import requant_table

_INTERP_ARGS = ("input", "size", "scale_factor", "mode", "align_corners", "recompute_scale_factor", "antialias")


@dataclass
class Upsample(Op):
    """Nearest upsampling by ``factor`` (fh, fw); ``table`` requantizes (None: copy)."""

    factor: tuple[int, int]
    table: np.ndarray | None


def add_upsample(
    b, x: str, factor: tuple[int, int], out_scale: float, out_zp: int, qrange=(-128, 127), *, name: str
) -> str:
    """Append an :class:`Upsample` of ``x`` to a :class:`~tinytamer.micro.builder.GraphBuilder`."""
    t = b.tensors[x]
    h, w, c = t.shape
    o = b._new((h * factor[0], w * factor[1], c), out_scale, out_zp, None)
    table = requant_table(t.scale, t.zero_point, out_scale, out_zp, *qrange)
    b.ops.append(Upsample(name, [x], o, tuple(factor), table))
    return o


class UpsampleOp(DeviceOp):
    ir = Upsample
    kernel_files = ("tt_upsample.c",)
    lowers_from = {F.interpolate: "from_function", nn.Upsample: "from_module"}
    fuses_relu = False

    def from_function(self, lw, node: fx.Node, _) -> Pending:
        a = call_args(node, _INTERP_ARGS, size=None, scale_factor=None, mode="nearest")
        return self._pending(lw, node, a["input"], a["mode"])

    def from_module(self, lw, node: fx.Node, _) -> Pending:
        return self._pending(lw, node, node.args[0], lw.mod(node).mode)

    def _pending(self, lw, node: fx.Node, arg, mode) -> Pending:
        if mode != "nearest":
            raise lw.fail(node, f"an interpolation of mode '{mode}' (only 'nearest')")
        x = lw.quant(node, arg)
        h, w, _ = lw.b.tensors[x].shape
        out = node_shape(node)
        if len(out) != 4 or out[2] % h or out[3] % w:
            raise lw.fail(node, f"an upsampling from {h} x {w} to {tuple(out[2:])} (whole factors only)")
        return Pending(self, node, [x], attrs={"factor": (out[2] // h, out[3] // w)})

    def finish(self, lw, p: Pending, q: Quant) -> str:
        return add_upsample(lw.b, p.inputs[0], p.attrs["factor"], q.scale, q.zero_point, q.qrange, name=p.node.name)

    def reference(self, g: Graph, op: Upsample, args: list[np.ndarray]) -> np.ndarray:
        fh, fw = op.factor
        y = np.repeat(np.repeat(args[0], fh, axis=0), fw, axis=1)
        return y if op.table is None else op.table[y.astype(np.int64) + 128]

    def emit_c(self, op: Upsample, site: CallSite) -> tuple[list[str], str]:
        i, g = site.i, site.g
        h, w, c = g.tensors[op.inputs[0]].shape
        data = []
        if op.table is not None:
            data.append(c_array(f"ut{i}", "int8_t", op.table))
        fields = dict(
            in_h=h, in_w=w, c=c, f_h=op.factor[0], f_w=op.factor[1], table=f"ut{i}" if op.table is not None else "0"
        )
        data.append(c_struct("tt_upsample_params", f"p{i}", fields))
        return data, f"tt_upsample_s8(&p{i}, {site.args[0]}, {site.out})"
