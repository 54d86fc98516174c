"""Model registry: names -> factories, plus user models given by import path.

A factory is a plain function returning an ``nn.Module``.  ``create`` accepts
either a registered name (``"resnet20"``) or an import path
(``"my_pkg.models:make_net"``); both are called the same way, with only the
keyword arguments their signature accepts, so a user's own factory does not
have to take ``in_channels`` or ``input_size`` to be usable.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from tinytamer.errors import ModelError

Factory = Callable[..., nn.Module]


@dataclass(frozen=True)
class ModelInfo:
    """What a registered model is built for when the caller gives nothing else."""

    name: str
    factory: Factory
    input_shape: tuple[int, ...]
    num_classes: int


_REGISTRY: dict[str, ModelInfo] = {}


def register_model(
    name: str, *, input_shape: tuple[int, ...] = (3, 32, 32), num_classes: int = 10
) -> Callable[[Factory], Factory]:
    """Decorator: register ``factory`` under ``name``.

    ``input_shape`` (C, H, W) and ``num_classes`` record the model's natural
    input and head (what the paper used); see :func:`model_info`.
    """

    def decorate(factory: Factory) -> Factory:
        if name in _REGISTRY and _REGISTRY[name].factory is not factory:
            raise ModelError(f"model name '{name}' is already registered (by {_REGISTRY[name].factory.__module__})")
        _REGISTRY[name] = ModelInfo(name, factory, tuple(input_shape), num_classes)
        return factory

    return decorate


def list_models() -> list[str]:
    """The registered model names, sorted."""
    return sorted(_REGISTRY)


def model_info(name: str) -> ModelInfo:
    """Registry entry of ``name`` (its factory, natural input shape and class count)."""
    if name not in _REGISTRY:
        raise ModelError(f"unknown model '{name}'; known models: {', '.join(list_models())}")
    return _REGISTRY[name]


def create(name: str, *, num_classes: int = 10, in_channels: int = 3, input_size: int = 32, **kwargs: Any) -> nn.Module:
    """Build a model by registered name or by import path ``"package.module:factory"``.

    ``num_classes``, ``in_channels`` and ``input_size`` are passed only to
    factories that accept them; any other keyword must be accepted by the
    factory, else a ``ModelError`` names it (a typo in a recipe fails early).
    """
    factory = _resolve_import_path(name) if ":" in name else model_info(name).factory
    common = {"num_classes": num_classes, "in_channels": in_channels, "input_size": input_size}
    call_kwargs = _fit_kwargs(name, factory, common, kwargs)
    model = factory(**call_kwargs)
    if not isinstance(model, nn.Module):
        raise ModelError(f"model factory '{name}' returned {type(model).__name__}, not a torch.nn.Module")
    return model


def _resolve_import_path(path: str) -> Factory:
    module_name, _, attr_path = path.partition(":")
    if not module_name or not attr_path:
        raise ModelError(f"bad model import path '{path}': expected 'package.module:factory'")
    try:
        obj: Any = importlib.import_module(module_name)
    except Exception as exc:  # user code: a missing module or any error while importing it
        raise ModelError(
            f"model import path '{path}': cannot import module '{module_name}' ({type(exc).__name__}: {exc})"
        ) from exc
    for part in attr_path.split("."):
        if not hasattr(obj, part):
            raise ModelError(f"model import path '{path}': module '{module_name}' has no attribute '{attr_path}'")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ModelError(f"model import path '{path}': '{attr_path}' is not callable")
    return obj


def _fit_kwargs(name: str, factory: Factory, common: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """Keep the common arguments the factory accepts; insist it accepts every extra one."""
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):  # builtins / C callables: no signature to inspect
        return {**common, **extra}
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return {**common, **extra}
    accepted = {
        n
        for n, p in params.items()
        if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    }
    unknown = sorted(set(extra) - accepted)
    if unknown:
        raise ModelError(
            f"model '{name}' does not accept argument(s) {', '.join(unknown)}; "
            f"it accepts: {', '.join(sorted(accepted)) or 'nothing'}"
        )
    kwargs = {k: v for k, v in common.items() if k in accepted}
    kwargs.update(extra)
    missing = [
        n
        for n, p in params.items()
        if p.default is inspect.Parameter.empty
        and n not in kwargs
        and p.kind not in (inspect.Parameter.VAR_POSITIONAL,)
    ]
    if missing:
        raise ModelError(f"model factory '{name}' needs argument(s) {', '.join(missing)}")
    return kwargs
