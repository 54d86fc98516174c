"""Dynamic fixed-point quantization (Qiu et al. 2016): weights and every layer's data.

Qiu et al. 2016, "Going Deeper with Embedded FPGA Platform for Convolutional
Neural Network" (FPGA '16), Sec. 5, dynamic-precision data quantization: a
fixed-point number of bit width ``bw`` and fractional length ``fl`` is
``sum_i B_i 2^i * 2^-fl`` (eq. 1, two's complement, so the integer part ranges
over [-2^(bw-1), 2^(bw-1) - 1]).

- Weight quantization (eq. 2): per layer, ``fl_w = argmin_fl sum |W_float - W(bw, fl)|``.
- Data quantization (eq. 3): per layer, ``fl_d = argmin_fl sum |x+_float - x+(bw, fl)|``,
  where ``x+`` is the layer's output, found greedily layer by layer: with the weights
  and the data of the layers before already in fixed point, the data at this point in
  that network is compared with the same data in the floating-point network ("the
  intermediate data of the fixed-point CNN model and the floating-point CNN model are
  compared layer by layer using a greedy algorithm").
- Static fixed point, the paper's comparison baseline (Table 2), uses one format for
  the whole network: here one ``fl`` for all weights and one for all data, each
  minimising the summed error over all layers.

What is in fixed point, as in the paper's accelerator where every value that
leaves a layer is stored in the data format:

1. BatchNorm is folded into the conv / linear before it (eval statistics), so the
   layer's weights and output are the folded ones.
2. Every *data point* is rounded to its own ``(bits, fl)``: the network input, the
   output of every conv / linear (the logits included), of every residual add and
   of every other op that makes new values (average pool, an unfolded BN, ...).
   Ops that keep values on their input's grid (ReLU, max pool, flatten, reshape,
   slicing, zero padding, dropout) need no rounding of their own; since rounding
   commutes with them, an add followed by a ReLU module is rounded at the ReLU's
   output, which is the same thing.
3. A conv / linear (:class:`FixedPointConv2d`, :class:`FixedPointLinear`) holds
   weights that are exactly ``integer * 2^-w_fl`` (``bits`` wide), rounds its input
   to ``(a_bits, a_fl)`` (a no-op when the data already is in that format), keeps
   its bias in the accumulator format (32 bits, ``fl = w_fl + a_fl``) and rounds its
   output to ``(out_bits, out_fl)``.  A data point that is not a layer's output is a
   :class:`FixedPointData` wrapped around the module that holds it (the ReLU after
   an add, the average pool), or the input rounding of the layers it feeds.

Weights and data may have different widths (``bits`` and ``data_bits``); per layer,
the selector's overrides ``{"bits": n, "data_bits": n}`` set the weight width and the
width of the layer's output.  Rounding is to nearest (half to even) with
saturation; the gradient is straight-through inside the range, so a fixed-point
model can be fine-tuned and stays on its grid.  The model keeps its module tree
(layers are replaced in place), so it saves and loads like any other.
"""

from __future__ import annotations

import copy
import math
import operator
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn
from torch.fx.passes.shape_prop import ShapeProp
from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval

from tinytamer.calib import Calibration, as_calibration
from tinytamer.compress.selector import Selector, layer_params, parse, select_plain
from tinytamer.errors import CompressError, ModelError
from tinytamer.qgraph import fake_quant
from tinytamer.train.solver import TrainHook

Mode = Literal["dynamic", "static"]
MIN_BITS, MAX_BITS = 2, 16
_ACC_BITS = 32


def to_fixed(x: Tensor, bits: int, fl: int) -> Tensor:
    """Round ``x`` to the nearest ``integer * 2^-fl`` with the integer saturated to ``bits`` bits."""
    step = torch.tensor(2.0**-fl, dtype=x.dtype, device=x.device)
    zero = torch.zeros((), dtype=torch.int32, device=x.device)
    return fake_quant(x, step, zero, -(2 ** (bits - 1)), 2 ** (bits - 1) - 1)


def _fix(x: Tensor, bits: int, fl: int | None) -> Tensor:
    """``to_fixed``, or ``x`` itself while the format is not chosen yet (during the search)."""
    return x if fl is None else to_fixed(x, bits, fl)


def fixed_error(ref: Tensor, x: Tensor, bits: int, fl: int) -> float:
    """``sum |ref - fixed(x)|``: the error of eqs. 2 and 3 of Qiu et al."""
    with torch.no_grad():
        return float((ref - to_fixed(x, bits, fl)).abs().sum())


def fl_candidates(amax: float, bits: int) -> range:
    """Fractional lengths worth trying: around the one where ``amax`` just fits, both ways."""
    if amax <= 0 or not math.isfinite(amax):
        return range(bits - 1, bits)
    fit = bits - 1 - math.ceil(math.log2(amax))
    # Larger fl saturates more and rounds finer; beyond bits+2 either way the error only grows.
    return range(fit - 2, fit + bits + 3)


def best_fl(refs: list[Tensor], xs: list[Tensor], bits: int) -> int:
    """The fl minimising the summed error of ``fixed(xs)`` against ``refs`` (ties: larger fl)."""
    amax = max(float(x.detach().abs().max()) for x in xs)
    errs = {
        fl: sum(fixed_error(r, x, bits, fl) for r, x in zip(refs, xs, strict=True)) for fl in fl_candidates(amax, bits)
    }
    return min(errs, key=lambda fl: (errs[fl], -fl))


# ----------------------------------------------------------------------------- modules


class _FixedPoint:
    """Shared by FixedPointConv2d / FixedPointLinear: formats and the fixed-point weights.

    ``bits``/``w_fl``: the weights; ``a_bits``/``a_fl``: the data entering the layer;
    ``out_bits``/``out_fl``: the layer's output.  A format of None is not applied (only
    while :func:`quantize` is choosing it).
    """

    weight: nn.Parameter
    bias: nn.Parameter | None
    bits: int
    w_fl: int | None
    a_bits: int
    a_fl: int | None
    out_bits: int
    out_fl: int | None

    def _init_fixed(self, bits: int, w_fl: int | None, data_bits: int) -> None:
        self.bits, self.w_fl = bits, w_fl
        self.a_bits, self.a_fl = data_bits, None
        self.out_bits, self.out_fl = data_bits, None

    def snap(self) -> None:
        """Put the stored weights (and bias) exactly on their fixed-point grids."""
        with torch.no_grad():
            if self.w_fl is not None:
                self.weight.copy_(to_fixed(self.weight, self.bits, self.w_fl))
            if self.bias is not None and self.w_fl is not None and self.a_fl is not None:
                self.bias.copy_(to_fixed(self.bias, _ACC_BITS, self.w_fl + self.a_fl))

    def int_weight(self) -> Tensor:
        """The weights as integers (``weight * 2^w_fl``), int8 up to 8 bits, else int16."""
        if self.w_fl is None:
            raise CompressError("fixed-point layer: the weight format is not chosen yet")
        q = torch.round(self.weight.detach() * 2.0**self.w_fl)
        return q.to(torch.int8 if self.bits <= 8 else torch.int16)

    def _fixed_io(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        w = _fix(self.weight, self.bits, self.w_fl)
        b = self.bias
        if b is not None and self.w_fl is not None and self.a_fl is not None:
            b = to_fixed(b, _ACC_BITS, self.w_fl + self.a_fl)
        return _fix(x, self.a_bits, self.a_fl), w, b

    def fixed_repr(self) -> str:
        return (
            f"bits={self.bits}, w_fl={self.w_fl}, a=({self.a_bits}, {self.a_fl}), out=({self.out_bits}, {self.out_fl})"
        )

    def formats(self) -> dict[str, int | None]:
        return {
            "bits": self.bits,
            "w_fl": self.w_fl,
            "a_bits": self.a_bits,
            "a_fl": self.a_fl,
            "out_bits": self.out_bits,
            "out_fl": self.out_fl,
        }


class FixedPointConv2d(_FixedPoint, nn.Conv2d):
    """Conv2d with fixed-point weights, input data and output data (see the module doc)."""

    def __init__(self, *args: Any, bits: int = 8, w_fl: int | None = None, data_bits: int = 8, **kwargs: Any) -> None:
        nn.Conv2d.__init__(self, *args, **kwargs)
        self._init_fixed(bits, w_fl, data_bits)

    def forward(self, x: Tensor) -> Tensor:
        x, w, b = self._fixed_io(x)
        return _fix(self._conv_forward(x, w, b), self.out_bits, self.out_fl)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, {self.fixed_repr()}"


class FixedPointLinear(_FixedPoint, nn.Linear):
    """Linear with fixed-point weights, input data and output data (see the module doc)."""

    def __init__(self, *args: Any, bits: int = 8, w_fl: int | None = None, data_bits: int = 8, **kwargs: Any) -> None:
        nn.Linear.__init__(self, *args, **kwargs)
        self._init_fixed(bits, w_fl, data_bits)

    def forward(self, x: Tensor) -> Tensor:
        x, w, b = self._fixed_io(x)
        return _fix(F.linear(x, w, b), self.out_bits, self.out_fl)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, {self.fixed_repr()}"


class FixedPointData(nn.Module):
    """``inner``'s output rounded to ``(bits, fl)``: a data point that is not a layer's output
    (the ReLU after a residual add, an average pool)."""

    def __init__(self, inner: nn.Module, bits: int, fl: int | None = None) -> None:
        super().__init__()
        self.inner = inner
        self.bits, self.fl = bits, fl

    def forward(self, *args: Any, **kwargs: Any) -> Tensor:
        return _fix(self.inner(*args, **kwargs), self.bits, self.fl)

    def extra_repr(self) -> str:
        return f"bits={self.bits}, fl={self.fl}"


def _fixed_layer(layer: nn.Module, bits: int, data_bits: int) -> _FixedPoint:
    w = layer.weight
    kw: dict[str, Any] = {"device": w.device, "dtype": w.dtype, "bits": bits, "data_bits": data_bits}
    if type(layer) is nn.Conv2d:
        q: nn.Module = FixedPointConv2d(
            layer.in_channels,
            layer.out_channels,
            layer.kernel_size,
            layer.stride,
            layer.padding,
            layer.dilation,
            layer.groups,
            layer.bias is not None,
            layer.padding_mode,
            **kw,
        )
    else:
        q = FixedPointLinear(layer.in_features, layer.out_features, layer.bias is not None, **kw)
    q.load_state_dict(layer.state_dict())
    q.train(layer.training)
    return q  # type: ignore[return-value]


# ----------------------------------------------------------------------------- graph analysis

_LAYERS = (nn.Conv2d, nn.Linear)
# Modules / functions whose output lies on their input's grid (and commute with rounding).
_KEEP_MODULES = (
    nn.ReLU,
    nn.MaxPool1d,
    nn.MaxPool2d,
    nn.AdaptiveMaxPool2d,
    nn.Flatten,
    nn.Identity,
    nn.Dropout,
    nn.Dropout2d,
)
_KEEP_FUNCS = {
    "relu",
    "relu_",
    "max_pool2d",
    "_max_pool2d",
    "max_pool2d_with_indices",
    "adaptive_max_pool2d",
    "_adaptive_max_pool2d",
    "flatten",
    "reshape",
    "dropout",
    "getitem",
    "identity",
}
_KEEP_METHODS = {"view", "reshape", "flatten", "contiguous", "relu", "relu_"}


def _trace(model: nn.Module) -> fx.GraphModule:
    try:
        return fx.symbolic_trace(model)
    except Exception as exc:  # fx raises many types for untraceable Python
        raise ModelError(
            f"cannot trace {type(model).__name__} with torch.fx for fixed-point quantization: {exc} "
            "(data-dependent control flow in forward() is not supported)"
        ) from exc


def _module(gm: fx.GraphModule, node: fx.Node) -> nn.Module | None:
    return gm.get_submodule(node.target) if node.op == "call_module" else None


def _fold_bn(model: nn.Module) -> None:
    """Fold, in place, every BatchNorm that directly follows a conv / linear into it."""
    gm = _trace(model)
    calls: dict[str, int] = {}
    for node in gm.graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    for node in gm.graph.nodes:
        bn, src = _module(gm, node), node.args[0] if node.args else None
        if not isinstance(bn, nn.modules.batchnorm._BatchNorm) or not bn.track_running_stats:
            continue
        if not isinstance(src, fx.Node) or len(src.users) != 1 or calls.get(src.target) != 1 or calls[node.target] != 1:
            continue
        layer = _module(gm, src)
        if type(layer) in _LAYERS:
            fuser = fuse_linear_bn_eval if isinstance(layer, nn.Linear) else fuse_conv_bn_eval
            fused = fuser(copy.deepcopy(layer).eval(), bn.eval())
            model.set_submodule(src.target, fused.train(layer.training))
            model.set_submodule(node.target, nn.Identity())


def _float_tensor(node: fx.Node) -> bool:
    meta = node.meta.get("tensor_meta")
    return meta is not None and hasattr(meta, "dtype") and meta.dtype.is_floating_point


def _keeps_grid(gm: fx.GraphModule, node: fx.Node) -> bool:
    if node.op == "call_module":
        return isinstance(_module(gm, node), _KEEP_MODULES)
    name = getattr(node.target, "__name__", str(node.target))
    if node.op == "call_function" and name == "pad":  # zero padding only: 0 is on every grid
        mode = node.kwargs.get("mode", node.args[2] if len(node.args) > 2 else "constant")
        value = node.kwargs.get("value", node.args[3] if len(node.args) > 3 else None)
        return mode == "constant" and value in (None, 0, 0.0)
    if node.op == "call_function":
        return name in _KEEP_FUNCS or node.target is operator.getitem
    return node.op == "call_method" and node.target in _KEEP_METHODS


@dataclass
class _Point:
    """One data point: the value of graph node ``node``, rounded where ``sites`` say.

    A site is ``("out", layer)``, ``("in", layer)`` or ``("wrap", module)``; ``mirrors``
    are layer inputs fed by this point through grid-keeping ops, which take its format
    (for their bias and an input rounding that changes nothing).
    """

    node: str
    bits: int
    sites: list[tuple[str, str]] = field(default_factory=list)
    mirrors: list[str] = field(default_factory=list)


def _find_points(gm: fx.GraphModule, layers: set[str], data_bits: int, out_bits: dict[str, int]) -> list[_Point]:
    """The data points of the traced model in graph order; ``layers``: the selected layers."""
    calls: dict[str, int] = {}
    for node in gm.graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1

    def holder(path: str, what: str) -> str:
        if calls.get(path, 0) != 1:
            raise CompressError(
                f"fixed-point quantization: module '{path}' is called {calls.get(path, 0)} times in forward(), "
                f"so it cannot hold the format of {what}; give each use its own module"
            )
        return path

    def consumers(node: fx.Node, strict: bool) -> list[tuple[str, str]]:
        """Sites downstream of ``node`` through grid-keeping functions."""
        sites: list[tuple[str, str]] = []
        for user in node.users:
            m = _module(gm, user)
            if user.op == "call_module" and user.target in layers:
                sites.append(("in", holder(user.target, f"the data entering it (from '{node.name}')")))
            elif isinstance(m, _KEEP_MODULES):
                sites.append(("wrap", holder(user.target, f"the output of '{node.name}'")))
            elif user.op != "call_module" and user.op != "output" and _keeps_grid(gm, user):
                sites += consumers(user, strict)
            elif strict and not (isinstance(m, _LAYERS) and user.target not in layers):
                # An excluded layer may take float data; anything else would compute on it.
                raise CompressError(
                    f"fixed-point quantization: the output of '{node.name}' reaches '{user.name}' without a "
                    "module that can hold its fixed-point format (add a module, e.g. nn.Identity, after it)"
                )
        return sites

    points: list[_Point] = []
    for node in gm.graph.nodes:
        if node.op in ("output", "get_attr") or not _float_tensor(node) or _keeps_grid(gm, node):
            continue
        m = _module(gm, node)
        if node.op == "call_module" and node.target in layers:
            p = _Point(node.name, out_bits[node.target], [("out", holder(node.target, "its output"))])
        elif m is not None and not isinstance(m, _LAYERS):
            p = _Point(node.name, data_bits, [("wrap", holder(node.target, "its output"))])
        else:  # the input, a function (a residual add), an excluded layer: held downstream
            p = _Point(node.name, data_bits, consumers(node, strict=m is None))
            if not p.sites:
                continue
        points.append(p)
    # Every selected layer takes the format of the point its input comes from.
    by_node = {p.node: p for p in points}
    for node in gm.graph.nodes:
        if node.op != "call_module" or node.target not in layers:
            continue
        src = node.args[0]
        while isinstance(src, fx.Node) and src.name not in by_node and _keeps_grid(gm, src):
            src = src.args[0]
        p = by_node.get(src.name) if isinstance(src, fx.Node) else None
        if p is not None and ("in", node.target) not in p.sites:
            p.mirrors.append(node.target)
    return points


# ----------------------------------------------------------------------------- format search


def _site_hooks(model: nn.Module, points: list[_Point], at_site: Any) -> list[Any]:
    """Hooks calling ``at_site(point, site index, data before the site's rounding)``; an "out" /
    "wrap" site's call may return a replacement output."""
    handles = []
    for p in points:
        for i, (kind, path) in enumerate(p.sites):
            m = model.get_submodule(path)
            if kind == "in":  # the layer rounds its input itself, after this hook

                def before(_m: nn.Module, args: tuple, p: _Point = p, i: int = i) -> None:
                    at_site(p, i, args[0])

                handles.append(m.register_forward_pre_hook(before))
            else:  # with the format unset, the module's output is the value before rounding
                handles.append(m.register_forward_hook(lambda _m, _a, out, p=p, i=i: at_site(p, i, out)))
    return handles


def _run(model: nn.Module, x: Tensor, handles: list[Any]) -> None:
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()


def _observe(model: nn.Module, points: list[_Point], x: Tensor) -> list[list[Tensor]]:
    """The data at every site of every point, in one pass over ``x``."""
    seen: list[list[Tensor]] = [[torch.empty(0)] * len(p.sites) for p in points]
    index = {id(p): k for k, p in enumerate(points)}

    def keep(p: _Point, i: int, t: Tensor) -> None:
        seen[index[id(p)]][i] = t.detach().clone()

    _run(model, x, _site_hooks(model, points, keep))
    return seen


def _greedy(model: nn.Module, points: list[_Point], refs: list[list[Tensor]], x: Tensor) -> None:
    """Eq. 3, greedy, in one pass: the first time the pass reaches a point, every point
    before it is already in fixed point; its format is chosen on the data it sees there
    against the float network's, set, and applied from then on."""
    index = {id(p): k for k, p in enumerate(points)}
    chosen: dict[int, int] = {}

    def choose(p: _Point, i: int, t: Tensor) -> Tensor:
        k = index[id(p)]
        if k not in chosen:
            chosen[k] = best_fl([refs[k][i]], [t], p.bits)
            _set_format(model, p, chosen[k])
        return to_fixed(t, p.bits, chosen[k])

    _run(model, x, _site_hooks(model, points, choose))
    missed = [p.node for k, p in enumerate(points) if k not in chosen]
    if missed:
        raise CompressError(f"fixed-point quantization: the calibration pass never reached {', '.join(missed)}")


def _set_format(model: nn.Module, p: _Point, fl: int) -> None:
    for kind, path in p.sites:
        m = model.get_submodule(path)
        if kind == "out":
            m.out_bits, m.out_fl = p.bits, fl
        elif kind == "in":
            m.a_bits, m.a_fl = p.bits, fl
        else:
            m.bits, m.fl = p.bits, fl
    for path in p.mirrors:
        m = model.get_submodule(path)
        m.a_bits, m.a_fl = p.bits, fl


def _check_bits(bits: Any, where: str) -> int:
    if not isinstance(bits, int) or isinstance(bits, bool) or not MIN_BITS <= bits <= MAX_BITS:
        raise CompressError(
            f"{where}: fixed-point bit width must be an integer from {MIN_BITS} to {MAX_BITS}, got {bits!r}"
        )
    return bits


def quantize(
    model: nn.Module,
    calib_batches: Calibration | Iterable[Any],
    bits: int = 8,
    mode: Mode = "dynamic",
    select: Selector | dict | None = None,
    num_batches: int | None = None,
    data_bits: int | None = None,
) -> nn.Module:
    """A copy of ``model`` with BN folded and its weights and data in fixed point.

    ``mode="dynamic"``: a weight format per layer and a data format per data point (Qiu
    et al. eqs. 2-3, greedy); ``"static"``: one weight format and one data format for
    the whole network.  ``bits``: the weight width; ``data_bits``: the data width
    (default ``bits``).  ``select`` picks the conv / linear layers whose weights and
    output become fixed point (an excluded layer stays float and so does its output,
    unless another point holds it).  ``calib_batches``: a Calibration, or tensors or
    ``(x, y)`` tuples (the first ``num_batches`` when given).
    """
    if mode not in ("dynamic", "static"):
        raise CompressError(f"fixed-point mode must be 'dynamic' or 'static', got '{mode}'")
    _check_bits(bits, "bits")
    data_bits = _check_bits(bits if data_bits is None else data_bits, "data_bits")
    sel = parse(select)
    batches = list(as_calibration(calib_batches, num_batches, what="fixed-point quantization").batches())
    qmodel = copy.deepcopy(model).eval()
    names = [
        n
        for n, _ in select_plain(
            qmodel, sel, "fixed-point quantization", "already quantized layers are not quantized again"
        )
    ]
    defaults = {"bits": bits, "data_bits": data_bits}
    params = {n: layer_params(sel, n, defaults) for n in names}
    widths = {n: _check_bits(params[n]["bits"], f"layer '{n}' bits") for n in names}
    out_bits = {n: _check_bits(params[n]["data_bits"], f"layer '{n}' data_bits") for n in names}

    _fold_bn(qmodel)
    gm = _trace(qmodel)
    try:
        with torch.no_grad():
            ShapeProp(gm).propagate(batches[0])
    except Exception as exc:
        cause = exc.__cause__ or exc
        first = str(cause).splitlines()[0] if str(cause) else type(cause).__name__
        raise ModelError(f"the calibration data does not run through {type(model).__name__}: {first}") from exc
    points = _find_points(gm, set(names), data_bits, out_bits)

    for name in names:
        qmodel.set_submodule(name, _fixed_layer(qmodel.get_submodule(name), widths[name], out_bits[name]))
    for p in points:
        for kind, path in p.sites:
            if kind == "wrap" and not isinstance(qmodel.get_submodule(path), FixedPointData):
                qmodel.set_submodule(path, FixedPointData(qmodel.get_submodule(path), p.bits))
    layers = [(n, qmodel.get_submodule(n)) for n in names]
    x = torch.cat(batches)  # one pass over all the calibration data
    refs = _observe(qmodel, points, x)  # the float (BN-folded) network

    if mode == "static":
        w_fl = _shared_fl([m.weight.detach() for _, m in layers], [widths[n] for n in names])
        for _, m in layers:
            m.w_fl = w_fl
        fl = _shared_fl([torch.cat([r.flatten() for r in ref]) for ref in refs], [p.bits for p in points])
        for p in points:
            _set_format(qmodel, p, fl)
    else:
        for name, m in layers:
            w = m.weight.detach()
            m.w_fl = best_fl([w], [w], widths[name])
        _greedy(qmodel, points, refs, x)
    for _, m in layers:
        m.snap()
    return qmodel.train(model.training)


class SnapToGrid(TrainHook):
    """Puts every fixed-point layer's weights back on its grid when fine-tuning ends (the
    optimizer's last steps move them off it; the forward pass rounds them on the fly)."""

    def after_train(self, model: nn.Module) -> None:
        for m in model.modules():
            if isinstance(m, _FixedPoint):
                m.snap()


def _shared_fl(tensors: list[Tensor], widths: list[int]) -> int:
    """One fl for all ``tensors`` (each at its own width) minimising the summed error."""
    amax = max(float(t.abs().max()) for t in tensors)
    cands = fl_candidates(amax, min(widths))
    errs = {
        fl: sum(fixed_error(t, t, b, fl) for t, b in zip(tensors, widths, strict=True))
        for fl in range(cands.start, cands.stop + max(widths) - min(widths))
    }
    return min(errs, key=lambda fl: (errs[fl], -fl))


def formats(model: nn.Module) -> dict[str, dict[str, int | None]]:
    """``{layer: {"bits", "w_fl", "a_bits", "a_fl", "out_bits", "out_fl"}}`` for every
    fixed-point layer (for reports)."""
    return {n: m.formats() for n, m in model.named_modules() if isinstance(m, _FixedPoint)}


def data_formats(model: nn.Module) -> dict[str, dict[str, int | None]]:
    """``{module: {"bits", "fl"}}`` for every data point held outside a layer (adds, pools)."""
    return {n: {"bits": m.bits, "fl": m.fl} for n, m in model.named_modules() if isinstance(m, FixedPointData)}
