"""The pruning recipe stages end to end on the built-in digits data and the demo CNN."""

from __future__ import annotations

import pytest
import torch

from tinytamer import codec
from tinytamer.errors import RecipeError
from tinytamer.recipe import parse_recipe

TRAIN = {"train": {"base_lr": 0.05, "max_iter": 80, "display": 0}}


def test_sensitivity_then_agp_prune_then_channel_prune(digits_recipe, run_stages) -> None:
    recs, rundir = run_stages(
        digits_recipe(
            "prune-test",
            [
                TRAIN,
                {"sensitivity": {"sparsities": [0.3, 0.6, 0.9], "max_drop": 0.05}},
                {
                    "prune": {
                        "sparsity": "sensitivity",
                        "schedule": {"type": "agp", "start": 0, "end": 20, "frequency": 5},
                        "finetune": {"base_lr": 0.01, "max_iter": 30, "display": 0},
                    }
                },
                {
                    "channel_prune": {
                        "ratio": 0.5,
                        "round_to": 4,
                        "finetune": {"base_lr": 0.01, "max_iter": 20, "display": 0},
                    }
                },
            ],
        )
    )

    sens = recs["sensitivity"]
    assert (rundir.path / sens["plot"]).read_bytes()[:4] == b"\x89PNG"
    assert set(sens["chosen"]) == {"features.0", "features.3", "classifier.1"}
    assert (rundir.path / "stages" / "01_sensitivity" / "sensitivity.json").is_file()

    pr = recs["prune"]
    assert pr["physical"] is False and pr["schedule"] == "agp"
    chosen = {k: v for k, v in sens["chosen"].items() if v > 0}
    for name, s in chosen.items():
        assert pr["layers"][name] == pytest.approx(s, abs=0.02)
    assert pr["nonzero_params"] < pr["params"]
    for key in ("accuracy", "params", "nonzero_params", "macs", "bytes"):
        assert key in pr

    ch = recs["channel_prune"]
    assert ch["physical"] is True
    assert ch["params"] < pr["params"] and ch["macs"] < pr["macs"]
    assert ch["channels"]["features.0"] == [8, 4] and ch["channels"]["features.3"] == [16, 8]
    assert "classifier.1" not in ch["channels"]  # the classifier keeps its 10 outputs
    model = codec.load(rundir.path / ch["file"])
    assert model.features[0].out_channels == 4
    assert model(torch.randn(1, 1, 16, 16)).shape == (1, 10)


def test_oneshot_and_iterative_prune(digits_recipe, run_stages) -> None:
    _, rundir = run_stages(
        digits_recipe(
            "prune-test",
            [
                TRAIN,
                {
                    "prune": {
                        "sparsity": 0.5,
                        "select": {"types": ["Conv2d"]},
                        "finetune": {
                            "base_lr": 0.01,
                            "max_iter": 10,
                            "display": 0,
                            "regularization_type": "L1",
                            "weight_decay": 1e-3,
                        },
                    }
                },
                {
                    "prune": {
                        "sparsity": 0.75,
                        "threshold_mode": "sparsity",
                        "schedule": {"type": "iterative", "rounds": 2},
                        "finetune": {"base_lr": 0.01, "max_iter": 10, "display": 0},
                    }
                },
            ],
        )
    )
    oneshot, iterative = [r for r in rundir.records() if r.get("stage") == "prune" and r["kind"] == "stage"]
    assert set(oneshot["layers"]) == {"features.0", "features.3"}
    assert all(s == pytest.approx(0.5, abs=0.02) for s in oneshot["layers"].values())
    assert "accuracy_before_finetune" in oneshot
    assert iterative["sparsity"] == pytest.approx(0.75, abs=0.02)
    assert (rundir.path / "stages" / "02_prune" / "round2").is_dir()


def test_recipe_errors(digits_recipe) -> None:
    with pytest.raises(RecipeError, match="end"):
        parse_recipe(digits_recipe("prune-test", [{"prune": {"schedule": {"type": "agp"}}}]))
    with pytest.raises(RecipeError, match="spasity"):
        parse_recipe(digits_recipe("prune-test", [{"prune": {"spasity": 0.5}}]))
    with pytest.raises(RecipeError, match="importance"):
        parse_recipe(digits_recipe("prune-test", [{"channel_prune": {"importance": "l3"}}]))
    recipe = parse_recipe(digits_recipe("prune-test", [{"channel_prune": {"global": True, "ratio": 0.3}}]))
    assert recipe.stages[0][1].global_pruning is True
