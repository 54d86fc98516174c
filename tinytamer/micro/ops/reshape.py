"""Flatten / reshape: the output aliases the input's buffer (no code, no copy).

A flatten of a C x H x W map keeps the HWC buffer; the order PyTorch would have read it in
is recorded so the linear layer that reads it permutes its columns instead.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import fx, nn

from tinytamer.micro.ir import Graph, Op
from tinytamer.micro.ops.base import CallSite, DeviceOp, ir_shape, node_shape


@dataclass
class Reshape(Op):
    """Flatten/reshape: the output aliases the input's buffer (no code, no copy)."""


class ReshapeOp(DeviceOp):
    ir = Reshape
    kernel_files = ()
    lowers_from = {
        nn.Flatten: "from_node",
        torch.flatten: "from_node",
        torch.reshape: "from_node",
        "view": "from_node",
        "reshape": "from_node",
        "flatten": "from_node",
    }
    aliases_input = True

    def from_node(self, lw, node: fx.Node, _) -> str:
        x = lw.quant(node, node.args[0])
        src = lw.b.tensors[x].shape
        dst = ir_shape(node_shape(node), node)
        if dst == src:
            return x
        if len(dst) != 1:
            raise lw.fail(node, f"a reshape {src} -> {dst} (only flatten to N x F)")
        out = lw.b.reshape(x, dst, name=node.name)
        if len(src) == 3 and src[0] * src[1] > 1:
            h, w, c = src
            lw.torch_order[out] = np.arange(c * h * w).reshape(c, h, w).transpose(1, 2, 0).ravel()
        return out

    def reference(self, g: Graph, op: Reshape, args: list[np.ndarray]) -> np.ndarray:
        return args[0].reshape(g.tensors[op.output].shape)

    def emit_c(self, op: Reshape, site: CallSite) -> tuple[list[str], str]:
        raise AssertionError("a reshape aliases its input: the generator emits no code for it")
