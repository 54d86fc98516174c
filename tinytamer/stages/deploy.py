"""Recipe stages ``deploy`` (one target, any kind) and ``bench`` (every target), measured.

The stages' own keys are the target-independent ones; every other key is an option of the
chosen target, validated against its ``Options`` (``tamer list targets NAME``)::

    stages:
      - deploy: {target: onnxruntime, precision: int8, calib_method: entropy}
      - deploy: {target: cortex-m4, eval_limit: 200, schedules: tuned, sram_budget: 65536}
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, ConfigDict, Field, field_validator, model_validator
from torch import nn

from tinytamer.calib import Calibration
from tinytamer.deploy import bench, console_echo, default_precision, deploy, valid_eval_limit
from tinytamer.errors import TamerError
from tinytamer.recipe import Context, StageParams, register_stage
from tinytamer.records import BenchRecord, DeployRecord, SaveCompressedRecord
from tinytamer.targets import get_target, list_targets
from tinytamer.targets.options import option_keys, validate_options


def _eval_limit(value: Any) -> Any:
    if not valid_eval_limit(value):
        raise ValueError("a whole number >= 1 or 'all'")
    return value


# A number of test samples, or "all"; unset: the target's default (deploy.eval_limit_for).
EvalLimit = Annotated[int | Literal["all"] | None, BeforeValidator(_eval_limit)]


def _known_target(name: str) -> str:
    try:
        get_target(name)
    except TamerError as exc:
        # pydantic reports ValueErrors with the recipe key; the message lists the targets.
        raise ValueError(str(exc)) from None
    return name


def _unknown_keys(unknown: list[str], own: Iterable[str], options: list[str], whose: str, listing: str) -> str:
    """Which keys are unknown and what the target(s) take: short, for the recipe's one-line
    error (the stage's own keys are listed by `tamer list stages`)."""
    close = difflib.get_close_matches(unknown[0], [*own, *options], n=1)
    hint = f" - did you mean '{close[0]}'?" if close else ""
    return (
        f"unknown key {', '.join(map(repr, unknown))}{hint} (options of {whose}: "
        f"{', '.join(options) or 'none'}; `{listing}`)"
    )


class DeployParams(StageParams):
    """The target-independent keys; any other key is an option of the target."""

    # Extra keys are the target's options, checked against its Options model below.
    model_config = ConfigDict(extra="allow")

    target: str = Field("onnxruntime", description="where to deploy (see `tamer list targets`)")
    precision: Literal["fp32", "fp16", "int8"] | None = Field(
        None,
        description="numeric precision on the target (default: fp32, or what the target "
        "runs where it runs no fp32; `tamer list targets NAME`: which)",
    )
    threads: int = Field(2, ge=1, description="CPU threads the runtime may use")
    batch: int = Field(1, ge=1, description="batch size the latency is measured at")
    repeats: int = Field(30, ge=0, description="timed runs (0: do not measure latency)")
    calib_batches: int = Field(8, ge=1, description="training batches to calibrate int8 on (and check parity on)")
    eval_limit: EvalLimit = Field(
        None,
        description="test samples scored through the runtime, "
        "or 'all' (default: 1000 on the emulated Cortex-M targets, "
        "all elsewhere)",
    )
    isolate: bool = Field(True, description="measure in a child process (peak memory)")

    @field_validator("target")
    @classmethod
    def _check_target(cls, v: str) -> str:
        return _known_target(v)

    @model_validator(mode="after")
    def _check_options(self) -> DeployParams:
        target = get_target(self.target)
        extra = self.model_extra or {}
        allowed = option_keys(target)
        unknown = [k for k in extra if k not in allowed]
        if unknown:
            raise ValueError(
                _unknown_keys(
                    unknown,
                    type(self).model_fields,
                    allowed,
                    f"target '{self.target}'",
                    f"tamer list targets {self.target}",
                )
            )
        try:
            validate_options(target, extra)
        except TamerError as exc:
            raise ValueError(str(exc)) from None
        if self.precision is None:
            self.precision = default_precision(target)
        return self

    @property
    def options(self) -> dict[str, Any]:
        """The target options the recipe gave (validated)."""
        return dict(self.model_extra or {})


@register_stage("deploy", DeployParams, help="deploy to any target: parity check, cost, accuracy through the runtime")
def deploy_stage(model: nn.Module, ctx: Context, p: DeployParams) -> nn.Module:
    # A compressed file saved earlier in this run: its size is kept beside the runtime's.
    saved = ctx.last_record(SaveCompressedRecord)
    source = ctx.rundir.path / saved.file if saved is not None and saved.file else None
    folder = ctx.stage_dir / f"{p.target}-{p.precision}"
    deployed, rep = deploy(
        model,
        p.target,
        folder,
        example_input=ctx.example_input(),
        precision=p.precision,
        calib=Calibration(ctx.train_loader(), limit=p.calib_batches),
        test_loader=ctx.test_loader(),
        eval_limit=p.eval_limit,
        threads=p.threads,
        batch=p.batch,
        repeats=p.repeats,
        isolate=p.isolate,
        source_file=source,
        progress=ctx.progress,
        **p.options,
    )
    cost = rep.cost or {}
    extra = cost.get("extra", {})
    ctx.log(
        ctx.record(
            DeployRecord,
            model,
            accuracy=rep.accuracy,
            accuracy_runtime=p.target,
            accuracy_torch=rep.accuracy_torch,
            map50=rep.map50,  # a detector: accuracy is mAP@0.5, these beside it
            map50_95=rep.map50_95,
            eval_samples=rep.eval_samples,
            eval_total=rep.eval_total,
            target=p.target,
            precision=p.precision,
            options=rep.options,
            bytes=rep.artifact_bytes,
            compressed_bytes=rep.source_bytes,
            artifacts=[str((folder / a).relative_to(ctx.rundir.path)) for a in rep.artifacts],
            latency_ms=cost.get("latency_ms_median"),
            peak_rss_mb=cost.get("peak_rss_mb"),
            int8_params=rep.info.get("int8_params"),
            cost=rep.cost,
            parity=rep.parity,
            bit_exact_inputs=deployed.info.get("bit_exact_inputs"),
            instructions=cost.get("instructions"),
            est_cycles=cost.get("est_cycles"),
            memory_profile=cost.get("memory_profile"),
            est_time_ms=cost.get("est_time_ms"),
            cycle_table=extra.get("cycle_table"),
            flash_bytes=cost.get("flash_bytes"),
            sram_bytes=cost.get("sram_bytes"),
            arena_bytes=extra.get("arena_bytes"),
            memory_plan=extra.get("memory_plan"),
            per_layer=extra.get("per_layer"),
        )
    )
    return model


class BenchParams(StageParams):
    """Keys of every bench; any other key is a target option, given to each target whose
    Options declare it (e.g. ``trials`` to tvm)."""

    model_config = ConfigDict(extra="allow")

    targets: list[str] | None = Field(None, description="default: every installed target")
    precisions: list[Literal["fp32", "fp16", "int8"]] | None = Field(
        None, description="default: every precision each target runs"
    )
    batches: list[int] = Field([1], description="batch sizes the latency is measured at")
    threads: int = Field(2, ge=1, description="CPU threads each runtime may use")
    repeats: int = Field(30, ge=1, description="timed runs per model and batch size")
    calib_batches: int = Field(8, ge=1, description="training batches to calibrate int8 on (and check parity on)")
    eval_limit: EvalLimit = Field(
        None,
        description="test samples scored through each "
        "runtime, or 'all' (default: 1000 on the emulated Cortex-M "
        "targets, all elsewhere)",
    )
    max_acc_drop: float | None = Field(None, ge=0, description="accuracy a pick may lose (0.01 = one point)")
    isolate: bool = Field(True, description="measure in a child process (peak memory)")
    rounds: int = Field(1, ge=1, description="times each model is timed, round-robin; the median of rounds is reported")
    settle_s: float = Field(
        0.0, ge=0, description="before each timing, wait up to this long for the load average to fall below threads"
    )

    @field_validator("targets")
    @classmethod
    def _check_targets(cls, v: list[str] | None) -> list[str] | None:
        return v if v is None else [_known_target(t) for t in v]

    @model_validator(mode="after")
    def _check_options(self) -> BenchParams:
        names = self.targets or list_targets()
        allowed = list(dict.fromkeys(k for n in names for k in option_keys(get_target(n))))
        unknown = [k for k in self.model_extra or {} if k not in allowed]
        if unknown:
            raise ValueError(
                _unknown_keys(
                    unknown,
                    type(self).model_fields,
                    allowed,
                    "targets" if self.targets is None else f"targets {', '.join(names)}",
                    "tamer list targets NAME",
                )
            )
        try:
            self.target_options()
        except TamerError as exc:
            raise ValueError(str(exc)) from None
        return self

    def target_options(self) -> dict[str, dict[str, Any]]:
        """Per target, the options given that it declares (validated)."""
        extra = self.model_extra or {}
        out = {}
        for name in self.targets or list_targets():
            target = get_target(name)
            out[name] = {k: v for k, v in extra.items() if k in option_keys(target)}
            validate_options(target, out[name])
        return out


@register_stage(
    "bench", BenchParams, help="every target and precision vs PyTorch fp32: latency, memory, size, accuracy"
)
def bench_stage(model: nn.Module, ctx: Context, p: BenchParams) -> nn.Module:
    report = bench(
        model,
        ctx.stage_dir,
        example_input=ctx.example_input(),
        calib=Calibration(ctx.train_loader(), limit=p.calib_batches),
        test_loader=ctx.test_loader(),
        targets=p.targets,
        precisions=p.precisions,
        batches=p.batches,
        threads=p.threads,
        repeats=p.repeats,
        eval_limit=p.eval_limit,
        isolate=p.isolate,
        rounds=p.rounds,
        settle_s=p.settle_s,
        target_options=p.target_options(),
        progress=ctx.progress,
        echo=console_echo,
    )
    best = report.best(p.max_acc_drop, batch=p.batches[0])
    ctx.log(
        ctx.record(
            BenchRecord,
            model,
            bench=report.to_dict()["rows"],
            best=None
            if best is None
            else {
                "target": best.target,
                "precision": best.precision,
                "speedup": best.speedup,
                "acc_delta": best.acc_delta,
            },
            max_acc_drop=p.max_acc_drop,
        )
    )
    return model
