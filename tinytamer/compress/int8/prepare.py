"""Preparing a float model for quantization: capture, BN folding, quantization points.

The model is traced with torch.fx; every BatchNorm that directly follows a conv /
linear is folded into it on the eval statistics (Jacob et al. 2018, Sec. 3.2, done once
here, also before QAT); the selected conv / linear layers become
:class:`~tinytamer.compress.int8.modules.QuantConv2d` / ``QuantLinear``; a
:class:`~tinytamer.compress.int8.modules.FakeQuantAct` follows the graph input, every
conv / linear (after its ReLU / ReLU6 when one directly follows), every residual add
(likewise), every average pool and every other op that makes new values; none follows
the ops that keep their input's values (max-pool, flatten, reshape, view, contiguous,
dropout, identity).
"""

from __future__ import annotations

import copy
import operator
from typing import Any

import torch
from torch import Tensor, fx, nn
from torch.fx.passes.shape_prop import ShapeProp
from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval

from tinytamer.compress.int8.modules import FakeQuantAct, QuantConv2d, QuantLinear, check_bits
from tinytamer.compress.selector import Selector, layer_params, parse, select_plain
from tinytamer.errors import ModelError, RecipeError

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


def node_module(gm: fx.GraphModule, node: fx.Node) -> nn.Module | None:
    return gm.get_submodule(node.target) if node.op == "call_module" else None


_BN_FUSERS = (
    (nn.Conv1d | nn.Conv2d | nn.Conv3d, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)),
    (nn.Linear, (nn.BatchNorm1d,)),
)


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
        bn = node_module(gm, node)
        if not isinstance(bn, nn.modules.batchnorm._BatchNorm) or not bn.track_running_stats:
            continue
        src = node.args[0]
        if not isinstance(src, fx.Node) or len(src.users) != 1 or uses.get(src.target, 0) != 1:
            continue
        layer = node_module(gm, src)
        for layer_types, bn_types in _BN_FUSERS:
            if isinstance(layer, layer_types) and isinstance(bn, bn_types):
                fuser = fuse_linear_bn_eval if isinstance(layer, nn.Linear) else fuse_conv_bn_eval
                was_training = layer.training
                fused = fuser(layer.eval(), bn.eval())
                fused.train(was_training)
                gm.set_submodule(src.target, fused)
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
_KEEP_MODULES = (
    nn.MaxPool1d,
    nn.MaxPool2d,
    nn.MaxPool3d,
    nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d,
    nn.AdaptiveMaxPool3d,
    nn.Flatten,
    nn.Identity,
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Dropout3d,
    nn.AlphaDropout,
)
_KEEP_FUNCS = {
    "max_pool1d",
    "max_pool2d",
    "max_pool3d",
    "_max_pool1d",
    "_max_pool2d",
    "_max_pool3d",
    "adaptive_max_pool1d",
    "adaptive_max_pool2d",
    "_adaptive_max_pool1d",
    "_adaptive_max_pool2d",
    "flatten",
    "reshape",
    "dropout",
    "dropout1d",
    "dropout2d",
    "identity",
}
_KEEP_METHODS = {"view", "reshape", "flatten", "contiguous"}
_ADD_FUNCS = {operator.add, operator.iadd, torch.add}
_LAYER_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


def _fname(target: Any) -> str:
    return getattr(target, "__name__", str(target))


def _is_relu(gm: fx.GraphModule, node: fx.Node) -> bool:
    if node.op == "call_module":
        return isinstance(node_module(gm, node), _RELU_MODULES)
    if node.op in ("call_function", "call_method"):
        return _fname(node.target) in _RELU_FUNCS
    return False


def _keeps_scale(gm: fx.GraphModule, node: fx.Node) -> bool:
    if node.op == "call_module":
        return isinstance(node_module(gm, node), _KEEP_MODULES)
    if node.op == "call_function":
        return _fname(node.target) in _KEEP_FUNCS
    if node.op == "call_method":
        return node.target in _KEEP_METHODS
    return False


def _is_producer(gm: fx.GraphModule, node: fx.Node) -> bool:
    """Conv / linear / residual add: the ops whose ReLU is fused into them."""
    if node.op == "call_module":
        return isinstance(node_module(gm, node), _LAYER_TYPES)
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
    their ranges.  Per-layer ``{"bits": n, "act_bits": n, "per_channel": false}`` come from
    ``select.overrides`` (``per_channel: false``: one weight scale for the layer, see
    :func:`tinytamer.qgraph.weight_scale`).
    """
    sel = parse(select)
    check_bits(weight_bits, "weight_bits")
    check_bits(act_bits, "act_bits")
    gm = fuse_bn(model)
    was_training = gm.training
    gm.eval()
    with torch.no_grad():
        try:
            ShapeProp(gm).propagate(example_input)
        except Exception as exc:
            raise ModelError(
                f"the example input of shape {tuple(example_input.shape)} does not "
                f"run through {type(model).__name__}: {exc}"
            ) from exc

    defaults = {"bits": weight_bits, "act_bits": act_bits, "per_channel": True}
    _check_overrides(sel, defaults)
    for name, layer in select_plain(gm, sel, "int8 quantization"):
        params = layer_params(sel, name, defaults)
        bits = check_bits(params["bits"], f"layer '{name}' bits")
        per_channel = params["per_channel"]
        if not isinstance(per_channel, bool):
            raise RecipeError(f"layer '{name}' per_channel: must be true or false, got {per_channel!r}")
        qcls = QuantConv2d if isinstance(layer, nn.Conv2d) else QuantLinear
        gm.set_submodule(name, qcls.from_float(layer, bits, per_channel))

    for after, owner in _quant_points(gm):
        owner_name = _owner_name(owner)
        bits = layer_params(sel, owner_name, defaults)["act_bits"]
        fq = FakeQuantAct(check_bits(bits, f"activation of '{owner_name}' act_bits"), _mode)
        fq_name = _unique_name(gm, "aq_" + owner_name.replace(".", "_"))
        gm.add_submodule(fq_name, fq)
        with gm.graph.inserting_after(after):
            fq_node = gm.graph.call_module(fq_name, (after,))
        after.replace_all_uses_with(fq_node, delete_user_cb=lambda user, n=fq_node: user is not n)
    gm.graph.lint()
    gm.recompile()
    gm.train(was_training)
    return gm


def _check_overrides(sel: Selector, defaults: dict[str, object]) -> None:
    """A per-layer key int8 quantization does not know is a mistake, not something to ignore."""
    for pattern, values in sel.overrides.items():
        unknown = sorted(set(values) - set(defaults))
        if unknown:
            raise RecipeError(
                f"select.overrides['{pattern}']: unknown key(s) {unknown} for int8 quantization; "
                f"known: {sorted(defaults)}"
            )


def _unique_name(gm: nn.Module, base: str) -> str:
    name, i = base, 1
    while hasattr(gm, name):
        name, i = f"{base}_{i}", i + 1
    return name


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
    gm = prepare(model, example_input, select=select, weight_bits=weight_bits, act_bits=act_bits, _mode="qat")
    return gm.train(model.training)
