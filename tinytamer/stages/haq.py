"""Stage ``haq``: mixed-precision bits per layer searched by HAQ with the hardware in the loop.

::

    stages:
      - haq:
          resource: flash          # cortex-m4 flash of the linked program (measured)
          ratio: 0.5               # budget: half the 8-bit figure (or budget: <absolute>)
          episodes: 300
          finetune_iters: 100      # the short fine-tune before each reward
      - save_compressed: {}
      - deploy: {target: cortex-m4}

The search scores candidates on the validation split (never the test split); the stage's
model is the best policy quantized and fine-tuned for ``final_iters``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import Field
from rich.progress import Progress
from torch import nn

from tinytamer.calib import Calibration
from tinytamer.compress.selector import Selector
from tinytamer.errors import RecipeError
from tinytamer.fileio import write_atomic
from tinytamer.recipe import Context, StageParams, register_stage
from tinytamer.records import HaqRecord
from tinytamer.search import haq


class HaqParams(StageParams):
    resource: Literal["flash", "weight_flash", "cycles", "file_bytes"] = Field(
        "flash",
        description="what the budget limits: flash (whole program, measured per build), "
        "weight_flash (weights only, predicted), cycles (estimated, per-layer table), "
        "file_bytes (compressed file after k-means sharing, measured)",
    )
    device: Literal["cortex-m4", "cortex-m7"] = Field(
        "cortex-m4", description="the micro device flash and cycles are measured on"
    )
    ratio: float = Field(0.5, gt=0, description="budget as a share of the 8-bit figure")
    budget: float | None = Field(None, gt=0, description="absolute budget (overrides ratio)")
    episodes: int = Field(300, ge=1, description="search episodes")
    warmup: int = Field(20, ge=0, description="episodes of random actions before learning")
    finetune_iters: int = Field(100, ge=0, description="SGD steps of the short fine-tune before each reward")
    finetune_lr: float = Field(1e-3, gt=0, description="its learning rate")
    final_iters: int = Field(500, ge=0, description="fine-tune steps of the chosen policy")
    val_batches: int | None = Field(None, ge=1, description="validation batches scored per episode (default: all)")
    calib_batches: int = Field(8, ge=1, description="training batches to calibrate on")
    select: Selector | None = Field(None, description="layers searched (default: every conv / linear)")
    search_acts: bool | None = Field(
        None,
        description="search activation bits too (default: only where the resource prices them; "
        "none of flash, weight_flash, cycles, file_bytes does, so activations stay at 8 bits)",
    )


@register_stage("haq", HaqParams, help="HAQ mixed-precision search (DDPG, hardware in the loop), Wang et al. 2019")
def haq_stage(model: nn.Module, ctx: Context, p: HaqParams) -> nn.Module:
    from tinytamer.train import evaluate

    if not len(ctx.data.val):
        raise RecipeError(
            f"haq: dataset '{ctx.recipe.data.name}' has no validation split to "
            "score candidates on (set data.val_fraction above 0)"
        )
    model = model.eval()
    calib = Calibration(ctx.train_loader(), limit=p.calib_batches)
    layers = haq.layer_infos(model, ctx.example_input(), p.select)
    quantizer: haq.Quantizer = "kmeans" if p.resource == "file_bytes" else "linear"
    work = ctx.stage_dir / "builds"
    work.mkdir(parents=True, exist_ok=True)
    if p.resource == "flash":
        resource = haq.micro_flash(model, calib, layers, device=p.device, workdir=work, select=p.select)
    elif p.resource == "weight_flash":
        resource = haq.weight_flash(model, layers)
    elif p.resource == "cycles":
        resource = haq.micro_cycles(model, calib, layers, device=p.device, workdir=work, select=p.select)
    else:
        resource = haq.compressed_bytes(model, layers, seed=ctx.seed, select=p.select)
    full = resource([haq.LayerBits(8, 8)] * len(layers))
    target = p.budget if p.budget is not None else p.ratio * full

    def score(m: nn.Module) -> float:
        return float(evaluate(m, ctx.val_loader(), max_batches=p.val_batches)["accuracy"])

    with Progress(disable=not ctx.progress) as bar:
        task = bar.add_task("haq episodes", total=p.episodes)

        def tick(e: haq.Episode) -> None:
            bar.update(task, advance=1, description=f"haq episode {e.episode + 1}: top-1 {e.accuracy:.3f}")

        result = haq.search(
            model,
            layers,
            resource,
            target,
            evaluate=score,
            calib=calib,
            train_loader=ctx.train_loader(),
            episodes=p.episodes,
            warmup=p.warmup,
            quantizer=quantizer,
            finetune_iters=p.finetune_iters,
            finetune_lr=p.finetune_lr,
            select=p.select,
            seed=ctx.seed,
            on_episode=tick,
            search_acts=p.search_acts,
        )
    qmodel = haq.quantize_policy(
        model,
        calib,
        layers,
        result.bits,
        quantizer=quantizer,
        select=p.select,
        train_loader=ctx.train_loader(),
        finetune_iters=p.final_iters,
        finetune_lr=p.finetune_lr,
        seed=ctx.seed,
    )
    if quantizer == "linear":
        from tinytamer.qgraph import QuantizedGraph

        qmodel = QuantizedGraph(qmodel)
    history = ctx.stage_dir / "history.json"
    write_atomic(
        history,
        json.dumps(
            [
                {
                    "episode": e.episode,
                    "bits": [list(b) for b in e.bits],
                    "cost": e.resource,
                    "accuracy": e.accuracy,
                    "reward": e.reward,
                }
                for e in result.history
            ]
        )
        + "\n",
    )
    rewards = haq.plot_rewards(result, ctx.stage_dir / "haq_rewards.png")
    policy = haq.plot_policy(result, ctx.stage_dir / "haq_policy.png")

    def rel(path: Path) -> str:
        return str(path.relative_to(ctx.rundir.path))

    ctx.log(
        ctx.record(
            HaqRecord,
            qmodel,
            resource=resource.name,
            resource_unit=resource.unit,
            resource_source=resource.source,
            budget=target,
            resource_cost=result.resource,
            resource_cost_8bit=full,
            quantizer=quantizer,
            episodes=p.episodes,
            val_accuracy_fp=result.fp_accuracy,
            val_accuracy=result.accuracy,
            reward=result.reward,
            policy=result.policy(),
            history=rel(history),
            reward_plot=rel(rewards),
            policy_plot=rel(policy),
        )
    )
    return qmodel
