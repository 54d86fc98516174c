"""One folder per run: recipe copy, checkpoints, stage artifacts, metrics.jsonl, report.

Layout of ``runs/<name>/``::

    recipe.yaml          the recipe as it was run
    state.json           which stages finished and the checkpoint each left
    metrics.jsonl        one JSON record per line (training intervals, stage summaries)
    checkpoints/         NN_<stage>.safetensors: the model after each stage (architecture inside)
    stages/NN_<stage>/   each stage's artifacts (snapshots, plots, deployed files)
    report.html, *.png   drawn from metrics.jsonl only

Everything is written atomically, so a run killed at any moment can be resumed
from its last finished stage (and a training stage from its last snapshot).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

from torch import nn

from tinytamer.checkpoint import load_checkpoint, save_checkpoint
from tinytamer.errors import TamerError


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so that readers see the old or the new file, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class RunDir:
    """A run's folder; see the module docstring for the layout."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    # -- creation --------------------------------------------------------------------------
    @classmethod
    def create(cls, path: str | Path, recipe_text: str, *, overwrite: bool = False) -> RunDir:
        """Start a fresh run folder; refuses to clobber an existing run unless ``overwrite``."""
        path = Path(path)
        cls.check_free(path, overwrite=overwrite)
        if path.exists():
            shutil.rmtree(path)
        run = cls(path)
        path.mkdir(parents=True, exist_ok=True)
        write_atomic(run.recipe_path, recipe_text)
        write_atomic(run.state_path, json.dumps({"completed": [], "created": time.time()}, indent=2))
        return run

    @staticmethod
    def check_free(path: str | Path, *, overwrite: bool = False) -> None:
        """Refuse to start a run in a folder that holds another run (unless ``overwrite``)."""
        path = Path(path)
        if not overwrite and path.exists() and any(path.iterdir()):
            raise TamerError(
                f"run folder {path} already exists: resume it with `tamer run --resume {path}`, "
                "or choose another name (or pass --overwrite)"
            )

    @classmethod
    def open(cls, path: str | Path) -> RunDir:
        """Open an existing run folder (to resume or report it)."""
        run = cls(path)
        if not run.recipe_path.is_file() or not run.state_path.is_file():
            raise TamerError(f"{path} is not a tinytamer run folder (no recipe.yaml / state.json)")
        return run

    # -- paths -----------------------------------------------------------------------------
    @property
    def recipe_path(self) -> Path:
        return self.path / "recipe.yaml"

    @property
    def state_path(self) -> Path:
        return self.path / "state.json"

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.jsonl"

    def stage_dir(self, index: int, name: str) -> Path:
        d = self.path / "stages" / f"{index:02d}_{name}"
        d.mkdir(parents=True, exist_ok=True)
        return d

    def checkpoint_path(self, index: int, name: str) -> Path:
        return self.path / "checkpoints" / f"{index:02d}_{name}.safetensors"

    # -- metrics ---------------------------------------------------------------------------
    def log(self, record: dict[str, Any]) -> None:
        """Append one metrics record (a JSON line, flushed to disk)."""
        line = json.dumps({"time": round(time.time(), 3), **record}, default=_jsonable)
        with open(self.metrics_path, "a") as f:
            f.write(line + "\n")
            f.flush()
            os.fsync(f.fileno())

    def records(self) -> list[dict[str, Any]]:
        """All metrics records; a torn last line (crash mid-write) is skipped."""
        if not self.metrics_path.is_file():
            return []
        out = []
        for line in self.metrics_path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return out

    # -- state -----------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        return json.loads(self.state_path.read_text())

    def completed(self) -> list[dict[str, Any]]:
        return list(self.state()["completed"])

    def finish_stage(self, index: int, name: str, model: nn.Module) -> Path:
        """Checkpoint the model a stage produced and mark the stage done."""
        ckpt = save_checkpoint(model, self.checkpoint_path(index, name))
        state = self.state()
        state["completed"] = [c for c in state["completed"] if c["index"] != index]
        state["completed"].append({"index": index, "stage": name,
                                   "checkpoint": str(ckpt.relative_to(self.path))})
        write_atomic(self.state_path, json.dumps(state, indent=2))
        return ckpt

    def last_model(self, allow: tuple[str, ...] = ()) -> tuple[int, nn.Module | None]:
        """(number of finished stages, the model the last one left) for resuming."""
        done = sorted(self.completed(), key=lambda c: c["index"])
        if not done:
            return 0, None
        last = done[-1]
        return last["index"] + 1, load_checkpoint(self.path / last["checkpoint"], allow=allow)


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "to_dict"):
        return value.to_dict()
    return str(value)
