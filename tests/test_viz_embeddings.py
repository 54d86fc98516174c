"""Embeddings during training: Procrustes alignment, sample choice, the head's input,
Cleanlab outliers, the animation's frames, and a tiny run end to end (API and CLI)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from tinytamer.cli import app
from tinytamer.errors import ModelError, TamerError
from tinytamer.records import EmbeddingsRecord, read_records
from tinytamer.viz.animation import Frame, animate, tweened
from tinytamer.viz.embeddings import align, draw_embeddings, embed, head_name, normalize, outliers, pick_samples
from tinytamer.zoo import create


def _rotation(theta: float) -> np.ndarray:
    return np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])


def test_align_removes_a_known_rotation_flip_shift_and_scale() -> None:
    rng = np.random.default_rng(0)
    first = rng.normal(size=(50, 2)) * [3.0, 1.0]
    rotated = first @ _rotation(1.1)
    flipped = (rotated @ np.diag([1.0, -1.0])) * 4.0 + [7.0, -2.0]
    out = align([first, rotated, flipped])
    for frame in out[1:]:
        np.testing.assert_allclose(frame, normalize(first), atol=1e-9)
    # Without alignment the flipped frame is far from the first one.
    assert np.abs(normalize(flipped) - normalize(first)).max() > 0.5


def test_align_keeps_real_motion() -> None:
    rng = np.random.default_rng(1)
    first = rng.normal(size=(40, 2))
    moved = first.copy()
    moved[:20] += [5.0, 0.0]  # half the points move away: not a rotation
    out = align([first, moved])
    assert np.abs(out[1] - normalize(first)).max() > 0.5


def test_pick_samples_is_balanced_and_deterministic() -> None:
    labels = [0] * 10 + [1] * 10 + [2] * 2
    chosen = pick_samples(labels, 9)
    assert chosen == pick_samples(labels, 9) and chosen == sorted(chosen)
    counts = np.bincount([labels[i] for i in chosen])
    assert list(counts) == [4, 3, 2]
    assert len(pick_samples(labels, 100)) == len(labels)
    with pytest.raises(TamerError, match="at least 3"):
        pick_samples(labels, 2)
    with pytest.raises(TamerError, match="has 2"):
        pick_samples([0, 1], 5)


def test_default_embedding_is_the_vit_class_token_before_its_head() -> None:
    torch.manual_seed(0)
    model = create("vit", input_size=8, patch_size=4, dim=16, depth=1, heads=2).eval()
    x = torch.randn(5, 3, 8, 8)
    assert head_name(model, x) == "head"
    got = embed(model, x, "head", of_input=True, batch=2)
    np.testing.assert_allclose(got, model.features(x).detach().double().numpy(), rtol=1e-5, atol=1e-6)
    assert embed(model, x, "blocks.0.attn").shape == (5, 5 * 16)
    with pytest.raises(ModelError, match="did you mean blocks.0.attn"):
        embed(model, x, "blocks.0.atn")
    with pytest.raises(ModelError, match="no linear layer"):
        head_name(torch.nn.Sequential(torch.nn.Flatten()), x)


def test_outliers_find_a_planted_one() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 6)) + 5.0
    x[17] = -5.0
    top, scores = outliers(x, top=3)
    assert top[0] == 17 and len(top) == 3 and scores.shape == (60,)
    with pytest.raises(TamerError, match="at least 3"):
        outliers(x[:2])


def test_animation_has_every_frame(tmp_path) -> None:
    rng = np.random.default_rng(0)
    frames = [Frame(step=10 * k, label=f"iteration {10 * k}", points=rng.normal(size=(12, 2))) for k in range(3)]
    assert len(tweened(frames, 2)) == 3 + 2 * 2
    images = torch.rand(12, 1, 8, 8)
    drawn = animate(
        tmp_path,
        frames,
        np.arange(12) % 3,
        ["a", "b", "c"],
        images,
        np.array([0, 5]),
        curve=[(0, 2.0), (20, 1.0)],
        title="t",
        tween=2,
    )
    with Image.open(drawn.gif) as gif:
        assert gif.n_frames == drawn.frames == 7
    with Image.open(drawn.png) as png:
        assert png.size[0] > 100


def _tiny_run(run_stages, digits_recipe, **train):
    stage = {"base_lr": 0.05, "momentum": 0.9, "max_iter": 12, "display": 4, **train}
    return run_stages(digits_recipe("emb", [{"train": stage}], limit=200))


@pytest.mark.slow
def test_tiny_run_end_to_end(run_stages, digits_recipe) -> None:
    _, rundir = _tiny_run(run_stages, digits_recipe, snapshot=4)
    from tinytamer.recipe import build_model, load_data, parse_recipe, seed_everything

    recipe = parse_recipe(rundir.recipe_path)
    seed_everything(recipe.seed)
    data = load_data(recipe.data, recipe.seed)
    start = build_model(recipe.model, data.meta)
    labels = [int(data.test[i][1]) for i in range(len(data.test))]
    chosen = pick_samples(labels, 30)
    images = torch.stack([data.test[i][0] for i in chosen])
    record = draw_embeddings(
        rundir, images, [labels[i] for i in chosen], data.meta.class_names, start=start, tween=0, progress=False
    )
    assert record.steps == [0, 4, 8, 12] and record.checkpoints[0] == ""
    assert len(record.outliers) == 8 and record.layer == "input of classifier.1"
    logged = read_records(rundir, EmbeddingsRecord)
    assert [r.model_dump(exclude={"time"}) for r in logged] == [record.model_dump(exclude={"time"})]
    with Image.open(rundir.path / record.animation) as gif:
        assert gif.n_frames == 4
    # A snapshot that does not fit the stage's model is left out and said so.
    snap = rundir.path / record.checkpoints[1]
    state = torch.load(snap, weights_only=True)
    state["model"] = {"other.weight": torch.zeros(1)}
    torch.save(state, snap)
    again = draw_embeddings(
        rundir, images, [labels[i] for i in chosen], data.meta.class_names, layer="features.0", tween=0, progress=False
    )
    assert again.steps == [8, 12] and "do not fit" in again.skipped[0] and again.layer == "output of features.0"


@pytest.mark.slow
def test_cli_draws_and_refuses_runs_without_snapshots(run_stages, digits_recipe, tmp_path) -> None:
    _, rundir = _tiny_run(run_stages, digits_recipe, max_iter=4, snapshot=2)
    runner = CliRunner()
    result = runner.invoke(app, ["viz", "embeddings", str(rundir.path), "--samples", "20", "--tween", "0", "--quiet"])
    assert result.exit_code == 0, result.output
    assert "3 checkpoints, 20 images" in result.output
    html = (rundir.path / "report.html").read_text()
    assert "data:image/gif;base64," in html
    bad = runner.invoke(app, ["viz", "embeddings", str(rundir.path), "--layer", "nope", "--quiet"])
    assert bad.exit_code == 2 and "has no layer 'nope'" in bad.output
    for snap in (rundir.path / "stages").glob("*/*/iter_*.pt"):
        snap.unlink()
    none = runner.invoke(app, ["viz", "embeddings", str(rundir.path), "--quiet"])
    assert none.exit_code == 2 and "no training snapshots" in none.output
