import json

import pytest
import torch

from tinytamer.errors import RecipeError, TamerError
from tinytamer.recipe import StageParams, parse_recipe, register_stage, run
from tinytamer.rundir import RunDir

TINY = {
    "name": "tiny",
    "data": {"name": "digits", "size": 16, "batch_size": 32, "limit": 200},
    "model": {"name": "democnn"},
    "stages": [{"train": {"base_lr": 0.05, "max_iter": 20, "test_interval": 10, "display": 5}},
               {"evaluate": {}}],
}


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(1)


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
    for name in ("recipe.yaml", "metrics.jsonl", "state.json", "report.html", "training.png",
                 "checkpoints/00_train.safetensors", "checkpoints/01_evaluate.safetensors"):
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
        run(parse_recipe({**TINY, "model": {"name": "nosuch"}}), tmp_path / "x", progress=False,
            echo=lambda s: None)
    assert not (tmp_path / "x").exists()
