"""Stages ``kmeans_share`` (Deep Compression weight sharing) and ``save_compressed`` (the model file).

::

    stages:
      - kmeans_share:
          conv_bits: 8                 # Han et al. 2016: 8 bits conv, 5 bits fc
          linear_bits: 5
          select: {overrides: {"classifier.*": {bits: 4}}}
          finetune: {base_lr: 0.001, max_iter: 2000}   # trains the centroids
      - save_compressed: {file: model.tt}              # smallest exact encoding per tensor
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator
from torch import nn

from tinytamer import codec
from tinytamer.compress import share
from tinytamer.compress.selector import Selector
from tinytamer.recipe import Context, StageParams, register_stage
from tinytamer.records import SaveCompressedRecord, ShareRecord
from tinytamer.train import SolverConfig


class KmeansShareParams(StageParams):
    bits: int | None = Field(None, ge=1, le=16, description="codebook bits for every layer (default: by layer type)")
    conv_bits: int = Field(8, ge=1, le=16, description="codebook bits of convolutions")
    linear_bits: int = Field(5, ge=1, le=16, description="codebook bits of fully connected layers")
    init: share.Init = Field("linear", description="centroid initialization: linear, density, random")
    select: Selector | None = Field(
        None, description="layers to share (default: every conv / linear); per layer: overrides {bits: n}"
    )
    finetune: SolverConfig | None = Field(None, description="Solver settings for training the centroids")
    batch_size: int | None = Field(None, gt=0, description="training mini-batch size (default: data.batch_size)")


@register_stage(
    "kmeans_share", KmeansShareParams, help="k-means weight sharing per layer (Deep Compression) + centroid fine-tuning"
)
def kmeans_share_stage(model: nn.Module, ctx: Context, p: KmeansShareParams) -> nn.Module:
    share.kmeans(
        model,
        bits=p.bits,
        select=p.select,
        init=p.init,
        conv_bits=p.conv_bits,
        linear_bits=p.linear_bits,
        seed=ctx.seed,
    )
    shared = share.shared_layers(model)
    before = ctx.evaluate(model)["accuracy"]
    if p.finetune is not None:
        ctx.finetune(model, p.finetune, batch_size=p.batch_size)
    share.finalize(model)
    # Distinct non-zero values per layer: at most 2**bits (fewer when clusters emptied).
    used = {name: int(m.weight.detach()[m.weight != 0].unique().numel()) for name, m in shared.items()}
    path = ctx.stage_dir / "model.tt"
    report = codec.save(model, path)
    ctx.log(
        ctx.record(
            ShareRecord,
            model,
            file=path,
            accuracy_before_finetune=before,
            centroids_used=used,
            ratio=report.ratio,
            by_encoding=report.by_encoding(),
        )
    )
    return model


class SaveCompressedParams(StageParams):
    file: str = Field("model.tt", description="file name inside the stage folder")
    encodings: dict[str, str] = Field(default_factory=dict, description="tensor name or regex -> encoding to force")
    allow: list[str] | None = Field(None, description="encodings to choose from (default: all)")

    @field_validator("encodings", "allow")
    @classmethod
    def _known(cls, value: dict[str, str] | list[str] | None) -> dict[str, str] | list[str] | None:
        names = value.values() if isinstance(value, dict) else value or []
        unknown = sorted(set(names) - set(codec.ENCODINGS) - {"auto"})
        if unknown:
            raise ValueError(f"unknown encoding(s) {unknown} (known: {', '.join(codec.ENCODINGS)})")
        return value

    @field_validator("file")
    @classmethod
    def _plain_name(cls, value: str) -> str:
        if Path(value).name != value:
            raise ValueError(f"must be a plain file name, got '{value}'")
        return value


@register_stage(
    "save_compressed",
    SaveCompressedParams,
    help="save the model as one compressed file; logs its bytes on disk and the ratio",
)
def save_compressed_stage(model: nn.Module, ctx: Context, p: SaveCompressedParams) -> nn.Module:
    path = ctx.stage_dir / p.file
    report = codec.save(model, path, encodings=p.encodings, allow=p.allow)
    ctx.log(
        ctx.record(
            SaveCompressedRecord,
            model,
            file=path,
            ratio=report.ratio,
            tensor_bytes=report.dense_bytes,
            by_encoding=report.by_encoding(),
        )
    )
    return model
