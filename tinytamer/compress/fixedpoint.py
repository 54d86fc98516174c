"""Dynamic fixed-point quantization (Qiu et al. 2016).

Qiu et al. 2016, "Going Deeper with Embedded FPGA Platform for Convolutional
Neural Network" (FPGA '16), dynamic-precision data quantization: a fixed-point
number of bit width ``bw`` and fractional length ``fl`` is
``sum_i B_i 2^i * 2^-fl`` (eq. 1, two's complement, so the integer part ranges
over [-2^(bw-1), 2^(bw-1) - 1]).

- Weight quantization (eq. 2): per layer, ``fl_w = argmin_fl sum |W_float - W(bw, fl)|``.
- Data quantization (eq. 3): per layer, ``fl_d = argmin_fl sum |x+_float - x+(bw, fl)|``,
  found greedily layer by layer: with the layers before layer k already in
  fixed point, the data entering layer k in that network is compared with the
  same data in the floating-point network ("the intermediate data of the
  fixed-point CNN model and the floating-point CNN model are compared layer by
  layer using a greedy algorithm").
- Static fixed point, the paper's comparison baseline, uses one format for the
  whole network: here one ``fl`` for all weights and one for all layer inputs,
  each minimising the summed error over all layers.

Each selected conv / linear becomes a :class:`FixedPointConv2d` /
:class:`FixedPointLinear` that records ``bits``, ``w_fl`` and ``a_fl``, holds
weights that are exactly ``integer * 2^-w_fl`` and rounds its input data to
``(bits, a_fl)`` in forward; its bias is kept in the accumulator format
(32-bit, ``fl = w_fl + a_fl``).  Per-layer bit widths come from the selector's
overrides ``{"bits": n}``.  Rounding is to nearest (half to even) with
saturation; the gradient is straight-through inside the range, so a
fixed-point model can be fine-tuned and stays on its grid.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tinytamer.calib import Calibration, as_calibration
from tinytamer.compress.selector import Selector, layer_params, parse, select_plain
from tinytamer.errors import CompressError
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


class _FixedPoint:
    """Shared by FixedPointConv2d / FixedPointLinear: formats and the fixed-point weights."""

    weight: nn.Parameter
    bias: nn.Parameter | None
    bits: int
    w_fl: int
    a_fl: int | None

    def _init_fixed(self, bits: int, w_fl: int, a_fl: int | None) -> None:
        self.bits, self.w_fl, self.a_fl = bits, w_fl, a_fl

    def snap(self) -> None:
        """Put the stored weights (and bias) exactly on their fixed-point grids."""
        with torch.no_grad():
            self.weight.copy_(to_fixed(self.weight, self.bits, self.w_fl))
            if self.bias is not None and self.a_fl is not None:
                self.bias.copy_(to_fixed(self.bias, _ACC_BITS, self.w_fl + self.a_fl))

    def int_weight(self) -> Tensor:
        """The weights as integers (``weight * 2^w_fl``), int16 up to 16 bits."""
        q = torch.round(self.weight.detach() * 2.0**self.w_fl)
        return q.to(torch.int8 if self.bits <= 8 else torch.int16)

    def _fixed_io(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        w = to_fixed(self.weight, self.bits, self.w_fl)
        if self.a_fl is None:  # input format not chosen yet (during the greedy search)
            return x, w, self.bias
        b = None if self.bias is None else to_fixed(self.bias, _ACC_BITS, self.w_fl + self.a_fl)
        return to_fixed(x, self.bits, self.a_fl), w, b

    def fixed_repr(self) -> str:
        return f"bits={self.bits}, w_fl={self.w_fl}, a_fl={self.a_fl}"


class FixedPointConv2d(_FixedPoint, nn.Conv2d):
    """Conv2d with ``(bits, w_fl)`` fixed-point weights and ``(bits, a_fl)`` input data."""

    def __init__(self, *args: Any, bits: int = 8, w_fl: int = 0, a_fl: int | None = None, **kwargs: Any) -> None:
        nn.Conv2d.__init__(self, *args, **kwargs)
        self._init_fixed(bits, w_fl, a_fl)

    def forward(self, x: Tensor) -> Tensor:
        x, w, b = self._fixed_io(x)
        return self._conv_forward(x, w, b)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, {self.fixed_repr()}"


class FixedPointLinear(_FixedPoint, nn.Linear):
    """Linear with ``(bits, w_fl)`` fixed-point weights and ``(bits, a_fl)`` input data."""

    def __init__(self, *args: Any, bits: int = 8, w_fl: int = 0, a_fl: int | None = None, **kwargs: Any) -> None:
        nn.Linear.__init__(self, *args, **kwargs)
        self._init_fixed(bits, w_fl, a_fl)

    def forward(self, x: Tensor) -> Tensor:
        x, w, b = self._fixed_io(x)
        return F.linear(x, w, b)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, {self.fixed_repr()}"


def _fixed_layer(layer: nn.Module, bits: int, w_fl: int) -> _FixedPoint:
    w = layer.weight
    kw: dict[str, Any] = {"device": w.device, "dtype": w.dtype, "bits": bits, "w_fl": w_fl}
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


def _layer_inputs(model: nn.Module, names: list[str], batches: list[Tensor]) -> dict[str, list[Tensor]]:
    """The tensors entering each named layer, one per calibration batch."""
    seen: dict[str, list[Tensor]] = {n: [] for n in names}
    handles = [
        model.get_submodule(n).register_forward_pre_hook(lambda _m, args, n=n: seen[n].append(args[0].detach()))
        for n in names
    ]
    try:
        with torch.no_grad():
            for x in batches:
                model(x)
    finally:
        for h in handles:
            h.remove()
    return seen


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
) -> nn.Module:
    """A copy of ``model`` whose selected Conv2d / Linear layers are fixed point.

    ``mode="dynamic"``: per-layer weight and data formats (Qiu et al. eqs. 2-3,
    greedy); ``"static"``: one weight format and one data format for the whole
    network.  ``calib_batches``: a Calibration, or tensors or ``(x, y)`` tuples (the first
    ``num_batches`` when given).
    """
    if mode not in ("dynamic", "static"):
        raise CompressError(f"fixed-point mode must be 'dynamic' or 'static', got '{mode}'")
    _check_bits(bits, "bits")
    sel = parse(select)
    batches = list(as_calibration(calib_batches, num_batches, what="fixed-point quantization").batches())
    qmodel = copy.deepcopy(model).eval()
    layers = select_plain(qmodel, sel, "fixed-point quantization", "already quantized layers are not quantized again")
    names = [n for n, _ in layers]
    widths = {n: _check_bits(layer_params(sel, n, {"bits": bits})["bits"], f"layer '{n}' bits") for n in names}
    refs = _layer_inputs(qmodel, names, batches)

    if mode == "static":
        w_fl = _shared_fl([m.weight.detach() for _, m in layers], [widths[n] for n in names])
        a_fl = _shared_fl([torch.cat([r.flatten() for r in refs[n]]) for n in names], [widths[n] for n in names])
        for name, layer in layers:
            q = _fixed_layer(layer, widths[name], w_fl)
            q.a_fl = a_fl
            qmodel.set_submodule(name, q)
    else:
        for name, layer in layers:
            w = layer.weight.detach()
            q = _fixed_layer(layer, widths[name], best_fl([w], [w], widths[name]))
            qmodel.set_submodule(name, q)
            # Greedy: the data entering this layer with every earlier layer already fixed.
            got = _layer_inputs(qmodel, [name], batches)[name]
            q.a_fl = best_fl(refs[name], got, widths[name])
    for _, m in qmodel.named_modules():
        if isinstance(m, _FixedPoint):
            m.snap()
    return qmodel.train(model.training)


class SnapToGrid(TrainHook):
    """Puts every fixed-point layer's weights back on its grid when fine-tuning ends (the
    optimizer's last steps move them off it; the forward pass rounds only the data)."""

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
    """``{layer name: {"bits", "w_fl", "a_fl"}}`` for every fixed-point layer (for reports)."""
    return {
        n: {"bits": m.bits, "w_fl": m.w_fl, "a_fl": m.a_fl}
        for n, m in model.named_modules()
        if isinstance(m, _FixedPoint)
    }
