"""Calibration: run real inputs through a prepared model and set every activation range."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import fx

from tinytamer.calib import Calibration, as_calibration
from tinytamer.compress.int8.modules import fake_quant_acts
from tinytamer.compress.int8.ranges import CALIB_METHODS, CalibMethod
from tinytamer.errors import ModelError, RecipeError


def calibrate(
    gm: fx.GraphModule,
    batches: Calibration | Iterable[Any],
    method: CalibMethod = "minmax",
    percentile: float = 99.99,
    num_batches: int | None = None,
) -> fx.GraphModule:
    """Run the calibration batches (a Calibration, or tensors or ``(x, y)`` tuples; the first
    ``num_batches`` when given) and set every activation range by ``method``."""
    if method not in CALIB_METHODS:
        raise RecipeError(f"calibration method must be one of {CALIB_METHODS}, got '{method}'")
    if not 50.0 < percentile <= 100.0:
        raise RecipeError(f"calibration percentile must be in (50, 100], got {percentile}")
    acts = fake_quant_acts(gm)
    if not acts:
        raise ModelError("calibrate: the model has no FakeQuantAct; build it with prepare()")
    calib = as_calibration(batches, num_batches, what="int8 calibration")
    modes = {name: fq.mode for name, fq in acts}
    was_training = gm.training
    device = next((p.device for p in gm.parameters()), torch.device("cpu"))
    for _, fq in acts:
        fq.reset()
        fq.mode = "observe"
    gm.eval()
    with torch.no_grad():
        for x in calib.batches():
            gm(x.to(device))
    for name, fq in acts:
        fq.compute_qparams(method, percentile)
        fq.mode = "qat" if modes[name] == "qat" else "quant"
    gm.train(was_training)
    return gm
