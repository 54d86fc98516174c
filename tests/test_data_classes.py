"""Keeping a subset of a dataset's classes, and starting a model for it from a checkpoint
trained on other classes (a new head, the rest loaded)."""

import numpy as np
import pytest
import torch

from tinytamer.checkpoint import save_checkpoint
from tinytamer.data import get_dataset
from tinytamer.errors import DataError, ModelError, RecipeError
from tinytamer.recipe import build_model, check_takes_input, load_data, parse_recipe
from tinytamer.zoo import create

TINY_VIT = {"patch_size": 4, "dim": 16, "depth": 1, "heads": 2}


def test_classes_keeps_and_relabels_in_the_given_order():
    full = get_dataset("digits", size=8)
    sub = get_dataset("digits", size=8, classes=[7, "5", 6])
    assert sub.meta.num_classes == 3
    assert sub.meta.class_names == [full.meta.class_names[i] for i in (7, 5, 6)]
    for split in ("train", "val", "test"):
        labels = getattr(full, split).labels
        kept = getattr(sub, split)
        assert len(kept) == int(np.isin(labels, [5, 6, 7]).sum())
        assert sorted(set(kept.labels.tolist())) == [0, 1, 2]
        # class 7 is now 0: the images of full's 7s are sub's 0s, in the same order.
        assert np.array_equal(kept.images[kept.labels == 0], getattr(full, split).images[labels == 7])
    # The normalization is the whole dataset's, so two subsets are normalized alike.
    assert sub.meta.mean == full.meta.mean


def test_limit_counts_items_of_the_kept_classes():
    sub = get_dataset("digits", size=8, classes=[0, 1], limit=10)
    for split in (sub.train, sub.val, sub.test):
        assert len(split) == 10
        assert set(split.labels.tolist()) <= {0, 1}
    x, y = sub.train[0]
    assert x.shape == (1, 8, 8) and y in (0, 1)


@pytest.mark.parametrize(
    ("classes", "message"),
    [
        ([10], r"class index 10 is outside 0\.\.9"),
        ([-1], r"class index -1 is outside"),
        (["cat"], r"unknown class 'cat'; its classes: 0, 1"),
        ([3, "3"], r"named twice"),
        ([], r"is empty"),
        ([True], r"unknown class True"),
        ([1.5], r"unknown class 1\.5"),
    ],
)
def test_bad_classes_name_the_recipe_key(classes, message):
    with pytest.raises(DataError, match=r"dataset 'digits': classes \(data\.classes\).*" + message):
        get_dataset("digits", size=8, classes=classes)


def test_recipe_key_reaches_the_loader():
    recipe = parse_recipe({"name": "x", "data": {"name": "digits", "size": 8, "classes": [2, 3], "limit": 5}})
    assert recipe.data.classes == [2, 3]
    data = load_data(recipe.data, recipe.seed)
    assert data.meta.num_classes == 2 and len(data.test) == 5
    for bad in ("2", [True], [2.0]):  # a typo is not silently class 1 or 2
        with pytest.raises(RecipeError, match=r"data\.classes"):
            parse_recipe({"name": "x", "data": {"classes": bad}})
    with pytest.raises(DataError, match=r"data\.classes.*unknown class"):
        load_data(parse_recipe({"name": "x", "data": {"classes": ["two"]}}).data, 0)


@pytest.fixture
def pretrained(tmp_path):
    """A tiny ViT for 5 classes on 8x8 single-channel images, saved as a run saves it."""
    torch.manual_seed(0)
    model = create("vit", num_classes=5, in_channels=1, input_size=8, **TINY_VIT)
    return model, save_checkpoint(model, tmp_path / "pre.safetensors")


def _spec(weights, skip=()):
    recipe = {"name": "ft", "model": {"name": "vit", "weights": str(weights), "kwargs": TINY_VIT}}
    if skip:
        recipe["model"]["weights_skip"] = list(skip)
    return parse_recipe(recipe).model


def test_head_of_another_class_count_loads_with_weights_skip(pretrained):
    model, path = pretrained
    data = get_dataset("digits", size=8, classes=[5, 6, 7], limit=4)
    spec = _spec(path, ["head"])
    torch.manual_seed(1)
    tuned = build_model(spec, data.meta)
    check_takes_input(tuned, data, spec)
    assert tuned.head.out_features == 3
    body = {k: v for k, v in model.state_dict().items() if not k.startswith("head.")}
    for k, v in body.items():
        assert torch.equal(tuned.state_dict()[k], v), k
    assert tuned(data.test[0][0].unsqueeze(0)).shape == (1, 3)


def test_without_weights_skip_a_smaller_head_is_one_error(pretrained):
    _, path = pretrained
    data = get_dataset("digits", size=8, classes=[0, 1, 2, 3, 4, 5], limit=4)
    spec = _spec(path)
    model = build_model(spec, data.meta)  # the checkpoint's own architecture: 5 classes
    with pytest.raises(ModelError, match=r"scores 5 classes but data 'digits' has 6; model\.weights_skip"):
        check_takes_input(model, data, spec)


def test_weights_skip_names_what_does_not_fit(pretrained, tmp_path):
    _, path = pretrained
    meta = get_dataset("digits", size=8, classes=[0, 1], limit=4).meta
    with pytest.raises(RecipeError, match=r"weights_skip: 'haed' names no weights in .*its modules: blocks, cls_token"):
        build_model(_spec(path, ["haed"]), meta)
    # A body of another width does not fit beyond the skipped head: named, not a torch error.
    other = save_checkpoint(
        create("vit", num_classes=5, in_channels=1, input_size=8, **{**TINY_VIT, "dim": 8}),
        tmp_path / "narrow.safetensors",
    )
    with pytest.raises(RecipeError, match=r"model\.weights: .* does not fit 'vit' .*other shape \['blocks"):
        build_model(_spec(other, ["head"]), meta)
    # A plain safetensors file (no architecture) loads the same way.
    from safetensors.torch import save_file

    plain = tmp_path / "plain.safetensors"
    state = create("vit", num_classes=5, in_channels=1, input_size=8, **TINY_VIT).state_dict()
    save_file({k: v.contiguous() for k, v in state.items()}, str(plain))
    assert build_model(_spec(plain, ["head"]), meta).head.out_features == 2
    with pytest.raises(RecipeError, match=r"model\.weights_skip"):
        parse_recipe({"name": "x", "model": {"weights_skip": "head"}})


def test_shipped_pretrain_and_finetune_recipes_parse():
    from importlib.resources import files

    pre = parse_recipe(files("tinytamer").joinpath("recipes/vit_pretrain.yaml").read_text())
    ft = parse_recipe(files("tinytamer").joinpath("recipes/vit_finetune.yaml").read_text())
    assert pre.data.classes == [0, 1, 2, 3, 4] and ft.data.classes == ["dog", "frog", "horse", "ship", "truck"]
    assert ft.model.weights == f"runs/{pre.name}/checkpoints/00_train.safetensors"
    assert ft.model.weights_skip == ["head"] and ft.stages[0][1].snapshot > 0


def test_only_classification_data_keeps_classes():
    import dataclasses

    from tinytamer.data.registry import keep_classes

    data = get_dataset("digits", size=8, limit=4)
    boxes = dataclasses.replace(data, meta=dataclasses.replace(data.meta, task="detection"))
    with pytest.raises(DataError, match=r"data\.classes\): only classification data .* this is detection"):
        keep_classes(boxes, [0])
