"""Recipe stages ``deploy`` (one target) and ``bench`` (every target), measured."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, field_validator
from torch import nn

from tinytamer.calib import Calibration
from tinytamer.deploy import bench, console_echo, deploy, valid_eval_limit
from tinytamer.recipe import Context, StageParams, register_stage
from tinytamer.records import BenchRecord, DeployRecord, SaveCompressedRecord
from tinytamer.targets.tvm import DEFAULT_TRIALS


def _eval_limit(value: Any) -> Any:
    if not valid_eval_limit(value):
        raise ValueError("a whole number >= 1 or 'all'")
    return value


# A number of test samples, or "all"; unset: the target's default (deploy.eval_limit_for).
EvalLimit = Annotated[int | Literal["all"] | None, BeforeValidator(_eval_limit)]


def _known_target(name: str) -> str:
    from tinytamer.errors import TamerError
    from tinytamer.targets import get_target

    try:
        get_target(name)
    except TamerError as exc:
        # pydantic reports ValueErrors with the recipe key; the message lists the targets.
        raise ValueError(str(exc)) from None
    return name


class DeployParams(StageParams):
    target: str = Field("onnxruntime", description="where to deploy (see `tamer list targets`)")
    precision: Literal["fp32", "fp16", "int8"] = Field(
        "fp32", description="numeric precision on the target (`tamer list targets NAME`: which)")
    threads: int = Field(2, ge=1, description="CPU threads the runtime may use")
    batch: int = Field(1, ge=1, description="batch size the latency is measured at")
    repeats: int = Field(30, ge=0, description="timed runs (0: do not measure latency)")
    calib_batches: int = Field(8, ge=1, description="training batches to calibrate int8 on")
    calib_method: Literal["minmax", "percentile", "entropy"] = Field(
        "minmax", description="how ORT's own int8 calibration sets activation ranges",
        json_schema_extra={"targets": ["onnxruntime"]})
    reduce_range: bool | None = Field(None, description="7-bit weights for ORT's own int8 "
                                      "calibration (default: on x86 CPUs without VNNI, whose "
                                      "u8 x s8 kernels saturate with 8-bit weights)",
                                      json_schema_extra={"targets": ["onnxruntime"]})
    eval_limit: EvalLimit = Field(None, description="test samples scored through the runtime, "
                                  "or 'all' (default: 1000 on the emulated Cortex-M targets, "
                                  "all elsewhere)")
    isolate: bool = Field(True, description="measure in a child process (peak memory)")
    use_qparams: bool = Field(True, description="int8 on onnxruntime of a model from the "
                              "quantize stage keeps its scales / zero points (else ORT "
                              "calibrates its own)", json_schema_extra={"targets": ["onnxruntime"]})
    trials: int = Field(DEFAULT_TRIALS, ge=0, description="target tvm: MetaSchedule trials per tuning task "
                        "(0: untuned, labelled so)", json_schema_extra={"targets": ["tvm"]})

    @field_validator("target")
    @classmethod
    def _check_target(cls, v: str) -> str:
        return _known_target(v)


@register_stage("deploy", DeployParams,
                help="deploy to a target: parity check, cost, accuracy through the runtime")
def deploy_stage(model: nn.Module, ctx: Context, p: DeployParams) -> nn.Module:
    from tinytamer.qgraph import QuantizedGraph

    options: dict[str, Any] = {}
    if p.target == "tvm":
        options["trials"] = p.trials
    if p.target == "onnxruntime" and p.precision == "int8":
        if p.use_qparams and isinstance(model, QuantizedGraph):
            options["qparams"] = model
        else:
            options["calib_method"] = p.calib_method
            options["reduce_range"] = p.reduce_range
    # A compressed file saved earlier in this run: its size is kept beside the runtime's.
    saved = ctx.last_record(SaveCompressedRecord)
    source = ctx.rundir.path / saved.file if saved is not None and saved.file else None
    folder = ctx.stage_dir / f"{p.target}-{p.precision}"
    _, rep = deploy(model, p.target, folder,
                    example_input=ctx.example_input(), precision=p.precision,
                    calib=Calibration(ctx.train_loader(), limit=p.calib_batches),
                    test_loader=ctx.test_loader(), eval_limit=p.eval_limit, threads=p.threads,
                    batch=p.batch, repeats=p.repeats, isolate=p.isolate, source_file=source,
                    progress=ctx.progress, **options)
    cost = rep.cost or {}
    ctx.log(ctx.record(
        DeployRecord, model, accuracy=rep.accuracy, accuracy_runtime=p.target,
        accuracy_torch=rep.accuracy_torch, eval_samples=rep.eval_samples,
        eval_total=rep.eval_total,
        target=p.target, precision=p.precision, bytes=rep.artifact_bytes,
        compressed_bytes=rep.source_bytes,
        artifacts=[str((folder / a).relative_to(ctx.rundir.path)) for a in rep.artifacts],
        latency_ms=cost.get("latency_ms_median"), peak_rss_mb=cost.get("peak_rss_mb"),
        int8_params=rep.info.get("int8_params"), cost=rep.cost, parity=rep.parity))
    return model


class BenchParams(StageParams):
    targets: list[str] | None = Field(None, description="default: every installed target")
    precisions: list[Literal["fp32", "fp16", "int8"]] | None = Field(
        None, description="default: every precision each target runs")
    batches: list[int] = Field([1], description="batch sizes the latency is measured at")
    threads: int = Field(2, ge=1, description="CPU threads each runtime may use")
    repeats: int = Field(30, ge=1, description="timed runs per model and batch size")
    calib_batches: int = Field(8, ge=1, description="training batches to calibrate int8 on "
                               "(and check parity on)")
    eval_limit: EvalLimit = Field(None, description="test samples scored through each "
                                  "runtime, or 'all' (default: 1000 on the emulated Cortex-M "
                                  "targets, all elsewhere)")
    max_acc_drop: float | None = Field(None, ge=0, description="accuracy a pick may lose (0.01 "
                                       "= one point)")
    isolate: bool = Field(True, description="measure in a child process (peak memory)")
    rounds: int = Field(1, ge=1, description="measure each model this many times round-robin, "
                        "keep the best round")
    trials: int = Field(DEFAULT_TRIALS, ge=0, description="target tvm: MetaSchedule trials per tuning task "
                        "(0: untuned, labelled so)", json_schema_extra={"targets": ["tvm"]})

    @field_validator("targets")
    @classmethod
    def _check_targets(cls, v: list[str] | None) -> list[str] | None:
        return v if v is None else [_known_target(t) for t in v]


@register_stage("bench", BenchParams,
                help="every target and precision vs PyTorch fp32: latency, memory, size, accuracy")
def bench_stage(model: nn.Module, ctx: Context, p: BenchParams) -> nn.Module:
    report = bench(model, ctx.stage_dir, example_input=ctx.example_input(),
                   calib=Calibration(ctx.train_loader(), limit=p.calib_batches),
                   test_loader=ctx.test_loader(), targets=p.targets, precisions=p.precisions,
                   batches=p.batches, threads=p.threads, repeats=p.repeats,
                   eval_limit=p.eval_limit, isolate=p.isolate, rounds=p.rounds,
                   target_options={"tvm": {"trials": p.trials}}, progress=ctx.progress,
                   echo=console_echo)
    best = report.best(p.max_acc_drop, batch=p.batches[0])
    ctx.log(ctx.record(BenchRecord, model, bench=report.to_dict()["rows"],
                       best=None if best is None else {"target": best.target,
                                                       "precision": best.precision,
                                                       "speedup": best.speedup,
                                                       "acc_delta": best.acc_delta},
                       max_acc_drop=p.max_acc_drop))
    return model
