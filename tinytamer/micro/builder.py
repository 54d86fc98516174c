"""Build integer graphs op by op from real scales (used by lowering, the tuner and tests).

Each method takes real-valued quantization parameters and derives the integer
constants: int32 biases in ``in_scale * w_scale[c]`` units, Q31 multipliers
``in_scale * w_scale[c] / out_scale`` and the Add's common-scale rescaling
(TensorFlow Lite's int8 ADD: both inputs shifted left by 20 and scaled by
``s_i / (2 max(s_1, s_2))``, the sum by ``2 max(s_1, s_2) / (2^20 s_out)``).
"""

from __future__ import annotations

import numpy as np

from tinytamer.errors import ModelError
from tinytamer.micro.fixedpoint import INT32_MAX, INT32_MIN, quantize_multiplier
from tinytamer.micro.ir import Graph, TensorInfo
from tinytamer.micro.ops import Add, AvgPool, Conv2D, Dense, MaxPool, Reshape, Softmax

ADD_LEFT_SHIFT = 20


def _multipliers(real: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pairs = [quantize_multiplier(float(r)) for r in np.asarray(real, dtype=np.float64).ravel()]
    return (np.array([p[0] for p in pairs], dtype=np.int32), np.array([p[1] for p in pairs], dtype=np.int32))


def quantize_bias(bias: np.ndarray | None, in_scale: float, w_scale: np.ndarray) -> np.ndarray:
    w_scale = np.asarray(w_scale, dtype=np.float64)
    if bias is None:
        return np.zeros(w_scale.shape, dtype=np.int32)
    denom = in_scale * w_scale
    q = np.where(denom > 0, np.round(np.asarray(bias, np.float64) / np.where(denom > 0, denom, 1)), 0)
    return np.clip(q, INT32_MIN, INT32_MAX).astype(np.int32)


# A bias may use half of the int32 accumulator; the other half is the products' (K x 128 x 255
# stays below 2^30 up to K = 32,896 inputs per output).
BIAS_LIMIT = 2**30


def fit_bias_scales(
    name: str, w_int: np.ndarray, w_scale: np.ndarray, bias: np.ndarray | None, in_scale: float
) -> np.ndarray:
    """Per-channel weight scales under which every bias fits its int32 accumulator.

    A channel whose weights are all zero (pruned away) keeps only its bias; its weight scale is
    free (every weight is 0 at any scale), so it is raised until the bias fits.  A channel with
    real weights whose bias does not fit cannot be lowered exactly: that is an error naming the
    layer and channel, never a silent saturation."""
    w_scale = np.array(w_scale, dtype=np.float64).reshape(-1)
    if bias is None:
        return w_scale
    b = np.asarray(bias, np.float64).reshape(-1)
    denom = in_scale * w_scale
    over = np.abs(b) > BIAS_LIMIT * np.where(denom > 0, denom, 0)
    over &= b != 0
    if not over.any():
        return w_scale
    empty = ~np.asarray(w_int).reshape(len(w_scale), -1).any(axis=1)
    bad = over & ~empty
    if bad.any():
        c = int(np.flatnonzero(bad)[0])
        raise ModelError(
            f"{name}: channel {c}'s bias {b[c]:.4g} needs {abs(b[c]) / denom[c]:.3g} accumulator units "
            f"(input scale {in_scale:.3g} x weight scale {w_scale[c]:.3g}), more than int32 leaves a bias "
            f"({BIAS_LIMIT}): the channel's weights are nearly zero next to its bias; fold or prune it"
        )
    w_scale[over] = np.abs(b[over]) / (in_scale * BIAS_LIMIT)
    return w_scale


class GraphBuilder:
    """Append ops to a graph; every method returns the name of the new tensor."""

    def __init__(self, shape: tuple[int, ...], scale: float, zero_point: int, name: str = "input") -> None:
        self.tensors = {name: TensorInfo(name, tuple(shape), float(scale), int(zero_point))}
        self.ops: list = []
        self.input = name
        self._n = 0

    def _new(self, shape, scale: float, zp: int, name: str | None) -> str:
        self._n += 1
        t = name or f"t{self._n}"
        self.tensors[t] = TensorInfo(t, tuple(int(s) for s in shape), float(scale), int(zp))
        return t

    def clamp(
        self, out_scale: float, out_zp: int, relu: str | None, qmin: int = -128, qmax: int = 127
    ) -> tuple[int, int]:
        """Integer clamp of a fused activation: ReLU clamps at the output's zero point."""
        lo, hi = qmin, qmax
        if relu in ("relu", "relu6"):
            lo = max(lo, out_zp)
        if relu == "relu6":
            hi = min(hi, out_zp + int(round(6.0 / out_scale)))
        return lo, hi

    def conv(
        self,
        x: str,
        w_int: np.ndarray,
        w_scale: np.ndarray,
        bias: np.ndarray | None,
        out_scale: float,
        out_zp: int,
        *,
        stride=(1, 1),
        padding=(0, 0),
        groups: int = 1,
        relu: str | None = None,
        qrange: tuple[int, int] = (-128, 127),
        name: str = "conv",
        out: str | None = None,
    ) -> str:
        """``w_int`` is int [OC, IC/groups, KH, KW] (PyTorch layout)."""
        t = self.tensors[x]
        h, w, _ = t.shape
        oc, _, kh, kw = w_int.shape
        oh = (h + 2 * padding[0] - kh) // stride[0] + 1
        ow = (w + 2 * padding[1] - kw) // stride[1] + 1
        o = self._new((oh, ow, oc), out_scale, out_zp, out)
        w_scale = fit_bias_scales(name, w_int, w_scale, bias, t.scale)
        mult, shift = _multipliers(t.scale * np.asarray(w_scale, np.float64) / out_scale)
        lo, hi = self.clamp(out_scale, out_zp, relu, *qrange)
        self.ops.append(
            Conv2D(
                name,
                [x],
                o,
                np.ascontiguousarray(np.transpose(w_int, (0, 2, 3, 1))).astype(np.int8),
                quantize_bias(bias, t.scale, w_scale),
                mult,
                shift,
                tuple(stride),
                tuple(padding),
                groups,
                lo,
                hi,
            )
        )
        return o

    def dense(
        self,
        x: str,
        w_int: np.ndarray,
        w_scale: np.ndarray,
        bias: np.ndarray | None,
        out_scale: float,
        out_zp: int,
        *,
        relu: str | None = None,
        qrange: tuple[int, int] = (-128, 127),
        column_order: np.ndarray | None = None,
        name: str = "fc",
        out: str | None = None,
    ) -> str:
        """``w_int`` is int [OUT, IN]; ``column_order`` permutes IN to the buffer's order."""
        t = self.tensors[x]
        w_arr = np.asarray(w_int)
        if column_order is not None:
            w_arr = w_arr[:, column_order]
        o = self._new((w_arr.shape[0],), out_scale, out_zp, out)
        w_scale = fit_bias_scales(name, w_arr, w_scale, bias, t.scale)
        mult, shift = _multipliers(t.scale * np.asarray(w_scale, np.float64) / out_scale)
        lo, hi = self.clamp(out_scale, out_zp, relu, *qrange)
        self.ops.append(
            Dense(
                name,
                [x],
                o,
                np.ascontiguousarray(w_arr).astype(np.int8),
                quantize_bias(bias, t.scale, w_scale),
                mult,
                shift,
                lo,
                hi,
            )
        )
        return o

    def maxpool(self, x: str, kernel, stride, padding=(0, 0), *, name: str = "maxpool", out: str | None = None) -> str:
        t = self.tensors[x]
        h, w, c = t.shape
        oh = (h + 2 * padding[0] - kernel[0]) // stride[0] + 1
        ow = (w + 2 * padding[1] - kernel[1]) // stride[1] + 1
        o = self._new((oh, ow, c), t.scale, t.zero_point, out)
        self.ops.append(MaxPool(name, [x], o, tuple(kernel), tuple(stride), tuple(padding)))
        return o

    def avgpool(
        self,
        x: str,
        kernel,
        stride,
        out_scale: float,
        out_zp: int,
        *,
        relu: str | None = None,
        qrange: tuple[int, int] = (-128, 127),
        name: str = "avgpool",
        out: str | None = None,
    ) -> str:
        t = self.tensors[x]
        h, w, c = t.shape
        oh = (h - kernel[0]) // stride[0] + 1
        ow = (w - kernel[1]) // stride[1] + 1
        o = self._new((oh, ow, c), out_scale, out_zp, out)
        m, s = quantize_multiplier(t.scale / (out_scale * kernel[0] * kernel[1]))
        lo, hi = self.clamp(out_scale, out_zp, relu, *qrange)
        self.ops.append(AvgPool(name, [x], o, tuple(kernel), tuple(stride), m, s, lo, hi))
        return o

    def add(
        self,
        a: str,
        b: str,
        out_scale: float,
        out_zp: int,
        *,
        relu: str | None = None,
        qrange: tuple[int, int] = (-128, 127),
        name: str = "add",
        out: str | None = None,
    ) -> str:
        ta, tb = self.tensors[a], self.tensors[b]
        o = self._new(ta.shape, out_scale, out_zp, out)
        twice_max = 2.0 * max(ta.scale, tb.scale)
        m1, s1 = quantize_multiplier(ta.scale / twice_max)
        m2, s2 = quantize_multiplier(tb.scale / twice_max)
        mo, so = quantize_multiplier(twice_max / ((1 << ADD_LEFT_SHIFT) * out_scale))
        lo, hi = self.clamp(out_scale, out_zp, relu, *qrange)
        self.ops.append(Add(name, [a, b], o, ADD_LEFT_SHIFT, m1, s1, m2, s2, mo, so, lo, hi))
        return o

    def softmax(
        self,
        x: str,
        out_scale: float,
        out_zp: int,
        *,
        qrange: tuple[int, int] = (-128, 127),
        name: str = "softmax",
        out: str | None = None,
    ) -> str:
        """Softmax over the vector ``x`` (see :class:`~tinytamer.micro.ir.Softmax`)."""
        t = self.tensors[x]
        if len(t.shape) != 1:
            raise ModelError(
                f"softmax '{name}': input of shape {t.shape}; only a vector (softmax over the classes) is supported"
            )
        multiplier = int(round(65536.0 / out_scale)) if out_scale > 0 else 0
        if not 0 < multiplier < 2**31:
            raise ModelError(f"softmax '{name}': output scale {out_scale} is outside (2^-15, 2^16]")
        table = np.round(np.exp(-t.scale * np.arange(256, dtype=np.float64)) * 2.0**30)
        o = self._new(t.shape, out_scale, out_zp, out)
        self.ops.append(Softmax(name, [x], o, table.astype(np.int64), multiplier, *qrange))
        return o

    def reshape(self, x: str, shape: tuple[int, ...], *, name: str = "flatten", out: str | None = None) -> str:
        t = self.tensors[x]
        o = self._new(shape, t.scale, t.zero_point, out)
        self.ops.append(Reshape(name, [x], o))
        return o

    def graph(self, output: str, **meta) -> Graph:
        g = Graph(self.tensors, self.ops, self.input, output, dict(meta))
        g.validate()
        return g


def random_graph(seed: int = 0, *, size: int = 8, channels: int = 4) -> Graph:
    """A small graph with every op kind (conv, depthwise, 1x1, add, pools, dense), random int8
    weights: the test bench for the kernels and the code generator."""
    rng = np.random.default_rng(seed)

    def w(*shape):
        return rng.integers(-127, 128, size=shape)

    def sc(n):
        return rng.uniform(0.002, 0.02, size=n)

    def zp():
        return int(rng.integers(-20, 20))

    c = channels
    b = GraphBuilder((size, size, 3), 0.02, zp())
    x = b.conv(b.input, w(c, 3, 3, 3), sc(c), rng.normal(0, 1, c), 0.05, -128, padding=(1, 1), relu="relu", name="stem")
    d = b.conv(
        x, w(c, 1, 3, 3), sc(c), rng.normal(0, 1, c), 0.05, zp(), padding=(1, 1), groups=c, relu="relu6", name="dw"
    )
    p = b.conv(d, w(c, c, 1, 1), sc(c), None, 0.07, zp(), name="pw")
    s = b.add(x, p, 0.06, zp(), relu="relu", name="res")
    s2 = b.conv(
        s, w(2 * c, c, 3, 3), sc(2 * c), rng.normal(0, 1, 2 * c), 0.08, zp(), stride=(2, 2), padding=(1, 1), name="down"
    )
    m = b.maxpool(s2, (3, 3), (1, 1), (1, 1), name="mp")
    a = b.avgpool(m, (2, 2), (2, 2), 0.05, zp(), name="ap")
    g = b.avgpool(a, b.tensors[a].shape[:2], (1, 1), 0.04, zp(), name="gap")
    f = b.reshape(g, (2 * c,))
    o = b.dense(f, w(10, 2 * c), sc(10), rng.normal(0, 1, 10), 0.1, zp(), name="fc")
    return b.graph(o)
