"""Magnitude pruning with retraining (Han et al. 2015) and gradual schedules (Zhu & Gupta 2017).

Han, Pool, Tran, Dally, "Learning both Weights and Connections for Efficient
Neural Networks", NIPS 2015:
- Sec. 3 / Fig. 2, the three steps: train, prune the small-magnitude
  connections, retrain the remaining ones with the pruned ones held at zero
  (:func:`magnitude`, then any training loop: the masks are held by
  :mod:`tinytamer.compress.masks`).
- Sec. 4, the threshold "a quality parameter multiplied by the standard
  deviation of a layer's weights" (``threshold_mode="std"``); or an exact
  per-layer fraction (``threshold_mode="sparsity"``), the per-layer values
  chosen from a sensitivity analysis (:mod:`tinytamer.compress.sensitivity`).
- Sec. 3.1, L1 / L2 regularization while retraining: the Solver's
  ``weight_decay`` with ``regularization_type: L1 | L2``.
- Sec. 3.3, iterative pruning: several prune -> retrain rounds (:func:`iterative`).

Zhu & Gupta, "To prune, or not to prune: exploring the efficacy of pruning for
model compression", 2017, Eq. (1), the automated gradual pruning (AGP)
schedule used by Distiller: sparsity rises from s_i to s_f over n pruning
steps of Δt iterations from t0, s_t = s_f + (s_i - s_f)(1 - (t - t0)/(nΔt))^3
(:class:`AGPSchedule`, applied during training by :class:`GradualPruner`).

What leaves these functions is still dense: masked layers until
:func:`remove_masks`, then plain weights holding zeros (``physical=False``);
the codec stores such tensors sparse, and :mod:`tinytamer.compress.channel`
removes whole channels instead.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import pydantic
import torch
from pydantic import Field
from torch import nn

from tinytamer.compress import masks
from tinytamer.compress.selector import Selector, layer_params
from tinytamer.compress.selector import parse as parse_selector
from tinytamer.compress.selector import select as select_layers
from tinytamer.errors import ModelError, RecipeError
from tinytamer.train.solver import TrainHook

ThresholdMode = Literal["sparsity", "std"]
remove_masks = masks.remove_masks


@dataclass(frozen=True)
class LayerSparsity:
    """How much of one layer's weight is zero, and the magnitude threshold that made it so."""

    numel: int
    zeros: int
    threshold: float | None = None

    @property
    def sparsity(self) -> float:
        return self.zeros / self.numel if self.numel else 0.0


@dataclass
class PruneResult:
    """Per-layer sparsity after pruning. ``physical`` is False: the zeros still take space."""

    layers: dict[str, LayerSparsity] = field(default_factory=dict)
    physical: bool = False

    @property
    def sparsity(self) -> float:
        """Fraction of zeros over all pruned layers' weights together."""
        total = sum(s.numel for s in self.layers.values())
        return sum(s.zeros for s in self.layers.values()) / total if total else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "physical": self.physical,
            "sparsity": self.sparsity,
            "layers": {
                name: {"numel": s.numel, "zeros": s.zeros, "sparsity": s.sparsity, "threshold": s.threshold}
                for name, s in self.layers.items()
            },
        }


def _layer_targets(
    model: nn.Module, value: float | Mapping[str, float], select: Selector | dict | None, key: str
) -> dict[str, tuple[nn.Module, float]]:
    """Selected layer -> (module, target), with per-layer dicts and selector overrides resolved.

    A dict ``value`` names the layers to prune (each must be selected); a float
    applies to every selected layer.  ``select.overrides`` may set ``key`` per layer.
    """
    chosen = select_layers(model, select)
    if isinstance(value, Mapping):
        names = {n for n, _ in chosen}
        unknown = sorted(set(value) - names)
        if unknown:
            raise ModelError(
                f"per-layer {key} names layer(s) {', '.join(unknown)} that the selector does "
                f"not pick; selected layers: {', '.join(sorted(names))}"
            )
        chosen = [(n, m) for n, m in chosen if n in value]
    targets = {}
    for name, module in chosen:
        default = value[name] if isinstance(value, Mapping) else value
        target = float(layer_params(select, name, {key: default})[key])
        if key == "sparsity" and not 0.0 <= target < 1.0:
            raise RecipeError(f"prune: {key} of layer '{name}' must be in [0, 1), got {target}")
        if key == "quality" and target < 0:
            raise RecipeError(f"prune: quality of layer '{name}' must be >= 0, got {target}")
        if not isinstance(getattr(module, "weight", None), torch.Tensor):
            raise ModelError(f"prune: layer '{name}' ({type(module).__name__}) has no weight")
        targets[name] = (module, target)
    return targets


def _count(module: nn.Module, threshold: float | None = None) -> LayerSparsity:
    w = masks.effective_weight(module)
    return LayerSparsity(w.numel(), int((w == 0).sum()), threshold)


@torch.no_grad()
def magnitude(
    model: nn.Module,
    sparsity: float | Mapping[str, float] = 0.5,
    *,
    select: Selector | dict | None = None,
    threshold_mode: ThresholdMode = "sparsity",
    quality: float | Mapping[str, float] | None = None,
) -> PruneResult:
    """Mask the smallest-magnitude weights of the selected layers (Han et al. 2015, Sec. 3).

    ``threshold_mode="sparsity"``: each layer loses exactly ``sparsity`` of its
    weights (a float for all layers, a dict ``{layer: sparsity}``, or
    ``select.overrides`` such as ``{"fc.*": {"sparsity": 0.9}}``).
    ``threshold_mode="std"``: each layer loses the weights with
    ``|w| <= quality * std(w)``, std taken over the weights still unpruned.
    Layers already masked are pruned further from their current weights (old
    zeros stay zero).  Masks are held during any later training; call
    :func:`remove_masks` to fold them in.
    """
    if threshold_mode == "std":
        if quality is None:
            raise RecipeError("prune: threshold_mode 'std' needs a quality parameter")
        targets = _layer_targets(model, quality, select, "quality")
    elif threshold_mode == "sparsity":
        targets = _layer_targets(model, sparsity, select, "sparsity")
    else:
        raise RecipeError(f"prune: unknown threshold_mode '{threshold_mode}' (sparsity or std)")
    result = PruneResult()
    for name, (module, target) in targets.items():
        weight = masks.effective_weight(module)
        if threshold_mode == "std":
            alive = weight[weight != 0]
            threshold = target * float(alive.std()) if alive.numel() > 1 else 0.0
            mask = masks.threshold_mask(weight, threshold)
        else:
            mask = masks.magnitude_mask(weight, target)
            kept = weight.abs()[mask.bool()]
            threshold = float(kept.min()) if kept.numel() else None
        masks.set_mask(module, mask)
        result.layers[name] = _count(module, threshold)
    return result


def layer_sparsity(model: nn.Module, select: Selector | dict | None = None) -> PruneResult:
    """Zeros per selected layer as the model stands (masked or not)."""
    return PruneResult({name: _count(m) for name, m in select_layers(model, select)})


@torch.no_grad()
def iterative(
    model: nn.Module,
    finetune: Callable[[nn.Module], Any],
    sparsity: float | Mapping[str, float] = 0.5,
    *,
    rounds: int = 3,
    select: Selector | dict | None = None,
    threshold_mode: ThresholdMode = "sparsity",
    quality: float | Mapping[str, float] | None = None,
) -> PruneResult:
    """Han et al. 2015 Sec. 3.3: ``rounds`` times prune, then ``finetune(model)`` with masks held.

    Round r of R prunes each layer to 1 - (1 - s)^(r/R), so every round removes
    the same fraction of the weights still alive and the last reaches s; in
    ``std`` mode round r uses quality * r / R.  ``finetune`` is any training
    loop (e.g. ``lambda m: solver_for(m).solve()``); the masks stay on the model
    afterwards, so call :func:`remove_masks` when done.
    """
    if rounds < 1:
        raise RecipeError(f"prune: rounds must be >= 1, got {rounds}")
    if threshold_mode == "std" and quality is None:
        raise RecipeError("prune: threshold_mode 'std' needs a quality parameter")
    key = "quality" if threshold_mode == "std" else "sparsity"
    final = quality if threshold_mode == "std" else sparsity
    result = PruneResult()
    for r in range(1, rounds + 1):
        frac = r / rounds
        step = (
            {k: _step(key, v, frac) for k, v in final.items()}
            if isinstance(final, Mapping)
            else _step(key, final, frac)
        )
        sel = _scaled_overrides(select, key, frac)
        if threshold_mode == "std":
            result = magnitude(model, select=sel, threshold_mode="std", quality=step)
        else:
            result = magnitude(model, step, select=sel)
        with torch.enable_grad():
            finetune(model)
    return result


def _step(key: str, final: float, frac: float) -> float:
    """Round target after ``frac`` of the rounds.

    Sparsity: every round keeps the same share of the surviving weights,
    1 - (1 - s)^frac; quality (std mode): a linear ramp.
    """
    return 1 - (1 - final) ** frac if key == "sparsity" else final * frac


def _scaled_overrides(select: Selector | dict | None, key: str, frac: float) -> Selector | dict | None:
    """The selector with its per-layer ``key`` overrides moved along the same ramp."""
    if select is None:
        return None
    sel = parse_selector(select)
    overrides = {
        pattern: {**values, **({key: _step(key, values[key], frac)} if key in values else {})}
        for pattern, values in sel.overrides.items()
    }
    return sel.model_copy(update={"overrides": overrides})


class AGPSchedule(pydantic.BaseModel, extra="forbid"):
    """Automated gradual pruning (Zhu & Gupta 2017, Eq. 1): when, and how sparse.

    Pruning happens at iterations ``start, start + frequency, ...`` up to and
    including ``end``; at those steps the target is
    ``final + (initial - final) * (1 - (t - start) / (end - start)) ** 3``.
    """

    initial: float = Field(0.0, ge=0, lt=1, description="sparsity applied at iteration start")
    final: float = Field(0.8, ge=0, lt=1, description="sparsity reached at iteration end")
    start: int = Field(0, ge=0, description="first pruning iteration (t0)")
    end: int = Field(..., ge=0, description="last pruning iteration (t0 + n*dt)")
    frequency: int = Field(100, ge=1, description="iterations between pruning steps (dt)")

    @pydantic.model_validator(mode="after")
    def _check(self) -> AGPSchedule:
        if self.end < self.start:
            raise ValueError(f"end ({self.end}) must not be before start ({self.start})")
        if self.initial > self.final:
            raise ValueError(f"initial ({self.initial}) must not exceed final ({self.final})")
        return self

    def is_pruning_step(self, t: int) -> bool:
        return self.start <= t <= self.end and ((t - self.start) % self.frequency == 0 or t == self.end)

    def sparsity_at(self, t: int, final: float | None = None) -> float:
        """Target at iteration ``t``: held from the last pruning step; 0 before ``start``.

        ``final`` replaces the schedule's final sparsity (a per-layer target).
        """
        s_f = self.final if final is None else final
        s_i = min(self.initial, s_f)
        if t < self.start:
            return 0.0
        if t >= self.end:
            return s_f
        last = self.start + (t - self.start) // self.frequency * self.frequency
        progress = (last - self.start) / (self.end - self.start)
        return s_f + (s_i - s_f) * (1.0 - progress) ** 3


class GradualPruner(TrainHook):
    """A Solver hook that prunes the selected layers on an AGP schedule.

    ``sparsity`` (float or ``{layer: final}``) gives each layer's final target;
    selector overrides may set ``sparsity`` per layer too.  The Solver calls
    :meth:`after_step` after each update (a plain training loop may call
    ``hook(model, iteration)``); :meth:`finish` applies the final targets if
    training stopped before ``schedule.end``.  It attaches (all-ones) masks to the
    layers at once.
    """

    def __init__(
        self,
        model: nn.Module,
        schedule: AGPSchedule,
        sparsity: float | Mapping[str, float] | None = None,
        *,
        select: Selector | dict | None = None,
    ) -> None:
        self.schedule = schedule
        targets = _layer_targets(model, schedule.final if sparsity is None else sparsity, select, "sparsity")
        self.finals = {name: target for name, (_, target) in targets.items()}
        self.last_step: int | None = None
        # All-ones masks from the start: the optimizer, the state dict and any snapshot
        # then have one layout (weight_orig + weight_mask) before and after pruning begins.
        for module, _ in targets.values():
            masks.set_mask(module, torch.ones_like(masks.effective_weight(module)))

    def after_step(self, model: nn.Module, iteration: int) -> None:
        if self.schedule.is_pruning_step(iteration):
            self._apply(model, iteration)

    __call__ = after_step

    def finish(self, model: nn.Module) -> PruneResult:
        """Bring every layer to its final sparsity (no-op when the schedule already ended)."""
        return self._apply(model, self.schedule.end)

    @torch.no_grad()
    def _apply(self, model: nn.Module, iteration: int) -> PruneResult:
        modules = dict(model.named_modules())
        result = PruneResult()
        for name, final in self.finals.items():
            module = modules[name]
            target = self.schedule.sparsity_at(iteration, final)
            masks.set_mask(module, masks.magnitude_mask(masks.effective_weight(module), target))
            result.layers[name] = _count(module)
        self.last_step = iteration
        return result
