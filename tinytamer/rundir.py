"""One folder per run: recipe copy, checkpoints, stage artifacts, metrics.jsonl, report.

Layout of ``runs/<name>/``::

    recipe.yaml          the recipe as it was run
    state.json           which stages finished and the checkpoint each left
    metrics.jsonl        one JSON record per line (training intervals, stage summaries)
    checkpoints/         NN_<stage>.safetensors: the model after each stage (architecture inside)
    stages/NN_<stage>/   each stage's artifacts (snapshots, plots, deployed files)
    report.html, *.png   drawn from metrics.jsonl only

``<name>`` is one plain folder name (:func:`run_name_problem`), and ``--overwrite``
replaces only an earlier run there (:meth:`RunDir.check_free`).

Everything is written atomically, so a run killed at any moment can be resumed
from its last finished stage (and a training stage from its last snapshot).
"""

from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path
from typing import Any

from torch import nn

from tinytamer.checkpoint import load_checkpoint, save_checkpoint
from tinytamer.errors import CorruptFileError, RecipeError, TamerError
from tinytamer.fileio import append_jsonl, read_json, read_jsonl, write_atomic

MAX_NAME_LENGTH = 100
_NAME = re.compile(r"[A-Za-z0-9_.-]+", re.ASCII)


def run_name_problem(name: str) -> str | None:
    """Why ``name`` cannot name a run folder, or None if it can.

    A run name is one path component inside the runs folder: ASCII letters, digits and
    ``-_.``, at most MAX_NAME_LENGTH characters, not ``.`` or ``..`` (which, joined to the
    runs folder, would name the runs folder itself or its parent).
    """
    if not isinstance(name, str) or not name:
        return "a run name must not be empty"
    if len(name) > MAX_NAME_LENGTH:
        return f"a run name has at most {MAX_NAME_LENGTH} characters (this one has {len(name)})"
    if name in (".", ".."):
        return "a run name cannot be '.' or '..'"
    if not _NAME.fullmatch(name):
        return "a run name is one folder name of letters, digits and '-', '_', '.' (no '/' or spaces)"
    return None


class RunDir:
    """A run's folder; see the module docstring for the layout."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    # -- creation --------------------------------------------------------------------------
    @classmethod
    def create(cls, path: str | Path, recipe_text: str, *, overwrite: bool = False) -> RunDir:
        """Start a fresh run folder; refuses to clobber an existing run unless ``overwrite``,
        and even then removes only a tinytamer run inside the runs folder (see check_free)."""
        path = Path(path)
        if cls.check_free(path, overwrite=overwrite):
            shutil.rmtree(path)
        run = cls(path)
        path.mkdir(parents=True, exist_ok=True)
        write_atomic(run.recipe_path, recipe_text)
        write_atomic(run.state_path, json.dumps({"completed": [], "created": time.time()}, indent=2))
        return run

    @staticmethod
    def check_free(path: str | Path, *, overwrite: bool = False) -> bool:
        """Check that a run may start in ``path``; True when an old run there must go first.

        ``path`` is ``<runs folder>/<run name>``.  A folder that is not empty is refused unless
        ``overwrite``, and then only a tinytamer run (it holds state.json) that is a real
        folder strictly inside the runs folder may be replaced; a symlink is always refused,
        so a run never writes or deletes outside its runs folder.
        """
        path = Path(path)
        problem = run_name_problem(path.name)
        if problem:
            raise RecipeError(f"recipe key 'name': {problem} (got {path.name!r})")
        if path.is_symlink():
            raise TamerError(
                f"run folder {path} is a symbolic link (to {path.resolve()}); a run "
                "is written only to a real folder inside the runs folder: remove the "
                "link or choose another name"
            )
        if not path.exists():
            return False
        if not path.is_dir():
            raise TamerError(f"run folder {path} exists and is not a folder: choose another name")
        if not any(path.iterdir()):
            return False
        if not overwrite:
            raise TamerError(
                f"run folder {path} already exists: resume it with `tamer run --resume {path}`, "
                "or choose another name (or pass --overwrite)"
            )
        state = path / "state.json"
        if not state.is_file() or state.is_symlink():
            raise TamerError(
                f"--overwrite: {path} is not a tinytamer run (no state.json), so it "
                "is left alone: choose another name, or remove it yourself"
            )
        # One plain name that is not a symlink: the folder is strictly inside path.parent.
        return True

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
        """Append one metrics line (JSON, fsynced; a torn line a kill left is repaired first).

        The storage under :mod:`tinytamer.records`, which writes the typed records through it
        (``log_record``) and reads them back (``read_records``): use that, not this."""
        append_jsonl(self.metrics_path, {"time": round(time.time(), 3), **record}, default=_jsonable)

    def records(self) -> list[dict[str, Any]]:
        """All metrics lines as JSON objects (untyped: :func:`tinytamer.records.read_records`
        gives the typed records); a torn last line (crash mid-write) is skipped with a warning."""
        records = read_jsonl(self.metrics_path)
        for i, r in enumerate(records):
            if not isinstance(r, dict):
                raise CorruptFileError(
                    f"{self.metrics_path}: record {i + 1} is a {type(r).__name__}, not a JSON object"
                )
        return records

    # -- state -----------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """state.json, checked: a damaged one is an error naming the file, never a traceback."""
        state = read_json(self.state_path, "run state")
        done = state.get("completed") if isinstance(state, dict) else None
        if not isinstance(done, list) or not all(_is_stage_entry(c) for c in done):
            raise CorruptFileError(
                f"run state file {self.state_path} is damaged: expected a 'completed' "
                "list of {index, stage, checkpoint} entries"
            )
        return state

    def completed(self) -> list[dict[str, Any]]:
        return list(self.state()["completed"])

    def finish_stage(self, index: int, name: str, model: nn.Module) -> Path:
        """Checkpoint the model a stage produced and mark the stage done."""
        ckpt = save_checkpoint(model, self.checkpoint_path(index, name))
        state = self.state()
        state["completed"] = [c for c in state["completed"] if c["index"] != index]
        state["completed"].append({"index": index, "stage": name, "checkpoint": str(ckpt.relative_to(self.path))})
        write_atomic(self.state_path, json.dumps(state, indent=2))
        return ckpt

    def last_model(self, allow: tuple[str, ...] = ()) -> tuple[int, nn.Module | None]:
        """(number of finished stages, the model the last one left) for resuming."""
        done = sorted(self.completed(), key=lambda c: c["index"])
        if not done:
            return 0, None
        last = done[-1]
        ckpt = self.path / last["checkpoint"]
        if not ckpt.resolve().is_relative_to(self.path.resolve()):
            raise CorruptFileError(
                f"run state file {self.state_path}: checkpoint {last['checkpoint']!r} is outside the run folder"
            )
        return last["index"] + 1, load_checkpoint(ckpt, allow=allow)


def _is_stage_entry(entry: Any) -> bool:
    return (
        isinstance(entry, dict)
        and type(entry.get("index")) is int
        and isinstance(entry.get("stage"), str)
        and isinstance(entry.get("checkpoint"), str)
    )


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "to_dict"):
        return value.to_dict()
    return str(value)
