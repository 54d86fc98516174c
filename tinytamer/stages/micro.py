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

from pydantic import Field
from torch import nn

from tinytamer.recipe import Context, StageParams, register_stage
from tinytamer.records import MicroRecord


class MicroParams(StageParams):
    target: Literal["cortex-m4", "cortex-m7", "micro-host"] = Field(
        "cortex-m4", description="device: an emulated Cortex-M, or C compiled for this host")
    calib_batches: int = Field(4, ge=1, description="training batches the int8 ranges are "
                               "calibrated on")
    calib_method: Literal["minmax", "percentile", "mse"] = Field(
        "minmax", description="how the int8 activation ranges are chosen")
    eval_samples: int = Field(200, ge=1, description="test samples scored on the device")
    flash_budget: int | None = Field(None, description="refuse a program larger than this many "
                                     "bytes of flash")
    sram_budget: int | None = Field(None, description="refuse a program needing more than this "
                                    "many bytes of SRAM")
    schedules: Literal["default", "portable", "tuned"] = Field(
        "default", description="kernels: default (DSP where the device has it), portable (plain "
        "C), tuned (measured per layer on the device)")


@register_stage("micro", MicroParams,
                help="deploy as generated C on an emulated Cortex-M (or the host) and measure")
def micro_stage(model: nn.Module, ctx: Context, p: MicroParams) -> nn.Module:
    from tinytamer.calib import Calibration
    from tinytamer.deploy import runtime_accuracy
    from tinytamer.targets.base import get_target

    target = get_target(p.target)
    calib = Calibration(ctx.train_loader(), limit=p.calib_batches)
    deployed = target.compile(model, [ctx.example_input(1)], ctx.stage_dir / "deploy",
                              calib=calib, calib_method=p.calib_method,
                              flash_budget=p.flash_budget, sram_budget=p.sram_budget,
                              schedules=p.schedules)
    # The first eval_samples test samples, through the device (a bar: the emulator is slow).
    acc = runtime_accuracy(deployed, model, ctx.test_loader(), p.eval_samples,
                           progress=ctx.progress)
    cost = deployed.measure()
    elf = deployed.program.arm.elf if deployed.program.arm is not None else None
    ctx.log(ctx.record(
        MicroRecord, model, file=elf, accuracy=ctx.evaluate(model)["accuracy"],
        target=p.target,
        precision=deployed.precision,
        schedules=p.schedules,
        device_accuracy=acc["accuracy"],
        device_accuracy_samples=acc["n"],
        device_accuracy_total=acc["total"],
        parity=deployed.parity,
        bit_exact_inputs=deployed.info.get("bit_exact_inputs"),
        instructions=cost.instructions,
        est_cycles=cost.est_cycles,
        flash_bytes=cost.flash_bytes,
        sram_bytes=cost.sram_bytes,
        arena_bytes=cost.extra["arena_bytes"],
        memory_plan=cost.extra["memory_plan"],
        per_layer=cost.extra.get("per_layer"),
        cycle_table=cost.extra.get("cycle_table"),
    ))
    return model
