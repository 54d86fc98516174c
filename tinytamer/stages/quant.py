"""Quantization stages: ``quantize`` (int8 / mixed PTQ or QAT), ``fixed_point`` and ``ttq``."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import Field
from torch import nn

from tinytamer.calib import Calibration
from tinytamer.compress import fixedpoint, int8, ttq
from tinytamer.compress.selector import Selector, layer_params, parse
from tinytamer.detect.decode import keep_head
from tinytamer.fileio import write_atomic
from tinytamer.qgraph import QuantizedGraph, as_graph_module
from tinytamer.recipe import Context, StageParams, register_stage
from tinytamer.records import FixedPointRecord, QuantizeRecord, TTQRecord
from tinytamer.train import SolverConfig


def _write_json(path: Path, payload: Any) -> Path:
    write_atomic(path, json.dumps(payload, indent=1) + "\n")
    return path


class QuantizeParams(StageParams):
    method: Literal["ptq", "qat"] = Field(
        "ptq", description="ptq: calibrate only; qat: then train with fake quantization"
    )
    calibration: Literal["minmax", "percentile", "mse"] = Field(
        "minmax", description="how activation ranges are chosen from the calibration batches"
    )
    percentile: float = Field(
        99.99, gt=50, le=100, description="percentile calibration: the range's percentile of |activation|"
    )
    weight_bits: int = Field(
        8,
        ge=2,
        le=8,
        description="weight bits (per layer: select.overrides {bits: n}; {per_channel: false}: one scale per layer)",
    )
    act_bits: int = Field(8, ge=2, le=8, description="activation bits (per layer: select.overrides {act_bits: n})")
    select: Selector | None = Field(None, description="layers to quantize (default: every conv / linear)")
    shared_one_scale: bool = Field(
        False,
        description="one weight scale for each layer whose weights are shared (k-means, ternary): "
        "one integer codebook per layer on the device (compress.int8.one_scale_overrides)",
    )
    calib_batches: int = Field(8, ge=1, description="training batches to calibrate on")
    finetune: SolverConfig | None = Field(
        None, description="QAT training (Solver settings); default 1 epoch of SGD at lr 1e-3"
    )


def _with_one_scale(model: nn.Module, select: Selector | None) -> Selector:
    """``select`` with ``per_channel: false`` added to each shared layer's own overrides (an
    exact-name entry first, holding whatever the user's first matching entry gives it)."""
    sel = parse(select)
    shared = {
        f"^{re.escape(name)}$": {**layer_params(sel, name, {}), "per_channel": False}
        for name in int8.one_scale_layers(model)
    }
    rest = {k: v for k, v in sel.overrides.items() if k not in shared}
    return sel.model_copy(update={"overrides": {**shared, **rest}})


@register_stage("quantize", QuantizeParams, help="int8 / mixed-precision quantization: post-training (ptq) or QAT")
def quantize_stage(model: nn.Module, ctx: Context, p: QuantizeParams) -> nn.Module:
    config = p.finetune or (SolverConfig(epochs=1, base_lr=1e-3) if p.method == "qat" else None)
    qmodel = QuantizedGraph(
        int8.quantize(
            model,
            Calibration(ctx.train_loader(), limit=p.calib_batches),
            select=_with_one_scale(model, p.select) if p.shared_one_scale else p.select,
            method=p.method,
            calibration=p.calibration,
            percentile=p.percentile,
            weight_bits=p.weight_bits,
            act_bits=p.act_bits,
            train=None if config is None else lambda gm: ctx.finetune(gm, config),
        )
    )
    keep_head(model, qmodel)  # a detector's anchors: scoring and saved checkpoints need them
    params = int8.quant_params(as_graph_module(qmodel))
    path = _write_json(ctx.stage_dir / "quant_params.json", params)
    ctx.log(
        ctx.record(
            QuantizeRecord,
            qmodel,
            method=p.method,
            calibration=p.calibration,
            quant_params=str(path.relative_to(ctx.rundir.path)),
            weight_bits={v["module"]: v["w_bits"] for v in params.values() if v["kind"] != "act"},
            act_points=sum(v["kind"] == "act" for v in params.values()),
            one_scale_layers=[v["module"] for v in params.values() if v.get("w_per_channel") is False],
        )
    )
    return qmodel


class FixedPointParams(StageParams):
    bits: int = Field(8, ge=2, le=16, description="word length of the weights (per layer: select.overrides {bits: n})")
    data_bits: int | None = Field(
        None, ge=2, le=16, description="word length of the data, every layer's output (None: bits)"
    )
    mode: Literal["dynamic", "static"] = Field(
        "dynamic", description="dynamic: a fixed-point format per layer; static: one for the model"
    )
    select: Selector | None = Field(None, description="layers to quantize (default: every conv / linear)")
    calib_batches: int = Field(8, ge=1, description="training batches the formats are chosen on")
    finetune: SolverConfig | None = Field(
        None, description="Solver settings for fine-tuning (weights snap back to the grid after)"
    )


@register_stage("fixed_point", FixedPointParams, help="dynamic (per-layer) or static fixed point, Qiu et al. 2016")
def fixed_point_stage(model: nn.Module, ctx: Context, p: FixedPointParams) -> nn.Module:
    qmodel = fixedpoint.quantize(
        model,
        Calibration(ctx.train_loader(), limit=p.calib_batches),
        bits=p.bits,
        mode=p.mode,
        select=p.select,
        data_bits=p.data_bits,
    )
    if p.finetune is not None:
        ctx.finetune(qmodel, p.finetune, hooks=[fixedpoint.SnapToGrid()])
    ctx.log(ctx.record(FixedPointRecord, qmodel, bits=p.bits, mode=p.mode, formats=fixedpoint.formats(qmodel)))
    return qmodel


class TTQParams(StageParams):
    t: float = Field(0.05, ge=0, lt=1, description="threshold factor: |w| <= t x max|w| becomes 0 (Zhu et al. eq. 9)")
    select: Selector | None = Field(None, description="default: every conv / linear except the first and the last")
    finetune: SolverConfig = Field(
        default_factory=lambda: SolverConfig(epochs=1, base_lr=1e-3, optimizer="adam"),
        description="Solver settings for training the ternary weights and scales",
    )


@register_stage("ttq", TTQParams, help="trained ternary quantization, Zhu et al. 2017")
def ttq_stage(model: nn.Module, ctx: Context, p: TTQParams) -> nn.Module:
    ttq.ternarize(model, t=p.t, select=p.select)
    ctx.finetune(model, p.finetune)
    layers = ttq.ternary_layers(model)
    ttq.finalize(model)
    ctx.log(ctx.record(TTQRecord, model, t=p.t, ternary_layers=layers))
    return model
