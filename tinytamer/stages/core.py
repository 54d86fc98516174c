"""The foundation's stages: ``train`` and ``evaluate``."""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from torch import nn

from tinytamer.recipe import Context, StageParams, register_stage
from tinytamer.records import EvaluateRecord, StageRecord
from tinytamer.train import SolverConfig


class TrainParams(SolverConfig):
    """The Solver's settings (Caffe names); ``solver`` reads them from a solver.prototxt instead."""

    solver: str | None = Field(
        None, description="Caffe solver.prototxt to read the settings from (instead of the keys above)"
    )
    batch_size: int | None = Field(None, gt=0, description="training mini-batch size (default: data.batch_size)")


@register_stage("train", TrainParams, help="train with the Caffe-style Solver")
def train_stage(model: nn.Module, ctx: Context, p: TrainParams) -> nn.Module:
    if p.solver:
        from tinytamer.train import read_prototxt

        solver_file = read_prototxt(p.solver)
        # A solver file keeps its own seed (Caffe's random_seed; unset: the Solver's default).
        config = {**solver_file.model_dump(exclude_unset=True), "seed": solver_file.seed}
    else:
        config = p.model_dump(exclude={"solver", "batch_size"}, exclude_unset=True)
    ctx.finetune(model, config, batch_size=p.batch_size)
    ctx.log(ctx.record(StageRecord, model))
    return model


class EvaluateParams(StageParams):
    split: Literal["train", "val", "test"] = Field("test", description="split to score")


@register_stage("evaluate", EvaluateParams, help="evaluate the model on a split")
def evaluate_stage(model: nn.Module, ctx: Context, p: EvaluateParams) -> nn.Module:
    samples = len(getattr(ctx.data, p.split))
    if samples == 0:
        from tinytamer.errors import RecipeError

        raise RecipeError(f"evaluate.split '{p.split}' of dataset '{ctx.recipe.data.name}' is empty")
    metrics = ctx.evaluate(model, p.split)
    plot = None
    if ctx.data.meta.task == "detection":  # the report shows what the detector saw
        from tinytamer.detect.plot import plot_split

        path = plot_split(
            model, getattr(ctx.data, p.split), ctx.data.meta.class_names, ctx.stage_dir / "predictions.png"
        )
        plot = str(path.relative_to(ctx.rundir.path))
    ctx.log(
        ctx.record(
            EvaluateRecord,
            model,
            accuracy=metrics["accuracy"],
            split=p.split,
            loss=metrics["loss"],
            eval_samples=samples,
            plot=plot,
            **{k: metrics[k] for k in ("map50", "map50_95") if k in metrics},  # detection
        )
    )
    return model
