"""The ``kmeans_share`` and ``save_compressed`` stages end to end on digits + the demo CNN."""

from __future__ import annotations

import pytest

from tinytamer import codec
from tinytamer.data import get_dataset, make_loader
from tinytamer.errors import RecipeError
from tinytamer.recipe import parse_recipe
from tinytamer.train import evaluate


def test_prune_share_save(digits_recipe, run_stages) -> None:
    recs, rundir = run_stages(
        digits_recipe(
            "share-test",
            [
                {"train": {"base_lr": 0.05, "max_iter": 80, "display": 0}},
                {"prune": {"sparsity": 0.6}},
                {
                    "kmeans_share": {
                        "conv_bits": 4,
                        "linear_bits": 3,
                        "finetune": {"base_lr": 0.01, "max_iter": 20, "display": 0},
                    }
                },
                {"save_compressed": {"file": "final.tt"}},
            ],
        )
    )
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
    assert evaluate(loaded, make_loader(data.test, 64, shuffle=False))["accuracy"] == pytest.approx(saved["accuracy"])


def test_save_compressed_validates_up_front(digits_recipe) -> None:
    with pytest.raises(RecipeError, match="unknown encoding"):
        parse_recipe(digits_recipe("share-test", [{"save_compressed": {"allow": ["zip"]}}]))
    with pytest.raises(RecipeError, match="plain file name"):
        parse_recipe(digits_recipe("share-test", [{"save_compressed": {"file": "../x.tt"}}]))
    with pytest.raises(RecipeError):
        parse_recipe(digits_recipe("share-test", [{"kmeans_share": {"bitz": 4}}]))
