import json

import pytest

from tinytamer.errors import RecipeError, TamerError
from tinytamer.recipe import StageParams, parse_recipe, register_stage, run
from tinytamer.rundir import RunDir

TINY = {
    "name": "tiny",
    "data": {"name": "digits", "size": 16, "batch_size": 32, "limit": 200},
    "model": {"name": "democnn"},
    "stages": [{"train": {"base_lr": 0.05, "max_iter": 20, "test_interval": 10, "display": 5}}, {"evaluate": {}}],
}


def test_unknown_keys_fail_naming_key_and_allowed():
    with pytest.raises(RecipeError, match=r"stages\[0\]\.train\.lr: unknown key \(allowed: .*base_lr"):
        parse_recipe({**TINY, "stages": [{"train": {"lr": 0.1}}]})
    with pytest.raises(RecipeError, match=r"data\.nmae: unknown key \(allowed: name"):
        parse_recipe({**TINY, "data": {"nmae": "digits"}})
    with pytest.raises(RecipeError, match=r"datta: unknown key"):
        parse_recipe({**TINY, "datta": {}})


def test_unknown_stage_and_wrong_type():
    with pytest.raises(RecipeError, match=r"unknown stage 'trian' \(known: .*train"):
        parse_recipe({**TINY, "stages": [{"trian": {}}]})
    with pytest.raises(RecipeError, match=r"stages\[0\]\.train\.max_iter: .*got 'many'"):
        parse_recipe({**TINY, "stages": [{"train": {"max_iter": "many"}}]})
    with pytest.raises(RecipeError, match="one mapping"):
        parse_recipe({**TINY, "stages": [{"train": {}, "evaluate": {}}]})


def test_yaml_errors_and_missing_file(tmp_path):
    with pytest.raises(RecipeError, match="not valid YAML"):
        parse_recipe("name: [unclosed\n")
    with pytest.raises(RecipeError, match="recipe file not found"):
        parse_recipe(tmp_path / "nope.yaml")


def test_run_writes_the_run_folder(tmp_path):
    rundir = run(parse_recipe(TINY), tmp_path / "tiny", progress=False, echo=lambda s: None)
    for name in (
        "recipe.yaml",
        "metrics.jsonl",
        "state.json",
        "report.html",
        "training.png",
        "checkpoints/00_train.safetensors",
        "checkpoints/01_evaluate.safetensors",
    ):
        assert (rundir.path / name).is_file(), name
    records = rundir.records()
    assert any(r["kind"] == "train" and "test_acc" in r for r in records)
    stage = [r for r in records if r["kind"] == "stage"]
    assert [r["stage"] for r in stage] == ["train", "evaluate"]
    assert stage[-1]["params"] > 0 and 0 <= stage[-1]["accuracy"] <= 1
    assert parse_recipe(rundir.recipe_path).stages[0][1].max_iter == 20
    with pytest.raises(TamerError, match="already exists"):
        run(parse_recipe(TINY), tmp_path / "tiny", progress=False, echo=lambda s: None)


class FlakyParams(StageParams):
    flag: str


@register_stage("test_flaky", FlakyParams, help="fails until a flag file exists (tests only)")
def _flaky(model, ctx, p):
    from pathlib import Path

    if not Path(p.flag).exists():
        raise RuntimeError("simulated crash")
    ctx.log({"note": "flaky ran"})
    return model


def test_crashed_run_resumes_after_last_finished_stage(tmp_path):
    flag = tmp_path / "flag"
    recipe = parse_recipe({**TINY, "stages": [TINY["stages"][0], {"test_flaky": {"flag": str(flag)}}]})
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(recipe, tmp_path / "r", progress=False, echo=lambda s: None)
    before = RunDir.open(tmp_path / "r").completed()
    assert [c["stage"] for c in before] == ["train"]
    flag.touch()
    rundir = run(recipe, tmp_path / "r", resume=True, progress=False, echo=lambda s: None)
    stage_records = [r["stage"] for r in rundir.records() if r["kind"] == "stage"]
    assert stage_records == ["train", "test_flaky"]  # train was not run again
    state = json.loads((rundir.path / "state.json").read_text())
    assert [c["stage"] for c in state["completed"]] == ["train", "test_flaky"]


def test_bad_model_leaves_no_run_folder_behind(tmp_path):
    from tinytamer.errors import ModelError

    with pytest.raises(ModelError, match="unknown model"):
        run(parse_recipe({**TINY, "model": {"name": "nosuch"}}), tmp_path / "x", progress=False, echo=lambda s: None)
    assert not (tmp_path / "x").exists()


# -- recipe bombs and bounded error messages ----------------------------------------------------


def billion_laughs(levels: int = 9) -> str:
    """The classic bomb: 1 KB of YAML whose aliases expand to 10**levels strings."""
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, levels + 1):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]")
    return "\n".join(lines) + f"\nname: bomb\nstages:\n  - train: {{max_iter: *a{levels}}}\n"


def test_billion_laughs_fails_at_once_in_bounded_memory():
    import tracemalloc

    text = billion_laughs()
    assert len(text) < 1100
    tracemalloc.start()
    try:
        with pytest.raises(RecipeError, match=r"bomb\.yaml: its aliases expand to more than 100,000"):
            parse_recipe(text, source="bomb.yaml")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 20e6


def test_recursive_alias_is_refused():
    with pytest.raises(RecipeError, match="recursive"):
        parse_recipe("name: x\nseed: &s [*s]\n")


def test_aliases_within_bounds_still_share_settings():
    recipe = parse_recipe(
        "name: x\nstages:\n"
        "  - prune: {finetune: &ft {base_lr: 0.002, max_iter: 5}}\n"
        "  - kmeans_share: {finetune: *ft}\n"
    )
    assert recipe.stages[0][1].finetune == recipe.stages[1][1].finetune
    assert recipe.stages[1][1].finetune.base_lr == 0.002


def test_error_messages_are_capped():
    with pytest.raises(RecipeError) as info:
        parse_recipe({**TINY, "stages": [{"train": {"max_iter": "x" * 100_000}}]})
    assert "stages[0].train.max_iter" in str(info.value) and len(str(info.value)) < 400
    # thousands of problems: the first few, then a count
    with pytest.raises(RecipeError, match=r"and 9995 more") as info:
        parse_recipe({**TINY, "stages": [{"sensitivity": {"sparsities": ["x"] * 10_000}}]})
    assert len(str(info.value)) < 2000
    deep: list = []
    for _ in range(50):
        deep = [deep, "y" * 1000]
    with pytest.raises(RecipeError) as info:
        parse_recipe({**TINY, "stages": [{"evaluate": {"split": deep}}]})
    assert len(str(info.value)) < 400
    with pytest.raises(RecipeError, match=r"stages\[0\] must be one mapping") as info:
        parse_recipe({**TINY, "stages": [["z" * 10_000]]})
    assert len(str(info.value)) < 400


# -- unknown keys list the keys allowed where they stand, at any depth --------------------------


class _Leaf(StageParams):
    """A nested parameter group (tests only)."""

    alpha: int = 0
    beta: int = 0


class _Other(StageParams):
    gamma: int = 0


class NestedParams(StageParams):
    items: list[_Leaf] = []
    by_name: dict[str, _Leaf] = {}
    either: _Leaf | _Other | None = None
    deep: list[dict[str, _Leaf | None]] = []


@register_stage("test_nested", NestedParams, help="nested parameter models (tests only)")
def _nested(model, ctx, p):
    return model


@pytest.mark.parametrize(
    ("stage", "where", "allowed"),
    [
        # a model inside Optional: used to answer "allowed: none"
        (
            {"prune": {"finetune": {"lr": 0.1, "max_iter": 5}}},
            r"stages\[0\]\.prune\.finetune\.lr",
            r"base_lr, lr_policy, .*max_iter",
        ),
        # a member of a discriminated union (pydantic puts the tag 'agp' into the location)
        (
            {"prune": {"schedule": {"type": "agp", "end": 10, "ramp": 1}}},
            r"stages\[0\]\.prune\.schedule\.ramp",
            r"type, initial, start, end, frequency",
        ),
        (
            {"prune": {"select": {"exclude_frist": True}}},
            r"stages\[0\]\.prune\.select\.exclude_frist",
            r"types, names, regex, exclude, exclude_first, exclude_last, overrides\) - did you mean "
            r"'exclude_first'\?",
        ),
        (
            {"test_nested": {"items": [{"alpha": 1}, {"gama": 1}]}},
            r"stages\[0\]\.test_nested\.items\[1\]\.gama",
            r"alpha, beta",
        ),
        ({"test_nested": {"by_name": {"k": {"x": 1}}}}, r"stages\[0\]\.test_nested\.by_name\.k\.x", r"alpha, beta"),
        ({"test_nested": {"deep": [{"k": {"x": 1}}]}}, r"stages\[0\]\.test_nested\.deep\[0\]\.k\.x", r"alpha, beta"),
        ({"channel_prune": {"globl": True}}, r"stages\[0\]\.channel_prune\.globl", r"ratio, global, round_to"),
    ],
)
def test_unknown_nested_keys_list_the_allowed_ones(stage, where, allowed):
    with pytest.raises(RecipeError, match=rf"{where}: unknown key \(allowed: {allowed}"):
        parse_recipe({**TINY, "stages": [stage]})


def test_unknown_key_in_a_union_of_models_lists_each_members_keys():
    with pytest.raises(RecipeError) as info:
        parse_recipe({**TINY, "stages": [{"test_nested": {"either": {"x": 1}}}]})
    msg = str(info.value)
    assert "stages[0].test_nested.either.x: unknown key (allowed: alpha, beta)" in msg
    assert "stages[0].test_nested.either.x: unknown key (allowed: gamma)" in msg


def test_union_member_names_stay_out_of_error_locations():
    with pytest.raises(RecipeError) as info:
        parse_recipe({**TINY, "stages": [{"prune": {"sparsity": {"fc": "lots"}}}]})
    msg = str(info.value)
    assert "stages[0].prune.sparsity.fc: Input should be a valid number" in msg
    assert "dict[" not in msg and "literal[" not in msg


# -- every parameter is documented in the schema ------------------------------------------------


def _builtin_stages():
    from tinytamer.recipe import stages

    return {n: d for n, d in stages().items() if d.fn.__module__.startswith("tinytamer.stages")}


def test_every_stage_key_has_a_description():
    from tinytamer.recipe import DataSpec, ModelSpec, Recipe, nested_models, param_docs

    missing = []
    models = [(n, d.params) for n, d in _builtin_stages().items()]
    models += [("recipe", Recipe), ("data", DataSpec), ("model", ModelSpec)]
    for name, params in models:
        for path, sub in [("", params), *nested_models(params)]:
            missing += [f"{name}:{path}.{doc.key}" for doc in param_docs(sub) if not doc.description]
    assert not missing, missing
    assert len(_builtin_stages()) >= 12


def test_no_stage_takes_data_or_model_keys():
    # `--set data.KEY=...` / `--set model.KEY=...` go to the recipe's data and model.
    for name, d in _builtin_stages().items():
        assert not {"data", "model"} & set(d.params.model_fields), name


def test_param_docs_read_type_default_and_bounds():
    from tinytamer.recipe import param_docs
    from tinytamer.stages.prune import ChannelPruneParams, PruneParams

    docs = {d.key: d for d in param_docs(PruneParams)}
    assert docs["sparsity"].type == "float | dict[str, float] | 'sensitivity'"
    assert docs["sparsity"].default == "0.8"
    assert docs["schedule"].default == "{type: oneshot}"
    assert docs["batch_size"].type == "int | None (> 0)"
    channel = {d.key: d for d in param_docs(ChannelPruneParams)}
    assert "global" in channel and channel["max_ratio"].type == "float (> 0, < 1)"


# -- defaults a user should get ------------------------------------------------------------------


def test_prune_without_select_spares_the_first_layer_unless_layers_are_named(tmp_path):
    recipe = parse_recipe(
        {**TINY, "stages": [{"prune": {"sparsity": 0.5}}, {"prune": {"sparsity": {"features.0": 0.3}}}]}
    )
    rundir = run(recipe, tmp_path / "p", progress=False, echo=lambda s: None)
    first, named = [r for r in rundir.records() if r["kind"] == "stage"]
    assert "features.0" not in first["layers"] and first["layers"]
    assert all(s == pytest.approx(0.5, abs=0.02) for s in first["layers"].values())
    # per-layer values prune the layers they name, the first included
    assert named["layers"]["features.0"] == pytest.approx(0.3, abs=0.02)
