"""The layer selector every compression and search method shares.

One small language to say which layers a method touches, so a recipe reads the
same everywhere::

    select:
      types: [Conv2d, Linear]      # module class names (subclasses match by their bases' names)
      regex: ["^layer[23]\\."]      # re.search on qualified names
      exclude: [fc]                 # exact names or regexes to leave out
      exclude_first: true           # e.g. TTQ keeps the first and last layers in float
      overrides:
        "fc.*": {bits: 5}           # per-layer parameters for the method
"""

from __future__ import annotations

import difflib
import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from torch import nn

from tinytamer.errors import CompressError, ModelError


class Selector(BaseModel):
    """Which layers a method applies to, and per-layer parameter overrides."""

    model_config = ConfigDict(extra="forbid")

    types: list[str] = Field(
        default_factory=lambda: ["Conv2d", "Linear"], description="module class names (subclasses match by their bases)"
    )
    names: list[str] = Field(default_factory=list, description="only these qualified layer names")
    regex: list[str] = Field(default_factory=list, description="only names matching a regex")
    exclude: list[str] = Field(default_factory=list, description="names or regexes to leave out")
    exclude_first: bool = Field(False, description="leave out the first selected layer")
    exclude_last: bool = Field(False, description="leave out the last selected layer")
    overrides: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="name or regex -> the method's parameters for it"
    )


def parse(selector: Selector | dict | None) -> Selector:
    """Validate a selector given as a dict (from a recipe) or pass a Selector through."""
    if selector is None:
        return Selector()
    if isinstance(selector, Selector):
        return selector
    try:
        return Selector.model_validate(selector)
    except ValidationError as exc:
        allowed = ", ".join(Selector.model_fields)
        problems = "; ".join(f"select.{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        raise CompressError(f"invalid layer selector: {problems} (allowed keys: {allowed})") from None


def _type_names(module: nn.Module) -> set[str]:
    return {cls.__name__ for cls in type(module).__mro__}


def _matches(name: str, patterns: list[str]) -> bool:
    return any(name == p or re.search(p, name) for p in patterns)


def select(model: nn.Module, selector: Selector | dict | None = None) -> list[tuple[str, nn.Module]]:
    """Return ``(qualified_name, module)`` for every layer the selector picks, in model order."""
    sel = parse(selector)
    modules = dict(model.named_modules())
    for name in sel.names:
        if name not in modules:
            close = difflib.get_close_matches(name, list(modules), n=5)
            hint = f" (did you mean: {', '.join(close)})" if close else ""
            raise ModelError(f"layer selector names '{name}', which is not a layer of the model{hint}")
    for pattern in [*sel.regex, *sel.exclude, *sel.overrides]:
        try:
            re.compile(pattern)
        except re.error as exc:
            raise CompressError(f"layer selector pattern '{pattern}' is not a valid regex: {exc}") from None

    chosen = [
        (name, mod)
        for name, mod in modules.items()
        if name
        and _type_names(mod) & set(sel.types)
        and (not sel.names or name in sel.names)
        and (not sel.regex or any(re.search(p, name) for p in sel.regex))
    ]
    if sel.exclude_first and chosen:
        chosen = chosen[1:]
    if sel.exclude_last and chosen:
        chosen = chosen[:-1]
    chosen = [(n, m) for n, m in chosen if not _matches(n, sel.exclude)]
    if not chosen:
        raise ModelError(
            f"layer selector picked no layer (types={sel.types}, names={sel.names}, "
            f"regex={sel.regex}, exclude={sel.exclude}); layers of this model: "
            + ", ".join(f"{n} ({type(m).__name__})" for n, m in list(modules.items())[1:20])
        )
    return chosen


def select_plain(
    model: nn.Module, selector: Selector | dict | None, method: str, why_none: str | None = None
) -> list[tuple[str, nn.Module]]:
    """The picked layers that are exactly ``nn.Conv2d`` or ``nn.Linear``.

    Subclasses are left out: they are layers a method has already replaced (fake-quantized,
    ternary), which are not replaced again.  With none left, a ModelError names ``method``
    and says ``why_none`` (by default, what was picked instead).
    """
    chosen = select(model, selector)
    plain = [(n, m) for n, m in chosen if type(m) in (nn.Conv2d, nn.Linear)]
    if not plain:
        why = why_none or ", ".join(f"{n}: {type(m).__name__}" for n, m in chosen[:10])
        raise ModelError(f"{method}: the selector picked no plain Conv2d / Linear layer ({why})")
    return plain


def layer_params(selector: Selector | dict | None, name: str, defaults: dict[str, Any]) -> dict[str, Any]:
    """``defaults`` updated by the first override whose key equals or matches ``name``."""
    sel = parse(selector)
    params = dict(defaults)
    for pattern, values in sel.overrides.items():
        if name == pattern or re.search(pattern, name):
            params.update(values)
            break
    return params
