"""What each target may be told: its options, declared as a pydantic model and validated.

Every target has an ``Options`` model (a :class:`TargetOptions`): the keywords of its
``compile`` that a recipe, the CLI (``--set KEY=VALUE``) and the Python API may set, each
with its type, default and meaning.  ``tamer list targets NAME`` prints them; the ``deploy``
stage validates its target-specific keys against them, so an unknown key names the target
and lists what it takes.  ``compile`` may take more keywords than its Options declare
(paths outside a run folder, progress switches): those are for Python callers only.

The models of the targets whose modules the memory probe child imports (onnxruntime,
tvm, ncnn) live here, not in those modules: importing pydantic there would add its
memory to every peak-RSS figure the child measures.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tinytamer.errors import TamerError
from tinytamer.targets.tvm import DEFAULT_TRIALS  # light: tvm itself is imported when compiling

if TYPE_CHECKING:
    from tinytamer.targets.base import Target


class TargetOptions(BaseModel):
    """A target's options; this base declares none (torch, ncnn)."""

    model_config = ConfigDict(extra="forbid")


class OrtOptions(TargetOptions):
    """Options of target ``onnxruntime``."""

    calib_method: Literal["minmax", "percentile", "entropy"] = Field(
        "minmax", description="int8 by ORT's own calibration: how it sets activation ranges"
    )
    reduce_range: bool | None = Field(
        None,
        description="int8 by ORT's own calibration: 7-bit weights (default: on x86 CPUs "
        "without VNNI, whose u8 x s8 kernels saturate with 8-bit weights)",
    )
    use_qparams: bool = Field(
        True,
        description="int8 of a model from the quantize stage keeps its scales / zero "
        "points (else ORT calibrates its own)",
    )
    exact_int8: bool = Field(
        True,
        description="int8 with our scales: store weights as uint8, which ORT runs with "
        "kernels that cannot saturate (outputs match ours on any x86 CPU)",
    )


class TvmOptions(TargetOptions):
    """Options of target ``tvm``."""

    trials: int = Field(
        DEFAULT_TRIALS, ge=0, description="MetaSchedule trials per tuning task (0: untuned, labelled so)"
    )
    seed: int = Field(0, ge=0, description="seed of the tuning search")


def options_model(target: Target) -> type[TargetOptions]:
    """The Options model of ``target`` (a target registered without one takes no options)."""
    return getattr(target, "Options", TargetOptions)


def option_keys(target: Target) -> list[str]:
    """The option names ``target`` takes, in declaration order."""
    return list(options_model(target).model_fields)


def validate_options(target: Target, options: Mapping[str, Any]) -> TargetOptions:
    """``options`` checked against ``target``'s Options; TamerError names the target and, for
    an unknown key, lists the keys it takes."""
    model = options_model(target)
    allowed = option_keys(target)
    unknown = [k for k in options if k not in allowed]
    if unknown:
        takes = f"its options: {', '.join(allowed)}" if allowed else "it takes no options"
        raise TamerError(
            f"target '{target.name}' has no option {', '.join(map(repr, unknown))} "
            f"({takes}; see `tamer list targets {target.name}`)"
        )
    try:
        return model.model_validate(dict(options))
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc']))}: {e['msg']} (got {e.get('input')!r})" for e in exc.errors()
        )
        raise TamerError(f"target '{target.name}' option {problems}") from None


def compile_options(target: Target, options: Mapping[str, Any]) -> dict[str, Any]:
    """``options`` validated, as the keywords of ``target.compile`` (every declared option,
    defaults included: the Options model is where a recipe's defaults are written)."""
    return validate_options(target, options).model_dump()
