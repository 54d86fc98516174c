"""The ``lowrank`` recipe stage end to end on the built-in digits data and the demo CNN."""

from __future__ import annotations

import pytest
import torch

from tinytamer import codec
from tinytamer.errors import RecipeError
from tinytamer.recipe import parse_recipe, run

torch.set_num_threads(1)

BASE = {
    "name": "lowrank-test",
    "seed": 0,
    "data": {"name": "digits", "size": 16, "batch_size": 32, "limit": 600},
    "model": {"name": "democnn"},
}


def test_lowrank_stage_with_finetune(tmp_path) -> None:
    recipe = parse_recipe({**BASE, "stages": [
        {"train": {"base_lr": 0.05, "max_iter": 60, "display": 0}},
        {"lowrank": {"speedup": 1.5, "calib_batches": 4, "iters": 3,
                     "finetune": {"base_lr": 0.01, "max_iter": 20, "display": 0}}},
    ]})
    rundir = run(recipe, tmp_path / "run", progress=False, echo=lambda s: None)
    recs = {r["stage"]: r for r in rundir.records() if r.get("kind") == "stage"}
    trained, low = recs["train"], recs["lowrank"]
    assert low["physical"] is True and low["method"] == "nonlinear-asymmetric"
    assert low["macs"] <= trained["macs"] / 1.5
    assert low["macs_speedup"] >= 1.5 and low["ranks"]
    for key in ("accuracy", "accuracy_before_finetune", "params", "bytes", "layers"):
        assert key in low
    model = codec.load(rundir.path / low["file"])
    name, rank = next(iter(low["ranks"].items()))
    assert model.get_submodule(name)[0].weight.shape[0] == rank


def test_lowrank_stage_rejects_bad_parameters() -> None:
    with pytest.raises(RecipeError, match="lowrank.method"):
        parse_recipe({**BASE, "stages": [{"lowrank": {"method": "tucker"}}]})
    with pytest.raises(RecipeError, match="lowrank.speedup"):
        parse_recipe({**BASE, "stages": [{"lowrank": {"speedup": 0.9}}]})
