"""The ``micro`` stage: deploy to a bare-metal device as generated C and measure it there.

::

    stages:
      - micro: {target: cortex-m4, eval_samples: 200, sram_budget: 65536}

quantize (PTQ on training batches, unless the model is already a converted
int8 GraphModule) -> lower -> generate C -> build the ELF -> bit-exact parity
on the emulator -> accuracy of the first ``eval_samples`` test samples run
through the emulated device -> exact instructions, estimated cycles, flash and
SRAM.  The stage returns the model it got; its artifacts (model.c/model.h, the
ELF, the linker map) stay in the stage folder.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from torch import nn

from tinytamer.recipe import Context, StageParams, register_stage


class MicroParams(StageParams):
    target: Literal["cortex-m4", "cortex-m7", "micro-host"] = "cortex-m4"
    calib_batches: int = 4
    calib_method: Literal["minmax", "percentile", "mse"] = "minmax"
    eval_samples: int = 200
    flash_budget: int | None = None
    sram_budget: int | None = None
    schedules: Literal["default", "portable", "tuned"] = "default"


def device_accuracy(deployed, dataset, n: int) -> tuple[float, np.ndarray, np.ndarray]:
    """Top-1 accuracy of the first ``n`` samples run through the device; also returns
    the inputs and labels used."""
    n = min(n, len(dataset))
    xs = torch.stack([dataset[i][0] for i in range(n)]).numpy()
    ys = np.array([int(dataset[i][1]) for i in range(n)])
    logits = deployed(xs)[0]
    return float((logits.argmax(1) == ys).mean()), xs, ys


@register_stage("micro", MicroParams,
                help="deploy as generated C on an emulated Cortex-M (or the host) and measure")
def micro_stage(model: nn.Module, ctx: Context, p: MicroParams) -> nn.Module:
    from tinytamer.targets.base import get_target

    target = get_target(p.target)
    calib = []
    for i, batch in enumerate(ctx.train_loader()):
        if i >= p.calib_batches:
            break
        calib.append(batch[0])
    deployed = target.compile(model, [ctx.example_input(1)], ctx.stage_dir / "deploy",
                              calib=calib, calib_method=p.calib_method,
                              flash_budget=p.flash_budget, sram_budget=p.sram_budget,
                              schedules=p.schedules)
    acc, xs, ys = device_accuracy(deployed, ctx.data.test, p.eval_samples)
    cost = deployed.measure()
    elf = deployed.program.arm.elf if deployed.program.arm is not None else None
    record = ctx.model_record(model, file=elf, accuracy=ctx.evaluate(model)["accuracy"])
    record.update({
        "target": p.target,
        "schedules": p.schedules,
        "device_accuracy": acc,
        "device_accuracy_samples": len(ys),
        "parity": deployed.parity,
        "bit_exact_inputs": deployed.info.get("bit_exact_inputs"),
        "instructions": cost.instructions,
        "est_cycles": cost.est_cycles,
        "flash_bytes": cost.flash_bytes,
        "sram_bytes": cost.sram_bytes,
        "arena_bytes": cost.extra["arena_bytes"],
        "memory_plan": cost.extra["memory_plan"],
        "per_layer": cost.extra.get("per_layer"),
        "cycle_table": cost.extra.get("cycle_table"),
    })
    ctx.log(record)
    return model
