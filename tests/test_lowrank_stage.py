"""The ``lowrank`` recipe stage end to end on the built-in digits data and the demo CNN."""

from __future__ import annotations

import pytest

from tinytamer import codec
from tinytamer.errors import RecipeError
from tinytamer.recipe import parse_recipe


def test_lowrank_stage_with_finetune(digits_recipe, run_stages) -> None:
    recs, rundir = run_stages(
        digits_recipe(
            "lowrank-test",
            [
                {"train": {"base_lr": 0.05, "max_iter": 60, "display": 0}},
                {
                    "lowrank": {
                        "speedup": 1.5,
                        "calib_batches": 4,
                        "iters": 3,
                        "finetune": {"base_lr": 0.01, "max_iter": 20, "display": 0},
                    }
                },
            ],
        )
    )
    trained, low = recs["train"], recs["lowrank"]
    assert low["physical"] is True and low["method"] == "nonlinear-asymmetric"
    assert low["macs"] <= trained["macs"] / 1.5
    assert low["macs_speedup"] >= 1.5 and low["ranks"]
    for key in ("accuracy", "accuracy_before_finetune", "params", "bytes", "layers"):
        assert key in low
    model = codec.load(rundir.path / low["file"])
    name, rank = next(iter(low["ranks"].items()))
    assert model.get_submodule(name)[0].weight.shape[0] == rank


def test_lowrank_stage_rejects_bad_parameters(digits_recipe) -> None:
    with pytest.raises(RecipeError, match="lowrank.method"):
        parse_recipe(digits_recipe("lowrank-test", [{"lowrank": {"method": "tucker"}}]))
    with pytest.raises(RecipeError, match="lowrank.speedup"):
        parse_recipe(digits_recipe("lowrank-test", [{"lowrank": {"speedup": 0.9}}]))
