"""Recipe stage ``lowrank``: low-rank approximation (Zhang et al. 2015), then optional fine-tuning.

::

    stages:
      - lowrank:
          speedup: 2.0                    # whole-model MAC reduction; ranks chosen per layer
          method: nonlinear-asymmetric    # or nonlinear, linear, svd
          scheme: channel                 # or spatial (k x 1 then 1 x k)
          select: {exclude: [fc]}
          ranks: {layer3.0.conv2: 16}     # optional: fix some layers' ranks
          calib_batches: 8                # training batches the responses are sampled from
          finetune: {base_lr: 0.01, epochs: 2}

The record holds the usual model record (accuracy, params, MACs, bytes of the codec
file), ``physical: true`` (layers really are replaced by smaller ones), the MAC
speed-up, each layer's rank, response error and why a layer was skipped.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field
from torch import nn

from tinytamer import codec
from tinytamer.calib import Calibration
from tinytamer.compress import lowrank
from tinytamer.compress.selector import Selector
from tinytamer.recipe import Context, StageParams, register_stage
from tinytamer.records import LowRankRecord
from tinytamer.train import SolverConfig


class LowRankParams(StageParams):
    speedup: float | None = Field(
        None, gt=1, description="whole-model MAC reduction (default 2.0 unless ranks are given)"
    )
    ranks: dict[str, int] | None = Field(None, description="fixed ranks for named layers")
    method: lowrank.Method = Field(
        "nonlinear-asymmetric",
        description="Zhang et al. 2015 Sec. 3: linear (PCA of "
        "responses), nonlinear (through the ReLU), nonlinear-asymmetric (inputs from the "
        "approximated layers before), or svd of the weights",
    )
    scheme: lowrank.Scheme = Field(
        "channel",
        description="channel (Zhang et al.: k x k conv then 1x1) or spatial (Jaderberg et al. 2014: "
        "k x 1 then 1 x k, fitted to the weights); per layer: select.overrides {scheme: spatial}",
    )
    keep_bn: bool = Field(
        True, description="keep a decomposed conv's BatchNorm after the pair (false: fold it in and drop it)"
    )
    select: Selector | None = Field(None, description="layers to approximate (default: every conv / linear)")
    calib_batches: int = Field(8, ge=1, description="training batches used as calibration data")
    samples_per_batch: int = Field(512, ge=1, description="response positions sampled per batch")
    iters: int = Field(10, ge=0, description="alternating iterations of the nonlinear solver")
    finetune: SolverConfig | None = Field(None, description="Solver settings for fine-tuning")
    batch_size: int | None = Field(None, gt=0, description="training mini-batch size (default: data.batch_size)")


@register_stage(
    "lowrank", LowRankParams, help="low-rank approximation of conv/FC layers (Zhang et al. 2015), then fine-tune"
)
def lowrank_stage(model: nn.Module, ctx: Context, p: LowRankParams) -> nn.Module:
    calib = Calibration(ctx.train_loader(p.batch_size), limit=p.calib_batches)
    result = lowrank.approximate(
        model,
        calib,
        speedup=p.speedup,
        ranks=p.ranks,
        method=p.method,
        select=p.select,
        samples_per_batch=p.samples_per_batch,
        iters=p.iters,
        seed=ctx.seed,
        scheme=p.scheme,
        keep_bn=p.keep_bn,
    )
    approx = result.model
    extra: dict[str, Any] = {}
    if p.finetune is not None:
        extra["accuracy_before_finetune"] = ctx.evaluate(approx)["accuracy"]
        ctx.finetune(approx, p.finetune, batch_size=p.batch_size)
    path = ctx.stage_dir / "model.tt"
    codec.save(approx, path)
    ctx.log(ctx.record(LowRankRecord, approx, file=path, physical=True, **result.summary(), **extra))
    return approx
