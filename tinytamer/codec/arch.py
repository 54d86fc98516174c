"""Architecture as data: describe a module tree as JSON and build it back, without pickle.

A compressed model's architecture is not the one its constructor makes: channel
pruning shrinks layers, low-rank replaces a conv by two.  So we record the tree
*as it now is*: for every module its class (import path), its plain attributes
(ints, floats, strings, tuples...), its children and the shapes of its
parameters and buffers.  ``build`` recreates the tree with ``cls.__new__`` plus
``nn.Module.__init__`` - no constructor runs, no code from the file runs - and
only classes under an allow-list of module prefixes (``torch.nn``, ``tinytamer``
and whatever the caller adds, e.g. the user's model package) can be named.
A description is untrusted data: ``build`` checks every entry (keys, names, value
forms, nesting, shapes against the file's own tensors) before it allocates, holds
every module to what a forward pass may allocate (:mod:`tinytamer.codec.limits`), and
raises :class:`CodecError` naming the module.  Weights are then loaded by the
caller (codec, run directory) from safetensors.
"""

from __future__ import annotations

import importlib
import inspect
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torch.nn.utils.parametrize import is_parametrized

from tinytamer.codec import limits
from tinytamer.errors import CodecError, ModelError

FORMAT = 1
DEFAULT_ALLOW = ("torch.nn.", "tinytamer.")
# Keys nn.Module.__init__ creates itself (hooks, registries); never recorded.
_MODULE_INTERNALS = frozenset(nn.Module().__dict__) - {"training"}
# Bounds on what a description may ask for; ``describe`` refuses models beyond them, so
# every file this tinytamer writes reads back.  Real models nest modules < 10 deep and
# attribute values (tuples of tuples) 2-3 deep; the limits keep the recursion far from
# Python's own limit, whatever a file says.
MAX_DEPTH = 64
MAX_VALUE_DEPTH = 32
MAX_DIMS = 32  # of one tensor
# ``build`` without the file's own tensor shapes to hold the declared ones to may allocate
# at most this many elements in all: 1 GiB of float32, above any model this tool targets,
# far below what a doctored shape such as [1000000000, 4] asks for.
MAX_ELEMENTS = 1 << 28
_MODULE_FIELDS = frozenset({"class", "attrs", "params", "buffers", "children"})
_VALUE_TAGS = ("__tuple__", "__dict__", "__float__", "__dtype__", "__set__")
_ABSENT = object()

# What the caller knows of the file's own tensors: state-dict name -> (shape, dtype).
TensorSpecs = Mapping[str, tuple[Sequence[int], torch.dtype]]


def _encode(value: Any, where: str, depth: int = 0) -> Any:
    if depth > MAX_VALUE_DEPTH:
        raise ModelError(f"cannot record {where}: its value nests deeper than {MAX_VALUE_DEPTH} levels")
    depth += 1
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else {"__float__": repr(value)}
    if isinstance(value, tuple):
        return {"__tuple__": [_encode(v, where, depth) for v in value]}
    if isinstance(value, list):
        return [_encode(v, where, depth) for v in value]
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return {"__dict__": {k: _encode(v, where, depth) for k, v in value.items()}}
    if isinstance(value, torch.dtype):
        return {"__dtype__": str(value).removeprefix("torch.")}
    if isinstance(value, (set, frozenset)):
        return {"__set__": [_encode(v, where, depth) for v in sorted(value, key=repr)]}
    raise ModelError(
        f"cannot record {where} (a {type(value).__name__}): only plain values (numbers, "
        "strings, tuples, lists, dicts, dtypes) can be saved as architecture"
    )


def _dtype(name: Any, where: str) -> torch.dtype:
    dtype = getattr(torch, name, None) if isinstance(name, str) and name.isidentifier() else None
    if not isinstance(dtype, torch.dtype):
        raise CodecError(f"{where}: unknown dtype {name!r}")
    return dtype


def _decode(value: Any, where: str, depth: int = 0) -> Any:
    if depth > MAX_VALUE_DEPTH:
        raise CodecError(f"{where}: the value nests deeper than {MAX_VALUE_DEPTH} levels")
    depth += 1
    if isinstance(value, list):
        return [_decode(v, where, depth) for v in value]
    if not isinstance(value, dict):
        return value  # JSON scalars: null, bool, int, float, str
    if len(value) != 1 or next(iter(value)) not in _VALUE_TAGS:
        raise CodecError(
            f"{where}: unknown value encoding {sorted(value)[:5]} (one of {', '.join(_VALUE_TAGS)} expected)"
        )
    tag, inner = next(iter(value.items()))
    wanted = {"__tuple__": list, "__set__": list, "__dict__": dict, "__float__": str, "__dtype__": str}[tag]
    if not isinstance(inner, wanted):
        raise CodecError(f"{where}: {tag} holds a {type(inner).__name__}, not a {wanted.__name__}")
    if tag == "__tuple__":
        return tuple(_decode(v, where, depth) for v in inner)
    if tag == "__dict__":
        return {k: _decode(v, where, depth) for k, v in inner.items()}
    if tag == "__dtype__":
        return _dtype(inner, where)
    if tag == "__float__":
        try:
            return float(inner)
        except ValueError:
            raise CodecError(f"{where}: __float__ {inner[:40]!r} is not a number") from None
    try:
        return {_decode(v, where, depth) for v in inner}
    except TypeError as exc:  # an unhashable member (a list)
        raise CodecError(f"{where}: __set__ holds {exc}") from None


def _tensor_spec(t: torch.Tensor | None) -> dict[str, Any] | None:
    if t is None:
        return None
    return {
        "shape": list(t.shape),
        "dtype": str(t.dtype).removeprefix("torch."),
        "requires_grad": bool(t.requires_grad),
    }


def _describe(module: nn.Module, path: str, depth: int = 0) -> dict[str, Any]:
    where = path or "<root>"
    cls = type(module)
    if depth > MAX_DEPTH:
        raise ModelError(f"module '{where}' is nested deeper than {MAX_DEPTH} levels; it cannot be recorded")
    if isinstance(module, torch.fx.GraphModule):
        raise ModelError(f"module '{where}' is a torch.fx GraphModule; describe its source module instead")
    hooks = [h for h in ("_forward_hooks", "_forward_pre_hooks") if getattr(module, h)]
    if hooks or is_parametrized(module):
        raise ModelError(
            f"module '{where}' carries forward hooks or parametrizations (e.g. pruning masks or "
            "weight sharing still in training form): make them permanent before saving"
        )
    attrs = {
        k: _encode(v, f"attribute '{k}' of module '{where}'")
        for k, v in module.__dict__.items()
        if k not in _MODULE_INTERNALS and not k.startswith("_forward")
    }
    non_persistent = sorted(module._non_persistent_buffers_set)
    return {
        "class": f"{cls.__module__}:{cls.__qualname__}",
        "attrs": attrs,
        "params": {k: _tensor_spec(p) for k, p in module._parameters.items()},
        "buffers": {k: _tensor_spec(b) for k, b in module._buffers.items()},
        "non_persistent": {k: module._buffers[k].tolist() for k in non_persistent if module._buffers[k] is not None},
        "children": {
            k: (_describe(c, f"{path}.{k}" if path else k, depth + 1) if c is not None else None)
            for k, c in module._modules.items()
        },
    }


def describe(model: nn.Module) -> dict[str, Any]:
    """A JSON-able description of ``model``'s module tree (no weights, only their shapes)."""
    return {"format": FORMAT, "root": _describe(model, "")}


def _resolve(class_path: Any, allow: Iterable[str]) -> type[nn.Module]:
    if not isinstance(class_path, str):
        raise CodecError(f"its class is of type {type(class_path).__name__}, not a 'module:Class' string")
    modname, _, qualname = class_path.partition(":")
    # Only plain dotted names: no dunder hops (``__globals__``) and no relative imports.
    parts = modname.split(".") + qualname.split(".")
    if not all(p.isidentifier() and not p.startswith("__") for p in parts):
        raise CodecError(f"names class {class_path[:80]!r}, which is not a 'package.module:Class' path")
    if not any(f"{modname}.".startswith(p) or modname == p.rstrip(".") for p in allow):
        raise CodecError(
            f"names class '{class_path}', which is outside the allowed module "
            f"prefixes {list(allow)}; refusing to import it"
        )
    try:
        obj: Any = importlib.import_module(modname)
        for part in qualname.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise CodecError(f"names class '{class_path}', which cannot be found: {exc}") from None
    if not (isinstance(obj, type) and issubclass(obj, nn.Module)):
        raise CodecError(f"names '{class_path}', which is not an nn.Module class")
    return obj


class _Context:
    """What one ``build`` checks against: allowed prefixes, the file's tensors, the element budget."""

    def __init__(self, allow: tuple[str, ...], tensors: TensorSpecs | None) -> None:
        self.allow = allow
        self.tensors = tensors
        self.budget = MAX_ELEMENTS
        self.growth = limits.Growth()


def _fields(desc: dict[str, Any], key: str) -> dict[str, Any]:
    value = desc.get(key, {})
    if not isinstance(value, dict):
        raise CodecError(f"'{key}' is of type {type(value).__name__}, not an object")
    for name in value:
        # Attributes are Python identifiers; tensors and children may be any name nn.Module
        # registers ("0" in a Sequential) but no dotted one (state-dict keys); none a dunder.
        plain = (
            isinstance(name, str)
            and not name.startswith("__")
            and (name.isidentifier() if key == "attrs" else (name != "" and "." not in name))
        )
        if not plain:
            raise CodecError(f"'{key}' holds the name {str(name)[:40]!r}, which is not a plain name")
    return value


def _check_attr(cls: type, name: str, value: Any) -> None:
    if name in _MODULE_INTERNALS:
        raise CodecError(f"attribute '{name}' is nn.Module's own bookkeeping and cannot be set by a file")
    # Data may not stand in for behaviour: an instance attribute named like a method or a
    # property of the class would replace it (``forward`` included).
    found = inspect.getattr_static(cls, name, _ABSENT)
    if found is not _ABSENT and (callable(found) or hasattr(type(found), "__get__")):
        raise CodecError(f"attribute '{name}' would replace a method or property of {cls.__qualname__}")
    if name == "training" and not isinstance(value, bool):
        raise CodecError(f"attribute 'training' is {value!r}, not true or false")


def _spec(spec: Any, name: str) -> tuple[list[int], torch.dtype, bool]:
    if not isinstance(spec, dict) or set(spec) != {"shape", "dtype", "requires_grad"}:
        raise CodecError(f"tensor '{name}': spec must be an object with shape, dtype and requires_grad")
    shape = spec["shape"]
    # bool is an int to Python; a shape entry of `true` is a doctored file, not a 1.
    if not isinstance(shape, list) or len(shape) > MAX_DIMS or not all(type(s) is int and s >= 0 for s in shape):
        raise CodecError(
            f"tensor '{name}': shape {str(shape)[:60]} is not a list of at most {MAX_DIMS} non-negative integers"
        )
    dtype = _dtype(spec["dtype"], f"tensor '{name}'")
    if not isinstance(spec["requires_grad"], bool):
        raise CodecError(f"tensor '{name}': requires_grad is {spec['requires_grad']!r}, not true or false")
    return shape, dtype, spec["requires_grad"]


def _empty(ctx: _Context, spec: Any, name: str) -> tuple[torch.Tensor, bool]:
    """An uninitialized tensor as declared, after holding the declaration to the file's own tensor."""
    shape, dtype, requires_grad = _spec(spec, name)
    if ctx.tensors is not None:
        held = ctx.tensors.get(name)
        if held is None:
            raise CodecError(f"tensor '{name}' is declared by the architecture but the file holds no such tensor")
        if list(held[0]) != shape or held[1] != dtype:
            raise CodecError(
                f"tensor '{name}' is declared {str(dtype).removeprefix('torch.')} {shape} "
                f"by the architecture, but the file holds "
                f"{str(held[1]).removeprefix('torch.')} {list(held[0])}"
            )
    else:
        ctx.budget -= math.prod(shape)
        if ctx.budget < 0:
            raise CodecError(f"tensor '{name}': the architecture declares more than {MAX_ELEMENTS} elements in all")
    return torch.empty(shape, dtype=dtype), requires_grad


def _values(spec: Any, values: Any, name: str) -> torch.Tensor:
    """A non-persistent buffer from the values recorded in the description itself."""
    shape, dtype, _ = _spec(spec, name)
    try:
        t = torch.tensor(values, dtype=dtype)
    except (TypeError, ValueError, RuntimeError, OverflowError) as exc:
        raise CodecError(f"buffer '{name}': its recorded values are not a {shape} array ({exc})") from None
    if list(t.shape) != shape:
        raise CodecError(f"buffer '{name}': {list(t.shape)} values recorded for shape {shape}")
    return t


def _build(desc: Any, ctx: _Context, path: str, depth: int) -> nn.Module:
    where = path or "<root>"
    if depth > MAX_DEPTH:
        raise CodecError(
            f"architecture entry for module '{where[:60]}...': modules nest deeper than {MAX_DEPTH} levels"
        )
    try:
        if not isinstance(desc, dict):
            raise CodecError(f"is of type {type(desc).__name__}, not an object")
        if not _MODULE_FIELDS <= desc.keys() or not desc.keys() <= _MODULE_FIELDS | {"non_persistent"}:
            raise CodecError(
                f"has keys {sorted(desc)[:8]}; expected {sorted(_MODULE_FIELDS)} and optionally non_persistent"
            )
        cls = _resolve(desc["class"], ctx.allow)
        attrs, params, buffers, children, non_persistent = (
            _fields(desc, k) for k in ("attrs", "params", "buffers", "children", "non_persistent")
        )
        names = [*attrs, *params, *buffers, *children]
        if len(set(names)) != len(names):
            clash = sorted({n for n in names if names.count(n) > 1})
            raise CodecError(f"uses the names {clash} for more than one attribute, tensor or child")
        if not non_persistent.keys() <= {k for k, v in buffers.items() if v is not None}:
            raise CodecError(
                f"records values of {sorted(non_persistent.keys() - buffers.keys())} that are not among its buffers"
            )
        # Every constant the class's forward relies on must be there (catches a class swapped
        # for another whose attributes it does not have).
        missing = [
            c
            for c in getattr(cls, "__constants__", ())
            if c not in names and inspect.getattr_static(cls, c, _ABSENT) is _ABSENT
        ]
        if missing:
            raise CodecError(f"is a {cls.__qualname__} without its attributes {missing}")
        try:
            module = cls.__new__(cls)
        except TypeError as exc:
            raise CodecError(f"class {cls.__qualname__} cannot be created without arguments: {exc}") from None
        nn.Module.__init__(module)
        for k, v in attrs.items():
            value = _decode(v, f"attribute '{k}'")
            _check_attr(cls, k, value)
            object.__setattr__(module, k, value)
        prefix = f"{path}." if path else ""
        for k, spec in params.items():
            if spec is None:
                module._parameters[k] = None
                continue
            t, requires_grad = _empty(ctx, spec, prefix + k)
            if requires_grad and not (t.is_floating_point() or t.is_complex()):
                raise CodecError(f"parameter '{prefix + k}' of dtype {t.dtype} cannot require gradients")
            module._parameters[k] = nn.Parameter(t, requires_grad=requires_grad)
        for k, spec in buffers.items():
            if k in non_persistent:
                module._buffers[k] = _values(spec, non_persistent[k], prefix + k)
                module._non_persistent_buffers_set.add(k)
            else:
                module._buffers[k] = None if spec is None else _empty(ctx, spec, prefix + k)[0]
    except CodecError as exc:
        raise CodecError(f"architecture entry for module '{where}': {exc}") from None
    for k, child in children.items():
        module._modules[k] = None if child is None else _build(child, ctx, prefix + k, depth + 1)
    # A class that interprets its own recorded data (the quantized graph) checks it now,
    # before anything can run; then every module is held to what a forward pass may allocate.
    check = getattr(cls, "validate_loaded", None)
    try:
        if check is not None:
            check(module)
        limits.check_module(module, ctx.growth)
    except CodecError as exc:
        raise CodecError(f"architecture entry for module '{where}': {exc}") from None
    return module


def build(desc: Any, allow: Iterable[str] = (), tensors: TensorSpecs | None = None) -> nn.Module:
    """Rebuild the module tree ``describe`` recorded; parameters are uninitialized (load them next).

    ``tensors`` (state-dict name -> shape and dtype) are the tensors the file really holds:
    every declared parameter and persistent buffer must be one of them, of that shape and
    dtype, so a description cannot make this allocate more than the file's own tensors.
    Without it the declared tensors may hold at most :data:`MAX_ELEMENTS` elements.
    Every defect of the description raises :class:`CodecError` naming the module.
    """
    if not isinstance(desc, dict) or desc.get("format") != FORMAT or "root" not in desc:
        found = desc.get("format") if isinstance(desc, dict) else None
        raise CodecError(f"architecture description has format {found!r}; this tinytamer reads format {FORMAT}")
    return _build(desc["root"], _Context(tuple(DEFAULT_ALLOW) + tuple(allow), tensors), "", 0)
