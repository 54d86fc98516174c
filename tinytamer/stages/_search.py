"""What the two architecture-search stages (``spos``, ``proxylessnas``) share: their common
keys, opening the space with its budget and cost model, and retraining plus measuring the
network found.  No stage of its own."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator
from rich.progress import Progress
from torch import nn

from tinytamer.calib import Calibration
from tinytamer.errors import RecipeError
from tinytamer.recipe import Context, StageParams
from tinytamer.search import cost
from tinytamer.search.budget import ArchCost, Budget, BudgetError, measure
from tinytamer.search.spaces import make_space
from tinytamer.search.spos import reinitialize

# Solver keys both trainings start from; a recipe's keys are laid over them (epochs replace max_iter).
SOLVER = {"max_iter": 2000, "base_lr": 0.05, "lr_policy": "poly", "weight_decay": 4e-5, "display": 100}


def solver_config(given: dict[str, Any]) -> dict[str, Any]:
    """:data:`SOLVER` with ``given`` laid over it (a length in epochs replaces max_iter)."""
    base = {k: v for k, v in SOLVER.items() if not (k == "max_iter" and "epochs" in given)}
    return {**base, **given}


class SearchParams(StageParams):
    """What both hardware-aware architecture searches take."""

    space: Literal["shufflenet", "mbconv"] = Field(
        "shufflenet", description="shufflenet (SPOS choice blocks) or mbconv (ProxylessNAS candidates)"
    )
    space_options: dict[str, Any] = Field(
        default_factory=dict,
        description="the space's own keys: stem, stem_stride (1 or 2), stages [[channels, blocks, stride], ...], feat; "
        "shufflenet: width_ratios (channel search)",
    )
    target: Literal["cortex-m4", "cortex-m7", "onnxruntime"] = Field(
        "cortex-m4", description="where the budget holds (the cost table is measured there)"
    )
    budget: dict[str, float] = Field(
        description="limits: cycles (estimated, under the table's memory profile), sram, flash (bytes), "
        "instructions, latency (ms, host targets)"
    )
    cost_table: str | None = Field(
        None, description="a cost table to use and extend (default: one in the stage folder)"
    )
    memory_profile: str | None = Field(
        None, description="micro: the profile cycles are estimated under (default: board)"
    )
    supernet: dict[str, Any] = Field(
        default_factory=dict, description=f"Solver keys of supernet training, over {SOLVER}"
    )
    retrain: dict[str, Any] = Field(default_factory=dict, description=f"Solver keys of the retraining, over {SOLVER}")
    calib_batches: int = Field(8, ge=1, description="training batches that calibrate int8 for the measurement")

    @model_validator(mode="after")
    def _budget_fits_target(self) -> SearchParams:
        # A misspelt resource, or cycles on a host target, fails when the recipe is read.
        metrics = cost.MICRO_METRICS if self.target in cost.MICRO_TARGETS else cost.HOST_METRICS
        try:
            Budget.parse(self.budget).check(metrics, self.target)
        except BudgetError as exc:
            raise ValueError(str(exc)) from None  # reported with the recipe key
        return self


def open_space(ctx: Context, p: SearchParams) -> tuple[Any, Budget, ArchCost, str]:
    """The space, the budget and its cost model (the covering architectures measured)."""
    if not len(ctx.data.val):
        raise RecipeError(
            f"{ctx.stage_name}: dataset '{ctx.recipe.data.name}' has no validation split to score "
            "architectures on (set data.val_fraction above 0)"
        )
    net = make_space(p.space, ctx.input_shape, ctx.data.meta.num_classes, **p.space_options)
    budget = Budget.parse(p.budget)
    table = Path(p.cost_table) if p.cost_table else ctx.stage_dir / f"lut-{p.target}.json"
    costs = ArchCost(net, p.target, table, ctx.example_input(), memory_profile=p.memory_profile)
    budget.check(costs.metrics(), p.target)
    with Progress(disable=not ctx.progress) as bar:
        task = bar.add_task(f"cost table on {p.target}", total=max(net.sizes()))
        costs.progress = lambda _name: bar.advance(task)
        costs.cover()
        costs.progress = None
    # Refuse a budget no architecture can meet now, not after training the supernet.
    short = costs.infeasible(budget)
    if short:
        raise RecipeError(
            f"{ctx.stage_name}: no architecture of the '{p.space}' space can meet the budget on {p.target}: "
            + "; ".join(short)
            + " (raise the limit, or make the space smaller: space_options, e.g. stem_stride 2, fewer channels)"
        )
    try:
        shown = str(table.resolve().relative_to(ctx.rundir.path.resolve()))
    except ValueError:
        shown = str(table)
    return net, budget, costs, shown


def finish(ctx: Context, p: SearchParams, net: Any, arch: tuple[int, ...], costs: ArchCost) -> tuple[nn.Module, dict]:
    """Retrain ``arch`` from scratch and measure it on the target: the model and the
    record fields both searches share."""
    model = reinitialize(net.derive(arch), ctx.seed)
    ctx.finetune(model, solver_config(p.retrain), name="retrain")
    model.eval()
    calib = Calibration(ctx.train_loader(), limit=p.calib_batches)
    table = costs.open()
    measured = measure(
        model,
        p.target,
        ctx.stage_dir / "measured",
        example=ctx.example_input(),
        calib=list(calib.batches()),
        memory_profile=table.memory_profile,
    )
    budget = Budget.parse(p.budget)
    over = budget.violations({m: measured.get(m, float("inf")) for m in budget.limits})
    fields = {
        "space": p.space,
        "target": p.target,
        "memory_profile": table.memory_profile,
        "budget": budget.to_dict(),
        "arch": net.describe(arch),
        "arch_indices": list(arch),
        "predicted": costs(arch),
        "measured": measured,
        "within_budget": not over,
        "violations": over,
    }
    return model, fields
