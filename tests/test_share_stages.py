"""The ``kmeans_share`` and ``save_compressed`` stages end to end on digits + the demo CNN."""

from __future__ import annotations

import pytest
import torch

from tinytamer import codec
from tinytamer.data import get_dataset, make_loader
from tinytamer.errors import RecipeError
from tinytamer.recipe import parse_recipe, run
from tinytamer.train import evaluate

torch.set_num_threads(1)

BASE = {
    "name": "share-test",
    "seed": 0,
    "data": {"name": "digits", "size": 16, "batch_size": 32, "limit": 600},
    "model": {"name": "democnn"},
}


def test_prune_share_save(tmp_path) -> None:
    recipe = parse_recipe({**BASE, "stages": [
        {"train": {"base_lr": 0.05, "max_iter": 80, "display": 0}},
        {"prune": {"sparsity": 0.6}},
        {"kmeans_share": {"conv_bits": 4, "linear_bits": 3,
                          "finetune": {"base_lr": 0.01, "max_iter": 20, "display": 0}}},
        {"save_compressed": {"file": "final.tt"}},
    ]})
    rundir = run(recipe, tmp_path / "run", progress=False, echo=lambda s: None)
    recs = {r["stage"]: r for r in rundir.records() if r.get("kind") == "stage"}
    shared, saved = recs["kmeans_share"], recs["save_compressed"]
    assert set(shared["centroids_used"]) == {"features.0", "features.3", "classifier.1"}
    assert shared["centroids_used"]["features.3"] <= 16
    assert shared["centroids_used"]["classifier.1"] <= 8
    assert "accuracy_before_finetune" in shared
    assert shared["nonzero_params"] == recs["prune"]["nonzero_params"]  # zeros stay zero
    path = rundir.path / saved["file"]
    assert path.name == "final.tt" and saved["bytes"] == path.stat().st_size
    assert saved["bytes"] < recs["prune"]["bytes"]
    assert saved["ratio"] > 4
    assert {"codebook", "huffman"} & set(saved["by_encoding"])
    # The file alone reproduces the logged accuracy.
    data = get_dataset("digits", size=16, limit=600, seed=0)
    loaded = codec.load(path)
    assert evaluate(loaded, make_loader(data.test, 64, shuffle=False))["accuracy"] == pytest.approx(
        saved["accuracy"])


def test_save_compressed_validates_up_front() -> None:
    with pytest.raises(RecipeError, match="unknown encoding"):
        parse_recipe({**BASE, "stages": [{"save_compressed": {"allow": ["zip"]}}]})
    with pytest.raises(RecipeError, match="plain file name"):
        parse_recipe({**BASE, "stages": [{"save_compressed": {"file": "../x.tt"}}]})
    with pytest.raises(RecipeError):
        parse_recipe({**BASE, "stages": [{"kmeans_share": {"bitz": 4}}]})
