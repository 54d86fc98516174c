"""Recipes: a validated list of stages run inside a run directory.

A recipe names the data, the model and the stages, in order::

    name: lenet5-mnist
    seed: 0
    data: {name: mnist, root: ../shared/data/mnist, batch_size: 64}
    model: {name: lenet5}
    stages:
      - train: {base_lr: 0.01, lr_policy: inv, gamma: 0.0001, power: 0.75, max_iter: 10000}
      - evaluate: {}

Everything is validated before anything runs: an unknown key, a wrong type or an
unknown stage fails at once, naming the key and the allowed ones.  Stages are
registered by ``tinytamer.stages.*`` with :func:`register_stage`; each is
``fn(model, ctx, params) -> model``.
"""

from __future__ import annotations

import importlib
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from torch import nn

from tinytamer.errors import RecipeError
from tinytamer.rundir import RunDir

# -- stage registry ---------------------------------------------------------------------------


class StageParams(BaseModel):
    """Base class of every stage's parameters: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")


StageFn = Callable[[nn.Module, "Context", Any], nn.Module]


@dataclass(frozen=True)
class StageDef:
    name: str
    params: type[StageParams]
    fn: StageFn
    help: str


_STAGES: dict[str, StageDef] = {}


def register_stage(name: str, params: type[StageParams], help: str = "") -> Callable[[StageFn], StageFn]:
    """Register ``fn(model, ctx, params) -> model`` as the recipe stage ``name``."""

    def deco(fn: StageFn) -> StageFn:
        if name in _STAGES and _STAGES[name].fn is not fn:
            raise RuntimeError(f"recipe stage '{name}' is registered twice")
        _STAGES[name] = StageDef(name, params, fn, help or (fn.__doc__ or "").strip().split("\n")[0])
        return fn

    return deco


def stages() -> dict[str, StageDef]:
    """All registered stages (importing ``tinytamer.stages`` registers the built-in ones)."""
    importlib.import_module("tinytamer.stages")
    return dict(_STAGES)


# -- recipe schema ----------------------------------------------------------------------------


class DataSpec(BaseModel):
    """Which dataset, and how to load it."""

    model_config = ConfigDict(extra="forbid")
    name: str = "digits"
    root: str | None = None
    size: int | None = None
    augment: bool = False
    batch_size: int = Field(64, gt=0)
    test_batch_size: int = Field(256, gt=0)
    val_fraction: float = Field(0.1, ge=0, lt=1)
    limit: int | None = Field(None, gt=0)
    options: dict[str, Any] = Field(default_factory=dict)


class ModelSpec(BaseModel):
    """Which model: a zoo name or ``package.module:factory``, optional weights to start from."""

    model_config = ConfigDict(extra="forbid")
    name: str = "democnn"
    weights: str | None = None
    kwargs: dict[str, Any] = Field(default_factory=dict)


class Recipe(BaseModel):
    """A whole recipe; ``stages`` holds ``(stage name, validated params)`` pairs."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)
    name: str
    seed: int = 0
    data: DataSpec = Field(default_factory=DataSpec)
    model: ModelSpec = Field(default_factory=ModelSpec)
    stages: list[tuple[str, Any]] = Field(default_factory=list)


def _format_errors(exc: ValidationError, prefix: str, model: type[BaseModel]) -> str:
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"])
        where = f"{prefix}.{loc}" if prefix else loc
        if err["type"] == "extra_forbidden":
            allowed = ", ".join(_allowed(model, err["loc"][:-1])) or "none"
            lines.append(f"{where}: unknown key (allowed: {allowed})")
        else:
            lines.append(f"{where}: {err['msg']} (got {err.get('input')!r})")
    return "; ".join(lines)


def _allowed(model: type[BaseModel], loc: Sequence[Any]) -> list[str]:
    for part in loc:
        f = model.model_fields.get(str(part))
        ann = getattr(f, "annotation", None)
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            model = ann
        else:
            return []
    return list(model.model_fields)


def parse_recipe(raw: dict[str, Any] | str | Path, source: str = "recipe") -> Recipe:
    """Validate a recipe (a dict, YAML text or a Path) and every stage's parameters."""
    if isinstance(raw, Path):
        path = raw
        if not path.is_file():
            raise RecipeError(f"recipe file not found: {path}")
        source, raw = str(path), path.read_text()
    if isinstance(raw, str):
        try:
            raw = yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            raise RecipeError(f"{source} is not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise RecipeError(f"{source}: a recipe is a mapping with keys name, seed, data, model, stages")
    raw = dict(raw)
    raw_stages = raw.pop("stages", []) or []
    try:
        recipe = Recipe.model_validate({**raw, "stages": []})
    except ValidationError as exc:
        raise RecipeError(f"{source}: {_format_errors(exc, '', Recipe)}") from None
    if not isinstance(raw_stages, list):
        raise RecipeError(f"{source}: 'stages' must be a list of single-key mappings like '- train: {{...}}'")
    registry = stages()
    parsed = []
    for i, item in enumerate(raw_stages):
        if isinstance(item, str):
            item = {item: {}}
        if not isinstance(item, dict) or len(item) != 1:
            raise RecipeError(f"{source}: stages[{i}] must be one mapping like '- train: {{...}}', got {item!r}")
        (name, params), = item.items()
        if name not in registry:
            raise RecipeError(
                f"{source}: stages[{i}]: unknown stage '{name}' (known: {', '.join(sorted(registry))})"
            )
        model = registry[name].params
        try:
            parsed.append((name, model.model_validate(params or {})))
        except ValidationError as exc:
            raise RecipeError(f"{source}: {_format_errors(exc, f'stages[{i}].{name}', model)}") from None
    recipe.stages = parsed
    return recipe


def dump_recipe(recipe: Recipe) -> str:
    """The recipe as YAML (what the run folder keeps)."""
    body = recipe.model_dump(exclude={"stages"}, mode="json")
    body["stages"] = [{n: p.model_dump(mode="json")} for n, p in recipe.stages]
    return yaml.safe_dump(body, sort_keys=False)


# -- running ----------------------------------------------------------------------------------


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@dataclass
class Context:
    """What a stage may use: data, evaluation, a Solver factory, its folder, the log."""

    recipe: Recipe
    rundir: RunDir
    data: Any
    stage_index: int = 0
    stage_name: str = ""
    progress: bool = True
    _loaders: dict[str, Any] = field(default_factory=dict)

    @property
    def seed(self) -> int:
        return self.recipe.seed

    @property
    def stage_dir(self) -> Path:
        return self.rundir.stage_dir(self.stage_index, self.stage_name)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.data.meta.input_shape)

    def train_loader(self, batch_size: int | None = None) -> Any:
        from tinytamer.data import make_loader

        return make_loader(self.data.train, batch_size or self.recipe.data.batch_size,
                           shuffle=True, seed=self.seed)

    def val_loader(self) -> Any:
        return self._eval_loader("val")

    def test_loader(self) -> Any:
        return self._eval_loader("test")

    def _eval_loader(self, split: str) -> Any:
        from tinytamer.data import make_loader

        if split not in self._loaders:
            self._loaders[split] = make_loader(getattr(self.data, split),
                                               self.recipe.data.test_batch_size, shuffle=False)
        return self._loaders[split]

    def example_input(self, batch: int = 1) -> torch.Tensor:
        """Real samples from the test split (deterministic), stacked into a batch."""
        return torch.stack([self.data.test[i][0] for i in range(batch)])

    def evaluate(self, model: nn.Module, split: str = "test") -> dict[str, float]:
        from tinytamer.train import evaluate

        return evaluate(model, self._eval_loader(split))

    def make_solver(self, model: nn.Module, config: Any, *, after_step: Sequence[Callable] = (),
                    batch_size: int | None = None, name: str = "snapshots") -> Any:
        """A Solver whose snapshots live in this stage's folder and whose records go to the log."""
        from tinytamer.train import Solver, SolverConfig

        cfg = config if isinstance(config, SolverConfig) else SolverConfig.model_validate(
            {"seed": self.seed, **(config or {})})
        # Caffe tests on the held-out split during training; with no validation split, on test.
        monitor = self.val_loader() if len(self.data.val) else self.test_loader()
        return Solver(model, cfg, self.train_loader(batch_size), monitor,
                      snapshot_dir=self.stage_dir / name, log=self.log_training,
                      after_step=after_step, progress=self.progress)

    def log_training(self, record: dict[str, Any]) -> None:
        self.rundir.log({"kind": "train", "stage": self.stage_name, "index": self.stage_index, **record})

    def log(self, record: dict[str, Any]) -> None:
        """Append this stage's summary record to metrics.jsonl."""
        self.rundir.log({"kind": "stage", "stage": self.stage_name, "index": self.stage_index, **record})

    def model_record(self, model: nn.Module, *, file: str | Path | None = None,
                     accuracy: float | None = None) -> dict[str, Any]:
        """Accuracy on test, parameters, non-zeros, MACs and bytes of ``file`` on disk."""
        from tinytamer.zoo import count

        counts = count(model, self.input_shape)
        if accuracy is None:
            accuracy = self.evaluate(model)["accuracy"]
        rec: dict[str, Any] = {"accuracy": accuracy, "params": counts.params,
                               "nonzero_params": counts.nonzero_params, "macs": counts.macs,
                               "dense_bytes": 4 * counts.params}
        if file is not None:
            rec["file"] = str(Path(file).resolve().relative_to(self.rundir.path.resolve()))
            rec["bytes"] = Path(file).stat().st_size
        return rec


def load_data(spec: DataSpec, seed: int) -> Any:
    from tinytamer.data import get_dataset

    return get_dataset(spec.name, spec.root, size=spec.size, augment=spec.augment,
                       val_fraction=spec.val_fraction, seed=seed, limit=spec.limit, **spec.options)


def user_module_prefixes(spec: ModelSpec) -> tuple[str, ...]:
    """A user model's package may be rebuilt from checkpoints (it is named in the recipe)."""
    if ":" in spec.name:
        return (spec.name.split(":", 1)[0].split(".")[0] + ".",)
    return ()


def build_model(spec: ModelSpec, meta: Any) -> nn.Module:
    """Create the recipe's model for the data's shape; load starting weights if given."""
    from tinytamer.checkpoint import ARCH_KEY, load_checkpoint, load_weights, read_metadata
    from tinytamer.zoo import create

    if spec.weights and ARCH_KEY in read_metadata(spec.weights):
        return load_checkpoint(spec.weights, allow=user_module_prefixes(spec)).train()
    c, h, _ = meta.input_shape
    kwargs = {"num_classes": meta.num_classes, "in_channels": c, "input_size": h, **spec.kwargs}
    model = create(spec.name, **kwargs)
    if spec.weights:
        load_weights(model, spec.weights)
    return model


def run(recipe: Recipe, path: str | Path, *, resume: bool = False, overwrite: bool = False,
        progress: bool = True, echo: Callable[[str], None] = print) -> RunDir:
    """Run (or resume) ``recipe`` in the folder ``path``; returns the run directory."""
    if not resume:
        RunDir.check_free(path, overwrite=overwrite)
    seed_everything(recipe.seed)
    # Data and model are loaded before the run folder is created, so that a bad path or
    # model name leaves nothing behind to block the corrected run.
    data = load_data(recipe.data, recipe.seed)
    allow = user_module_prefixes(recipe.model)
    if resume:
        rundir = RunDir.open(path)
        start, model = rundir.last_model(allow)
    else:
        start, model = 0, None
    if model is None:
        model = build_model(recipe.model, data.meta)
    if not resume:
        rundir = RunDir.create(path, dump_recipe(recipe), overwrite=overwrite)
    elif start:
        echo(f"resuming {rundir.path} after stage {start - 1} ({recipe.stages[start - 1][0]})")
    registry = stages()
    ctx = Context(recipe=recipe, rundir=rundir, data=data, progress=progress)
    for index, (name, params) in enumerate(recipe.stages):
        if index < start:
            continue
        echo(f"[{index + 1}/{len(recipe.stages)}] {name}")
        ctx.stage_index, ctx.stage_name = index, name
        seed_everything(recipe.seed + index)
        model = registry[name].fn(model, ctx, params)
        rundir.finish_stage(index, name, model)
    from tinytamer.viz.report import write_report

    write_report(rundir)
    return rundir
