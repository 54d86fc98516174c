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

import copy
import difflib
import importlib
import random
import reprlib
import types
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, Union, get_args, get_origin

import numpy as np
import torch
import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictInt, StrictStr, ValidationError
from torch import nn

from tinytamer.errors import ModelError, RecipeError
from tinytamer.records import (
    Record,
    StageRecord,
    TrainRecord,
    last_record,
    log_record,
    read_records,
    stage_record,
)
from tinytamer.rundir import RunDir, run_name_problem

# -- stage registry ---------------------------------------------------------------------------


class StageParams(BaseModel):
    """Base class of every stage's parameters: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")


StageFn = Callable[[nn.Module, "Context", Any], nn.Module]
R = TypeVar("R", bound=Record)
S = TypeVar("S", bound=StageRecord)


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
    name: str = Field("digits", description="dataset name (see `tamer list datasets`)")
    root: str | None = Field(None, description="dataset folder or archive (built-in digits: none)")
    size: int | None = Field(None, description="resize images to size x size (None: as stored)")
    augment: bool = Field(False, description="the dataset's standard training augmentation (train split only)")
    batch_size: int = Field(64, gt=0, description="training mini-batch size")
    test_batch_size: int = Field(256, gt=0, description="batch size of evaluation")
    val_fraction: float = Field(
        0.1, ge=0, lt=1, description="share of train held out as val (unless the data has its own val split)"
    )
    limit: int | None = Field(None, gt=0, description="keep the first N items of each split")
    classes: list[StrictInt | StrictStr] | None = Field(
        None, description="keep only these classes (indices or names), relabelled 0..k-1 in this order"
    )
    options: dict[str, Any] = Field(default_factory=dict, description="loader-specific options of the dataset")


class ModelSpec(BaseModel):
    """Which model: a zoo name or ``package.module:factory``, optional weights to start from."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(
        "democnn",
        description="zoo model (see `tamer list models`) or "
        "package.module:factory (imported: a recipe is trusted like a script)",
    )
    weights: str | None = Field(None, description="checkpoint (.safetensors) or compressed model (.tt) to start from")
    weights_skip: list[str] = Field(
        default_factory=list,
        description="modules of `weights` not loaded (e.g. [head] for another number of classes): "
        "the model is built for this recipe's data and those keep their fresh initialization",
    )
    kwargs: dict[str, Any] = Field(default_factory=dict, description="keyword arguments of the model factory")


def _run_name(name: str) -> str:
    # The run folder is <runs>/<name>: '..', '.', or a '/' would reach outside it.
    problem = run_name_problem(name)
    if problem:
        raise ValueError(problem)
    return name


class Recipe(BaseModel):
    """A whole recipe; ``stages`` holds ``(stage name, validated params)`` pairs."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)
    name: Annotated[str, AfterValidator(_run_name)] = Field(description="run folder name")
    seed: int = Field(0, description="seeds every random number generator (stage i: seed + i)")
    data: DataSpec = Field(default_factory=DataSpec, description="the dataset")
    model: ModelSpec = Field(default_factory=ModelSpec, description="the model")
    stages: list[tuple[str, Any]] = Field(
        default_factory=list, description="the stages, in order, as '- NAME: {KEY: VALUE}' (see `tamer list stages`)"
    )


# -- YAML and error messages ------------------------------------------------------------------

# Nodes a recipe may expand to once aliases are followed: a large hand-written recipe has a few
# thousand; a 1 KB "billion laughs" document has billions, which would hang validation.
MAX_YAML_NODES = 100_000
# Characters of a value or message an error shows; the rest is elided.
MAX_SHOWN = 200
# Validation problems an error lists before "... and N more".
MAX_PROBLEMS = 5


class _ExpansionError(yaml.YAMLError):
    pass


def _expanded_size(root: yaml.Node) -> int:
    """Nodes in the document once every alias is expanded; raises past MAX_YAML_NODES."""
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()

    def size(node: yaml.Node) -> int:
        key = id(node)
        if key in sizes:  # an alias: the same node object again, counted again
            return sizes[key]
        if key in open_nodes:
            raise _ExpansionError("an alias refers to a node that contains it (a recursive structure)")
        open_nodes.add(key)
        n = 1
        if isinstance(node, yaml.SequenceNode):
            n += sum(size(child) for child in node.value)
        elif isinstance(node, yaml.MappingNode):
            n += sum(size(k) + size(v) for k, v in node.value)
        open_nodes.discard(key)
        if n > MAX_YAML_NODES:
            raise _ExpansionError(
                f"its aliases expand to more than {MAX_YAML_NODES:,} values "
                "(a YAML bomb?); write the values out or use fewer aliases"
            )
        sizes[key] = n
        return n

    return size(root)


class _BoundedLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that sizes the document, aliases expanded, before building it."""

    def construct_document(self, node: yaml.Node) -> Any:
        _expanded_size(node)
        return super().construct_document(node)


def load_yaml(text: str, source: str) -> Any:
    """Parse YAML as data (safe tags only); aliases may not expand past MAX_YAML_NODES nodes."""
    try:
        return yaml.load(text, Loader=_BoundedLoader)  # noqa: S506 - a SafeLoader subclass
    except _ExpansionError as exc:
        raise RecipeError(f"{source}: {exc}") from None
    except yaml.YAMLError as exc:
        raise RecipeError(f"{source} is not valid YAML: {clip(str(exc), 2 * MAX_SHOWN)}") from None
    except RecursionError:
        raise RecipeError(f"{source}: YAML nested too deeply") from None


_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = MAX_SHOWN // 2
_REPR.maxlevel = 3


def clip(text: str, limit: int = MAX_SHOWN) -> str:
    """``text`` cut to ``limit`` characters, marked when cut."""
    return text if len(text) <= limit else f"{text[: limit - 20]}... ({len(text):,} chars)"


def short_repr(value: Any) -> str:
    """A repr that stays short however large or deep ``value`` is (it is never walked whole)."""
    return clip(_REPR.repr(value))


def _unwrap(ann: Any) -> Any:
    while get_origin(ann) is Annotated:
        ann = get_args(ann)[0]
    return ann


def _is_model(ann: Any) -> bool:
    return isinstance(ann, type) and issubclass(ann, BaseModel)


def _is_union(ann: Any) -> bool:
    return get_origin(ann) in (Union, types.UnionType)


def _members(ann: Any) -> list[Any]:
    """The non-None members of a union (``ann`` itself if it is not one)."""
    ann = _unwrap(ann)
    if not _is_union(ann):
        return [ann]
    return [_unwrap(a) for a in get_args(ann) if a is not type(None)]


def _field_named(model: type[BaseModel], key: Any) -> Any:
    for name, f in model.model_fields.items():
        if key in (name, f.alias):
            return f
    return None


def _keys(model: type[BaseModel]) -> list[str]:
    """The keys a recipe writes for ``model`` (aliases where a field has one)."""
    return [f.alias or name for name, f in model.model_fields.items()]


def _tag_matches(member: Any, tag: Any) -> bool:
    """Whether ``tag`` is pydantic's name of union member ``member`` in an error location:
    a model's class name or discriminator value, else the type's name (``dict[str,float]``)."""
    if not isinstance(tag, str):
        return False
    if _is_model(member):
        return tag == member.__name__ or any(
            get_origin(f.annotation) is Literal and tag in get_args(f.annotation) for f in member.model_fields.values()
        )
    origin = get_origin(member) or member
    name = getattr(origin, "__name__", None) or getattr(origin, "_name", "")
    return tag.split("[", 1)[0].lower() == str(name).lower()


def _walk(ann: Any, loc: Sequence[Any]) -> tuple[list[Any], list[type[BaseModel]]]:
    """Follow a pydantic error location through the annotation ``ann``.

    Returns the location as a recipe writes it (the union member names pydantic inserts are
    dropped) and the models whose keys are allowed where it ends.
    """
    members = _members(ann)
    if len(members) > 1:
        if not loc:
            return [], [m for m in members if _is_model(m)]
        # Past a union of several types, pydantic names the member the error came from.
        member = next((m for m in members if _tag_matches(m, loc[0])), None)
        return _walk(member, loc[1:]) if member is not None else (list(loc[1:]), [])
    ann = members[0]
    if not loc:
        return [], [ann] if _is_model(ann) else []
    head, rest = loc[0], loc[1:]
    if _is_model(ann):
        f = _field_named(ann, head)
        if f is None:
            return list(loc), []
        path, models = _walk(f.annotation, rest)
        return [head, *path], models
    origin, args = get_origin(ann), get_args(ann)
    if origin in (list, set, frozenset, Sequence) and args:
        item = args[0]
    elif origin is tuple and args:
        variadic = args[-1] is Ellipsis
        item = args[0] if variadic or not isinstance(head, int) or head >= len(args) else args[head]
    elif origin is dict and len(args) == 2:
        item = args[1]
    else:
        return list(loc), []
    path, models = _walk(item, rest)
    return [head, *path], models


def _join(prefix: str, path: Sequence[Any]) -> str:
    out = prefix
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else f".{part}" if out else str(part)
    return out


def _problem(err: Any, prefix: str, model: type[BaseModel]) -> str:
    loc = list(err["loc"])
    path, _ = _walk(model, loc)
    where = _join(prefix, path) or prefix or "(recipe)"
    if err["type"] != "extra_forbidden":
        msg = err["msg"].removeprefix("Value error, ")
        return f"{where}: {clip(msg)} (got {short_repr(err.get('input'))})"
    _, parents = _walk(model, loc[:-1])
    allowed = list(dict.fromkeys(k for m in parents for k in _keys(m)))
    close = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
    hint = f" - did you mean '{close[0]}'?" if close else ""
    return f"{where}: unknown key (allowed: {', '.join(allowed) or 'none'}){hint}"


def _format_errors(exc: ValidationError, prefix: str, model: type[BaseModel]) -> str:
    """Each problem with its recipe key; unknown keys list the keys allowed at their level."""
    errors = exc.errors()
    lines = [_problem(err, prefix, model) for err in errors[:MAX_PROBLEMS]]
    if len(errors) > MAX_PROBLEMS:
        lines.append(f"... and {len(errors) - MAX_PROBLEMS} more")
    return "; ".join(lines)


def parse_recipe(raw: dict[str, Any] | str | Path, source: str = "recipe") -> Recipe:
    """Validate a recipe (a dict, YAML text or a Path) and every stage's parameters."""
    if isinstance(raw, Path):
        path = raw
        if not path.is_file():
            raise RecipeError(f"recipe file not found: {path}")
        source, raw = str(path), path.read_text()
    if isinstance(raw, str):
        raw = load_yaml(raw, source)
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
            raise RecipeError(
                f"{source}: stages[{i}] must be one mapping like '- train: {{...}}', got {short_repr(item)}"
            )
        ((name, params),) = item.items()
        if name not in registry:
            raise RecipeError(
                f"{source}: stages[{i}]: unknown stage {short_repr(name)} (known: {', '.join(sorted(registry))})"
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


# -- parameter documentation (``tamer list stages NAME``) --------------------------------------


@dataclass(frozen=True)
class ParamDoc:
    """One key of a parameter model, described from its pydantic field."""

    key: str
    type: str
    default: str
    description: str


def type_text(ann: Any) -> str:
    """An annotation as a reader writes it: ``float | dict[str, float] | 'sensitivity'``."""
    if get_origin(ann) is Annotated:
        base, *meta = get_args(ann)
        # Bounds given inside the type (Annotated[int, Field(ge=1)]) belong to that member.
        found = [m for x in meta for m in getattr(x, "metadata", [x])]
        return type_text(base) + _bounds_text(found)
    if ann is type(None):
        return "None"
    if ann is Any:
        return "any"
    if _is_union(ann):
        return " | ".join(type_text(a) for a in get_args(ann))
    if get_origin(ann) is Literal:
        return " | ".join(repr(a) for a in get_args(ann))
    origin, args = get_origin(ann), get_args(ann)
    if origin is not None:
        inner = ", ".join("..." if a is Ellipsis else type_text(a) for a in args)
        return f"{getattr(origin, '__name__', str(origin))}[{inner}]"
    return getattr(ann, "__name__", str(ann))


_BOUNDS = (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<="))


def _bounds_text(metadata: Sequence[Any]) -> str:
    found = [
        f"{sign} {getattr(m, attr)}" for m in metadata for attr, sign in _BOUNDS if getattr(m, attr, None) is not None
    ]
    return f" ({', '.join(found)})" if found else ""


def _value_text(value: Any) -> str:
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json", exclude_unset=True) or value.model_dump(mode="json")
    text = yaml.safe_dump(value, default_flow_style=True, width=10**6, sort_keys=False).strip()
    return text.removesuffix("...").strip()


def param_docs(model: type[BaseModel]) -> list[ParamDoc]:
    """Every key of ``model``: type (with bounds), default and description, from the schema."""
    out = []
    for name, f in model.model_fields.items():
        default = "required" if f.is_required() else _value_text(f.get_default(call_default_factory=True))
        out.append(
            ParamDoc(f.alias or name, type_text(f.annotation) + _bounds_text(f.metadata), default, f.description or "")
        )
    return out


def nested_models(model: type[BaseModel]) -> list[tuple[str, type[BaseModel]]]:
    """``(key path, model)`` of every parameter model inside ``model``'s fields, each once."""
    found: dict[type[BaseModel], str] = {}

    def models_in(ann: Any) -> list[type[BaseModel]]:
        ann = _unwrap(ann)
        if _is_model(ann):
            return [ann]
        return [m for a in get_args(ann) for m in models_in(a)]

    def visit(m: type[BaseModel], prefix: str) -> None:
        for name, f in m.model_fields.items():
            path = f"{prefix}{f.alias or name}"
            for sub in models_in(f.annotation):
                if sub not in found:
                    found[sub] = path
                    visit(sub, f"{path}.")

    visit(model, "")
    return [(path, m) for m, path in found.items()]


def accepts(ann: Any, value: str) -> bool:
    """Whether a field of type ``ann`` can hold the string ``value`` (or a list of it)."""
    ann = _unwrap(ann)
    if _is_union(ann):
        return any(accepts(a, value) for a in get_args(ann))
    if get_origin(ann) is Literal:
        return value in get_args(ann)
    if get_origin(ann) in (list, tuple, set):
        return any(accepts(a, value) for a in get_args(ann))
    return ann is str


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

        return make_loader(self.data.train, batch_size or self.recipe.data.batch_size, shuffle=True, seed=self.seed)

    def val_loader(self) -> Any:
        return self._eval_loader("val")

    def test_loader(self) -> Any:
        return self._eval_loader("test")

    def _eval_loader(self, split: str) -> Any:
        from tinytamer.data import make_loader

        if split not in self._loaders:
            self._loaders[split] = make_loader(
                getattr(self.data, split), self.recipe.data.test_batch_size, shuffle=False
            )
        return self._loaders[split]

    def example_input(self, batch: int = 1) -> torch.Tensor:
        """Real samples from the test split (deterministic), stacked into a batch."""
        return torch.stack([self.data.test[i][0] for i in range(batch)])

    def evaluate(self, model: nn.Module, split: str = "test") -> dict[str, float]:
        if self.data.meta.task == "detection":  # accuracy is mAP@0.5; map50_95 beside it
            from tinytamer.detect import evaluate as evaluate_detection

            return evaluate_detection(model, self._eval_loader(split))
        from tinytamer.train import evaluate

        return evaluate(model, self._eval_loader(split))

    def loss_fn(self, model: nn.Module) -> Any:
        """The task's training loss for ``model`` (None: the Solver's cross-entropy)."""
        if self.data.meta.task == "detection":
            from tinytamer.detect import DetectionLoss, Head

            return DetectionLoss(Head.of(model))
        return None

    def finetune(
        self,
        model: nn.Module,
        config: Any,
        *,
        hooks: Sequence[Any] = (),
        batch_size: int | None = None,
        name: str = "snapshots",
        distill: Any = None,
        monitor: bool = True,
    ) -> dict[str, Any]:
        """Train ``model`` in place with the Solver; every stage that trains calls this.

        ``config``: a SolverConfig or its dict; the recipe's seed applies unless it sets
        one.  Snapshots go to this stage's folder ``name`` (one per training of the stage),
        and training resumes from the newest there after an interruption.  ``hooks`` are
        the method's ``tinytamer.train.solver.TrainHook`` objects; ``distill`` a
        ``tinytamer.train.distill.Distillation`` (a teacher to learn from); ``monitor=False``:
        no held-out figures (for a model whose plain forward is not the thing to score, such
        as a supernet).  Returns the Solver's final record.
        """
        from tinytamer.train import SolverConfig
        from tinytamer.train.solver import latest_snapshot

        given = config.model_dump(exclude_unset=True) if isinstance(config, SolverConfig) else config
        cfg = SolverConfig.model_validate({"seed": self.seed, **given})
        solver = self.make_solver(
            model, cfg, hooks=hooks, batch_size=batch_size, name=name, distill=distill, monitor=monitor
        )
        return solver.solve(resume=latest_snapshot(self.stage_dir / name))

    def make_solver(
        self,
        model: nn.Module,
        config: Any,
        *,
        hooks: Sequence[Any] = (),
        batch_size: int | None = None,
        name: str = "snapshots",
        distill: Any = None,
        monitor: bool = True,
    ) -> Any:
        """A Solver whose snapshots live in this stage's folder and whose records go to the log."""
        from tinytamer.train import Solver, SolverConfig

        cfg = (
            config
            if isinstance(config, SolverConfig)
            else SolverConfig.model_validate({"seed": self.seed, **(config or {})})
        )
        # Caffe tests on the held-out split during training; with no validation split, on test.
        held_out = (self.val_loader() if len(self.data.val) else self.test_loader()) if monitor else None
        return Solver(
            model,
            cfg,
            self.train_loader(batch_size),
            held_out,
            snapshot_dir=self.stage_dir / name,
            log=self.log_training,
            hooks=hooks,
            progress=self.progress,
            loss_fn=self.loss_fn(model),
            distill=distill,
        )

    def log_training(self, record: dict[str, Any]) -> None:
        """Append one interval the Solver reported, as this stage's TrainRecord."""
        log_record(self.rundir, TrainRecord(stage=self.stage_name, index=self.stage_index, **record))

    def log(self, record: StageRecord | dict[str, Any]) -> None:
        """Append this stage's record to metrics.jsonl (see :meth:`record`); a dict is read
        as this stage's record type, so its keys are checked all the same."""
        if isinstance(record, dict):
            record = stage_record({"stage": self.stage_name, "index": self.stage_index, **record})
        log_record(self.rundir, record)

    def record(
        self,
        of: type[S],
        model: nn.Module,
        *,
        file: str | Path | None = None,
        accuracy: float | None = None,
        **fields: Any,
    ) -> S:
        """This stage's record of type ``of``: :meth:`model_record` of ``model`` and
        ``fields``, which win where both give a key (deploy: bytes of its artifact)."""
        return of(
            stage=self.stage_name,
            index=self.stage_index,
            **{**self.model_record(model, file=file, accuracy=accuracy), **fields},
        )

    def records(self, of: type[R]) -> list[R]:
        """The records of type ``of`` that the stages before this one wrote, oldest first
        (e.g. ``ctx.records(StageRecord)``: every stage's summary)."""
        return [r for r in read_records(self.rundir, of) if r.index < self.stage_index]

    def last_record(self, of: type[R], *, with_accuracy: bool = False) -> R | None:
        """The newest of :meth:`records` (with a measured accuracy, if asked), or None."""
        return last_record(self.records(of), with_accuracy=with_accuracy)

    def model_record(
        self, model: nn.Module, *, file: str | Path | None = None, accuracy: float | None = None
    ) -> dict[str, Any]:
        """The figures of a StageRecord: accuracy (on test, in PyTorch, unless given),
        parameters, non-zeros, MACs and bytes of ``file`` on disk."""
        from tinytamer.zoo import count

        counts = count(model, self.input_shape)
        scores: dict[str, Any] = {}
        if accuracy is None:
            metrics = self.evaluate(model)
            accuracy = metrics["accuracy"]
            scores = {k: metrics[k] for k in ("map50", "map50_95") if k in metrics}
        rec: dict[str, Any] = {
            **scores,
            "accuracy": accuracy,
            "accuracy_runtime": "PyTorch",
            "params": counts.params,
            "nonzero_params": counts.nonzero_params,
            "macs": counts.macs,
            "dense_bytes": 4 * counts.params,
        }
        if file is not None:
            rec["file"] = str(Path(file).resolve().relative_to(self.rundir.path.resolve()))
            rec["bytes"] = Path(file).stat().st_size
        return rec


def load_data(spec: DataSpec, seed: int) -> Any:
    from tinytamer.data import get_dataset

    return get_dataset(
        spec.name,
        spec.root,
        size=spec.size,
        augment=spec.augment,
        val_fraction=spec.val_fraction,
        seed=seed,
        limit=spec.limit,
        classes=spec.classes,
        **spec.options,
    )


def user_module_prefixes(spec: ModelSpec) -> tuple[str, ...]:
    """A user model's package may be rebuilt from checkpoints (it is named in the recipe)."""
    if ":" in spec.name:
        return (spec.name.split(":", 1)[0].split(".")[0] + ".",)
    return ()


def build_model(spec: ModelSpec, meta: Any) -> nn.Module:
    """Create the recipe's model for the data's shape; load starting weights if given."""
    from tinytamer.checkpoint import has_architecture, load_checkpoint, load_weights
    from tinytamer.zoo import create

    # A .tt or a tinytamer checkpoint holds its architecture (told apart by magic bytes).
    if spec.weights and has_architecture(spec.weights) and not spec.weights_skip:
        return load_checkpoint(spec.weights, allow=user_module_prefixes(spec)).train()
    c, h, _ = meta.input_shape
    kwargs = {"num_classes": meta.num_classes, "in_channels": c, "input_size": h, **spec.kwargs}
    if meta.task == "detection":  # a detector starts from the anchors fitted to the data
        kwargs.setdefault("anchors", [list(a) for a in meta.anchors])
    model = create(spec.name, **kwargs)
    if spec.weights and spec.weights_skip:
        load_weights_skipping(model, spec)
    elif spec.weights:
        load_weights(model, spec.weights)
    return model


def load_weights_skipping(model: nn.Module, spec: ModelSpec) -> nn.Module:
    """Load ``spec.weights`` into ``model`` but the modules named in ``spec.weights_skip``
    (e.g. a head pretrained for another set of classes), which keep their initialization."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from tinytamer.checkpoint import has_architecture, load_checkpoint

    path = str(spec.weights)
    if has_architecture(path):  # verified (digest, architecture) and rebuilt as saved
        tensors = load_checkpoint(path, allow=user_module_prefixes(spec)).state_dict()
    else:
        try:
            tensors = load_file(path)
        except (SafetensorError, OSError, ValueError) as exc:
            raise RecipeError(f"model.weights: {path} is not a readable safetensors file: {exc}") from None

    def skipped(name: str) -> bool:
        return any(name == p or name.startswith(p + ".") for p in spec.weights_skip)

    for p in spec.weights_skip:
        if not any(name == p or name.startswith(p + ".") for name in tensors):
            tops = sorted({name.split(".")[0] for name in tensors})
            raise RecipeError(f"model.weights_skip: '{p}' names no weights in {path}; its modules: {', '.join(tops)}")
    own = model.state_dict()
    kept = {k: t for k, t in tensors.items() if not skipped(k)}
    missing = sorted(k for k in own if not skipped(k) and k not in kept)
    unexpected = sorted(k for k in kept if k not in own)
    wrong = sorted(k for k in kept if k in own and own[k].shape != kept[k].shape)
    if missing or unexpected or wrong:
        raise RecipeError(
            f"model.weights: {path} does not fit '{spec.name}' for this data beyond model.weights_skip "
            f"{spec.weights_skip}: missing {missing[:8]}, unexpected {unexpected[:8]}, other shape {wrong[:8]}"
        )
    model.load_state_dict(kept, strict=False)
    return model


def check_takes_input(model: nn.Module, data: Any, spec: ModelSpec) -> None:
    """One test sample through ``model``, so that a model made for another input shape (a
    checkpoint scored on another dataset) fails now, naming both, not inside a stage."""
    if not len(data.test):
        return
    x = data.test[0][0].unsqueeze(0)
    source = f"from {spec.weights}" if spec.weights else f"'{spec.name}'"
    try:
        # On a copy: a forward may update state (observers, lazy modules) the stages own.
        with torch.no_grad():
            y = copy.deepcopy(model).eval()(x)
    except (RuntimeError, ValueError, TypeError) as exc:
        raise ModelError(
            f"the model {source} does not take this data's input of shape "
            f"{tuple(x.shape[1:])} (data '{data.meta.name}'; --size / data.size "
            f"resizes images): {clip(str(exc).splitlines()[0] if str(exc) else repr(exc))}"
        ) from None
    # Fewer logits than classes would fail deep in the loss; more (a subset of the classes a
    # checkpoint knows) train and score as they are.
    n = data.meta.num_classes
    if data.meta.task == "classification" and isinstance(y, torch.Tensor) and y.ndim == 2 and y.shape[1] < n:
        raise ModelError(
            f"the model {source} scores {y.shape[1]} classes but data '{data.meta.name}' has {n}; "
            "model.weights_skip: [head] starts a new head for this data (named as in the model)"
        )


def run(
    recipe: Recipe,
    path: str | Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    echo: Callable[[str], None] = print,
) -> RunDir:
    """Run (or resume) ``recipe`` in the folder ``path``; returns the run directory."""
    if not resume:
        RunDir.check_free(path, overwrite=overwrite)
    seed_everything(recipe.seed)
    # Data and model are loaded before the run folder is created, so that a bad path or
    # model name leaves nothing behind to block the corrected run.
    # A first decode of a large dataset takes a while: say what is being loaded.
    echo(f"loading data '{recipe.data.name}'" + (f" from {recipe.data.root}" if recipe.data.root else ""))
    data = load_data(recipe.data, recipe.seed)
    allow = user_module_prefixes(recipe.model)
    if resume:
        rundir = RunDir.open(path)
        start, model = rundir.last_model(allow)
    else:
        start, model = 0, None
    if model is None:
        model = build_model(recipe.model, data.meta)
        check_takes_input(model, data, recipe.model)
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
