"""The numpy integer reference: the oracle the generated C must match bit for bit.

Every op is computed in int64 numpy from the integer graph
(:mod:`tinytamer.micro.ir`) with the requantization of
:mod:`tinytamer.micro.fixedpoint`; no floating point touches a value.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from tinytamer.errors import ModelError
from tinytamer.micro.fixedpoint import requantize
from tinytamer.micro.ir import Add, AvgPool, Conv2D, Dense, Graph, MaxPool, Op, Reshape, Softmax


def _finish(acc: np.ndarray, mult, shift, zp: int, lo: int, hi: int) -> np.ndarray:
    out = requantize(acc, mult, shift) + zp
    return np.clip(out, lo, hi).astype(np.int8)


def _windows(x: np.ndarray, kernel, stride, padding, pad_value: int) -> np.ndarray:
    """(OH, OW, C, KH, KW) windows of an HWC map padded with ``pad_value``."""
    ph, pw = padding
    xp = np.pad(x, ((ph, ph), (pw, pw), (0, 0)), constant_values=pad_value)
    win = sliding_window_view(xp, tuple(kernel), axis=(0, 1))
    return win[:: stride[0], :: stride[1]]


def _conv(g: Graph, op: Conv2D, x: np.ndarray) -> np.ndarray:
    zin = g.tensors[op.inputs[0]].zero_point
    out_t = g.tensors[op.output]
    oc, kh, kw, icg = op.weight.shape
    # Padding holds the input zero point, i.e. 0 once the zero point is subtracted.
    win = _windows(x.astype(np.int64) - zin, (kh, kw), op.stride, op.padding, 0)
    oh, ow, c = win.shape[:3]
    cols = win.reshape(oh, ow, op.groups, icg, kh, kw)
    w = op.weight.astype(np.int64).reshape(op.groups, oc // op.groups, kh, kw, icg)
    acc = np.einsum("hwgcij,goijc->hwgo", cols, w).reshape(oh, ow, oc) + op.bias
    return _finish(acc, op.multiplier, op.shift, out_t.zero_point, op.act_min, op.act_max)


def _dense(g: Graph, op: Dense, x: np.ndarray) -> np.ndarray:
    zin = g.tensors[op.inputs[0]].zero_point
    acc = op.weight.astype(np.int64) @ (x.reshape(-1).astype(np.int64) - zin) + op.bias
    zout = g.tensors[op.output].zero_point
    return _finish(acc, op.multiplier, op.shift, zout, op.act_min, op.act_max)


def _maxpool(op: MaxPool, x: np.ndarray) -> np.ndarray:
    win = _windows(x.astype(np.int16), op.kernel, op.stride, op.padding, -129)
    return win.max(axis=(3, 4)).astype(np.int8)


def _avgpool(g: Graph, op: AvgPool, x: np.ndarray) -> np.ndarray:
    zin = g.tensors[op.inputs[0]].zero_point
    win = _windows(x.astype(np.int64) - zin, op.kernel, op.stride, (0, 0), 0)
    acc = win.sum(axis=(3, 4))
    out = _finish(acc, op.multiplier, op.shift, g.tensors[op.output].zero_point,
                  op.act_min, op.act_max)
    return out.reshape(g.tensors[op.output].shape)


def _add(g: Graph, op: Add, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    ta, tb = (g.tensors[n] for n in op.inputs)
    sa = requantize((a.astype(np.int64) - ta.zero_point) << op.left_shift,
                    op.in1_multiplier, op.in1_shift)
    sb = requantize((b.astype(np.int64) - tb.zero_point) << op.left_shift,
                    op.in2_multiplier, op.in2_shift)
    return _finish(sa + sb, op.out_multiplier, op.out_shift, g.tensors[op.output].zero_point,
                   op.act_min, op.act_max)


def _softmax(g: Graph, op: Softmax, x: np.ndarray) -> np.ndarray:
    v = x.reshape(-1).astype(np.int64)
    e = op.table[v.max() - v]  # exp(in_scale * (x - max)) in Q30
    den = int(e.sum()) << 16
    q = (e * op.multiplier + (den >> 1)) // den  # round half up; every term is >= 0
    out = q + g.tensors[op.output].zero_point
    return np.clip(out, op.act_min, op.act_max).astype(np.int8)


def run_op(g: Graph, op: Op, args: list[np.ndarray]) -> np.ndarray:
    if isinstance(op, Conv2D):
        return _conv(g, op, args[0])
    if isinstance(op, Dense):
        return _dense(g, op, args[0])
    if isinstance(op, MaxPool):
        return _maxpool(op, args[0])
    if isinstance(op, AvgPool):
        return _avgpool(g, op, args[0])
    if isinstance(op, Add):
        return _add(g, op, args[0], args[1])
    if isinstance(op, Softmax):
        return _softmax(g, op, args[0])
    if isinstance(op, Reshape):
        return args[0].reshape(g.tensors[op.output].shape)
    raise ModelError(f"integer reference: no implementation for op '{type(op).__name__}' "
                     f"(layer '{op.name}')")


def run(g: Graph, x: np.ndarray, *, keep_all: bool = False) -> np.ndarray | dict[str, np.ndarray]:
    """Run the graph on one int8 input in the graph's layout (HWC or a vector).

    Returns the output, or with ``keep_all`` every tensor by name (for per-layer parity).
    """
    x = np.asarray(x)
    shape = g.tensors[g.input].shape
    if x.dtype != np.int8 or x.shape != shape:
        raise ModelError(f"integer reference: input must be int8 of shape {shape}, "
                         f"got {x.dtype} {x.shape}")
    values = {g.input: x}
    for op in g.ops:
        out = run_op(g, op, [values[n] for n in op.inputs])
        expect = g.tensors[op.output].shape
        if out.shape != expect:
            raise ModelError(f"integer reference: op '{op.name}' produced shape {out.shape}, "
                             f"the graph says {expect}")
        values[op.output] = out
    return values if keep_all else values[g.output]
