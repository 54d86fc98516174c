"""Recipe stages for pruning: ``sensitivity``, ``prune`` (magnitude) and ``channel_prune``.

::

    stages:
      - sensitivity: {sparsities: [0.2, 0.4, 0.6, 0.8, 0.9], max_drop: 0.01}
      - prune:
          sparsity: sensitivity          # or 0.9, or {fc1: 0.92, fc2: 0.9}
          schedule: {type: agp, start: 0, end: 2000, frequency: 100}
          finetune: {base_lr: 0.01, max_iter: 3000, weight_decay: 1e-4, regularization_type: L2}
      - channel_prune: {ratio: 0.5, round_to: 8, finetune: {base_lr: 0.01, epochs: 5}}
      - channel_prune: {ratio: 0.25, rounding: {target: onnxruntime, precision: int8}}
      - channel_prune:                   # fine-tuned with the unpruned model as teacher
          {ratio: 0.25, finetune: {base_lr: 0.01, epochs: 10}, distill: {temperature: 4, alpha: 0.9}}

Every stage logs one record: accuracy, parameters, non-zeros, MACs, the bytes
of the model written by the codec, and ``physical``: true when layers really
got smaller (channel pruning), false when the pruned weights are zeros inside
dense tensors (magnitude pruning; the codec file stores them sparse).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import ConfigDict, Field, model_validator
from torch import nn

from tinytamer import codec
from tinytamer.calib import Calibration
from tinytamer.compress import channel, prune, sensitivity
from tinytamer.compress.selector import Selector
from tinytamer.errors import RecipeError
from tinytamer.fileio import write_atomic
from tinytamer.recipe import Context, StageParams, register_stage
from tinytamer.records import ChannelPruneRecord, PruneRecord, SensitivityRecord
from tinytamer.train import SolverConfig
from tinytamer.train import evaluate as evaluate_model
from tinytamer.train.distill import Distillation, DistillParams


def _save(ctx: Context, model: nn.Module) -> Path:
    path = ctx.stage_dir / "model.tt"
    codec.save(model, path)
    return path


# -- sensitivity ------------------------------------------------------------------------------


class SensitivityParams(StageParams):
    sparsities: list[float] = Field(
        default_factory=lambda: list(sensitivity.DEFAULT_SPARSITIES),
        description="sparsity levels each layer is pruned to, alone",
    )
    select: Selector | None = Field(None, description="layers to analyse (default: every conv / linear)")
    max_drop: float = Field(0.01, ge=0, description="accuracy drop allowed per layer (0.01 = 1 pt)")
    split: Literal["train", "val", "test"] = Field(
        "val", description="split to measure on (val: keep test for the final report)"
    )
    max_batches: int | None = Field(None, ge=1, description="batches per evaluation (None: all)")


@register_stage(
    "sensitivity",
    SensitivityParams,
    help="prune each layer alone at a sweep of sparsities; plot and choose per-layer sparsity",
)
def sensitivity_stage(model: nn.Module, ctx: Context, p: SensitivityParams) -> nn.Module:
    if len(getattr(ctx.data, p.split)) == 0:
        raise RecipeError(f"sensitivity.split '{p.split}' is empty; set data.val_fraction > 0 or choose another split")
    loader = {"train": ctx.train_loader, "val": ctx.val_loader, "test": ctx.test_loader}[p.split]()

    def score(m: nn.Module) -> float:
        return float(evaluate_model(m, loader, max_batches=p.max_batches)["accuracy"])

    result = sensitivity.analyze(model, score, select=p.select, sparsities=p.sparsities, progress=ctx.progress)
    chosen = sensitivity.choose_sparsities(result, p.max_drop)
    result.save(ctx.stage_dir / "sensitivity.json")
    plot = sensitivity.plot(result, ctx.stage_dir / "sensitivity.png")
    ctx.log(
        ctx.record(
            SensitivityRecord,
            model,
            physical=False,
            split=p.split,
            baseline=result.baseline,
            chosen=chosen,
            max_drop=p.max_drop,
            plot=str(plot.relative_to(ctx.rundir.path)),
        )
    )
    return model


# -- magnitude pruning ------------------------------------------------------------------------


class OneShot(StageParams):
    """Prune once, then fine-tune (if ``finetune`` is given) with the masks held."""

    type: Literal["oneshot"] = Field("oneshot", description="prune once")


class Iterative(StageParams):
    """Han et al. 2015 Sec. 3.3: ``rounds`` x (prune a step further, fine-tune)."""

    type: Literal["iterative"] = Field(description="prune in rounds, retraining between them")
    rounds: int = Field(3, ge=1, description="prune-and-retrain rounds to reach the sparsity")


class AGP(StageParams):
    """Zhu & Gupta 2017: sparsity ramps up during fine-tuning (Distiller's start/end/frequency)."""

    type: Literal["agp"] = Field(description="automated gradual pruning during fine-tuning")
    initial: float = Field(0.0, ge=0, lt=1, description="sparsity at the first pruning step")
    start: int = Field(0, ge=0, description="first pruning iteration of the fine-tuning")
    end: int = Field(..., ge=0, description="iteration where the final sparsity is reached")
    frequency: int = Field(100, ge=1, description="iterations between pruning steps")


class PruneParams(StageParams):
    sparsity: float | dict[str, float] | Literal["sensitivity"] = Field(
        0.8,
        description="fraction of weights removed: one value, per layer, or 'sensitivity' "
        "(the per-layer choice of the last sensitivity stage)",
    )
    threshold_mode: Literal["sparsity", "std"] = Field(
        "sparsity", description="sparsity: remove that fraction per layer; std: remove |w| <= quality x std"
    )
    quality: float | dict[str, float] | None = Field(
        None, description="std mode: threshold = quality x std of the layer's weights"
    )
    select: Selector | None = Field(
        None,
        description="layers to prune (default: every conv / linear but the first, whose "
        "few weights carry every input; with per-layer sparsity or quality, the named layers)",
    )
    schedule: OneShot | Iterative | AGP = Field(
        default_factory=OneShot, discriminator="type", description="when to prune (type: oneshot, iterative or agp)"
    )
    finetune: SolverConfig | None = Field(None, description="Solver settings for retraining")
    batch_size: int | None = Field(None, gt=0, description="training mini-batch size (default: data.batch_size)")


def _sensitivity_choice(ctx: Context) -> dict[str, float]:
    record = ctx.last_record(SensitivityRecord)
    if record is None:
        raise RecipeError("prune.sparsity is 'sensitivity' but no sensitivity stage ran before it")
    chosen = {k: v for k, v in record.chosen.items() if v > 0}
    if not chosen:
        raise RecipeError(
            f"prune.sparsity 'sensitivity': the sensitivity stage allowed no pruning within max_drop={record.max_drop}"
        )
    return chosen


def _default_select(p: PruneParams, sparsity: float | dict[str, float]) -> Selector | None:
    """Without ``select``: one sparsity for all spares the first layer (its few weights pruned at
    the others' rate ruin accuracy: measured 8.4% vs 77.3% for LeNet-5 on Fashion-MNIST
    at 80% before retraining); per-layer values prune exactly the layers they name."""
    per_layer = sparsity if p.threshold_mode == "sparsity" else p.quality
    return None if isinstance(per_layer, dict) else Selector(exclude_first=True)


@register_stage(
    "prune", PruneParams, help="magnitude pruning (Han et al. 2015): one-shot, iterative or AGP, with retraining"
)
def prune_stage(model: nn.Module, ctx: Context, p: PruneParams) -> nn.Module:
    sparsity = _sensitivity_choice(ctx) if p.sparsity == "sensitivity" else p.sparsity
    select = p.select if p.select is not None else _default_select(p, sparsity)
    kind = p.schedule.type
    if kind != "oneshot" and p.finetune is None:
        raise RecipeError(f"prune.schedule '{kind}' retrains between pruning steps: give finetune")
    if kind == "agp" and p.threshold_mode != "sparsity":
        raise RecipeError("prune.schedule 'agp' sets sparsities; it takes threshold_mode 'sparsity'")
    extra: dict[str, Any] = {}
    if kind == "oneshot":
        prune.magnitude(model, sparsity, select=select, threshold_mode=p.threshold_mode, quality=p.quality)
        if p.finetune is not None:
            extra["accuracy_before_finetune"] = ctx.evaluate(model)["accuracy"]
            ctx.finetune(model, p.finetune, batch_size=p.batch_size)
    elif kind == "iterative":
        rounds = iter(range(1, p.schedule.rounds + 1))
        prune.iterative(
            model,
            lambda m: ctx.finetune(m, p.finetune, name=f"round{next(rounds)}", batch_size=p.batch_size),
            sparsity,
            rounds=p.schedule.rounds,
            select=select,
            threshold_mode=p.threshold_mode,
            quality=p.quality,
        )
    else:
        s = p.schedule
        finals = sparsity.values() if isinstance(sparsity, dict) else [sparsity]
        schedule = prune.AGPSchedule(
            initial=min(s.initial, max(finals)), final=max(finals), start=s.start, end=s.end, frequency=s.frequency
        )
        hook = prune.GradualPruner(model, schedule, sparsity, select=select)
        ctx.finetune(model, p.finetune, hooks=[hook], batch_size=p.batch_size)
        if hook.last_step is None or hook.last_step < s.end:
            # Training ended before the schedule did: reach the target anyway, and say so.
            hook.finish(model)
            extra["warning"] = (
                f"fine-tuning stopped before schedule.end={s.end}; the final sparsity was applied without retraining"
            )
    result = prune.layer_sparsity(model, select)
    prune.remove_masks(model)
    path = _save(ctx, model)
    ctx.log(
        ctx.record(
            PruneRecord,
            model,
            file=path,
            physical=False,
            note="pruned weights are zeros in dense tensors; bytes is the codec file",
            method="magnitude",
            schedule=kind,
            sparsity=result.sparsity,
            layers={n: s.sparsity for n, s in result.layers.items()},
            **extra,
        )
    )
    return model


# -- channel pruning --------------------------------------------------------------------------


class MeasuredRounding(StageParams):
    """Kept channel counts chosen by latency measured on the deployment target
    (tinytamer.compress.channel_rounding), instead of multiples of ``round_to``."""

    target: str = Field(description="the deployment target to time single layers on (e.g. onnxruntime, openvino)")
    precision: Literal["fp32", "fp16", "int8"] = Field("fp32", description="precision deployed on the target")
    threads: int = Field(2, ge=1, description="threads the target will run with")
    batch: int = Field(1, ge=1, description="batch size the target will run at")
    repeats: int = Field(30, ge=1, description="timed runs per candidate layer")
    slack: float = Field(0.25, ge=0, lt=1, description="candidates go down to (1 - slack) x the count the ratio keeps")
    headroom: float = Field(
        0.0,
        ge=0,
        le=1,
        description="candidates also go up to (1 + headroom) x the count the ratio keeps "
        "(0: the ratio is a floor on what is removed)",
    )
    tie: float = Field(0.02, ge=0, description="a count within this fraction of the fastest, with more channels, wins")
    whole_model: bool = Field(
        True,
        description="then check the counts on whole pruned models, one layer or coupled group at a time "
        "(single layers miss the costs between layers, e.g. layout reorders)",
    )
    table: str | None = Field(
        None,
        description="the latency table (JSON; default: one per target, precision, threads, batch "
        "and CPU under $TINYTAMER_CACHE/channels), reused and extended",
    )


class ChannelPruneParams(StageParams):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    ratio: float | dict[str, float] = Field(0.5, description="fraction of channels removed")
    global_pruning: bool = Field(False, alias="global", description="rank channels across layers with one ratio")
    round_to: int | None = Field(8, ge=1, description="kept channels are a multiple of this")
    importance: Literal["l1", "l2", "bn_scale"] = Field(
        "l1", description="channel score: L1 / L2 norm of its filter, or its BatchNorm scale"
    )
    select: Selector | None = Field(
        None, description="layers whose channels may be removed (default: every conv / linear)"
    )
    ignore: list[str] | None = Field(None, description="layers whose output channels stay (default: the classifier)")
    max_ratio: float = Field(0.9, gt=0, lt=1, description="global: most any layer may lose")
    rounding: MeasuredRounding | None = Field(
        None,
        description="choose each layer's kept count by latency measured on this target (per-layer "
        "float ratio only; replaces round_to)",
    )
    finetune: SolverConfig | None = Field(None, description="Solver settings for fine-tuning")
    distill: DistillParams | None = Field(
        None, description="fine-tune with the unpruned model as teacher (Hinton et al. 2015); needs finetune"
    )
    batch_size: int | None = Field(None, gt=0, description="training mini-batch size (default: data.batch_size)")

    @model_validator(mode="after")
    def _distill_needs_finetune(self) -> ChannelPruneParams:
        if self.distill is not None and self.finetune is None:
            raise ValueError("distill teaches during fine-tuning: give finetune too")
        return self


def _measured_ratios(model: nn.Module, ctx: Context, p: ChannelPruneParams) -> tuple[dict[str, float], str]:
    """Per-layer ratios keeping the counts the rounding target runs fastest, and a note."""
    from tinytamer.compress import channel_rounding as cr

    r = p.rounding
    if p.global_pruning or not isinstance(p.ratio, float):
        raise RecipeError("channel_prune.rounding takes one float ratio per layer (not global, not a dict)")
    if "round_to" in p.model_fields_set:
        raise RecipeError("channel_prune: give round_to or rounding, not both (rounding chooses the counts)")
    # Whole trained models are calibrated and checked on real training samples.
    calib = list(Calibration(ctx.train_loader(), limit=2)) if r.whole_model else None
    single, whole, path = cr.measure_plans(
        model,
        ctx.example_input(batch=1),
        r.target,
        r.precision,
        r.threads,
        r.batch,
        ratio=p.ratio,
        repeats=r.repeats,
        slack=r.slack,
        headroom=r.headroom,
        tie=r.tie,
        select=p.select,
        ignore=p.ignore,
        whole_model=r.whole_model,
        calib=calib,
        table_path=r.table,
        progress=ctx.progress,
    )
    plan = whole if whole is not None else single
    out = ctx.stage_dir / "channel_rounding.json"
    write_atomic(out, json.dumps(plan.to_dict(), indent=1) + "\n")
    note = (
        f"kept channels chosen by latency measured on {r.target} {r.precision} ({r.threads} threads, "
        f"batch {r.batch}; {plan.measured_now} single-layer timings new, table {path}"
        f"{'; then checked on whole models, one layer or group at a time' if plan.whole_model else ''}); "
        f"per layer: {out.name}"
    )
    return plan.ratios(), note


@register_stage(
    "channel_prune", ChannelPruneParams, help="remove whole channels (Torch-Pruning dependency graph), then fine-tune"
)
def channel_prune_stage(model: nn.Module, ctx: Context, p: ChannelPruneParams) -> nn.Module:
    before = channel.channel_counts(model, p.select)
    extra: dict[str, Any] = {}
    ratio, round_to = p.ratio, p.round_to
    if p.rounding is not None:
        ratio, extra["note"] = _measured_ratios(model, ctx, p)
        round_to = None
    pruned = channel.prune_channels(
        model,
        ctx.example_input(batch=1),
        ratio=ratio,
        global_pruning=p.global_pruning,
        round_to=round_to,
        importance=p.importance,
        select=p.select,
        ignore=p.ignore,
        max_ratio=p.max_ratio,
    )
    if p.finetune is not None:
        extra["accuracy_before_finetune"] = ctx.evaluate(pruned)["accuracy"]
        teacher = Distillation(model, p.distill) if p.distill is not None else None
        if teacher is not None:
            d = p.distill
            taught = f"fine-tuned with the unpruned model as teacher (T {d.temperature:g}, alpha {d.alpha:g})"
            extra["note"] = f"{extra['note']}; {taught}" if "note" in extra else taught
        ctx.finetune(pruned, p.finetune, batch_size=p.batch_size, distill=teacher)
    after = channel.channel_counts(pruned, p.select)
    path = _save(ctx, pruned)
    ctx.log(
        ctx.record(
            ChannelPruneRecord,
            pruned,
            file=path,
            physical=True,
            method="channel",
            channels={n: (before[n], after[n]) for n in before if before[n] != after[n]},
            **extra,
        )
    )
    return pruned
