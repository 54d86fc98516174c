"""Pooling over HWC maps: max pool, and average pool (global when the window is the map).

Kernels in runtime/tt_pool.c (tt_maxpool_s8, tt_avgpool_s8); both read one
``tt_pool_params``.  A max pool keeps its input's quantization; an average pool has no
padding and is requantized to its own (scale, zero point).
"""

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
    c_struct,
    call_args,
    ir_shape,
    node_shape,
    pair,
    requant_clamp,
    windows,
)

# The positional parameters of F.max_pool2d / F.avg_pool2d (builtins without a signature).
_POOL_ARGS = ("input", "kernel_size", "stride", "padding")
_MAXPOOL_ARGS = (*_POOL_ARGS, "dilation", "ceil_mode")


@dataclass
class MaxPool(Op):
    """Max pool; the output keeps the input's scale and zero point."""

    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]


@dataclass
class AvgPool(Op):
    """Average pool without padding (global when the kernel is the whole map), requantized."""

    kernel: tuple[int, int]
    stride: tuple[int, int]
    multiplier: int
    shift: int
    act_min: int
    act_max: int


def _pool_params(
    g: Graph,
    op: Op,
    i: int,
    *,
    pad: tuple[int, int],
    multiplier: int = 0,
    shift: int = 0,
    act: tuple[int, int] = (-128, 127),
) -> str:
    (h, w, c), (oh, ow, _) = g.tensors[op.inputs[0]].shape, g.tensors[op.output].shape
    fields = dict(
        in_h=h,
        in_w=w,
        c=c,
        out_h=oh,
        out_w=ow,
        k_h=op.kernel[0],
        k_w=op.kernel[1],
        stride_h=op.stride[0],
        stride_w=op.stride[1],
        pad_h=pad[0],
        pad_w=pad[1],
        in_zp=g.tensors[op.inputs[0]].zero_point,
        out_zp=g.tensors[op.output].zero_point,
        multiplier=multiplier,
        shift=shift,
        act_min=act[0],
        act_max=act[1],
    )
    return c_struct("tt_pool_params", f"p{i}", fields)


class MaxPoolOp(DeviceOp):
    ir = MaxPool
    kernel_files = ("tt_pool.c",)
    lowers_from = {nn.MaxPool2d: "from_module", F.max_pool2d: "from_function"}

    def from_module(self, lw, node: fx.Node, _) -> str:
        m = lw.mod(node)
        return self._lower(lw, node, m.kernel_size, m.stride, m.padding, m.dilation, m.ceil_mode)

    def from_function(self, lw, node: fx.Node, _) -> str:
        a = call_args(node, _MAXPOOL_ARGS, padding=0, dilation=1, ceil_mode=False)
        k = a["kernel_size"]
        return self._lower(lw, node, k, a.get("stride") or k, a["padding"], a["dilation"], a["ceil_mode"])

    @staticmethod
    def _lower(lw, node: fx.Node, k, s, p, dilation, ceil_mode) -> str:
        if pair(dilation) != (1, 1) or ceil_mode:
            raise lw.fail(node, "a max pool with dilation or ceil_mode")
        x = lw.quant(node, node.args[0])
        return lw.b.maxpool(x, pair(k), pair(s if s else k), pair(p), name=node.name)

    def reference(self, g: Graph, op: MaxPool, args: list[np.ndarray]) -> np.ndarray:
        win = windows(args[0].astype(np.int16), op.kernel, op.stride, op.padding, -129)
        return win.max(axis=(3, 4)).astype(np.int8)

    def emit_c(self, op: MaxPool, site: CallSite) -> tuple[list[str], str]:
        i = site.i
        return ([_pool_params(site.g, op, i, pad=op.padding)], f"tt_maxpool_s8(&p{i}, {site.args[0]}, {site.out})")


class AvgPoolOp(DeviceOp):
    ir = AvgPool
    kernel_files = ("tt_pool.c",)
    lowers_from = {
        nn.AvgPool2d: "from_module",
        F.avg_pool2d: "from_function",
        nn.AdaptiveAvgPool2d: "from_adaptive_module",
        F.adaptive_avg_pool2d: "from_adaptive_function",
        torch.mean: "from_mean",
        "mean": "from_mean",
    }

    # ------------------------------------------------------------------ lowering
    def from_module(self, lw, node: fx.Node, _) -> Pending:
        m = lw.mod(node)
        if pair(m.padding) != (0, 0) or m.ceil_mode:
            raise lw.fail(node, "an average pool with padding or ceil_mode")
        return self._pending(lw, node, pair(m.kernel_size), pair(m.stride or m.kernel_size))

    def from_function(self, lw, node: fx.Node, _) -> Pending:
        a = call_args(node, _POOL_ARGS, padding=0)
        k = pair(a["kernel_size"])
        s = a.get("stride") or k
        if pair(a["padding"]) != (0, 0):
            raise lw.fail(node, "an average pool with padding")
        return self._pending(lw, node, k, pair(s))

    def from_adaptive_module(self, lw, node: fx.Node, _) -> Pending:
        return self._adaptive(lw, node, lw.mod(node).output_size)

    def from_adaptive_function(self, lw, node: fx.Node, _) -> Pending:
        return self._adaptive(lw, node, call_args(node, ("input", "output_size"))["output_size"])

    def from_mean(self, lw, node: fx.Node, _) -> Pending:
        x = lw.quant(node, node.args[0])
        dims = call_args(node, ("input", "dim")).get("dim")
        dims = {int(d) % 4 for d in (dims if isinstance(dims, (tuple, list)) else [dims])} if dims is not None else None
        if dims != {2, 3}:
            raise lw.fail(node, f"a mean over dims {dims} (only the spatial dims 2, 3)")
        h, w, _ = lw.b.tensors[x].shape
        return Pending(self, node, [x], attrs={"kernel": (h, w), "stride": (h, w)})

    def _pending(self, lw, node: fx.Node, k, s) -> Pending:
        return Pending(self, node, [lw.quant(node, node.args[0])], attrs={"kernel": k, "stride": s})

    def _adaptive(self, lw, node: fx.Node, output_size) -> Pending:
        x = lw.quant(node, node.args[0])
        h, w, _ = lw.b.tensors[x].shape
        oh, ow = pair(output_size) if output_size is not None else (h, w)
        oh, ow = oh or h, ow or w
        if h % oh or w % ow:
            raise lw.fail(node, f"an adaptive average pool {h}x{w} -> {oh}x{ow} with uneven windows")
        return Pending(self, node, [x], attrs={"kernel": (h // oh, w // ow), "stride": (h // oh, w // ow)})

    def finish(self, lw, p: Pending, q: Quant) -> str:
        b, name = lw.b, p.node.name
        out = b.avgpool(
            p.inputs[0],
            p.attrs["kernel"],
            p.attrs["stride"],
            q.scale,
            q.zero_point,
            relu=p.relu,
            qrange=q.qrange,
            name=name,
        )
        # A global pool that also drops the spatial dims (a mean) ends as a vector.
        want = ir_shape(node_shape(p.node), p.node)
        return out if want == b.tensors[out].shape else b.reshape(out, want, name=name + "_flat")

    # ------------------------------------------------------------------ semantics and C
    def reference(self, g: Graph, op: AvgPool, args: list[np.ndarray]) -> np.ndarray:
        zin = g.tensors[op.inputs[0]].zero_point
        win = windows(args[0].astype(np.int64) - zin, op.kernel, op.stride, (0, 0), 0)
        out = requant_clamp(
            win.sum(axis=(3, 4)), op.multiplier, op.shift, g.tensors[op.output].zero_point, op.act_min, op.act_max
        )
        return out.reshape(g.tensors[op.output].shape)

    def emit_c(self, op: AvgPool, site: CallSite) -> tuple[list[str], str]:
        i = site.i
        return (
            [
                _pool_params(
                    site.g, op, i, pad=(0, 0), multiplier=op.multiplier, shift=op.shift, act=(op.act_min, op.act_max)
                )
            ],
            f"tt_avgpool_s8(&p{i}, {site.args[0]}, {site.out})",
        )
