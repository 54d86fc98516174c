"""The micro targets (micro-host, cortex-m4) and the ``micro`` recipe stage."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from torch import nn

from tinytamer.deploy import int8_quantizer
from tinytamer.errors import BackendMissing
from tinytamer.micro import toolchain
from tinytamer.targets.base import get_target
from tinytamer.targets.micro import BudgetExceeded

torch.set_num_threads(1)
needs_gcc = pytest.mark.skipif(shutil.which("gcc") is None, reason="host gcc is not installed")
needs_arm = pytest.mark.skipif(
    not (toolchain.arm_available() and toolchain.qemu_available()),
    reason="ARM toolchain or QEMU missing: run scripts/install-micro-toolchain.sh",
)


def _model():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(4, 8, 3, padding=1, groups=4),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 5),
    ).eval()


def _calib():
    g = torch.Generator().manual_seed(1)
    return [torch.randn(16, 1, 8, 8, generator=g) for _ in range(2)]


@needs_gcc
def test_micro_host_target(tmp_path):
    calib = _calib()
    dep = get_target("micro-host").compile(_model(), [calib[0][:1]], tmp_path, calib=calib, quantize=int8_quantizer)
    assert dep.info["bit_exact_inputs"] == 32
    assert dep.parity["ok"] and dep.parity["outputs"][0]["top1_agree"] >= 0.9
    out = dep(calib[1][:3].numpy())[0]
    assert out.shape == (3, 5) and out.dtype == np.float32
    cost = dep.measure()
    assert cost.sram_bytes == cost.extra["arena_bytes"] > 0 and cost.instructions is None


@needs_gcc
def test_budget_is_enforced(tmp_path):
    calib = _calib()
    with pytest.raises(BudgetExceeded, match="bytes of SRAM, over the budget of 16"):
        get_target("micro-host").compile(
            _model(), [calib[0][:1]], tmp_path, calib=calib, sram_budget=16, quantize=int8_quantizer
        )


def test_precision_and_missing_toolchain(tmp_path, monkeypatch):
    from tinytamer.errors import TamerError

    with pytest.raises(TamerError, match="int8 only"):
        get_target("cortex-m4").compile(_model(), [torch.zeros(1, 1, 8, 8)], tmp_path, precision="fp32")
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(BackendMissing, match="install-micro-toolchain.sh"):
        get_target("cortex-m4").compile(_model(), [torch.zeros(1, 1, 8, 8)], tmp_path)


@needs_arm
def test_cortex_m4_target_measures(tmp_path):
    calib = _calib()
    dep = get_target("cortex-m4").compile(_model(), [calib[0][:1]], tmp_path, calib=calib, quantize=int8_quantizer)
    assert dep.info["qemu_bit_exact_inputs"] == 4
    a, b = dep.measure(), dep.measure()
    assert a.instructions == b.instructions > 0  # exact and repeatable
    assert a.est_cycles >= a.instructions
    assert a.flash_bytes > 0 and a.sram_bytes >= a.extra["arena_bytes"]
    layers = a.extra["per_layer"]
    assert [r["layer"] for r in layers][0] == "0"
    assert sum(r["instructions"] for r in layers) <= a.instructions


@needs_arm
@pytest.mark.slow
def test_deploy_stage_on_cortex_m4_in_a_recipe(tmp_path):
    from tinytamer.recipe import parse_recipe, run

    recipe = parse_recipe(
        {
            "name": "micro-test",
            "seed": 0,
            "data": {"name": "digits", "size": 16, "batch_size": 32, "limit": 300},
            "model": {"name": "democnn"},
            "stages": [
                {"train": {"base_lr": 0.05, "max_iter": 60, "display": 0}},
                {"deploy": {"target": "cortex-m4", "eval_limit": 40, "calib_batches": 2, "schedules": "portable"}},
            ],
        }
    )
    rundir = run(recipe, tmp_path / "run", progress=False, echo=lambda s: None)
    rec = next(r for r in rundir.records() if r.get("stage") == "deploy")
    assert rec["eval_samples"] == 40 and rec["accuracy_runtime"] == "cortex-m4"
    assert abs(rec["accuracy"] - rec["accuracy_torch"]) <= 0.2
    assert rec["instructions"] > 0 and rec["flash_bytes"] > 0 and rec["bytes"] > 0
    assert rec["est_cycles"] >= rec["instructions"] and rec["cycle_table"]
    assert rec["options"]["schedules"] == "portable" and rec["bit_exact_inputs"] > 0


def test_a_float_model_without_a_quantizer_is_refused_clearly(tmp_path):
    from tinytamer.errors import ModelError

    calib = _calib()
    with pytest.raises(ModelError, match="given a float one: quantize it first"):
        get_target("micro-host").compile(_model(), [calib[0][:1]], tmp_path, calib=calib)
