"""The ``quantize``, ``fixed_point`` and ``ttq`` recipe stages end to end on digits + democnn."""

from __future__ import annotations

import json

import pytest
from torch import nn

from tinytamer.checkpoint import load_checkpoint
from tinytamer.compress import int8
from tinytamer.compress.fixedpoint import FixedPointConv2d
from tinytamer.errors import RecipeError
from tinytamer.qgraph import as_graph_module
from tinytamer.recipe import parse_recipe

TRAIN = {"train": {"base_lr": 0.05, "max_iter": 80, "display": 0}}


def test_quantize_stage_gives_shared_layers_one_scale(digits_recipe, run_stages) -> None:
    recs, rundir = run_stages(
        digits_recipe(
            "quant-one-scale",
            [
                TRAIN,
                {"kmeans_share": {"conv_bits": 4, "linear_bits": 4}},
                {
                    "quantize": {
                        "calib_batches": 2,
                        "shared_one_scale": True,
                        "select": {"overrides": {"classifier": {"bits": 6}}},
                    }
                },
            ],
        )
    )
    q = recs["quantize"]
    assert "classifier.1" in q["one_scale_layers"]
    # The user's override for the layer still holds beside the added one scale.
    assert q["weight_bits"]["classifier.1"] == 6
    gm = as_graph_module(load_checkpoint(rundir.path / rundir.completed()[-1]["checkpoint"]))
    fc = gm.get_submodule("classifier.1")
    assert fc.w_per_channel is False and len(set(fc.w_scale.tolist())) == 1


def test_quantize_ptq_and_qat_stages(tmp_path, digits_recipe, run_stages) -> None:
    recs, rundir = run_stages(
        digits_recipe(
            "quant-test",
            [
                TRAIN,
                {
                    "quantize": {
                        "calibration": "percentile",
                        "calib_batches": 4,
                        "select": {"overrides": {"classifier": {"bits": 4}}},
                    }
                },
            ],
        )
    )
    q = recs["quantize"]
    assert q["accuracy"] >= recs["train"]["accuracy"] - 0.05
    assert q["weight_bits"] == {"features.0": 8, "features.3": 8, "classifier.1": 4}
    params = json.loads((rundir.path / q["quant_params"]).read_text())
    assert params["aq_x"]["kind"] == "act" and len(params) == q["act_points"] + 3
    # The run folder's checkpoint rebuilds the quantized graph exactly.
    ckpt = rundir.path / rundir.completed()[-1]["checkpoint"]
    model = load_checkpoint(ckpt)
    gm = as_graph_module(model)
    assert int8.quant_params(gm) == params

    recs, _ = run_stages(
        digits_recipe(
            "quant-test",
            [
                TRAIN,
                {
                    "quantize": {
                        "method": "qat",
                        "weight_bits": 4,
                        "act_bits": 6,
                        "calib_batches": 2,
                        "finetune": {"base_lr": 0.01, "max_iter": 20, "display": 0},
                    }
                },
            ],
        ),
        tmp_path / "qat",
    )
    assert recs["quantize"]["accuracy"] >= recs["train"]["accuracy"] - 0.1


def test_fixed_point_and_ttq_stages(tmp_path, digits_recipe, run_stages) -> None:
    recs, rundir = run_stages(digits_recipe("quant-test", [TRAIN, {"fixed_point": {"bits": 8, "calib_batches": 2}}]))
    fp = recs["fixed_point"]
    assert set(fp["formats"]) == {"features.0", "features.3", "classifier.1"}
    assert fp["accuracy"] >= recs["train"]["accuracy"] - 0.03
    model = load_checkpoint(rundir.path / rundir.completed()[-1]["checkpoint"])
    assert isinstance(model.features[3], FixedPointConv2d)

    recs, rundir = run_stages(
        digits_recipe(
            "quant-test",
            [
                TRAIN,
                {"ttq": {"finetune": {"base_lr": 0.001, "max_iter": 20, "optimizer": "adam", "display": 0}}},
            ],
        ),
        tmp_path / "ttq",
    )
    assert set(recs["ttq"]["ternary_layers"]) == {"features.3"}  # first and last stay float
    model = load_checkpoint(rundir.path / rundir.completed()[-1]["checkpoint"])
    assert type(model.features[3]) is nn.Conv2d
    assert len(model.features[3].weight.unique()) <= 3


def test_stage_params_validated_up_front(digits_recipe) -> None:
    for bad in (
        {"quantize": {"weight_bits": 9}},
        {"quantize": {"method": "dynamic"}},
        {"quantize": {"select": {"typez": ["Conv2d"]}}},
        {"fixed_point": {"mode": "wild"}},
        {"ttq": {"t": 2}},
        {"ttq": {"finetune": {"base_lr": 0.1}}},
    ):
        with pytest.raises(RecipeError):
            parse_recipe(digits_recipe("quant-test", [bad]))
