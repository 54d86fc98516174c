"""Channel gather: channel split, concatenation and channel shuffle as one device op.

Each of a slice of the channels (``x[:, a:b:s]`` or ``torch.narrow``: a ShuffleNetV2
split), ``torch.cat`` along the channels and a channel shuffle (``nn.ChannelShuffle``)
moves whole channels from one or more inputs to an output; the op records that as *runs*, ``(input, first input channel,
input step, first output channel, output step, length)``: a split or a concatenation is
one run per input with steps 1, a shuffle of g groups is g runs with output step g.  The
output has its own (scale, zero point) - a FakeQuantAct follows each of these ops - so
every input is requantized through a 256-entry table of output codes computed here with
the reference's fixed-point functions (the kernel only reads it, so it is bit-exact); an
input already at the output's quantization is copied.  Kernel ``tt_gather_s8`` in
runtime/tt_gather.c.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx, nn

from tinytamer.micro.fixedpoint import quantize_multiplier, requantize
from tinytamer.micro.ir import Graph, Op
from tinytamer.micro.ops.base import CallSite, DeviceOp, Pending, Quant, c_array, c_struct, call_args, node_shape

RUN_FIELDS = ("input", "in_first", "in_step", "out_first", "out_step", "length")


@dataclass
class Gather(Op):
    """Output channels gathered from the inputs by ``runs`` (int32 [n, 6], :data:`RUN_FIELDS`)
    and requantized by ``tables`` (per input: int8 [256] output code by input code + 128, or
    None where the input has the output's quantization and is copied)."""

    runs: np.ndarray
    tables: list[np.ndarray | None]


def requant_table(in_scale: float, in_zp: int, out_scale: float, out_zp: int, lo: int, hi: int) -> np.ndarray | None:
    """The output code of every int8 input code, or None when the map is the identity."""
    codes = np.arange(-128, 128, dtype=np.int64)
    if in_scale == out_scale and in_zp == out_zp and (lo, hi) == (-128, 127):
        return None
    mult, shift = quantize_multiplier(in_scale / out_scale)
    out = requantize(codes - in_zp, mult, shift) + out_zp
    return np.clip(out, lo, hi).astype(np.int8)


def check_runs(runs: np.ndarray, in_channels: list[int], out_channels: int, where: str) -> None:
    """Every output channel written exactly once, every read inside its input."""
    seen = np.zeros(out_channels, np.int64)
    for k, i0, istep, o0, ostep, n in runs.tolist():
        if not 0 <= k < len(in_channels) or n < 1:
            raise ValueError(f"{where}: a run reads input {k} of {len(in_channels)} (length {n})")
        src = i0 + istep * np.arange(n)
        dst = o0 + ostep * np.arange(n)
        if src.min() < 0 or src.max() >= in_channels[k] or dst.min() < 0 or dst.max() >= out_channels:
            raise ValueError(
                f"{where}: a run leaves its input's {in_channels[k]} or the output's {out_channels} channels"
            )
        np.add.at(seen, dst, 1)
    if not (seen == 1).all():
        raise ValueError(f"{where}: the runs do not write each of the {out_channels} output channels exactly once")


def add_gather(
    b, inputs: list[str], runs: np.ndarray, out_scale: float, out_zp: int, qrange=(-128, 127), *, name: str
) -> str:
    """Append a :class:`Gather` to a :class:`~tinytamer.micro.builder.GraphBuilder`."""
    ts = [b.tensors[t] for t in inputs]
    spatial = {t.shape[:-1] for t in ts}
    if len(spatial) != 1:
        raise ValueError(f"channel gather '{name}': inputs of different maps {[t.shape for t in ts]}")
    runs = np.asarray(runs, np.int32).reshape(-1, len(RUN_FIELDS))
    if not len(runs):
        raise ValueError(f"channel gather '{name}': no runs")
    out_c = int((runs[:, 3] + runs[:, 4] * (runs[:, 5] - 1)).max()) + 1
    check_runs(runs, [t.shape[-1] for t in ts], out_c, f"channel gather '{name}'")
    o = b._new((*ts[0].shape[:-1], out_c), out_scale, out_zp, None)
    tables = [requant_table(t.scale, t.zero_point, out_scale, out_zp, *qrange) for t in ts]
    b.ops.append(Gather(name, list(inputs), o, runs, tables))
    return o


def _channel_dim(dim: int, rank: int) -> bool:
    return dim in (1, 1 - rank)


class GatherOp(DeviceOp):
    ir = Gather
    kernel_files = ("tt_gather.c",)
    lowers_from = {
        torch.narrow: "from_narrow",
        "narrow": "from_narrow",
        operator.getitem: "from_getitem",
        torch.cat: "from_cat",
        torch.concat: "from_cat",
        torch.concatenate: "from_cat",
        nn.ChannelShuffle: "from_shuffle_module",
        torch.channel_shuffle: "from_shuffle",
        F.channel_shuffle: "from_shuffle",
    }
    fuses_relu = False

    def from_narrow(self, lw, node: fx.Node, _) -> Pending:
        a = call_args(node, ("input", "dim", "start", "length"))
        x = lw.quant(node, a["input"])
        rank = len(node_shape(node))
        if not all(isinstance(a.get(k), int) for k in ("dim", "start", "length")):
            raise lw.fail(node, "a narrow whose dim, start or length is computed in the graph")
        if not _channel_dim(a["dim"], rank):
            raise lw.fail(node, f"a narrow along dim {a['dim']} (only along the channels)")
        start = a["start"] % lw.b.tensors[x].shape[-1]
        return Pending(self, node, [x], attrs={"runs": [(0, start, 1, 0, 1, a["length"])]})

    def from_getitem(self, lw, node: fx.Node, _) -> Pending:
        """``x[:, a:b:s]``: a slice of the channels (every other index whole)."""
        x, index = node.args[0], node.args[1]
        index = index if isinstance(index, tuple) else (index,)
        full = slice(None)
        if (
            not isinstance(x, fx.Node)
            or len(index) != 2
            or index[0] != full
            or not isinstance(index[1], slice)
            or not all(v is None or isinstance(v, int) for v in (index[1].start, index[1].stop, index[1].step))
            or (index[1].step or 1) < 1
        ):
            # Worded as the lowering words any op it has no rule for (tests match on it).
            raise lw.fail(node, "function 'getitem'")
        t = lw.quant(node, x)
        picked = range(lw.b.tensors[t].shape[-1])[index[1]]
        if not len(picked):
            raise lw.fail(node, "an empty slice of the channels")
        return Pending(self, node, [t], attrs={"runs": [(0, picked.start, picked.step, 0, 1, len(picked))]})

    def from_cat(self, lw, node: fx.Node, _) -> Pending:
        a = call_args(node, ("tensors", "dim"), dim=0)
        if not isinstance(a["dim"], int) or not _channel_dim(a["dim"], len(node_shape(node))):
            raise lw.fail(node, f"a concatenation along dim {a['dim']} (only along the channels)")
        xs = [lw.quant(node, t) for t in a["tensors"]]
        runs, at = [], 0
        for k, x in enumerate(xs):
            c = lw.b.tensors[x].shape[-1]
            runs.append((k, 0, 1, at, 1, c))
            at += c
        return Pending(self, node, xs, attrs={"runs": runs})

    def from_shuffle_module(self, lw, node: fx.Node, _) -> Pending:
        return self._shuffle(lw, node, lw.quant(node, node.args[0]), lw.mod(node).groups)

    def from_shuffle(self, lw, node: fx.Node, _) -> Pending:
        a = call_args(node, ("input", "groups"))
        return self._shuffle(lw, node, lw.quant(node, a["input"]), a.get("groups"))

    def _shuffle(self, lw, node: fx.Node, x: str, groups) -> Pending:
        c = lw.b.tensors[x].shape[-1]
        if not isinstance(groups, int) or groups < 1 or c % groups:
            raise lw.fail(node, f"a channel shuffle of {c} channels in {groups} groups")
        per = c // groups
        # Output channel j * groups + i is input channel i * per + j.
        runs = [(0, i * per, 1, i, groups, per) for i in range(groups)]
        return Pending(self, node, [x], attrs={"runs": runs})

    def finish(self, lw, p: Pending, q: Quant) -> str:
        try:
            return add_gather(
                lw.b, p.inputs, np.array(p.attrs["runs"]), q.scale, q.zero_point, q.qrange, name=p.node.name
            )
        except ValueError as exc:
            raise lw.fail(p.node, str(exc)) from None

    def reference(self, g: Graph, op: Gather, args: list[np.ndarray]) -> np.ndarray:
        out = np.empty(g.tensors[op.output].shape, np.int8)
        for k, i0, istep, o0, ostep, n in op.runs.tolist():
            src = args[k][..., i0 + istep * np.arange(n)]
            table = op.tables[k]
            out[..., o0 + ostep * np.arange(n)] = src if table is None else table[src.astype(np.int64) + 128]
        return out

    def emit_c(self, op: Gather, site: CallSite) -> tuple[list[str], str]:
        i, g = site.i, site.g
        data = [
            c_array(f"gr{i}", "int32_t", op.runs),
            c_array(f"gc{i}", "int32_t", [g.tensors[t].shape[-1] for t in op.inputs]),
        ]
        names = []
        for k, table in enumerate(op.tables):
            if table is None:
                names.append("0")
            else:
                data.append(c_array(f"gt{i}_{k}", "int8_t", table))
                names.append(f"gt{i}_{k}")
        data.append(f"static const int8_t *const gl{i}[{len(names)}] = {{{', '.join(names)}}};\n")
        out_t = g.tensors[op.output]
        fields = dict(
            pixels=out_t.size // out_t.shape[-1],
            out_c=out_t.shape[-1],
            n_runs=len(op.runs),
            runs=f"gr{i}",
            in_c=f"gc{i}",
            tables=f"gl{i}",
        )
        data.append(c_struct("tt_gather_params", f"p{i}", fields))
        ins = ", ".join(site.args)
        return data, f"tt_gather_s8(&p{i}, (const int8_t *const[]){{{ins}}}, {site.out})"
