"""Integer (int8 and mixed 2-8 bit) quantization: post-training and quantization-aware training.

Implements the affine quantization scheme of Jacob et al. 2018, "Quantization
and Training of Neural Networks for Efficient Integer-Arithmetic-Only
Inference": ``r = S (q - Z)`` (their eq. 1), activations asymmetric per tensor,
batch-norm folded into the preceding conv (their Sec. 3.2, done once here on
the eval statistics, also before QAT), and quantization-aware training with
simulated ("fake") quantization in the forward pass (their Sec. 3.1).  Weights
are symmetric per output channel with zero point 0 and the narrow range
[-(2^(b-1)-1), 2^(b-1)-1], as recommended by Krishnamoorthi 2018, "Quantizing
deep convolutional networks for efficient inference: A whitepaper" (per-channel
weight quantization), which also gives the straight-through estimator used for
training: gradient 1 inside the clamp range, 0 outside.

Activation ranges come from calibration batches by min/max, by a percentile of
the values (both as in Wu et al. 2020, "Integer Quantization for Deep Learning
Inference: Principles and Empirical Evaluation", Sec. 4.1), or by the clipping
threshold that minimises the mean squared quantization error on the observed
values (searched over 100 thresholds; Banner et al. 2019, "Post training 4-bit
quantization of convolutional networks for rapid-deployment", minimise the
same error analytically).

The result is a ``torch.fx.GraphModule`` in float32 whose every quantization
point is explicit, so an integer runtime can read its parameters directly:

- every quantized conv / linear is a :class:`QuantConv2d` / :class:`QuantLinear`
  (a :class:`tinytamer.qgraph.QuantWeight`) with buffer ``w_scale`` (per output
  channel) and ``w_bits``; its weight is ``clamp(round(w / s), -(2^(b-1)-1),
  2^(b-1)-1) * s`` (narrow range);
- every activation quantization point is a :class:`FakeQuantAct` module (a
  :class:`tinytamer.qgraph.ActQuant`) with ``scale``, ``zero_point``, ``bits``,
  ``qmin``, ``qmax``; one follows the graph input, every conv / linear (after its
  ReLU / ReLU6 when one directly follows), every residual add (likewise), every average pool and every other
  op that makes new values; none follows the ops that keep their input's values
  (max-pool, flatten, reshape, view, contiguous, dropout, identity).

Per-layer bit widths come from the layer selector's overrides: ``{"bits": n}``
sets a layer's weight bits and ``{"act_bits": n}`` the bits of the activation
that the layer produces (the FakeQuantAct that follows it).  The activation
after a non-layer op (add, pool, ...) takes overrides keyed by its graph node
name (e.g. ``add_1``).

``tinytamer.qgraph.QuantizedGraph(convert(gm))`` holds a converted graph in the form
checkpoints and ``.tt`` files save: plain data over a closed table of operations
(the run directory's checkpoints cannot hold a GraphModule);
``tinytamer.qgraph.as_graph_module`` gives the GraphModule back.
"""

from __future__ import annotations

import copy
import operator
from collections.abc import Iterable
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn
from torch.fx.passes.shape_prop import ShapeProp
from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval

from tinytamer.compress.selector import Selector, layer_params, parse, select
from tinytamer.errors import ModelError, RecipeError
from tinytamer.qgraph import ActQuant, QuantWeight, fake_quant

CalibMethod = Literal["minmax", "percentile", "mse"]
CALIB_METHODS = ("minmax", "percentile", "mse")
MIN_BITS, MAX_BITS = 2, 8
# Calibration keeps a random sample of each activation's values (percentile / MSE
# need the distribution, not only its extremes); these bound its memory.
_SAMPLE_PER_BATCH = 1 << 16
_SAMPLE_CAP = 1 << 18
_MSE_CANDIDATES = 100
# Averaging constant of the moving min / max that QAT tracks (as in PyTorch's
# MovingAverageMinMaxObserver).
_EMA = 0.01


def _check_bits(bits: Any, where: str) -> int:
    if not isinstance(bits, int) or isinstance(bits, bool) or not MIN_BITS <= bits <= MAX_BITS:
        raise RecipeError(f"{where}: bit width must be an integer from {MIN_BITS} to {MAX_BITS}, "
                          f"got {bits!r}")
    return bits


def _copy_params(q: QuantWeight, layer: nn.Module) -> None:
    with torch.no_grad():
        q.weight.copy_(layer.weight)
        if layer.bias is not None:
            q.bias.copy_(layer.bias)  # type: ignore[attr-defined]
        q.refresh_scale()
    q.train(layer.training)  # type: ignore[attr-defined]


class QuantConv2d(QuantWeight, nn.Conv2d):
    """A Conv2d whose forward uses per-channel symmetric fake-quantized weights and a float bias."""

    def __init__(self, *args: Any, w_bits: int = 8, **kwargs: Any) -> None:
        nn.Conv2d.__init__(self, *args, **kwargs)
        self._init_quant(w_bits)

    @classmethod
    def from_float(cls, conv: nn.Conv2d, bits: int) -> QuantConv2d:
        q = cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                conv.dilation, conv.groups, conv.bias is not None, conv.padding_mode,
                device=conv.weight.device, dtype=conv.weight.dtype, w_bits=bits)
        _copy_params(q, conv)
        return q

    def forward(self, x: Tensor) -> Tensor:
        return self._conv_forward(x, self.quant_weight(), self.bias)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, w_bits={self.w_bits}"


class QuantLinear(QuantWeight, nn.Linear):
    """A Linear whose forward uses per-channel symmetric fake-quantized weights and a float bias."""

    def __init__(self, *args: Any, w_bits: int = 8, **kwargs: Any) -> None:
        nn.Linear.__init__(self, *args, **kwargs)
        self._init_quant(w_bits)

    @classmethod
    def from_float(cls, linear: nn.Linear, bits: int) -> QuantLinear:
        q = cls(linear.in_features, linear.out_features, linear.bias is not None,
                device=linear.weight.device, dtype=linear.weight.dtype, w_bits=bits)
        _copy_params(q, linear)
        return q

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.quant_weight(), self.bias)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, w_bits={self.w_bits}"


def act_qparams(lo: float, hi: float, qmin: int, qmax: int) -> tuple[float, int]:
    """Asymmetric (scale, zero_point) for the range [lo, hi], widened to contain 0 exactly."""
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    if hi - lo <= 0:
        return 1.0, qmin if lo >= 0 else 0
    scale = (hi - lo) / (qmax - qmin)
    zp = int(min(max(qmin - round(lo / scale), qmin), qmax))
    return float(scale), zp


def _fq_mse(x: Tensor, lo: float, hi: float, qmin: int, qmax: int) -> float:
    scale, zp = act_qparams(lo, hi, qmin, qmax)
    q = (torch.round(x / scale) + zp).clamp(qmin, qmax)
    return float(((q - zp) * scale - x).square().mean())


class FakeQuantAct(ActQuant):
    """Per-tensor asymmetric activation fake quantization point.

    Modes: ``observe`` records statistics and passes values through (PTQ
    calibration); ``qat`` fake-quantizes with a moving min / max that training
    batches update; ``quant`` fake-quantizes with frozen ``scale`` / ``zero_point``.
    """

    def __init__(self, bits: int = 8, mode: str = "observe") -> None:
        super().__init__()
        self.bits = _check_bits(bits, "FakeQuantAct")
        self.qmin = -(2 ** (bits - 1))
        self.qmax = 2 ** (bits - 1) - 1
        self.mode = mode
        self.register_buffer("scale", torch.tensor(1.0))
        self.register_buffer("zero_point", torch.tensor(0, dtype=torch.int32))
        self.register_buffer("running_min", torch.tensor(float("inf")))
        self.register_buffer("running_max", torch.tensor(float("-inf")))
        self._samples: list[Tensor] = []

    @property
    def initialized(self) -> bool:
        return bool(torch.isfinite(self.running_min))

    def _observe(self, x: Tensor) -> None:
        x = x.detach().float()
        self.running_min.fill_(min(float(self.running_min), float(x.min())))
        self.running_max.fill_(max(float(self.running_max), float(x.max())))
        flat = x.flatten().cpu()
        # Seeded per batch so that calibration is deterministic.
        gen = torch.Generator().manual_seed(len(self._samples))
        if flat.numel() > _SAMPLE_PER_BATCH:
            flat = flat[torch.randint(flat.numel(), (_SAMPLE_PER_BATCH,), generator=gen)]
        self._samples.append(flat)
        if sum(s.numel() for s in self._samples) > 2 * _SAMPLE_CAP:
            pool = torch.cat(self._samples)
            self._samples = [pool[torch.randperm(pool.numel(), generator=gen)[:_SAMPLE_CAP]]]

    def reset(self) -> None:
        """Forget the statistics seen so far."""
        self.running_min.fill_(float("inf"))
        self.running_max.fill_(float("-inf"))
        self._samples = []

    def compute_qparams(self, method: CalibMethod = "minmax", percentile: float = 99.99) -> None:
        """Set ``scale`` / ``zero_point`` from what calibration observed, by ``method``."""
        if not self.initialized:
            raise ModelError("a FakeQuantAct saw no data: calibrate with at least one batch")
        lo, hi = float(self.running_min), float(self.running_max)
        if method == "percentile" and self._samples:
            values = torch.cat(self._samples)
            qs = torch.tensor([(100.0 - percentile) / 100.0, percentile / 100.0])
            lo, hi = (float(v) for v in torch.quantile(values, qs))
        elif method == "mse" and self._samples:
            values = torch.cat(self._samples)
            # Clip the magnitudes at a threshold t (so a one-sided outlier is cut first) and
            # keep the t with the least quantization error.
            amax = max(-lo, hi)
            clips = [(max(lo, -t), min(hi, t))
                     for t in (amax * k / _MSE_CANDIDATES for k in range(1, _MSE_CANDIDATES + 1))]
            errs = [_fq_mse(values, a, b, self.qmin, self.qmax) for a, b in clips]
            lo, hi = clips[min(range(len(errs)), key=errs.__getitem__)]
        scale, zp = act_qparams(lo, hi, self.qmin, self.qmax)
        self.scale.fill_(scale)
        self.zero_point.fill_(zp)
        # QAT continues its moving range from the calibrated clip.
        self.running_min.fill_(min(lo, 0.0))
        self.running_max.fill_(max(hi, 0.0))
        self._samples = []

    def forward(self, x: Tensor) -> Tensor:
        if self.mode == "observe":
            self._observe(x)
            return x
        if self.mode == "qat" and self.training:
            with torch.no_grad():
                lo, hi = float(x.min()), float(x.max())
                if self.initialized:
                    lo = float(self.running_min) + _EMA * (lo - float(self.running_min))
                    hi = float(self.running_max) + _EMA * (hi - float(self.running_max))
                self.running_min.fill_(lo)
                self.running_max.fill_(hi)
                scale, zp = act_qparams(lo, hi, self.qmin, self.qmax)
                self.scale.fill_(scale)
                self.zero_point.fill_(zp)
        elif self.mode == "qat" and not self.initialized:
            raise ModelError("a QAT FakeQuantAct has no range yet: calibrate or train it first")
        return fake_quant(x, self.scale, self.zero_point, self.qmin, self.qmax)

    def extra_repr(self) -> str:
        return (f"bits={self.bits}, mode={self.mode}, scale={float(self.scale):.6g}, "
                f"zero_point={int(self.zero_point)}")


# ----------------------------------------------------------------------------- graph capture

def _trace(model: nn.Module) -> fx.GraphModule:
    if isinstance(model, fx.GraphModule):
        return copy.deepcopy(model)
    try:
        return fx.symbolic_trace(copy.deepcopy(model))
    except Exception as exc:  # fx raises many types for untraceable Python
        raise ModelError(
            f"cannot trace {type(model).__name__} with torch.fx for quantization: {exc} "
            "(data-dependent control flow in forward() is not supported)"
        ) from exc


def _parent(gm: nn.Module, target: str) -> tuple[nn.Module, str]:
    *path, leaf = target.split(".")
    parent = gm
    for p in path:
        parent = getattr(parent, p)
    return parent, leaf


def _set_module(gm: nn.Module, target: str, module: nn.Module) -> None:
    parent, leaf = _parent(gm, target)
    setattr(parent, leaf, module)


def _module(gm: fx.GraphModule, node: fx.Node) -> nn.Module | None:
    return gm.get_submodule(node.target) if node.op == "call_module" else None


_BN_FUSERS = ((nn.Conv1d | nn.Conv2d | nn.Conv3d, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)),
              (nn.Linear, (nn.BatchNorm1d,)))


def fuse_bn(model: nn.Module) -> fx.GraphModule:
    """Fold every BatchNorm that directly follows a conv / linear into it (eval statistics).

    Returns a traced copy; the input model is untouched.  A BN whose producer is
    also used elsewhere, or which follows something else, stays as it is.
    """
    gm = _trace(model)
    uses: dict[str, int] = {}
    for node in gm.graph.nodes:
        if node.op == "call_module":
            uses[node.target] = uses.get(node.target, 0) + 1
    for node in list(gm.graph.nodes):
        bn = _module(gm, node)
        if not isinstance(bn, nn.modules.batchnorm._BatchNorm) or not bn.track_running_stats:
            continue
        src = node.args[0]
        if not isinstance(src, fx.Node) or len(src.users) != 1 or uses.get(src.target, 0) != 1:
            continue
        layer = _module(gm, src)
        for layer_types, bn_types in _BN_FUSERS:
            if isinstance(layer, layer_types) and isinstance(bn, bn_types):
                fuser = fuse_linear_bn_eval if isinstance(layer, nn.Linear) else fuse_conv_bn_eval
                was_training = layer.training
                fused = fuser(layer.eval(), bn.eval())
                fused.train(was_training)
                _set_module(gm, src.target, fused)
                node.replace_all_uses_with(src)
                gm.graph.erase_node(node)
                break
    gm.graph.lint()
    gm.delete_all_unused_submodules()
    gm.recompile()
    return gm


# ----------------------------------------------------------------------------- placement

_RELU_MODULES = (nn.ReLU, nn.ReLU6)
_RELU_FUNCS = {"relu", "relu_", "relu6"}
_KEEP_MODULES = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AdaptiveMaxPool1d,
                 nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d, nn.Flatten, nn.Identity,
                 nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout)
_KEEP_FUNCS = {"max_pool1d", "max_pool2d", "max_pool3d", "_max_pool1d", "_max_pool2d",
               "_max_pool3d", "adaptive_max_pool1d", "adaptive_max_pool2d",
               "_adaptive_max_pool1d", "_adaptive_max_pool2d", "flatten", "reshape", "dropout",
               "dropout1d", "dropout2d", "identity"}
_KEEP_METHODS = {"view", "reshape", "flatten", "contiguous"}
_ADD_FUNCS = {operator.add, operator.iadd, torch.add}
_LAYER_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


def _fname(target: Any) -> str:
    return getattr(target, "__name__", str(target))


def _is_relu(gm: fx.GraphModule, node: fx.Node) -> bool:
    if node.op == "call_module":
        return isinstance(_module(gm, node), _RELU_MODULES)
    if node.op in ("call_function", "call_method"):
        return _fname(node.target) in _RELU_FUNCS
    return False


def _keeps_scale(gm: fx.GraphModule, node: fx.Node) -> bool:
    if node.op == "call_module":
        return isinstance(_module(gm, node), _KEEP_MODULES)
    if node.op == "call_function":
        return _fname(node.target) in _KEEP_FUNCS
    if node.op == "call_method":
        return node.target in _KEEP_METHODS
    return False


def _is_producer(gm: fx.GraphModule, node: fx.Node) -> bool:
    """Conv / linear / residual add: the ops whose ReLU is fused into them."""
    if node.op == "call_module":
        return isinstance(_module(gm, node), _LAYER_TYPES)
    if node.op == "call_function":
        return node.target in _ADD_FUNCS
    return node.op == "call_method" and node.target in ("add", "add_")


def _float_tensor(node: fx.Node) -> bool:
    meta = node.meta.get("tensor_meta")
    return meta is not None and hasattr(meta, "dtype") and meta.dtype.is_floating_point


def _quant_points(gm: fx.GraphModule) -> list[tuple[fx.Node, fx.Node]]:
    """(node after which to quantize, node that owns the point) in graph order."""
    points: list[tuple[fx.Node, fx.Node]] = []
    fused_relus: set[fx.Node] = set()
    for node in gm.graph.nodes:
        if node.op in ("output", "get_attr") or not _float_tensor(node):
            continue
        if node in fused_relus:
            continue
        if node.op == "placeholder":
            points.append((node, node))
        elif _is_producer(gm, node):
            users = list(node.users)
            if len(users) == 1 and _is_relu(gm, users[0]):
                fused_relus.add(users[0])
                points.append((users[0], node))
            else:
                points.append((node, node))
        elif not _keeps_scale(gm, node):
            points.append((node, node))
    return points


def _owner_name(node: fx.Node) -> str:
    return str(node.target) if node.op == "call_module" else node.name


def prepare(
    model: nn.Module,
    example_input: Tensor,
    *,
    select: Selector | dict | None = None,
    weight_bits: int = 8,
    act_bits: int = 8,
    _mode: str = "observe",
) -> fx.GraphModule:
    """Fold BN, swap the selected conv / linear layers for quantized ones, insert FakeQuantAct.

    The returned GraphModule observes activations until :func:`calibrate` sets
    their ranges.  Per-layer ``{"bits": n, "act_bits": n}`` come from ``select.overrides``.
    """
    sel = parse(select)
    _check_bits(weight_bits, "weight_bits")
    _check_bits(act_bits, "act_bits")
    gm = fuse_bn(model)
    was_training = gm.training
    gm.eval()
    with torch.no_grad():
        try:
            ShapeProp(gm).propagate(example_input)
        except Exception as exc:
            raise ModelError(f"the example input of shape {tuple(example_input.shape)} does not "
                             f"run through {type(model).__name__}: {exc}") from exc

    defaults = {"bits": weight_bits, "act_bits": act_bits}
    for name, layer in _select_layers(gm, sel):
        bits = _check_bits(layer_params(sel, name, defaults)["bits"], f"layer '{name}' bits")
        qcls = QuantConv2d if isinstance(layer, nn.Conv2d) else QuantLinear
        _set_module(gm, name, qcls.from_float(layer, bits))

    for after, owner in _quant_points(gm):
        owner_name = _owner_name(owner)
        bits = layer_params(sel, owner_name, defaults)["act_bits"]
        fq = FakeQuantAct(_check_bits(bits, f"activation of '{owner_name}' act_bits"), _mode)
        fq_name = _unique_name(gm, "aq_" + owner_name.replace(".", "_"))
        gm.add_submodule(fq_name, fq)
        with gm.graph.inserting_after(after):
            fq_node = gm.graph.call_module(fq_name, (after,))
        after.replace_all_uses_with(fq_node, delete_user_cb=lambda user, n=fq_node: user is not n)
    gm.graph.lint()
    gm.recompile()
    gm.train(was_training)
    return gm


def _select_layers(gm: fx.GraphModule, sel: Selector) -> list[tuple[str, nn.Module]]:
    chosen = select(gm, sel)
    supported = [(n, m) for n, m in chosen if type(m) in (nn.Conv2d, nn.Linear)]
    if not supported:
        raise ModelError("int8 quantization: the selector picked no Conv2d / Linear layer ("
                         + ", ".join(f"{n}: {type(m).__name__}" for n, m in chosen[:10]) + ")")
    return supported


def _unique_name(gm: nn.Module, base: str) -> str:
    name, i = base, 1
    while hasattr(gm, name):
        name, i = f"{base}_{i}", i + 1
    return name


def _batches(batches: Iterable[Any], num_batches: int | None) -> Iterable[Tensor]:
    for i, batch in enumerate(batches):
        if num_batches is not None and i >= num_batches:
            return
        yield batch[0] if isinstance(batch, list | tuple) else batch


def fake_quant_acts(gm: nn.Module) -> list[tuple[str, FakeQuantAct]]:
    return [(n, m) for n, m in gm.named_modules() if isinstance(m, FakeQuantAct)]


def calibrate(
    gm: fx.GraphModule,
    batches: Iterable[Any],
    method: CalibMethod = "minmax",
    percentile: float = 99.99,
    num_batches: int | None = None,
) -> fx.GraphModule:
    """Run calibration batches (tensors or ``(x, y)`` tuples) and set every activation range."""
    if method not in CALIB_METHODS:
        raise RecipeError(f"calibration method must be one of {CALIB_METHODS}, got '{method}'")
    if not 50.0 < percentile <= 100.0:
        raise RecipeError(f"calibration percentile must be in (50, 100], got {percentile}")
    acts = fake_quant_acts(gm)
    if not acts:
        raise ModelError("calibrate: the model has no FakeQuantAct; build it with prepare()")
    modes = {name: fq.mode for name, fq in acts}
    was_training = gm.training
    device = next((p.device for p in gm.parameters()), torch.device("cpu"))
    for _, fq in acts:
        fq.reset()
        fq.mode = "observe"
    gm.eval()
    seen = 0
    with torch.no_grad():
        for x in _batches(batches, num_batches):
            gm(x.to(device))
            seen += 1
    if seen == 0:
        raise ModelError("calibrate: no calibration batches were given")
    for name, fq in acts:
        fq.compute_qparams(method, percentile)
        fq.mode = "qat" if modes[name] == "qat" else "quant"
    gm.train(was_training)
    return gm


def convert(gm: fx.GraphModule) -> fx.GraphModule:
    """Freeze all quantization parameters; returns an eval-mode copy ready for export."""
    out = copy.deepcopy(gm)
    for name, fq in fake_quant_acts(out):
        if not fq.initialized:
            raise ModelError(f"convert: activation quantizer '{name}' has no range: calibrate "
                             "(PTQ) or train (QAT) before converting")
        if fq.mode == "observe":
            fq.compute_qparams("minmax")
        fq.mode = "quant"
    for m in out.modules():
        if isinstance(m, QuantWeight):
            m.refresh_scale()
    return out.eval()


def quantize_ptq(
    model: nn.Module,
    calib_batches: Iterable[Any],
    *,
    method: CalibMethod = "minmax",
    percentile: float = 99.99,
    select: Selector | dict | None = None,
    weight_bits: int = 8,
    act_bits: int = 8,
    num_batches: int | None = None,
) -> fx.GraphModule:
    """Post-training quantization in one call: prepare, calibrate, convert."""
    batches = list(_batches(calib_batches, num_batches))
    if not batches:
        raise ModelError("quantize_ptq: no calibration batches were given")
    gm = prepare(model, batches[0][:1], select=select, weight_bits=weight_bits, act_bits=act_bits)
    calibrate(gm, batches, method, percentile)
    return convert(gm)


def prepare_qat(
    model: nn.Module,
    example_input: Tensor,
    *,
    select: Selector | dict | None = None,
    weight_bits: int = 8,
    act_bits: int = 8,
) -> fx.GraphModule:
    """A trainable GraphModule with straight-through fake quantization (BN folded first).

    Activation ranges follow a moving min / max of the training batches;
    calibrating first (:func:`calibrate`) starts them from a good clip.  Train
    it like any model, then :func:`convert`.
    """
    gm = prepare(model, example_input, select=select, weight_bits=weight_bits, act_bits=act_bits,
                 _mode="qat")
    return gm.train(model.training)


def quant_params(gm: fx.GraphModule) -> dict[str, dict[str, Any]]:
    """JSON-able summary of every quantization point, keyed by graph node name, in graph order.

    Activations: ``{"kind": "act", "module", "input", "scale", "zero_point", "bits", "qmin",
    "qmax"}`` (``input`` is the node whose output it quantizes).  Layers: ``{"kind": "conv" |
    "linear", "module", "w_bits", "w_scale": [...], "has_bias"}``.
    """
    out: dict[str, dict[str, Any]] = {}
    for node in gm.graph.nodes:
        mod = _module(gm, node)
        if isinstance(mod, FakeQuantAct):
            src = node.args[0]
            out[node.name] = {
                "kind": "act", "module": node.target,
                "input": src.name if isinstance(src, fx.Node) else None,
                "scale": float(mod.scale), "zero_point": int(mod.zero_point),
                "bits": mod.bits, "qmin": mod.qmin, "qmax": mod.qmax,
            }
        elif isinstance(mod, QuantWeight):
            out[node.name] = {
                "kind": "conv" if isinstance(mod, nn.Conv2d) else "linear",
                "module": node.target, "w_bits": mod.w_bits,
                "w_scale": [float(s) for s in mod.w_scale], "has_bias": mod.bias is not None,
            }
    return out
