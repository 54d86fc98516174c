"""The ``deploy`` and ``bench`` recipe stages on digits, after physical channel pruning."""

from __future__ import annotations

import pytest

from tinytamer.errors import RecipeError
from tinytamer.recipe import parse_recipe


@pytest.mark.slow  # trains, prunes, deploys and benches: ~40 s on a busy 2-core machine
def test_pruned_model_deploys_int8_and_benches(digits_recipe, run_stages) -> None:
    recs, rundir = run_stages(digits_recipe("deploy-test", [
        {"train": {"base_lr": 0.05, "max_iter": 80, "display": 0}},
        {"channel_prune": {"ratio": 0.5, "round_to": 4}},
        {"save_compressed": {}},
        {"deploy": {"target": "onnxruntime", "precision": "int8", "repeats": 3,
                    "calib_batches": 2, "isolate": False}},
        {"bench": {"targets": ["onnxruntime"], "precisions": ["fp32"], "repeats": 2,
                   "isolate": False, "max_acc_drop": 0.01}},
    ], limit=400))
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
    assert {(r["target"], r["precision"]) for r in bench["bench"]} == {
        ("torch", "fp32"), ("onnxruntime", "fp32")}
    assert bench["best"]["target"] in ("torch", "onnxruntime")


@pytest.mark.slow  # trains, quantizes and deploys: ~30 s on a busy 2-core machine
def test_quantized_model_deploys_with_its_own_qparams(digits_recipe, run_stages) -> None:
    recs, rundir = run_stages(digits_recipe("deploy-test", [
        {"train": {"base_lr": 0.05, "max_iter": 60, "display": 0}},
        {"quantize": {"calib_batches": 2}},
        {"deploy": {"target": "onnxruntime", "precision": "int8", "repeats": 0,
                    "calib_batches": 2}},
    ], limit=400))
    dep = recs["deploy"]
    assert dep["int8_params"].startswith("ours") and dep["parity"]["ok"]
    # What ORT scores is what the quantize stage measured, up to a few samples.
    assert abs(dep["accuracy"] - recs["quantize"]["accuracy"]) <= 0.02
    assert dep["latency_ms"] is None  # repeats: 0


def test_unknown_target_fails_when_the_recipe_is_read(digits_recipe) -> None:
    with pytest.raises(RecipeError, match="unknown target 'tpu'"):
        parse_recipe(digits_recipe("deploy-test", [{"deploy": {"target": "tpu"}}], limit=400))
