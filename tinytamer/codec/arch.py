"""Architecture as data: describe a module tree as JSON and build it back, without pickle.

A compressed model's architecture is not the one its constructor makes: channel
pruning shrinks layers, low-rank replaces a conv by two.  So we record the tree
*as it now is*: for every module its class (import path), its plain attributes
(ints, floats, strings, tuples...), its children and the shapes of its
parameters and buffers.  ``build`` recreates the tree with ``cls.__new__`` plus
``nn.Module.__init__`` - no constructor runs, no code from the file runs - and
only classes under an allow-list of module prefixes (``torch.nn``, ``tinytamer``
and whatever the caller adds, e.g. the user's model package) can be named.
Weights are then loaded by the caller (codec, run directory) from safetensors.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from tinytamer.errors import CodecError, ModelError

FORMAT = 1
DEFAULT_ALLOW = ("torch.nn.", "tinytamer.")
# Keys nn.Module.__init__ creates itself (hooks, registries); never recorded.
_MODULE_INTERNALS = frozenset(nn.Module().__dict__) - {"training"}


def _encode(value: Any, where: str) -> Any:
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else {"__float__": repr(value)}
    if isinstance(value, tuple):
        return {"__tuple__": [_encode(v, where) for v in value]}
    if isinstance(value, list):
        return [_encode(v, where) for v in value]
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return {"__dict__": {k: _encode(v, where) for k, v in value.items()}}
    if isinstance(value, torch.dtype):
        return {"__dtype__": str(value).removeprefix("torch.")}
    if isinstance(value, (set, frozenset)):
        return {"__set__": [_encode(v, where) for v in sorted(value, key=repr)]}
    raise ModelError(
        f"cannot record {where} (a {type(value).__name__}): only plain values (numbers, "
        "strings, tuples, lists, dicts, dtypes) can be saved as architecture"
    )


def _decode(value: Any) -> Any:
    if isinstance(value, list):
        return [_decode(v) for v in value]
    if isinstance(value, dict):
        if "__tuple__" in value:
            return tuple(_decode(v) for v in value["__tuple__"])
        if "__dict__" in value:
            return {k: _decode(v) for k, v in value["__dict__"].items()}
        if "__float__" in value:
            return float(value["__float__"])
        if "__dtype__" in value:
            dtype = getattr(torch, str(value["__dtype__"]), None)
            if not isinstance(dtype, torch.dtype):
                raise CodecError(f"unknown dtype '{value['__dtype__']}' in architecture")
            return dtype
        if "__set__" in value:
            return {_decode(v) for v in value["__set__"]}
        raise CodecError(f"unknown value encoding in architecture: {sorted(value)}")
    return value


def _tensor_spec(t: torch.Tensor | None) -> dict[str, Any] | None:
    if t is None:
        return None
    return {"shape": list(t.shape), "dtype": str(t.dtype).removeprefix("torch."),
            "requires_grad": bool(t.requires_grad)}


def _describe(module: nn.Module, path: str) -> dict[str, Any]:
    where = path or "<root>"
    cls = type(module)
    if isinstance(module, torch.fx.GraphModule):
        raise ModelError(f"module '{where}' is a torch.fx GraphModule; describe its source module instead")
    hooks = [h for h in ("_forward_hooks", "_forward_pre_hooks") if getattr(module, h)]
    if hooks or cls.__name__.startswith("Parametrized"):
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
        "non_persistent": {
            k: module._buffers[k].tolist() for k in non_persistent if module._buffers[k] is not None
        },
        "children": {
            k: (_describe(c, f"{path}.{k}" if path else k) if c is not None else None)
            for k, c in module._modules.items()
        },
    }


def describe(model: nn.Module) -> dict[str, Any]:
    """A JSON-able description of ``model``'s module tree (no weights, only their shapes)."""
    return {"format": FORMAT, "root": _describe(model, "")}


def _resolve(class_path: str, allow: Iterable[str]) -> type[nn.Module]:
    modname, _, qualname = class_path.partition(":")
    if not any(f"{modname}.".startswith(p) or modname == p.rstrip(".") for p in allow):
        raise CodecError(
            f"architecture names class '{class_path}', which is outside the allowed module "
            f"prefixes {list(allow)}; refusing to import it"
        )
    try:
        obj: Any = importlib.import_module(modname)
        for part in qualname.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise CodecError(f"architecture names class '{class_path}', which cannot be found: {exc}") from None
    if not (isinstance(obj, type) and issubclass(obj, nn.Module)):
        raise CodecError(f"architecture names '{class_path}', which is not an nn.Module class")
    return obj


def _empty(spec: dict[str, Any], where: str) -> torch.Tensor:
    dtype = getattr(torch, str(spec.get("dtype")), None)
    if not isinstance(dtype, torch.dtype):
        raise CodecError(f"tensor '{where}' has unknown dtype {spec.get('dtype')!r}")
    return torch.empty([int(s) for s in spec["shape"]], dtype=dtype)


def _build(desc: dict[str, Any], allow: tuple[str, ...], path: str) -> nn.Module:
    where = path or "<root>"
    try:
        cls = _resolve(desc["class"], allow)
        module = cls.__new__(cls)
        nn.Module.__init__(module)
        for k, v in desc["attrs"].items():
            object.__setattr__(module, k, _decode(v))
        for k, spec in desc["params"].items():
            module._parameters[k] = (
                None if spec is None
                else nn.Parameter(_empty(spec, f"{where}.{k}"), requires_grad=spec["requires_grad"])
            )
        for k, spec in desc["buffers"].items():
            module._buffers[k] = None if spec is None else _empty(spec, f"{where}.{k}")
        for k, values in desc.get("non_persistent", {}).items():
            module._buffers[k] = torch.tensor(values, dtype=module._buffers[k].dtype)
            module._non_persistent_buffers_set.add(k)
        for k, child in desc["children"].items():
            module._modules[k] = (
                None if child is None else _build(child, allow, f"{path}.{k}" if path else k)
            )
    except (KeyError, TypeError) as exc:
        raise CodecError(f"architecture entry for module '{where}' is malformed: missing or bad {exc}") from None
    return module


def build(desc: dict[str, Any], allow: Iterable[str] = ()) -> nn.Module:
    """Rebuild the module tree ``describe`` recorded; parameters are uninitialized (load them next)."""
    if not isinstance(desc, dict) or desc.get("format") != FORMAT or "root" not in desc:
        found = desc.get("format") if isinstance(desc, dict) else None
        raise CodecError(f"architecture description has format {found!r}; this tinytamer reads format {FORMAT}")
    return _build(desc["root"], tuple(DEFAULT_ALLOW) + tuple(allow), "")
