"""The run report opened in a real browser: Debian's Chromium driven headless by
Playwright (the system browser, nothing downloaded).  No console errors, no request
leaves the page, every image loads with a size, the tables are there; a screenshot is
kept (in the test's folder, and in $TINYTAMER_ARTIFACTS when set)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture
def report_of_a_small_run(run_stages, digits_recipe) -> Path:
    from tinytamer.recipe import build_model, load_data, parse_recipe, seed_everything
    from tinytamer.viz.embeddings import draw_embeddings, pick_samples
    from tinytamer.viz.report import write_report

    train = {"base_lr": 0.05, "momentum": 0.9, "max_iter": 8, "display": 4, "snapshot": 4}
    stages = [{"train": train}, {"prune": {"sparsity": 0.5, "finetune": {"max_iter": 4, "base_lr": 0.01}}}]
    _, rundir = run_stages(digits_recipe("browser", stages, limit=200))
    recipe = parse_recipe(rundir.recipe_path)
    seed_everything(recipe.seed)
    data = load_data(recipe.data, recipe.seed)
    labels = [int(data.test[i][1]) for i in range(len(data.test))]
    chosen = pick_samples(labels, 24)
    images = torch.stack([data.test[i][0] for i in chosen])
    start = build_model(recipe.model, data.meta)
    draw_embeddings(
        rundir, images, [labels[i] for i in chosen], data.meta.class_names, start=start, tween=0, progress=False
    )
    return write_report(rundir)


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (apt-get install chromium)")
def test_report_opens_cleanly_in_chromium(report_of_a_small_run: Path, tmp_path: Path) -> None:
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
    errors: list[str] = []
    outside: list[str] = []
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("requestfailed", lambda r: errors.append(f"failed: {r.url}"))
            page.on("request", lambda r: None if r.url.startswith(("file:", "data:")) else outside.append(r.url))
            page.goto(report_of_a_small_run.as_uri(), wait_until="load")
            images = page.eval_on_selector_all(
                "img", "els => els.map(e => [e.complete, e.naturalWidth, e.naturalHeight, e.src.slice(0, 15)])"
            )
            tables = page.locator("table").count()
            headings = page.locator("h2").all_inner_texts()
            shot = tmp_path / "report.png"
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    assert not errors, errors
    assert not outside, outside
    assert len(images) >= 4
    assert all(done and w > 0 and h > 0 for done, w, h, _ in images), images
    assert all(src.startswith("data:image/") for *_, src in images), images
    assert any(src.startswith("data:image/gif") for *_, src in images)
    assert tables >= 2
    for heading in ("Stages", "Accuracy against size and cost", "Pruning", "Training", "Embeddings during training"):
        assert heading in headings, headings
    assert shot.stat().st_size > 10_000
    if os.environ.get("TINYTAMER_ARTIFACTS"):
        folder = Path(os.environ["TINYTAMER_ARTIFACTS"])
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, folder / "report-screenshot.png")
