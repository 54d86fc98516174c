"""Fully connected layer over a vector; weights [out, in] with the columns already in the
order of the input buffer (a flattened H x W x C map keeps its HWC buffer).

Kernels in runtime/tt_dense.c: ``kernel`` "direct" (tt_dense_s8, portable) or "simd"
(tt_dense_s8_dsp: input unpacked once to int16 in the arena, 2 rows per SMLAD pass);
"packed" (tt_dense_s8_packed, runtime/tt_dense_packed.c: int4 / int2 / shared weights, see
:mod:`tinytamer.micro.weights`), offered first for a layer whose ``weight_form`` is not int8; and
in runtime/tt_sparse.c "sparse" (tt_dense_s8_sparse, pruned weights: only the non-zeros
are stored, one word each, and multiplied), offered where the layer has at most
:data:`SPARSE_MAX_DENSITY` non-zeros, and then first.
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
    c_array,
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


# The sparse kernel stores 4 bytes per non-zero (plus 2 per row) against the int8 layout's 1
# per weight, and costs about 5 estimated cycles per non-zero against the SIMD kernel's ~1.2
# per weight (cortex-m4, ideal memory; tests/test_micro_sparse.py measures both): below a
# density of 1/4 it is smaller in flash and faster, so it is then the default.
SPARSE_MAX_DENSITY = 0.25


def sparse_form(weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The non-zeros of ``weight`` [OUT, IN] as int32 words (weight << 16 | column), row by
    row, and each row's count (uint16): what tt_dense_s8_sparse reads."""
    rows, cols = np.nonzero(weight)
    words = (weight[rows, cols].astype(np.int64) << 16) | cols.astype(np.int64)
    counts = np.count_nonzero(weight, axis=1)
    return words.astype(np.int32), counts.astype(np.uint16)


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
        return lw.b.dense(x, m.int_weight().numpy(), m.w_scale.numpy(),
                          None if m.bias is None else m.bias.detach().numpy(), q.scale,
                          q.zero_point, relu=p.relu, qrange=q.qrange,
                          column_order=lw.torch_order.get(x), name=str(p.node.target))

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
        in_n = op.weight.shape[1]
        # Column indices are 16 bits and row counts uint16; above twice the break-even
        # density the sparse kernel is not worth a tuner's measurement.
        density = np.count_nonzero(op.weight) / max(op.weight.size, 1)
        if in_n < 1 << 16 and density <= 2 * SPARSE_MAX_DENSITY:
            sparse_first = density <= SPARSE_MAX_DENSITY
            kernels = ["sparse", *kernels] if sparse_first else [*kernels, "sparse"]
        if op.weight_form != "int8":
            # Packed weights (tinytamer.micro.weights) keep the flash saving; the other
            # kernels stay for a tuner that trades flash for cycles.
            kernels = ["packed", *kernels]
        return {"kernel": kernels}

    def weight_array(self, op: Dense, dsp: bool) -> np.ndarray:
        """The weights in the layout the chosen kernel reads (padded to 4 columns for SIMD,
        the non-zero words for the sparse kernel)."""
        kernel = self.resolve(op, dsp)["kernel"]
        if kernel == "packed":
            return weights.pack(op.weight, op.weight_form).data
        if kernel == "sparse":
            return sparse_form(op.weight)[0]
        if kernel == "simd":
            n = op.weight.shape[1]
            return np.pad(op.weight, ((0, 0), (0, round4(n) - n)))
        return op.weight

    def scratch_bytes(self, g: Graph, op: Dense, dsp: bool) -> int:
        if self.resolve(op, dsp)["kernel"] == "packed":
            return int(op.weight.shape[1])  # one unpacked row
        if self.resolve(op, dsp)["kernel"] in ("simd", "sparse"):
            return 2 * round4(op.weight.shape[1])
        return 0

    def emit_c(self, op: Dense, site: CallSite) -> tuple[list[str], str]:
        g, i, x = site.g, site.i, site.args[0]
        t_in, t_out = g.tensors[op.inputs[0]], g.tensors[op.output]
        fields = dict(in_n=t_in.size, out_n=t_out.size, in_zp=t_in.zero_point,
                      out_zp=t_out.zero_point, act_min=op.act_min, act_max=op.act_max)
        kernel = self.resolve(op, site.dsp)["kernel"]
        if kernel == "packed":
            data = [*weights.c_packed(i, weights.pack(op.weight, op.weight_form)),
                    *c_requant(i, op), c_struct("tt_dense_params", f"p{i}", fields)]
            return data, (f"tt_dense_s8_packed(&p{i}, {x}, &pw{i}, b{i}, m{i}, s{i}, "
                          f"{site.out}, (int8_t *)(void *){site.scratch})")
        data = [c_weights(i, self.weight_array(op, site.dsp)), *c_requant(i, op),
                c_struct("tt_dense_params", f"p{i}", fields)]
        consts = f"w{i}, b{i}, m{i}, s{i}"
        if kernel == "sparse":
            data.append(c_array(f"z{i}", "uint16_t", sparse_form(op.weight)[1]))
            return data, (f"tt_dense_s8_sparse(&p{i}, {x}, w{i}, z{i}, b{i}, m{i}, s{i}, "
                          f"{site.out}, (int16_t *)(void *){site.scratch})")
        if kernel == "simd":
            return data, (f"tt_dense_s8_dsp(&p{i}, {x}, {consts}, {site.out}, "
                          f"(int16_t *)(void *){site.scratch})")
        return data, f"tt_dense_s8(&p{i}, {x}, {consts}, {site.out})"
