"""The ``deploy`` and ``bench`` recipe stages on digits, after physical channel pruning."""

from __future__ import annotations

import pytest

from tinytamer.errors import RecipeError
from tinytamer.recipe import parse_recipe


@pytest.mark.slow  # trains, prunes, deploys and benches: ~40 s on a busy 2-core machine
def test_pruned_model_deploys_int8_and_benches(digits_recipe, run_stages) -> None:
    recs, rundir = run_stages(
        digits_recipe(
            "deploy-test",
            [
                {"train": {"base_lr": 0.05, "max_iter": 80, "display": 0}},
                {"channel_prune": {"ratio": 0.5, "round_to": 4}},
                {"save_compressed": {}},
                {
                    "deploy": {
                        "target": "onnxruntime",
                        "precision": "int8",
                        "repeats": 3,
                        "calib_batches": 2,
                        "isolate": False,
                    }
                },
                {
                    "bench": {
                        "targets": ["onnxruntime"],
                        "precisions": ["fp32"],
                        "repeats": 2,
                        "isolate": False,
                        "max_acc_drop": 0.01,
                    }
                },
            ],
            limit=400,
        )
    )
    dep, pruned = recs["deploy"], recs["channel_prune"]
    assert dep["target"] == "onnxruntime" and dep["precision"] == "int8"
    assert dep["macs"] == pruned["macs"]  # the pruned model, deployed unchanged
    assert dep["parity"]["ok"] and dep["parity"]["outputs"][0]["top1_agree"] >= 0.9
    assert abs(dep["accuracy"] - dep["accuracy_torch"]) <= 0.05
    assert dep["eval_samples"] > 0 and dep["latency_ms"] > 0
    art = rundir.path / dep["artifacts"][0]
    assert art.name == "model.int8.onnx" and dep["bytes"] == art.stat().st_size
    # Both sizes: the compressed file on disk, and the int8 model in the runtime.
    assert dep["compressed_bytes"] == recs["save_compressed"]["bytes"] > 0
    bench = recs["bench"]
    assert {(r["target"], r["precision"]) for r in bench["bench"]} == {("torch", "fp32"), ("onnxruntime", "fp32")}
    assert bench["best"]["target"] in ("torch", "onnxruntime")


@pytest.mark.slow  # trains, quantizes and deploys: ~30 s on a busy 2-core machine
def test_quantized_model_deploys_with_its_own_qparams(digits_recipe, run_stages) -> None:
    recs, rundir = run_stages(
        digits_recipe(
            "deploy-test",
            [
                {"train": {"base_lr": 0.05, "max_iter": 60, "display": 0}},
                {"quantize": {"calib_batches": 2}},
                {"deploy": {"target": "onnxruntime", "precision": "int8", "repeats": 0, "calib_batches": 2}},
            ],
            limit=400,
        )
    )
    dep = recs["deploy"]
    assert dep["int8_params"].startswith("ours") and dep["parity"]["ok"]
    # What ORT scores is what the quantize stage measured, up to a few samples.
    assert abs(dep["accuracy"] - recs["quantize"]["accuracy"]) <= 0.02
    assert dep["latency_ms"] is None  # repeats: 0


def test_unknown_target_fails_when_the_recipe_is_read(digits_recipe) -> None:
    with pytest.raises(RecipeError, match="unknown target 'tpu'"):
        parse_recipe(digits_recipe("deploy-test", [{"deploy": {"target": "tpu"}}], limit=400))


def _stage(digits_recipe, stage: dict):
    return parse_recipe(digits_recipe("deploy-test", [stage], limit=400)).stages[0][1]


def test_every_target_option_is_a_compile_keyword_with_its_default() -> None:
    """A target's Options declare keywords its compile takes, with the same defaults."""
    import inspect

    from tinytamer.targets import get_target, list_targets
    from tinytamer.targets.options import options_model

    for name in list_targets():
        target = get_target(name)
        params = inspect.signature(target.compile).parameters
        for key, field in options_model(target).model_fields.items():
            assert key in params, (name, key)
            assert field.description, (name, key)
            assert params[key].default == field.default, (name, key)


@pytest.mark.parametrize(
    "target, options",
    [
        ("cortex-m4", {"schedules": "tuned", "sram_budget": 65536, "calib_method": "mse"}),
        ("micro-host", {"schedules": "portable"}),
        ("onnxruntime", {"calib_method": "entropy", "reduce_range": True, "use_qparams": False}),
        ("tvm", {"trials": 0}),
        ("torch", {}),
    ],
)
def test_deploy_stage_takes_the_options_of_its_target(digits_recipe, target, options) -> None:
    p = _stage(digits_recipe, {"deploy": {"target": target, **options}})
    assert p.options == options


@pytest.mark.parametrize(
    "target, options, match",
    [
        ("cortex-m4", {"schedules": "fast"}, r"target 'cortex-m4' option schedules: Input should be"),
        (
            "cortex-m4",
            {"schedule": "tuned"},
            r"unknown key 'schedule' - did you mean 'schedules'\? "
            r"\(options of target 'cortex-m4': calib_method, schedules, flash_budget, sram_budget, "
            r"memory_profile, kernels",
        ),
        (
            "onnxruntime",
            {"trials": 4},
            r"options of target 'onnxruntime': calib_method, reduce_range, "
            r"use_qparams, exact_int8; `tamer list targets onnxruntime`",
        ),
        ("onnxruntime", {"calib_method": "mse"}, r"target 'onnxruntime' option calib_method"),
        ("tvm", {"trials": -1}, r"target 'tvm' option trials: Input should be greater than or equal to 0"),
        ("torch", {"schedules": "tuned"}, r"options of target 'torch': none"),
    ],
)
def test_a_bad_target_option_names_the_target_and_what_it_takes(digits_recipe, target, options, match) -> None:
    with pytest.raises(RecipeError, match=rf"stages\[0\]\.deploy: .*{match}"):
        _stage(digits_recipe, {"deploy": {"target": target, **options}})


def test_precision_defaults_to_what_the_target_runs(digits_recipe) -> None:
    assert _stage(digits_recipe, {"deploy": {"target": "cortex-m4"}}).precision == "int8"
    assert _stage(digits_recipe, {"deploy": {"target": "onnxruntime"}}).precision == "fp32"


def test_bench_gives_each_option_to_the_targets_that_declare_it(digits_recipe) -> None:
    p = _stage(
        digits_recipe, {"bench": {"targets": ["torch", "tvm", "cortex-m4"], "trials": 0, "schedules": "portable"}}
    )
    assert p.target_options() == {"torch": {}, "tvm": {"trials": 0}, "cortex-m4": {"schedules": "portable"}}
    with pytest.raises(RecipeError, match=r"bench: unknown key 'trials'.*options of targets torch: none"):
        _stage(digits_recipe, {"bench": {"targets": ["torch"], "trials": 0}})


def test_deploy_api_refuses_an_unknown_option_before_compiling(tmp_path) -> None:
    import torch
    from torch import nn

    from tinytamer.deploy import deploy
    from tinytamer.errors import TamerError

    with pytest.raises(TamerError, match=r"target 'torch' has no option 'trials' \(it takes no options"):
        deploy(nn.Linear(4, 2), "torch", tmp_path / "d", example_input=torch.randn(1, 4), trials=3)
    assert not any((tmp_path / "d").iterdir())


def test_the_demo_recipe_deploys_to_every_target_through_the_deploy_stage() -> None:
    from importlib.resources import files

    recipe = parse_recipe(files("tinytamer").joinpath("recipes/demo.yaml").read_text())
    deploys = [p for name, p in recipe.stages if name == "deploy"]
    assert [(p.target, p.precision) for p in deploys] == [("onnxruntime", "int8"), ("cortex-m4", "int8")]
    # The settings the demo's figures were measured with (formerly the `micro` stage's).
    assert (deploys[1].calib_batches, deploys[1].eval_limit, deploys[1].options) == (4, 100, {})
