"""The quantized graph: an int8 / mixed-bit model described as data over a closed table of ops.

``tinytamer.compress.int8`` writes it; export (QDQ ONNX), the targets and the micro
lowering read it.  It has two parts:

- the quantization points, recognised by class: :class:`ActQuant` (a per-tensor
  activation quantizer: ``scale``, ``zero_point``, ``bits``, ``qmin``, ``qmax``) and
  :class:`QuantWeight` (a conv / linear with per-output-channel symmetric weights:
  ``w_scale``, ``w_bits``, :meth:`QuantWeight.int_weight`), with the arithmetic they
  share (:func:`fake_quant`, :func:`weight_scale`);
- :class:`QuantizedGraph`: the converted ``torch.fx`` graph as a list of plain records
  whose operations are keys of :data:`OPS`, a closed table.  A checkpoint or ``.tt``
  stores the records as architecture data.  They are validated when the file is loaded
  (``tinytamer.codec.arch`` calls :meth:`QuantizedGraph.validate_loaded`) and again
  before every forward pass and every rebuild of the fx graph.

Nothing read from a file is imported, looked up with ``getattr`` or called by name: an
operation is found in :data:`OPS`, a module among the graph's children (through
``_modules``), a tensor among their parameters and buffers; arguments are numbers,
booleans, strings from a fixed set, dtypes from a fixed list, slices and references to
earlier nodes.
"""

from __future__ import annotations

import keyword
import operator
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn

from tinytamer.errors import CodecError, ModelError, TamerError

# ----------------------------------------------------------------------------- quantization points


def fake_quant(x: Tensor, scale: Tensor, zero_point: Tensor, qmin: int, qmax: int) -> Tensor:
    """``(clamp(round(x / scale) + zp, qmin, qmax) - zp) * scale``, with a clipped STE gradient.

    ``scale`` / ``zero_point`` broadcast against ``x`` (a scalar, or one per channel).  The
    gradient is the straight-through estimator: 1 where ``x`` falls inside the clamp range,
    0 outside.  Plain tensor ops only, so the graph exports with torch.export / ONNX.
    """
    zp = zero_point.to(x.dtype)
    q = torch.round(x / scale) + zp
    out = (q.clamp(qmin, qmax) - zp) * scale
    if torch.is_grad_enabled() and x.requires_grad:
        # Adds exactly 0 to the value; only carries the gradient.
        inside = ((q >= qmin) & (q <= qmax)).to(x.dtype)
        out = out.detach() + (x - x.detach()) * inside
    return out


def weight_scale(w: Tensor, bits: int, per_channel: bool = True) -> Tensor:
    """Symmetric per-output-channel scale ``max|w_c| / (2^(bits-1) - 1)`` (all-zero channels: 1).

    ``per_channel=False``: every channel gets the layer's scale ``max|w| / (2^(bits-1) - 1)``
    (one grid for the layer: a k-means-shared layer's centroids then map to one set of
    integers, one codebook on the device instead of one per class of channel scales)."""
    amax = w.detach().abs().flatten(1).amax(dim=1)
    if not per_channel:
        amax = amax.amax().expand_as(amax)
    scale = amax / (2 ** (bits - 1) - 1)
    return torch.where(amax > 0, scale, torch.ones_like(scale)).float()


class QuantWeight:
    """Per-channel symmetric fake-quantized weight of a quantized conv / linear (a mixin).

    In training mode (QAT) the scale follows the weight at every step; in eval
    mode the frozen ``w_scale`` buffer is used, so the exported numbers are the
    ones the module computes with.
    """

    weight: nn.Parameter
    w_scale: Tensor
    w_bits: int
    training: bool
    # False: one scale for the whole layer (``weight_scale``); a class default, so that files
    # written before the attribute existed load as the per-channel layers they were.
    w_per_channel: bool = True

    def _init_quant(self, bits: int, per_channel: bool = True) -> None:
        self.w_bits = bits
        self.w_per_channel = per_channel
        self.register_buffer("w_scale", weight_scale(self.weight, bits, per_channel))  # type: ignore[attr-defined]

    @property
    def w_qmax(self) -> int:
        return 2 ** (self.w_bits - 1) - 1

    def refresh_scale(self) -> None:
        """Set ``w_scale`` from the current weights."""
        self.w_scale.copy_(weight_scale(self.weight, self.w_bits, self.w_per_channel))

    def quant_weight(self) -> Tensor:
        if self.training:
            self.refresh_scale()
        shape = (-1,) + (1,) * (self.weight.dim() - 1)
        scale = self.w_scale.view(shape)
        return fake_quant(self.weight, scale, torch.zeros_like(scale), -self.w_qmax, self.w_qmax)

    def int_weight(self) -> Tensor:
        """The integer weights ``clamp(round(w / s), -qmax, qmax)`` as an int8 tensor."""
        shape = (-1,) + (1,) * (self.weight.dim() - 1)
        q = torch.round(self.weight.detach() / self.w_scale.view(shape))
        return q.clamp(-self.w_qmax, self.w_qmax).to(torch.int8)


def one_scale_layers(model: nn.Module) -> list[str]:
    """The quantized layers of ``model`` with one weight scale for the layer (``per_channel:
    false``), by name."""
    return sorted(n for n, m in model.named_modules() if isinstance(m, QuantWeight) and m.w_per_channel is False)


class ActQuant(nn.Module):
    """Base of every per-tensor activation quantization point of a quantized graph.

    A subclass (``tinytamer.compress.int8.FakeQuantAct``) holds buffers ``scale`` and
    ``zero_point`` and the ints ``bits``, ``qmin`` and ``qmax``; its ``mode`` is
    ``"quant"`` once they are frozen.  Readers recognise a quantization point by this
    class, never by a class name.
    """

    scale: Tensor
    zero_point: Tensor
    bits: int
    qmin: int
    qmax: int
    mode: str


# ----------------------------------------------------------------------------- the table of ops

# Argument kinds (see _KINDS):
#   ref       a reference to an earlier node        refs      a list of refs
#   int       an int or a ref (sizes are computed)   num       an int, a float or a ref
#   ints      an int / ref or a list of them         opt_ints  None, or ints that may hold None
#   bool      a bool                                 index     what `x[...]` takes
#   dtype     None or a dtype of _DTYPES             pad_mode  one of _PAD_MODES
#   bool?     None or a bool                         upsample_mode  one of _UPSAMPLE_MODES
#   value     a module call's argument: ref, number, bool, None or a list of them
# A parameter named "*name" takes any number of further positional arguments.


@dataclass(frozen=True)
class Op:
    """One operation a quantized graph may hold: how fx spells it and what it accepts."""

    kind: str  # "call_function" or "call_method"
    target: Any  # the fx target: the function, or the name of the Tensor method
    call: Callable[..., Any]  # what the graph calls
    params: tuple[tuple[str, str], ...]  # (name, argument kind), in call order
    required: int = 1  # how many leading params must be given
    attr: str | None = None  # set for `getattr(x, attr)`: fx target getattr, args (x, attr)


def _function(fn: Callable[..., Any], params: str, required: int = 1) -> Op:
    return Op("call_function", fn, fn, _params(params), required)


def _arith(fn: Callable[[Any, Any], Any]) -> Op:
    return Op("call_function", fn, _int64(fn), _params("a:num b:num"), 2)


def _method(name: str, params: str, required: int = 1) -> Op:
    # The method is looked up here, from this table's own constants, never from a file.
    return Op("call_method", name, getattr(torch.Tensor, name), _params("self:ref " + params), required)


def _params(spec: str) -> tuple[tuple[str, str], ...]:
    return tuple((p.split(":")[0], p.split(":")[1]) for p in spec.split())


def _int64(fn: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
    """``fn`` on sizes, refusing a Python int result outside int64 (a chain of products of
    sizes read from a file could otherwise grow without bound)."""

    def call(a: Any, b: Any) -> Any:
        out = fn(a, b)
        if isinstance(out, int) and not _I64[0] <= out <= _I64[1]:
            raise ModelError(f"quantized graph: {fn.__name__} gives an integer outside int64")
        return out

    return call


_POOL = "kernel_size:ints stride:opt_ints padding:ints"
_SOFTMAX = "dim:int? _stacklevel:int dtype:dtype"

OPS: dict[str, Op] = {
    # Arithmetic: residual adds, and the sizes that reshapes compute (x.size(0), c // g).
    "operator.add": _arith(operator.add),
    "operator.iadd": _arith(operator.iadd),
    "operator.mul": _arith(operator.mul),
    "operator.floordiv": _arith(operator.floordiv),
    "operator.getitem": _function(operator.getitem, "a:ref index:index", 2),
    "torch.add": _function(torch.add, "input:ref other:num alpha:num", 2),
    "Tensor.shape": Op("call_function", getattr, operator.attrgetter("shape"), _params("input:ref"), 1, attr="shape"),
    # Activations (ReLU / ReLU6 fuse into their producer on the device).
    "torch.relu": _function(torch.relu, "input:ref"),
    "torch.relu_": _function(torch.relu_, "input:ref"),
    "torch.sigmoid": _function(torch.sigmoid, "input:ref"),
    "F.relu": _function(F.relu, "input:ref inplace:bool"),
    "F.relu6": _function(F.relu6, "input:ref inplace:bool"),
    "F.hardtanh": _function(F.hardtanh, "input:ref min_val:num max_val:num inplace:bool"),
    # Pooling, means, softmax.
    "F.max_pool2d": _function(F.max_pool2d, f"input:ref {_POOL} dilation:ints ceil_mode:bool return_indices:bool", 2),
    "F.avg_pool2d": _function(
        F.avg_pool2d, f"input:ref {_POOL} ceil_mode:bool count_include_pad:bool divisor_override:int?", 2
    ),
    "F.adaptive_avg_pool2d": _function(F.adaptive_avg_pool2d, "input:ref output_size:opt_ints", 2),
    "F.adaptive_max_pool2d": _function(F.adaptive_max_pool2d, "input:ref output_size:opt_ints return_indices:bool", 2),
    "torch.mean": _function(torch.mean, "input:ref dim:opt_ints keepdim:bool dtype:dtype"),
    "torch.softmax": _function(torch.softmax, "input:ref dim:int dtype:dtype", 2),
    "F.softmax": _function(F.softmax, f"input:ref {_SOFTMAX}"),
    "F.log_softmax": _function(F.log_softmax, f"input:ref {_SOFTMAX}"),
    # Shape and layout: flatten, reshape, channel concat / split / shuffle, padding.
    "torch.flatten": _function(torch.flatten, "input:ref start_dim:int end_dim:int"),
    "torch.reshape": _function(torch.reshape, "input:ref shape:ints", 2),
    "torch.cat": _function(torch.cat, "tensors:refs dim:int"),
    "F.pad": _function(F.pad, "input:ref pad:ints mode:pad_mode value:num?", 2),
    # Nearest upsampling (a detector's FPN neck).
    "F.interpolate": _function(
        F.interpolate,
        "input:ref size:opt_ints scale_factor:num? mode:upsample_mode align_corners:bool? "
        "recompute_scale_factor:bool? antialias:bool",
    ),
    "F.dropout": _function(F.dropout, "input:ref p:num training:bool inplace:bool"),
    "Tensor.size": _method("size", "dim:int?", 1),
    "Tensor.dim": _method("dim", ""),
    "Tensor.view": _method("view", "*shape:ints"),
    "Tensor.reshape": _method("reshape", "*shape:ints"),
    "Tensor.flatten": _method("flatten", "start_dim:int end_dim:int"),
    "Tensor.contiguous": _method("contiguous", ""),
    "Tensor.transpose": _method("transpose", "dim0:int dim1:int", 3),
    "Tensor.permute": _method("permute", "*dims:ints"),
    "Tensor.chunk": _method("chunk", "chunks:int dim:int", 2),
    "Tensor.mean": _method("mean", "dim:opt_ints keepdim:bool dtype:dtype"),
    "Tensor.softmax": _method("softmax", "dim:int dtype:dtype"),
    "Tensor.relu": _method("relu", ""),
    "Tensor.relu_": _method("relu_", ""),
    "Tensor.add": _method("add", "other:num alpha:num", 2),
    "Tensor.add_": _method("add_", "other:num alpha:num", 2),
}

# fx target -> table name, for writing a graph.
_BY_TARGET: dict[tuple[str, Any], str] = {(op.kind, op.target): name for name, op in OPS.items() if op.attr is None}
_BY_ATTR: dict[str, str] = {op.attr: name for name, op in OPS.items() if op.attr is not None}

_DTYPES: dict[str, torch.dtype] = {
    str(d).removeprefix("torch."): d
    for d in (
        torch.float32,
        torch.float16,
        torch.bfloat16,
        torch.float64,
        torch.int8,
        torch.uint8,
        torch.int16,
        torch.int32,
        torch.int64,
        torch.bool,
    )
}
_PAD_MODES = frozenset({"constant", "reflect", "replicate", "circular"})
_UPSAMPLE_MODES = frozenset({"nearest"})
_NODE_KINDS = ("placeholder", "call_module", "get_attr", "call_function", "call_method", "output")
_RECORD_KEYS = frozenset({"op", "name", "target", "args", "kwargs"})
_MAX_NODES = 100_000
_MAX_SEQ = 1024
_I64 = (-(2**63), 2**63 - 1)
# A node name: a plain identifier without a dunder (fx names a Sequential's child "_0").
# A module path: dot-separated parts, each a name without a leading underscore or an index.
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,199}")
_PART = re.compile(r"[A-Za-z0-9][A-Za-z0-9_]{0,199}")


def _plain_name(s: Any) -> bool:
    return isinstance(s, str) and _NAME.fullmatch(s) is not None and "__" not in s and not keyword.iskeyword(s)


def _is_ref(v: Any, refs: set[str]) -> bool:
    return isinstance(v, dict) and v.keys() == {"node"} and isinstance(v["node"], str) and v["node"] in refs


def _is_seq(v: Any) -> bool:
    return isinstance(v, tuple | list) and len(v) <= _MAX_SEQ


def _is_int(v: Any, refs: set[str]) -> bool:
    return (type(v) is int and _I64[0] <= v <= _I64[1]) or _is_ref(v, refs)


def _is_num(v: Any, refs: set[str]) -> bool:
    return _is_int(v, refs) or type(v) is float


def _is_ints(v: Any, refs: set[str]) -> bool:
    return _is_int(v, refs) or (_is_seq(v) and all(_is_int(x, refs) for x in v))


def _is_opt_ints(v: Any, refs: set[str]) -> bool:
    return v is None or _is_int(v, refs) or (_is_seq(v) and all(x is None or _is_int(x, refs) for x in v))


def _is_index_part(v: Any, refs: set[str]) -> bool:
    if v is None or _is_int(v, refs) or v == {"ellipsis": True}:
        return True
    return (
        isinstance(v, dict)
        and v.keys() == {"slice"}
        and isinstance(v["slice"], list | tuple)
        and len(v["slice"]) == 3
        and all(p is None or _is_int(p, refs) for p in v["slice"])
    )


def _is_index(v: Any, refs: set[str]) -> bool:
    return _is_index_part(v, refs) or (_is_seq(v) and all(_is_index_part(x, refs) for x in v))


def _is_dtype(v: Any, refs: set[str]) -> bool:
    return v is None or (
        isinstance(v, dict) and v.keys() == {"dtype"} and isinstance(v["dtype"], str) and v["dtype"] in _DTYPES
    )


def _is_scalar_value(v: Any, refs: set[str]) -> bool:
    return v is None or isinstance(v, bool) or _is_num(v, refs)


def _is_value(v: Any, refs: set[str]) -> bool:
    return _is_scalar_value(v, refs) or (_is_seq(v) and all(_is_scalar_value(x, refs) for x in v))


def _is_outputs(v: Any, refs: set[str]) -> bool:
    return v is None or _is_ref(v, refs) or (_is_seq(v) and all(x is None or _is_ref(x, refs) for x in v))


_KINDS: dict[str, Callable[[Any, set[str]], bool]] = {
    "ref": _is_ref,
    "refs": lambda v, refs: _is_seq(v) and len(v) > 0 and all(_is_ref(x, refs) for x in v),
    "int": _is_int,
    "int?": lambda v, refs: v is None or _is_int(v, refs),
    "num": _is_num,
    "num?": lambda v, refs: v is None or _is_num(v, refs),
    "ints": _is_ints,
    "opt_ints": _is_opt_ints,
    "bool": lambda v, refs: isinstance(v, bool),
    "index": _is_index,
    "dtype": _is_dtype,
    "pad_mode": lambda v, refs: isinstance(v, str) and v in _PAD_MODES,
    "bool?": lambda v, refs: v is None or isinstance(v, bool),
    "upsample_mode": lambda v, refs: isinstance(v, str) and v in _UPSAMPLE_MODES,
    "value": _is_value,
}


def _short(v: Any) -> str:
    text = repr(v)
    return text if len(text) <= 60 else text[:57] + "..."


def _check_call(op: Op, args: Any, kwargs: Any, refs: set[str]) -> str | None:
    """What is wrong with calling ``op`` with these encoded arguments, or None."""
    var = op.params[-1] if op.params and op.params[-1][0].startswith("*") else None
    fixed = op.params[:-1] if var else op.params
    if var is None and len(args) > len(fixed):
        return f"takes at most {len(fixed)} positional arguments, got {len(args)}"
    for i, a in enumerate(args):
        pname, kind = fixed[i] if i < len(fixed) else var  # type: ignore[misc]
        if not _KINDS[kind](a, refs):
            return f"argument {i} ('{pname.lstrip('*')}') is not a {kind}: {_short(a)}"
    named = dict(fixed[len(args) :])
    for k, v in kwargs.items():
        if k not in named:
            return f"unexpected keyword argument {_short(k)}"
        if not _KINDS[named[k]](v, refs):
            return f"keyword argument '{k}' is not a {named[k]}: {_short(v)}"
    missing = [p for p, _ in fixed[len(args) : op.required] if p not in kwargs]
    return f"missing argument(s) {missing}" if missing else None


def _submodule(root: nn.Module, path: Any) -> nn.Module | None:
    """The child module at a dotted path, found through ``_modules`` (never ``getattr``)."""
    if not isinstance(path, str) or not path:
        return None
    mod: Any = root
    for part in path.split("."):
        if _PART.fullmatch(part) is None or "__" in part:
            return None
        mod = mod._modules.get(part) if isinstance(mod, nn.Module) else None
    return mod if isinstance(mod, nn.Module) and mod is not root else None


def _tensor_attr(root: nn.Module, path: Any) -> Tensor | None:
    """The parameter or buffer at a dotted path, found through ``_parameters`` / ``_buffers``."""
    if not isinstance(path, str):
        return None
    owner_path, _, leaf = path.rpartition(".")
    owner = _submodule(root, owner_path) if owner_path else root
    if owner is None or _PART.fullmatch(leaf) is None or "__" in leaf:
        return None
    found = owner._parameters.get(leaf)
    return owner._buffers.get(leaf) if found is None else found


def _check_record(rec: Any, root: nn.Module, refs: set[str], last: bool) -> str | None:
    """What is wrong with one record, or None; adds its name to ``refs`` when it is valid."""
    if not isinstance(rec, dict) or rec.keys() != _RECORD_KEYS:
        return f"is not a record with keys {sorted(_RECORD_KEYS)}"
    kind, name, target, args, kwargs = (rec[k] for k in ("op", "name", "target", "args", "kwargs"))
    if kind not in _NODE_KINDS:
        return f"has unknown node kind {_short(kind)} (known: {', '.join(_NODE_KINDS)})"
    if not _plain_name(name):
        return f"has name {_short(name)}, not a plain identifier"
    if name in refs:
        return "repeats an earlier node's name"
    if not isinstance(args, tuple | list) or len(args) > _MAX_SEQ or not isinstance(kwargs, dict):
        return "has arguments that are not a list and a mapping"
    if (kind == "output") != last:
        return "is not the last node but an output" if kind == "output" else "is the last node but not the output"
    if kind == "output":
        if len(args) != 1 or kwargs or not _is_outputs(args[0], refs):
            return f"outputs {_short(args)}, not references to earlier nodes"
    elif kind == "placeholder":
        if not _plain_name(target):
            return f"is an input named {_short(target)}, not a plain identifier"
        if args or kwargs:
            return "is an input with arguments (defaults are not supported)"
    elif kind == "get_attr":
        if _tensor_attr(root, target) is None or args or kwargs:
            return f"reads {_short(target)}, not a parameter or buffer of the graph's modules"
    elif kind == "call_module":
        if _submodule(root, target) is None:
            return f"calls module {_short(target)}, which is not a submodule of the graph"
        if not all(_is_value(a, refs) for a in args) or not all(
            _plain_name(k) and _is_value(v, refs) for k, v in kwargs.items()
        ):
            return f"passes module '{target}' arguments that are not data: {_short(args)}"
    else:
        op = OPS.get(target) if isinstance(target, str) else None
        if op is None or op.kind != kind:
            return (
                f"names operation {_short(target)}, which is not in the table of "
                "quantized-graph ops (tinytamer.qgraph.OPS)"
            )
        problem = _check_call(op, args, kwargs, refs)
        if problem:
            return f"calls '{target}': {problem}"
    refs.add(name)
    return None


def validate(nodes: Any, root: nn.Module, error: type[TamerError] = CodecError) -> list[dict]:
    """Check every record of a quantized graph before any of it runs; returns the records.

    ``root`` holds the graph's modules.  Raises ``error`` naming the node and what is wrong.
    """
    if not isinstance(nodes, list) or not 1 <= len(nodes) <= _MAX_NODES:
        raise error(f"quantized graph: the node list is not a list of 1 to {_MAX_NODES} records")
    refs: set[str] = set()
    for i, rec in enumerate(nodes):
        problem = _check_record(rec, root, refs, i == len(nodes) - 1)
        if problem:
            name = rec.get("name") if isinstance(rec, dict) else None
            label = f"'{name}'" if _plain_name(name) else _short(name)
            raise error(f"quantized graph node {i} ({label}) {problem}")
    return nodes


# ----------------------------------------------------------------------------- records


def _encode(a: Any, where: str) -> Any:
    if isinstance(a, fx.Node):
        return {"node": a.name}
    if isinstance(a, tuple):
        return tuple(_encode(v, where) for v in a)
    if isinstance(a, list):
        return [_encode(v, where) for v in a]
    if isinstance(a, slice):
        return {"slice": [_encode(v, where) for v in (a.start, a.stop, a.step)]}
    if a is Ellipsis:
        return {"ellipsis": True}
    if isinstance(a, torch.dtype) and str(a).removeprefix("torch.") in _DTYPES:
        return {"dtype": str(a).removeprefix("torch.")}
    if a is None or isinstance(a, bool | int | float | str):
        return a
    raise ModelError(f"{where}: a quantized graph cannot hold an argument of type {type(a).__name__} ({_short(a)})")


def _decode(a: Any, env: dict[str, Any]) -> Any:
    """An argument from its validated record: references become the nodes' values."""
    if isinstance(a, tuple):
        return tuple(_decode(v, env) for v in a)
    if isinstance(a, list):
        return [_decode(v, env) for v in a]
    if isinstance(a, dict):
        if "node" in a:
            return env[a["node"]]
        if "slice" in a:
            return slice(*(_decode(v, env) for v in a["slice"]))
        if "ellipsis" in a:
            return Ellipsis
        return _DTYPES[a["dtype"]]
    return a


def _record(node: fx.Node) -> dict[str, Any]:
    where = f"graph node '{node.name}'"
    target: Any = node.target
    args, what = node.args, node.op
    if node.op == "call_function" and node.target is getattr:
        attr = args[1] if len(args) == 2 else None
        target = _BY_ATTR.get(attr) if isinstance(attr, str) else None
        args, what = args[:1], f"getattr(..., {_short(attr)})"
    elif node.op in ("call_function", "call_method"):
        target = _BY_TARGET.get((node.op, node.target))
        what = getattr(node.target, "__name__", str(node.target))
    if target is None:
        raise ModelError(
            f"{where}: a quantized graph cannot hold {node.op} {_short(what)}; its "
            f"operations are those of tinytamer.qgraph.OPS: {', '.join(OPS)}"
        )
    return {
        "op": node.op,
        "name": node.name,
        "target": target,
        "args": _encode(args, where),
        "kwargs": {k: _encode(v, where) for k, v in node.kwargs.items()},
    }


class QuantizedGraph(nn.Module):
    """A converted quantized GraphModule in a form that saves as plain architecture data.

    Its submodules are the GraphModule's (QuantConv2d, FakeQuantAct, ...) and its graph is
    ``nodes``, a list of records ``{"op", "name", "target", "args", "kwargs"}`` whose
    operations are keys of :data:`OPS`, so a checkpoint records it without pickle and
    rebuilds it exactly.  :meth:`graph_module` (or :func:`as_graph_module`) gives the
    ``torch.fx.GraphModule`` back, sharing the modules, for consumers that walk the graph.
    """

    def __init__(self, gm: fx.GraphModule) -> None:
        super().__init__()
        for name, child in gm.named_children():
            self.add_module(name, child)
        self.nodes = validate([_record(n) for n in gm.graph.nodes], self, ModelError)

    def validate_loaded(self) -> None:
        """Check the records read from a file (called by ``tinytamer.codec.arch``)."""
        validate(self.__dict__.get("nodes"), self)

    def graph_module(self) -> fx.GraphModule:
        graph = fx.Graph()
        env: dict[str, fx.Node] = {}
        for rec in validate(self.__dict__.get("nodes"), self):
            args = _decode(rec["args"], env)
            kwargs = {k: _decode(v, env) for k, v in rec["kwargs"].items()}
            if rec["op"] == "output":
                graph.output(args[0])
                break
            target = rec["target"]
            if rec["op"] in ("call_function", "call_method"):
                op = OPS[target]
                target = op.target
                if op.attr is not None:
                    args = (args[0], op.attr)
            env[rec["name"]] = graph.create_node(rec["op"], target, tuple(args), kwargs, name=rec["name"])
        return fx.GraphModule(self, graph)

    def forward(self, *inputs: Any) -> Any:
        # Checked again here: the records may have been changed since they were loaded.
        nodes = validate(self.__dict__.get("nodes"), self)
        n_in = sum(rec["op"] == "placeholder" for rec in nodes)
        if len(inputs) != n_in:
            raise ModelError(f"the quantized graph takes {n_in} input(s), got {len(inputs)}")
        feed = iter(inputs)
        env: dict[str, Any] = {}
        for rec in nodes:
            op, target = rec["op"], rec["target"]
            args = _decode(rec["args"], env)
            if op == "output":
                return args[0]
            kwargs = {k: _decode(v, env) for k, v in rec["kwargs"].items()}
            if op == "placeholder":
                env[rec["name"]] = next(feed)
            elif op == "call_module":
                env[rec["name"]] = _submodule(self, target)(*args, **kwargs)  # type: ignore[misc]
            elif op == "get_attr":
                env[rec["name"]] = _tensor_attr(self, target)
            else:
                env[rec["name"]] = OPS[target].call(*args, **kwargs)
        raise ModelError("quantized graph has no output node")  # validate() rules this out


def as_graph_module(model: nn.Module) -> fx.GraphModule:
    """The quantized model as a ``torch.fx.GraphModule`` (from :class:`QuantizedGraph` too)."""
    if isinstance(model, fx.GraphModule):
        return model
    if isinstance(model, QuantizedGraph):
        return model.graph_module()
    raise ModelError(f"{type(model).__name__} is not a quantized graph: run int8 quantization first")


def is_quantized(model: nn.Module) -> bool:
    """Whether ``model`` is a converted quantized graph (a QuantizedGraph, or a GraphModule
    with activation quantization points)."""
    if isinstance(model, QuantizedGraph):
        return True
    return isinstance(model, fx.GraphModule) and any(isinstance(m, ActQuant) for m in model.modules())
