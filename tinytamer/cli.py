"""The ``tamer`` command. Thin: every command builds a (one-stage) recipe or calls the API."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperGroup

from tinytamer.errors import TamerError

if TYPE_CHECKING:  # imported where used: `tamer --help` stays quick
    from tinytamer.records import StageRecord, TargetRecord
    from tinytamer.rundir import RunDir


class _Group(TyperGroup):
    """Prints a user error as one line (exit 2) and an interruption with how to resume (130).

    Done here rather than around ``app()`` so that typer's CliRunner sees what a user sees.
    """

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except TamerError as exc:
            # The message holds file paths and install hints like 'tinytamer[tvm]': not markup.
            console.print(f"[bold red]error:[/] {escape(str(exc))}", soft_wrap=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            console.print("[yellow]interrupted[/]: resume with `tamer run --resume runs/<name>`")
            raise typer.Exit(130) from None


app = typer.Typer(
    cls=_Group,
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="tinytamer: train, compress, deploy and measure a PyTorch model for a small device.",
)
console = Console()

NameOpt = Annotated[str | None, typer.Option(help="run name (folder runs/<name>)")]
RunsOpt = Annotated[Path, typer.Option(help="folder that holds the runs")]
ModelOpt = Annotated[str | None, typer.Option(help="zoo model name or package.module:factory (default: democnn)")]
WeightsOpt = Annotated[
    str | None, typer.Option(help="checkpoint (.safetensors) or compressed file (.tt) to start from")
]
DataOpt = Annotated[
    str | None, typer.Option(help="dataset name, see `tamer list datasets` (default: digits; with --run: the run's)")
]
RootOpt = Annotated[str | None, typer.Option(help="dataset folder or archive")]
SizeOpt = Annotated[int | None, typer.Option(help="resize images to SIZE x SIZE")]
FromRunOpt = Annotated[Path | None, typer.Option("--run", help="start from this run's last model and data")]
SetOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--set",
        help="stage parameter KEY=VALUE (YAML value; dots nest; see `tamer list stages NAME`); "
        "data.KEY=VALUE and model.KEY=VALUE set the recipe's data and model "
        "(see `tamer list recipe`)",
    ),
]
OverwriteOpt = Annotated[bool, typer.Option(help="replace an existing run folder of the same name")]
QuietOpt = Annotated[bool, typer.Option("--quiet", help="no progress bars")]
# The search commands' executor options: pass them to tinytamer.search.executor.make_executor.
ExecutorOpt = Annotated[str, typer.Option("--executor", help="where search trials run: local or ray")]
AddressOpt = Annotated[
    str | None,
    typer.Option(
        "--address",
        help="ray: join this cluster ('auto': the one running here; or host:port); "
        "default: start a private local Ray instance",
    ),
]
WorkersOpt = Annotated[
    int,
    typer.Option(
        "--workers",
        min=0,
        help="local: worker processes (0: in this process); ray: CPUs of the local instance (0: all)",
    ),
]


def _echo(text: str) -> None:
    """Print plain text (paths, names, messages): never read as rich markup."""
    console.print(text, markup=False, highlight=False, soft_wrap=True)


def _parse_sets(items: list[str] | None) -> dict[str, Any]:
    from tinytamer.recipe import load_yaml

    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key or "" in key.split("."):
            raise TamerError(f"--set expects KEY=VALUE with KEY like 'sparsity' or 'data.augment', got '{item}'")
        node = out
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise TamerError(f"--set {key}: '{part}' was already given a value")
        node[leaf] = load_yaml(value, f"--set {key}")
    return out


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``extra`` laid over it, nested mappings merged key by key."""
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _one_stage(
    stage: str,
    params: dict[str, Any],
    *,
    name: str | None,
    runs: Path,
    model: str | None,
    weights: str | None,
    data: str | None,
    root: str | None,
    size: int | None,
    from_run: Path | None,
    overwrite: bool,
    quiet: bool,
    extra_stages: list[dict[str, Any]] | None = None,
    what: str = "",
) -> Any:
    """Run ``stage`` (then ``extra_stages``) as a recipe; ``params`` may hold ``data`` and
    ``model`` mappings from ``--set data.KEY=...`` (no stage has keys of those names)."""
    from tinytamer.recipe import parse_recipe, run

    overrides = {key: params.pop(key) for key in ("data", "model") if key in params}
    for key, value in overrides.items():
        if not isinstance(value, dict):
            raise TamerError(
                f"--set {key}=...: set one {key} option at a time, as --set {key}.KEY=VALUE (see `tamer list recipe`)"
            )
    if from_run is not None:
        from tinytamer.rundir import RunDir

        if weights is not None or model is not None:
            raise TamerError("--run starts from that run's last model: give --run, or --model/--weights, not both")
        src = RunDir.open(from_run)
        base = parse_recipe(src.recipe_path)
        done = sorted(src.completed(), key=lambda c: c["index"])
        if not done:
            raise TamerError(f"run {from_run} has no finished stage to start from")
        raw_model = {**base.model.model_dump(mode="json"), "weights": str(from_run / done[-1]["checkpoint"])}
        # Another dataset replaces the run's; --root / --size alone adjust the run's.
        raw_data = {} if data is not None else base.data.model_dump(mode="json")
        seed = base.seed
    else:
        raw_model, raw_data, seed = {"name": model or "democnn", "weights": weights}, {}, 0
    given = {"name": data, "root": root, "size": size}
    raw_data = _merge(raw_data, {k: v for k, v in given.items() if v is not None})
    raw_data = _merge(raw_data, overrides.get("data", {}))
    raw_model = _merge(raw_model, overrides.get("model", {}))
    model_name = str(raw_model.get("name", "democnn"))
    raw = {
        "name": name or f"{stage}-{model_name.split(':')[-1]}",
        "seed": seed,
        "data": raw_data,
        "model": raw_model,
        "stages": [{stage: params}, *(extra_stages or [])],
    }
    recipe = parse_recipe(raw, source=f"tamer {stage}")
    # A checkpoint or .tt holds its architecture: then the weights file is what says the model.
    start = f"weights {recipe.model.weights}" if recipe.model.weights else f"model {recipe.model.name} (untrained)"
    # Say what is about to run before any slow work (data decoding, compiling, tuning).
    _echo(f"tamer {stage}: {start}, data {recipe.data.name}{', ' + what if what else ''} -> {runs / recipe.name}")
    rundir = run(recipe, runs / recipe.name, overwrite=overwrite, progress=not quiet, echo=_echo)
    _summary(rundir)
    return rundir


def _parity_text(r: TargetRecord) -> str:
    from tinytamer.records import DeployRecord

    outputs = r.parity.outputs
    details = [f"max |d| {max(o.max_abs_err for o in outputs):.3g}"] if outputs else []
    agree = [o.top1_agree for o in outputs if o.top1_agree is not None]
    if agree and min(agree) < 1:  # reduced precision is judged by its top-1 agreement
        details.append(f"top-1 agreement {min(agree):.1%}")
    if isinstance(r, DeployRecord) and r.bit_exact_inputs:
        details.append(f"bit-exact vs the C reference on {r.bit_exact_inputs} inputs")
    return f"parity {'ok' if r.parity.ok else 'FAILED'}" + (f" ({'; '.join(details)})" if details else "")


def _samples(n: int | None, total: int | None) -> str:
    """``1,000 of 10,000`` where a score used part of the test set, else ``360``."""
    if not n:
        return ""
    return f"{n:,} of {total:,}" if total is not None and total > n else f"{n:,}"


def _record_line(r: StageRecord) -> str:
    from tinytamer.micro.profiles import PROFILES
    from tinytamer.records import BenchRecord, DeployRecord, TargetRecord

    parts = [f"{r.index}:{r.stage}".ljust(18)]
    if isinstance(r, TargetRecord):
        # Where it ran, at which precision, and whether it matched PyTorch.
        parts.append(" ".join(x for x in (r.target, r.precision) if x))
        parts.append(_parity_text(r))
    if r.accuracy is not None:
        n = _samples(r.eval_samples, r.eval_total)
        where = r.accuracy_runtime or "PyTorch"
        if r.map50 is not None:  # a detector: the task's score is mAP@0.5
            score = f"mAP@0.5 {r.map50:.3f}" + ("" if r.map50_95 is None else f", mAP@[.5:.95] {r.map50_95:.3f}")
            parts.append(score + (f" ({n} images, {where})" if n else ""))
        else:
            parts.append(f"accuracy {r.accuracy:.2%}" + (f" ({n} samples, {where})" if n else ""))
    figures = {"nonzero_params": r.nonzero_params, "macs": r.macs, "bytes": r.bytes}
    device = isinstance(r, DeployRecord) and r.est_cycles is not None
    if device:
        # A device's size is its flash; the ELF file's bytes are no model size.
        figures.pop("bytes")
        figures |= {"instructions": r.instructions, "est_cycles": r.est_cycles}
    parts += [f"{key} {value:,}" for key, value in figures.items() if value is not None]
    if device:
        if r.memory_profile is not None:  # every cycle figure names its memory profile
            parts[-1] += f" ({r.memory_profile})"
        clock = PROFILES[r.memory_profile].clock_hz if r.memory_profile in PROFILES else None
        if r.est_time_ms is not None and clock is not None:
            parts.append(f"est. {r.est_time_ms:.3f} ms at {clock / 1e6:g} MHz")
        parts += [
            f"{key} {value:,}"
            for key, value in {"flash_bytes": r.flash_bytes, "sram_bytes": r.sram_bytes}.items()
            if value is not None
        ]
    if r.bytes and r.dense_bytes and (r.file or "").endswith(".tt"):
        parts.append(f"({r.dense_bytes / r.bytes:.1f}x smaller than float32)")
    if isinstance(r, DeployRecord) and r.latency_ms is not None:
        parts.append(f"latency {r.latency_ms:.3f} ms")
    if isinstance(r, BenchRecord) and r.best is not None and r.best.speedup is not None:
        best = r.best
        parts.append(f"fastest: {best.target} {best.precision} {best.speedup:.2f}x")
    return "  " + "  ".join(parts)


def _summary(rundir: RunDir) -> None:
    """One line per finished stage, from its typed record (the demo's closing table)."""
    from tinytamer.records import StageRecord, read_records

    for r in read_records(rundir, StageRecord):
        _echo(_record_line(r))
    _echo(f"run folder: {rundir.path}")
    _echo(f"report:     {rundir.path / 'report.html'}")


@app.command()
def demo(
    runs: RunsOpt = Path("runs"),
    quiet: QuietOpt = False,
    audio: Annotated[bool, typer.Option(help="keyword spotting: synthesized speech -> DS-CNN -> cortex-m4")] = False,
    search: Annotated[
        bool, typer.Option(help="a short HAQ search under a cortex-m4 flash budget, then the cortex-m4 deploy")
    ] = False,
) -> None:
    """Train, compress and deploy a small CNN on the built-in digits data (no download)."""
    from importlib.resources import files

    from tinytamer.recipe import parse_recipe, run

    if audio and search:
        raise TamerError("demo: --audio and --search are two demos; choose one")
    name = "demo_audio" if audio else "demo_search" if search else "demo"
    text = files("tinytamer").joinpath(f"recipes/{name}.yaml").read_text()
    recipe = parse_recipe(text, source="built-in demo recipe")
    rundir = run(recipe, runs / recipe.name, overwrite=True, progress=not quiet, echo=_echo)
    _summary(rundir)
    for png in sorted(rundir.path.glob("*.png")):
        _echo(f"plot:       {png}")
    if audio:  # spoken words as raw int16 audio, frontend and network on the emulated device
        from tinytamer.data import get_dataset
        from tinytamer.kws import deploy_spotter, spot_utterances

        data = get_dataset(recipe.data.name, augment=False, seed=recipe.seed, **recipe.data.options)
        spotter = deploy_spotter(rundir.last_model()[1], data, rundir.path / "spotter")
        for s in spot_utterances(spotter, data.meta.class_names):
            heard = f"cortex-m4 heard '{s.heard}' (p={s.confidence:.2f})"
            _echo(f"said '{s.said}' ({s.voice}, a voice unheard in training): {heard}")
        cost = spotter.measure(data.test.waves[0])
        for part in ("frontend", "network"):
            c = cost[part]
            size = f"flash {c['flash_bytes']:,} B, SRAM {c['sram_bytes']:,} B"
            _echo(f"{part}: est. {c['est_cycles']:,} cycles ({cost['memory_profile']}), {size}")


@app.command(name="run")
def run_cmd(
    recipe: Annotated[Path, typer.Argument(help="recipe YAML, or a run folder with --resume")],
    resume: Annotated[bool, typer.Option(help="resume the run folder RECIPE after a crash")] = False,
    runs: RunsOpt = Path("runs"),
    overwrite: OverwriteOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Run a recipe: validated up front, one folder per run, resumable."""
    from tinytamer.recipe import parse_recipe, run

    if resume:
        from tinytamer.rundir import RunDir

        folder = RunDir.open(recipe).path
        parsed = parse_recipe(folder / "recipe.yaml")
        rundir = run(parsed, folder, resume=True, progress=not quiet, echo=_echo)
    else:
        parsed = parse_recipe(recipe)
        rundir = run(parsed, runs / parsed.name, overwrite=overwrite, progress=not quiet, echo=_echo)
    _summary(rundir)


@app.command()
def train(
    model: ModelOpt = None,
    data: DataOpt = None,
    root: RootOpt = None,
    size: SizeOpt = None,
    weights: WeightsOpt = None,
    solver: Annotated[Path | None, typer.Option(help="Caffe solver.prototxt")] = None,
    max_iter: Annotated[int | None, typer.Option(help="iterations")] = None,
    epochs: Annotated[float | None, typer.Option(help="epochs (instead of --max-iter)")] = None,
    lr: Annotated[float | None, typer.Option(help="base learning rate")] = None,
    optimizer: Annotated[str | None, typer.Option(help="sgd, adam, radam, ranger, yellowfin")] = None,
    batch_size: Annotated[int | None, typer.Option(help="mini-batch size")] = None,
    sets: SetOpt = None,
    name: NameOpt = None,
    runs: RunsOpt = Path("runs"),
    overwrite: OverwriteOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Train a model (one-stage recipe: train, then evaluate)."""
    params = _parse_sets(sets)
    for key, value in (
        ("max_iter", max_iter),
        ("epochs", epochs),
        ("base_lr", lr),
        ("optimizer", optimizer),
        ("batch_size", batch_size),
        ("solver", str(solver) if solver else None),
    ):
        if value is not None:
            params[key] = value
    if "max_iter" not in params and "epochs" not in params and "solver" not in params:
        params["epochs"] = 10
    _one_stage(
        "train",
        params,
        name=name,
        runs=runs,
        model=model,
        weights=weights,
        data=data,
        root=root,
        size=size,
        from_run=None,
        overwrite=overwrite,
        quiet=quiet,
        extra_stages=[{"evaluate": {}}],
    )


@app.command()
def compress(
    method: Annotated[
        str,
        typer.Option(
            help="a compression stage, e.g. prune, channel_prune, kmeans_share, quantize, "
            "lowrank, ttq: see `tamer list stages` and `tamer list stages NAME`"
        ),
    ],
    model: ModelOpt = None,
    weights: WeightsOpt = None,
    data: DataOpt = None,
    root: RootOpt = None,
    size: SizeOpt = None,
    from_run: FromRunOpt = None,
    sets: SetOpt = None,
    save: Annotated[bool, typer.Option(help="also write the compressed file")] = True,
    name: NameOpt = None,
    runs: RunsOpt = Path("runs"),
    overwrite: OverwriteOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Compress a model with one method (a one-stage recipe), then save the compressed file.

    The method's parameters and their defaults (the demo's: prune spares the first layer)
    are listed by `tamer list stages METHOD`; change them with --set KEY=VALUE.
    """
    from tinytamer.recipe import stages

    registry = stages()
    if method not in registry:  # before the run name is made from it
        raise TamerError(f"unknown stage '{method}' (known: {', '.join(sorted(registry))})")
    extra = [{"save_compressed": {}}] if save and "save_compressed" in registry else []
    _one_stage(
        method,
        _parse_sets(sets),
        name=name,
        runs=runs,
        model=model,
        weights=weights,
        data=data,
        root=root,
        size=size,
        from_run=from_run,
        overwrite=overwrite,
        quiet=quiet,
        extra_stages=extra,
    )


@app.command()
def sensitivity(
    model: ModelOpt = None,
    weights: WeightsOpt = None,
    data: DataOpt = None,
    root: RootOpt = None,
    size: SizeOpt = None,
    from_run: FromRunOpt = None,
    sets: SetOpt = None,
    name: NameOpt = None,
    runs: RunsOpt = Path("runs"),
    overwrite: OverwriteOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Per-layer pruning sensitivity: accuracy against sparsity for each layer, plotted."""
    _one_stage(
        "sensitivity",
        _parse_sets(sets),
        name=name,
        runs=runs,
        model=model,
        weights=weights,
        data=data,
        root=root,
        size=size,
        from_run=from_run,
        overwrite=overwrite,
        quiet=quiet,
    )


@app.command()
def deploy(
    target: Annotated[str, typer.Option(help="target name: see `tamer list targets` and `tamer list targets NAME`")],
    precision: Annotated[
        str | None, typer.Option(help="fp32, fp16 or int8 (default: fp32, or what the target runs)")
    ] = None,
    model: ModelOpt = None,
    weights: WeightsOpt = None,
    data: DataOpt = None,
    root: RootOpt = None,
    size: SizeOpt = None,
    from_run: FromRunOpt = None,
    sets: SetOpt = None,
    name: NameOpt = None,
    runs: RunsOpt = Path("runs"),
    overwrite: OverwriteOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Deploy to a target: export, check parity, measure cost and accuracy through the runtime."""
    precision = precision or _default_precision(target)
    # --set takes the stage's keys and the target's options alike (`tamer list targets NAME`).
    params = {"target": target, "precision": precision, **_parse_sets(sets)}
    _one_stage(
        "deploy",
        params,
        name=name,
        runs=runs,
        model=model,
        weights=weights,
        data=data,
        root=root,
        size=size,
        from_run=from_run,
        overwrite=overwrite,
        quiet=quiet,
        what=f"target {target} {precision}",
    )


@app.command()
def export(
    target: Annotated[str, typer.Option(help="a micro target: cortex-m4, cortex-m7 or micro-host (portable C)")],
    out: Annotated[Path, typer.Option(help="folder to write (new, or empty)")],
    model: ModelOpt = None,
    weights: WeightsOpt = None,
    data: DataOpt = None,
    root: RootOpt = None,
    size: SizeOpt = None,
    from_run: FromRunOpt = None,
    sets: SetOpt = None,
    name: NameOpt = None,
    runs: RunsOpt = Path("runs"),
    overwrite: OverwriteOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Write a firmware-ready C folder: the model, only the kernels it calls, a header with
    its input/output quantization, CMake and Makefile files, an example main and a README.

    It is the deploy stage to a micro target (int8, bit-exact check, cost and accuracy on the
    device; --set KEY=VALUE as for `tamer deploy`), and the run's folder copied to --out.
    """
    import shutil

    from tinytamer.targets import get_target
    from tinytamer.targets.micro import MicroTarget

    if not isinstance(get_target(target), MicroTarget):
        raise TamerError(
            f"tamer export writes C for the micro targets (cortex-m4, cortex-m7, "
            f"micro-host), not '{target}': use `tamer deploy --target {target}`"
        )
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise TamerError(f"--out {out} exists and is not an empty folder")
    params = {"target": target, "precision": "int8", **_parse_sets(sets)}
    rundir = _one_stage(
        "deploy",
        params,
        name=name,
        runs=runs,
        model=model,
        weights=weights,
        data=data,
        root=root,
        size=size,
        from_run=from_run,
        overwrite=overwrite,
        quiet=quiet,
        what=f"firmware folder for {target}",
    )
    # The run holds one deploy stage, which wrote its folder beside its other artifacts.
    folder = next(rundir.path.glob("stages/*_deploy/*/firmware"), None)
    if folder is None:
        raise TamerError("no firmware folder was written (kernels=cmsis-nn writes none: use kernels=tinytamer)")
    shutil.copytree(folder, out, dirs_exist_ok=True)
    _echo(f"firmware:   {out} (its README.md says how to build and call it)")


def _default_precision(target: str) -> str:
    from tinytamer.deploy import default_precision
    from tinytamer.targets import get_target

    return default_precision(get_target(target))


@app.command()
def bench(
    targets: Annotated[
        list[str] | None, typer.Option("--target", help="targets (default: every installed one)")
    ] = None,
    precisions: Annotated[list[str] | None, typer.Option("--precision", help="fp32, fp16, int8")] = None,
    max_acc_drop: Annotated[
        float | None, typer.Option(help="pick the fastest within this accuracy drop (a detector: mAP@0.5 drop)")
    ] = None,
    model: ModelOpt = None,
    weights: WeightsOpt = None,
    data: DataOpt = None,
    root: RootOpt = None,
    size: SizeOpt = None,
    from_run: FromRunOpt = None,
    sets: SetOpt = None,
    name: NameOpt = None,
    runs: RunsOpt = Path("runs"),
    overwrite: OverwriteOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Run one model on every target and precision: latency ratio to PyTorch fp32, memory, size, accuracy.

    The table names the CPU that timed it and marks rows timed under load. --set rounds=N times
    every model N times round-robin (the median of the rounds is reported); TVM is tuned only
    when asked (--set trials=32), else built from its tuning database or untuned, labelled.
    """
    from tinytamer.targets import list_targets

    params: dict[str, Any] = _parse_sets(sets)
    for key, value in (("targets", targets), ("precisions", precisions), ("max_acc_drop", max_acc_drop)):
        if value:
            params[key] = value
    names = params.get("targets") or list_targets(available_only=True)
    what = f"targets {', '.join(map(str, names))}"
    if params.get("precisions"):
        what += f" at {', '.join(map(str, params['precisions']))}"
    rundir = _one_stage(
        "bench",
        params,
        name=name,
        runs=runs,
        model=model,
        weights=weights,
        data=data,
        root=root,
        size=size,
        from_run=from_run,
        overwrite=overwrite,
        quiet=quiet,
        what=what,
    )
    for table in sorted(rundir.path.glob("stages/*_bench/bench.md")):
        _echo(table.read_text())


@app.command()
def evaluate(
    weights: WeightsOpt = None,
    from_run: Annotated[Path | None, typer.Option("--run", help="score this run's last model")] = None,
    data: Annotated[
        str | None, typer.Option(help="dataset to score on (default: the run's with --run, else digits)")
    ] = None,
    root: RootOpt = None,
    size: SizeOpt = None,
    limit: Annotated[int | None, typer.Option(help="score the first N samples of the split")] = None,
    target: Annotated[
        str | None,
        typer.Option(
            help="score through this deployed runtime: the deploy stage's export, parity check "
            "and accuracy, untimed (default: PyTorch)"
        ),
    ] = None,
    precision: Annotated[
        str | None, typer.Option(help="with --target: fp32, fp16 or int8 (default: fp32, or what the target runs)")
    ] = None,
    model: ModelOpt = None,
    sets: SetOpt = None,
    name: NameOpt = None,
    runs: RunsOpt = Path("runs"),
    overwrite: OverwriteOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Score a trained model (--weights FILE or --run DIR) on a dataset: accuracy and sample count.

    In PyTorch by default (--set split=val for another split); with --target, through that
    runtime.  The model must take the dataset's input shape (--size resizes images).
    """
    if (weights is None) == (from_run is None):
        raise TamerError("tamer evaluate scores a trained model: give --weights FILE or --run DIR (one of them)")
    if precision is not None and target is None:
        raise TamerError("evaluate --precision goes with --target (PyTorch scores the model as it is)")
    params = _parse_sets(sets)
    if limit is not None:
        params = _merge(params, {"data": {"limit": limit}})
    if target is None:
        stage, what = "evaluate", "in PyTorch"
    else:
        precision = precision or _default_precision(target)
        stage, what = "deploy", f"through {target} {precision}"
        split = params.pop("split", "test")
        if split != "test":
            raise TamerError(f"evaluate --target scores the test split (got split={split})")
        params = {"target": target, "precision": precision, "repeats": 0, **params}
    _one_stage(
        stage,
        params,
        name=name,
        runs=runs,
        model=model,
        weights=weights,
        data=data,
        root=root,
        size=size,
        from_run=from_run,
        overwrite=overwrite,
        quiet=quiet,
        what=what,
    )


@app.command()
def inspect(file: Annotated[Path, typer.Argument(help="a compressed model file (.tt)")]) -> None:
    """Show a compressed file's manifest: per-tensor encoding and bytes on disk."""
    from tinytamer import codec

    _echo(codec.format_info(codec.info(file)))


@app.command()
def report(run_folder: Annotated[Path, typer.Argument(help="a run folder")]) -> None:
    """(Re)draw a run's plots and HTML report from its metrics.jsonl."""
    from tinytamer.rundir import RunDir
    from tinytamer.viz.report import write_report

    _echo(f"report: {write_report(RunDir.open(run_folder))}")


@app.command()
def lut(
    target: Annotated[
        str, typer.Option(help="cortex-m4, cortex-m7 (cycles, instructions, flash, SRAM) or onnxruntime (latency)")
    ],
    model: Annotated[str, typer.Option(help="zoo model name or package.module:factory")],
    space: Annotated[
        str, typer.Option(help="model (as given) or bits (weights at 2-8 bits: covers every mixed-bit configuration)")
    ] = "model",
    out: Annotated[Path | None, typer.Option(help="the table (JSON; an existing one is resumed and extended)")] = None,
    memory_profile: Annotated[
        str | None, typer.Option(help="micro: the memory profile cycles are estimated under (default: the board)")
    ] = None,
    input_shape: Annotated[
        str | None, typer.Option(help="one sample's shape, e.g. 3,32,32 (default: the zoo model's)")
    ] = None,
    quiet: QuietOpt = False,
) -> None:
    """Build a cost lookup table: measure each layer of MODEL on TARGET (resumable)."""
    import torch
    from rich.progress import Progress

    from tinytamer.search import cost
    from tinytamer.zoo import create, model_info

    if input_shape is not None:
        shape = tuple(int(v) for v in input_shape.split(","))
    elif ":" in model:
        raise TamerError("--input-shape is needed for a model given by import path")
    else:
        shape = model_info(model).input_shape
    net = create(model, in_channels=shape[0], input_size=shape[-1]).eval()
    example = torch.randn((1, *shape), generator=torch.Generator().manual_seed(0))
    configs = cost.space_configs(net, space, example)
    path = out or Path(f"lut-{target}-{model.replace(':', '_')}.json")
    with Progress(console=console, disable=quiet) as bar:
        task = bar.add_task(f"measuring on {target}", total=len(configs))
        table = cost.build(
            configs,
            target,
            path,
            example=example,
            memory_profile=memory_profile,
            progress=lambda name, i, n: bar.update(task, completed=i, description=name),
        )
    _echo(
        f"table:      {path} ({len(table.entries)} layers, {len(table.done)} configurations"
        + (f", cycles under {table.memory_profile})" if table.memory_profile else ")")
    )


def _doc_line(obj: Any) -> str:
    return (obj.__doc__ or "").strip().split("\n")[0]


def _print_params(model: Any, indent: str, skip: tuple[str, ...] = ()) -> None:
    """Each key of a parameter model: type, default and meaning, from its pydantic schema."""
    from tinytamer.recipe import param_docs

    for doc in param_docs(model):
        if doc.key in skip:
            continue
        _echo(f"{indent}{doc.key}: {doc.type} = {doc.default}")
        if doc.description:
            _echo(f"{indent}    {doc.description}")


def _print_model(model: Any, seen: set[Any], skip: tuple[str, ...] = (), indent: str = "  ") -> None:
    """``model``'s keys, then each parameter group inside it (a group already shown: named)."""
    from tinytamer.recipe import nested_models

    _print_params(model, indent, skip)
    for path, sub in nested_models(model):
        if sub in seen:
            _echo(f"{indent}{path} ({sub.__name__}): keys listed above")
            continue
        seen.add(sub)
        _echo(f"{indent}{path} ({sub.__name__}): {_doc_line(sub)}")
        _print_params(sub, indent + "  ")


def _list_stages(name: str | None, verbose: bool) -> None:
    from tinytamer.recipe import stages

    registry = stages()
    if name is not None and name not in registry:
        raise TamerError(f"unknown stage '{name}' (known: {', '.join(sorted(registry))})")
    chosen = [registry[name]] if name else [registry[n] for n in sorted(registry)]
    seen: set[Any] = set()
    for d in chosen:
        if name is None and not verbose:
            _echo(f"{d.name:16s} {d.help}")
            continue
        _echo(f"{d.name}: {d.help}")
        _print_model(d.params, seen)
    if name is None and not verbose:
        _echo("`tamer list stages NAME` (or -v) shows each key: type, default and meaning")


def _list_targets(name: str | None, verbose: bool) -> None:
    from tinytamer.recipe import accepts, stages
    from tinytamer.targets import get_target, list_targets
    from tinytamer.targets.options import options_model

    names = [get_target(name).name] if name else list_targets()
    for n in names:
        t = get_target(n)
        installed = "installed" if t.available() else f"not installed: {t.install_hint}"
        if name is None and not verbose:
            _echo(f"{n:12s} {', '.join(t.precisions):16s} {installed}")
            continue
        _echo(f"{n}: {_doc_line(type(t)) or 'deployment target'}")
        _echo(f"  precisions: {', '.join(t.precisions)}; {installed}")
        if options_model(t).model_fields:
            _echo(f"  options of {n} (keys of a deploy or bench stage, `tamer deploy --set KEY=VALUE`):")
            _print_params(options_model(t), "    ")
        else:
            _echo(f"  options of {n}: none")
        for stage in sorted(stages().values(), key=lambda s: s.name):
            fields = {k: f for k, f in stage.params.model_fields.items() if k in ("target", "targets")}
            if any(accepts(f.annotation, n) for f in fields.values()):
                _echo(f"  stage {stage.name} ({stage.help}), its own keys:")
                _print_model(stage.params, set(), skip=tuple(fields), indent="    ")
    if name is None and not verbose:
        _echo("`tamer list targets NAME` (or -v) shows a target's options and the stages that take it")


@app.command(name="list")
def list_cmd(
    what: Annotated[str, typer.Argument(help="models, datasets, stages, targets or recipe")],
    name: Annotated[str | None, typer.Argument(help="a stage or target: show its parameters")] = None,
    verbose: Annotated[bool, typer.Option("-v", "--verbose", help="stages / targets: every parameter")] = False,
) -> None:
    """List what is available: models, datasets, recipe stages (and their parameters),
    deployment targets, or the recipe's own keys."""
    if name is not None and what not in ("stages", "targets"):
        raise TamerError(f"`tamer list {what}` takes no name (a name goes with stages or targets)")
    if what == "models":
        from tinytamer.zoo import list_models

        items = list_models()
    elif what == "datasets":
        from tinytamer.data import list_datasets

        items = list_datasets()
    elif what == "stages":
        return _list_stages(name, verbose)
    elif what == "targets":
        return _list_targets(name, verbose)
    elif what == "recipe":
        from tinytamer.recipe import Recipe

        _echo(f"recipe: {_doc_line(Recipe)}")
        return _print_model(Recipe, set())
    else:
        raise TamerError(f"cannot list '{what}': choose models, datasets, stages, targets or recipe")
    for item in items:
        _echo(item)
    return None


search_app = typer.Typer(
    cls=_Group, no_args_is_help=True, help="Hardware-aware search: the target tells the search what a choice costs."
)
app.add_typer(search_app, name="search")


@search_app.command(name="haq")
def search_haq(
    resource: Annotated[
        str, typer.Option(help="flash (measured per build), weight_flash, cycles or file_bytes")
    ] = "flash",
    ratio: Annotated[float, typer.Option(help="budget: this share of the 8-bit figure")] = 0.5,
    budget: Annotated[float | None, typer.Option(help="absolute budget (bytes or cycles; overrides --ratio)")] = None,
    episodes: Annotated[int, typer.Option(help="search episodes")] = 300,
    device: Annotated[str, typer.Option(help="cortex-m4 or cortex-m7")] = "cortex-m4",
    deploy: Annotated[bool, typer.Option(help="then deploy to DEVICE and score it on the emulated device")] = True,
    model: ModelOpt = None,
    weights: WeightsOpt = None,
    data: DataOpt = None,
    root: RootOpt = None,
    size: SizeOpt = None,
    from_run: FromRunOpt = None,
    sets: SetOpt = None,
    name: NameOpt = None,
    runs: RunsOpt = Path("runs"),
    overwrite: OverwriteOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """HAQ: per-layer weight and activation bits under a flash, cycle or file-size budget,
    then the compressed file and (by default) the micro deployment."""
    params = {
        "resource": resource,
        "ratio": ratio,
        "episodes": episodes,
        "device": device,
        **({"budget": budget} if budget is not None else {}),
        **_parse_sets(sets),
    }
    extra: list[dict[str, Any]] = [{"save_compressed": {}}]
    if deploy:
        extra.append({"deploy": {"target": device}})
    _one_stage(
        "haq",
        params,
        name=name,
        runs=runs,
        model=model,
        weights=weights,
        data=data,
        root=root,
        size=size,
        from_run=from_run,
        overwrite=overwrite,
        quiet=quiet,
        extra_stages=extra,
        what=f"{resource} budget on {device}",
    )


@search_app.command(name="spos")
def search_spos(
    budget: Annotated[
        str, typer.Option(help="limits on TARGET, e.g. cycles=4e6,sram=65536,flash=262144 (latency=MS on host targets)")
    ],
    target: Annotated[str, typer.Option(help="cortex-m4, cortex-m7 or onnxruntime")] = "cortex-m4",
    space: Annotated[str, typer.Option(help="shufflenet (SPOS choice blocks) or mbconv (ProxylessNAS candidates)")] = (
        "shufflenet"
    ),
    generations: Annotated[int, typer.Option(help="generations of the evolutionary search")] = 20,
    executor: ExecutorOpt = "local",
    address: AddressOpt = None,
    workers: WorkersOpt = 0,
    deploy: Annotated[bool, typer.Option(help="then deploy the network found to TARGET and score it there")] = True,
    data: DataOpt = None,
    root: RootOpt = None,
    size: SizeOpt = None,
    sets: SetOpt = None,
    name: NameOpt = None,
    runs: RunsOpt = Path("runs"),
    overwrite: OverwriteOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """SPOS: train a one-shot supernet, evolve architectures within the budget predicted from
    TARGET's cost table, retrain the best from scratch and measure it on TARGET."""
    _nas_command(
        "spos",
        {"generations": generations, "executor": executor, "address": address, "workers": workers},
        budget,
        target,
        space,
        deploy,
        data=data,
        root=root,
        size=size,
        sets=sets,
        name=name,
        runs=runs,
        overwrite=overwrite,
        quiet=quiet,
    )


@search_app.command(name="proxylessnas")
def search_proxylessnas(
    budget: Annotated[
        str, typer.Option(help="limits on TARGET, e.g. cycles=4e6,sram=65536 (the first is the loss's latency target)")
    ],
    target: Annotated[str, typer.Option(help="cortex-m4, cortex-m7 or onnxruntime")] = "cortex-m4",
    space: Annotated[str, typer.Option(help="mbconv (ProxylessNAS candidates) or shufflenet")] = "mbconv",
    loss: Annotated[
        str,
        typer.Option(
            help="latency loss: mul (CE x a (log LAT / log T)^b), add (CE + l (LAT-T)/T) or hinge "
            "(CE + l max(LAT-T, 0)/T: not the paper's, it stops rewarding latency below T)"
        ),
    ] = ("mul"),
    gradient: Annotated[
        str, typer.Option(help="architecture gradient: binary (BinaryConnect) or reinforce")
    ] = "binary",
    deploy: Annotated[bool, typer.Option(help="then deploy the network found to TARGET and score it there")] = True,
    data: DataOpt = None,
    root: RootOpt = None,
    size: SizeOpt = None,
    sets: SetOpt = None,
    name: NameOpt = None,
    runs: RunsOpt = Path("runs"),
    overwrite: OverwriteOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """ProxylessNAS: learn architecture parameters with binarized paths and the expected
    latency from TARGET's cost table in the loss, derive the most likely path, retrain it."""
    _nas_command(
        "proxylessnas",
        {"loss": loss, "gradient": gradient},
        budget,
        target,
        space,
        deploy,
        data=data,
        root=root,
        size=size,
        sets=sets,
        name=name,
        runs=runs,
        overwrite=overwrite,
        quiet=quiet,
    )


def _nas_command(
    stage: str, params: dict[str, Any], budget: str, target: str, space: str, deploy: bool, **kw: Any
) -> None:
    from tinytamer.search.budget import Budget

    limits = Budget.parse(budget).to_dict()  # a malformed budget fails before any data loads
    sets = kw.pop("sets")
    params = {**params, "budget": limits, "target": target, "space": space, **_parse_sets(sets)}
    extra = [{"deploy": {"target": target}}] if deploy else []
    _one_stage(
        stage,
        params,
        model=None,
        weights=None,
        from_run=None,
        extra_stages=extra,
        what=f"{space} space, budget {budget} on {target}",
        **kw,
    )


viz_app = typer.Typer(cls=_Group, no_args_is_help=True, help="Pictures of a run: how its representation moved.")
app.add_typer(viz_app, name="viz")


@viz_app.command(name="embeddings")
def viz_embeddings(
    run_folder: Annotated[Path, typer.Argument(help="a run folder whose training saved snapshots")],
    layer: Annotated[
        str | None, typer.Option(help="module to embed (`tamer viz layers RUN`); default: the input of the head")
    ] = None,
    samples: Annotated[int, typer.Option(min=3, help="test images, the same at every checkpoint")] = 500,
    tween: Annotated[int, typer.Option(min=0, help="interpolated frames between two checkpoints")] = 4,
    quiet: QuietOpt = False,
) -> None:
    """Animate a fixed set of test images embedded by every checkpoint (PCA, Procrustes-aligned)."""
    import torch

    from tinytamer.recipe import user_module_prefixes
    from tinytamer.viz.embeddings import draw_embeddings, pick_samples
    from tinytamer.viz.report import write_report

    rundir, recipe, data, start = _run_data(run_folder)
    labels = [int(data.test[i][1]) for i in range(len(data.test))]
    chosen = pick_samples(labels, samples)
    images = torch.stack([data.test[i][0] for i in chosen])
    record = draw_embeddings(
        rundir,
        images,
        [labels[i] for i in chosen],
        data.meta.class_names,
        layer=layer,
        start=start,
        allow=user_module_prefixes(recipe.model),
        tween=tween,
        progress=not quiet,
    )
    for note in record.skipped:
        _echo(f"skipped {note}")
    _echo(f"{len(record.steps)} checkpoints, {record.samples} images, {record.layer}")
    _echo(f"animation: {rundir.path / record.animation}")
    if record.video:
        _echo(f"video:     {rundir.path / record.video}")
    _echo(f"report:    {write_report(rundir)}")


@viz_app.command(name="layers")
def viz_layers(run_folder: Annotated[Path, typer.Argument(help="a run folder")]) -> None:
    """The layer names `tamer viz embeddings --layer` accepts (the run's last model)."""
    from tinytamer.viz.embeddings import layer_names

    _, _, _, start = _run_data(run_folder, load=False)
    for name in layer_names(start):
        _echo(name)


def _run_data(run_folder: Path, *, load: bool = True) -> tuple[Any, Any, Any, Any]:
    """(run, recipe, data or None, model): the model the recipe starts from, or with
    ``load=False`` the run's last model (no data is read)."""
    from tinytamer.recipe import build_model, load_data, parse_recipe, seed_everything, user_module_prefixes
    from tinytamer.rundir import RunDir

    rundir = RunDir.open(run_folder)
    recipe = parse_recipe(rundir.recipe_path)
    if not load:
        _, model = rundir.last_model(user_module_prefixes(recipe.model))
        if model is None:
            raise TamerError(f"{rundir.path}: no stage has finished yet")
        return rundir, recipe, None, model
    seed_everything(recipe.seed)  # as `run` does, so the start model is the run's own
    data = load_data(recipe.data, recipe.seed)
    return rundir, recipe, data, build_model(recipe.model, data.meta)


def main() -> None:
    """Entry point of the ``tamer`` command: user errors print one clear line, no traceback."""
    app()


if __name__ == "__main__":
    main()
