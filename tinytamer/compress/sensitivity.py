"""Layer-wise pruning sensitivity (Han et al. 2015, Sec. 4.5 and Fig. 6).

Han, Pool, Tran, Dally, "Learning both Weights and Connections for Efficient
Neural Networks", NIPS 2015, Sec. 4.5 "Pruning sensitivity": prune each layer
alone at a sweep of sparsities, without retraining, and measure the accuracy
(:func:`analyze`); the curves (:func:`plot`, as their Fig. 6) show which layers
tolerate pruning, and each layer's pruning level is chosen from its curve
(:func:`choose_sparsities`: the highest sparsity whose accuracy drop stays
within a budget), then used by :func:`tinytamer.compress.prune.magnitude`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tinytamer.compress import masks
from tinytamer.compress.selector import Selector
from tinytamer.compress.selector import select as select_layers
from tinytamer.errors import DataError, RecipeError
from tinytamer.fileio import atomic_path, read_json, write_atomic

DEFAULT_SPARSITIES = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


@dataclass
class SensitivityResult:
    """Accuracy of the model with one layer pruned, per layer and sparsity."""

    baseline: float
    curves: dict[str, list[tuple[float, float]]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"baseline": self.baseline, "curves": {n: [[s, a] for s, a in c] for n, c in self.curves.items()}}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "sensitivity result") -> SensitivityResult:
        try:
            return cls(
                float(data["baseline"]), {n: [(float(s), float(a)) for s, a in c] for n, c in data["curves"].items()}
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(f"{source}: not a sensitivity result ({exc!r})") from None

    def save(self, path: str | Path) -> Path:
        """Write the result as JSON, atomically."""
        path = Path(path)
        write_atomic(path, json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    @classmethod
    def load(cls, path: str | Path) -> SensitivityResult:
        path = Path(path)
        return cls.from_dict(read_json(path, "sensitivity result"), str(path))


@torch.no_grad()
def analyze(
    model: nn.Module,
    evaluate: Callable[[nn.Module], float],
    *,
    select: Selector | dict | None = None,
    sparsities: Iterable[float] = DEFAULT_SPARSITIES,
    progress: bool = False,
) -> SensitivityResult:
    """Prune each selected layer alone at each sparsity and record ``evaluate(model)``.

    ``evaluate`` returns a score where higher is better (accuracy).  Each layer's
    weight is restored exactly after its sweep, so the model is unchanged on return.
    """
    levels = sorted({float(s) for s in sparsities})
    if not levels or any(not 0.0 <= s <= 1.0 for s in levels):
        raise RecipeError(f"sensitivity: sparsities must be a non-empty list in [0, 1], got {levels}")
    layers = select_layers(model, select)
    for name, module in layers:
        if masks.is_masked(module):
            raise RecipeError(f"sensitivity: layer '{name}' is masked; call remove_masks first")
    result = SensitivityResult(baseline=float(evaluate(model)))
    jobs = [(name, module, s) for name, module in layers for s in levels]
    if progress:
        from rich.progress import track

        jobs = track(jobs, description="sensitivity", total=len(jobs))
    saved: dict[str, torch.Tensor] = {}
    modules = dict(layers)
    try:
        for name, module, s in jobs:
            original = saved.setdefault(name, module.weight.detach().clone())
            module.weight.copy_(original * masks.magnitude_mask(original, s))
            result.curves.setdefault(name, []).append((s, float(evaluate(model))))
            if s == levels[-1]:
                module.weight.copy_(saved.pop(name))
    finally:  # an interrupted sweep must not leave a layer pruned
        for name, original in saved.items():
            modules[name].weight.copy_(original)
    return result


def choose_sparsities(result: SensitivityResult, max_drop: float = 0.01) -> dict[str, float]:
    """Per layer, the highest sparsity whose accuracy, and every lower one's, is within ``max_drop``.

    Requiring the whole prefix of the curve to stay within budget avoids picking
    a lucky point past a dip.  A layer with no acceptable level gets 0.
    """
    chosen = {}
    for name, curve in result.curves.items():
        best = 0.0
        for s, acc in sorted(curve):
            if result.baseline - acc > max_drop:
                break
            best = s
        chosen[name] = best
    return chosen


def plot(result: SensitivityResult, path: str | Path, *, title: str = "Pruning sensitivity") -> Path:
    """Draw accuracy vs. sparsity, one curve per layer (Han et al. 2015 Fig. 6), as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, curve in result.curves.items():
        xs, ys = zip(*sorted(curve), strict=True)
        ax.plot([0.0, *xs], [result.baseline, *ys], marker="o", markersize=3, label=name)
    ax.axhline(result.baseline, color="grey", linestyle="--", linewidth=0.8)
    ax.set_xlabel("fraction of the layer's weights pruned")
    ax.set_ylabel("accuracy")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", ncol=2 if len(result.curves) > 8 else 1)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
    return path
