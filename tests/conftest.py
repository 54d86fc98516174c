"""Fixtures the test files share: one CPU thread, the digits data as tensors, recipe dicts
on it, and a quiet recipe run that returns its stage records.

Small models that several files build live in ``test_targets_helpers.py`` (plain
functions: tests call them with their own sizes and seeds).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import torch

if TYPE_CHECKING:
    from tinytamer.rundir import RunDir

RecipeFactory = Callable[..., dict[str, Any]]
StageRunner = Callable[..., tuple[dict[str, dict[str, Any]], "RunDir"]]


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    # Results and timings must not depend on the machine's core count or on what an
    # earlier test (a CLI --threads option, a target's measurement) left set.
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def digits_data() -> tuple[torch.Tensor, torch.Tensor]:
    """sklearn's 1,797 8x8 digits: images (N, 1, 8, 8) float32 in [0, 1] and int64 labels.

    Shared by the whole session: derive new tensors, never modify these in place.
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    return x, torch.tensor(digits.target)


@pytest.fixture
def digits_recipe() -> RecipeFactory:
    """``make(name, stages, limit=600)``: a recipe dict training the demo CNN on 16x16
    digits (the first ``limit`` samples, batches of 32, seed 0) through ``stages``."""

    def make(name: str, stages: list[Any], *, limit: int = 600) -> dict[str, Any]:
        return {
            "name": name,
            "seed": 0,
            "data": {"name": "digits", "size": 16, "batch_size": 32, "limit": limit},
            "model": {"name": "democnn"},
            "stages": list(stages),
        }

    return make


@pytest.fixture
def run_stages(tmp_path: Path) -> StageRunner:
    """``run_stages(recipe, folder=tmp_path)``: run a recipe dict quietly in ``folder / "run"``;
    return its stage records by stage name, and the run directory."""

    # Imported here, not at the top: a package error then fails the tests that run recipes,
    # not the collection of every test file.
    from tinytamer.recipe import parse_recipe, run

    def run_quietly(recipe: dict[str, Any], folder: Path = tmp_path) -> tuple[dict[str, dict[str, Any]], RunDir]:
        rundir = run(parse_recipe(recipe), folder / "run", progress=False, echo=lambda s: None)
        recs = {r["stage"]: r for r in rundir.records() if r.get("kind") == "stage"}
        return recs, rundir

    return run_quietly


@pytest.fixture
def device_matches_reference(tmp_path: Path) -> Callable[..., None]:
    """``device_matches_reference(cm, g, xs)``: run each input of ``xs`` through the generated
    model ``cm`` on the emulated Cortex-M4 and assert its output equals the integer reference of
    graph ``g`` bit for bit."""
    import numpy as np

    from tinytamer.micro import reference
    from tinytamer.micro.session import Session

    def check(cm: Any, g: Any, xs: Any) -> None:
        with Session("cortex-m4", cm, workdir=tmp_path) as sess:
            t_in, t_out = sess.alloc(cm.input_size), sess.alloc(cm.output_size)
            for v in xs:
                sess.write(t_in, v.reshape(-1))
                sess.call("tt_model_run", t_in, t_out)
                np.testing.assert_array_equal(sess.read(t_out), reference.run(g, v).reshape(-1))

    return check
