"""Fully connected layer over a vector; weights [out, in] with the columns already in the
order of the input buffer (a flattened H x W x C map keeps its HWC buffer).

Kernels in runtime/tt_dense.c: ``kernel`` "direct" (tt_dense_s8, portable) or "simd"
(tt_dense_s8_dsp: input unpacked once to int16 in the arena, 2 rows per SMLAD pass);
"packed" (tt_dense_s8_packed, runtime/tt_dense_packed.c: int4 / int2 / shared weights, see
:mod:`tinytamer.micro.weights`), offered first for a layer whose ``weight_form`` is one of
those; and "sparse" (tt_dense_s8_sparse, runtime/tt_sparse.c: only the non-zeros are stored
and multiplied), offered first for a layer whose ``weight_form`` is sparse or sparse_shared.
The weight form, chosen at lowering (:func:`tinytamer.micro.weights.choose`), decides.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from torch import fx, nn

from tinytamer.micro import weights
from tinytamer.micro.ir import Graph, Op
from tinytamer.micro.ops.base import (
    CallSite,
    DeviceOp,
    Pending,
    Quant,
    c_requant,
    c_struct,
    c_weights,
    requant_clamp,
    round4,
)
from tinytamer.qgraph import QuantWeight


@dataclass
class Dense(Op):
    weight: np.ndarray  # int8 [OUT, IN] (IN in the HWC order of the input buffer)
    bias: np.ndarray  # int32 [OUT]
    multiplier: np.ndarray  # int32 [OUT]
    shift: np.ndarray  # int32 [OUT]
    act_min: int
    act_max: int
    schedule: dict = field(default_factory=dict)
    weight_form: str = "int8"  # how flash stores the weights (tinytamer.micro.weights)


class DenseOp(DeviceOp):
    ir = Dense
    kernel_files = ("tt_dense.c", "tt_sparse.c", "tt_dense_packed.c", "tt_wpack.c")
    lowers_from = {nn.Linear: "from_module"}

    def from_module(self, lw, node: fx.Node, _) -> Pending:
        m = lw.mod(node)
        if not isinstance(m, QuantWeight):
            raise lw.fail(node, f"a {type(m).__name__} left in float (not quantized)")
        # The one op that may read a flattened C x H x W map: its columns are permuted.
        return Pending(self, node, [lw.quant(node, node.args[0], flattened_ok=True)], m)

    def finish(self, lw, p: Pending, q: Quant) -> str:
        m, x = p.module, p.inputs[0]
        return lw.b.dense(
            x,
            m.int_weight().numpy(),
            m.w_scale.numpy(),
            None if m.bias is None else m.bias.detach().numpy(),
            q.scale,
            q.zero_point,
            relu=p.relu,
            qrange=q.qrange,
            column_order=lw.torch_order.get(x),
            name=str(p.node.target),
        )

    def reference(self, g: Graph, op: Dense, args: list[np.ndarray]) -> np.ndarray:
        zin = g.tensors[op.inputs[0]].zero_point
        acc = op.weight.astype(np.int64) @ (args[0].reshape(-1).astype(np.int64) - zin) + op.bias
        zout = g.tensors[op.output].zero_point
        return requant_clamp(acc, op.multiplier, op.shift, zout, op.act_min, op.act_max)

    def cost(self, g: Graph, op: Dense) -> int:
        return int(op.weight.size)

    def layer_key(self, op: Dense) -> str:
        return f"w{op.weight.shape}" + ("" if op.weight_form == "int8" else op.weight_form)

    def space(self, op: Dense, dsp: bool) -> dict[str, list]:
        kernels = ["simd", "direct"] if dsp else ["direct"]
        if op.weight_form != "int8":
            # The form's own kernel keeps its flash saving; the int8 kernels stay for a
            # tuner that trades flash for cycles.
            own = "sparse" if op.weight_form in weights.SPARSE_FORMS else "packed"
            kernels = [own, *kernels]
        return {"kernel": kernels}

    def weight_array(self, op: Dense, dsp: bool) -> np.ndarray:
        """The weights in the layout the chosen kernel reads (padded to 4 columns for SIMD;
        the packed bytes; the sparse words or stream)."""
        kernel = self.resolve(op, dsp)["kernel"]
        if kernel == "packed":
            return weights.pack(op.weight, op.weight_form).data
        if kernel == "sparse":
            sp = weights.pack(op.weight, op.weight_form)
            return sp.words if sp.words is not None else sp.stream
        if kernel == "simd":
            n = op.weight.shape[1]
            return np.pad(op.weight, ((0, 0), (0, round4(n) - n)))
        return op.weight

    def scratch_bytes(self, g: Graph, op: Dense, dsp: bool) -> int:
        if self.resolve(op, dsp)["kernel"] == "packed":
            n = int(op.weight.shape[1])
            if not dsp:
                return n  # one unpacked row
            return 2 * ((n + 15) // 16 * 16)  # DSP: the input as int16, in groups of 16
        if self.resolve(op, dsp)["kernel"] in ("simd", "sparse"):
            return 2 * round4(op.weight.shape[1])
        return 0

    def emit_c(self, op: Dense, site: CallSite) -> tuple[list[str], str]:
        g, i, x = site.g, site.i, site.args[0]
        t_in, t_out = g.tensors[op.inputs[0]], g.tensors[op.output]
        fields = dict(
            in_n=t_in.size,
            out_n=t_out.size,
            in_zp=t_in.zero_point,
            out_zp=t_out.zero_point,
            act_min=op.act_min,
            act_max=op.act_max,
        )
        kernel = self.resolve(op, site.dsp)["kernel"]
        if kernel == "packed":
            data = [
                *weights.c_packed(i, weights.pack(op.weight, op.weight_form)),
                *c_requant(i, op),
                c_struct("tt_dense_params", f"p{i}", fields),
            ]
            return data, (
                f"tt_dense_s8_packed(&p{i}, {x}, &pw{i}, b{i}, m{i}, s{i}, "
                f"{site.out}, (int8_t *)(void *){site.scratch})"
            )
        if kernel == "sparse":
            data = [
                *weights.c_sparse(i, weights.pack(op.weight, op.weight_form)),
                *c_requant(i, op),
                c_struct("tt_dense_params", f"p{i}", fields),
            ]
            return data, (
                f"tt_dense_s8_sparse(&p{i}, {x}, &sw{i}, b{i}, m{i}, s{i}, "
                f"{site.out}, (int16_t *)(void *){site.scratch})"
            )
        data = [
            c_weights(i, self.weight_array(op, site.dsp)),
            *c_requant(i, op),
            c_struct("tt_dense_params", f"p{i}", fields),
        ]
        consts = f"w{i}, b{i}, m{i}, s{i}"
        if kernel == "simd":
            return data, (f"tt_dense_s8_dsp(&p{i}, {x}, {consts}, {site.out}, (int16_t *)(void *){site.scratch})")
        return data, f"tt_dense_s8(&p{i}, {x}, {consts}, {site.out})"
