"""The ``tamer`` command. Thin: every command builds a (one-stage) recipe or calls the API."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from rich.console import Console

from tinytamer.errors import TamerError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="tinytamer: train, compress, deploy and measure a PyTorch model for a small device.")
console = Console()

NameOpt = Annotated[str | None, typer.Option(help="run name (folder runs/<name>)")]
RunsOpt = Annotated[Path, typer.Option(help="folder that holds the runs")]
ModelOpt = Annotated[str, typer.Option(help="zoo model name or package.module:factory")]
WeightsOpt = Annotated[str | None, typer.Option(help="checkpoint (.safetensors) to start from")]
DataOpt = Annotated[str, typer.Option(help="dataset name (digits, mnist, fashion-mnist, cifar10, imagefolder)")]
RootOpt = Annotated[str | None, typer.Option(help="dataset folder or archive")]
SizeOpt = Annotated[int | None, typer.Option(help="resize images to SIZE x SIZE")]
FromRunOpt = Annotated[Path | None, typer.Option("--run", help="start from this run's last model and data")]
SetOpt = Annotated[list[str] | None, typer.Option("--set", help="stage parameter KEY=VALUE (YAML value; dots nest)")]
OverwriteOpt = Annotated[bool, typer.Option(help="replace an existing run folder of the same name")]
QuietOpt = Annotated[bool, typer.Option("--quiet", help="no progress bars")]


def _parse_sets(items: list[str] | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise TamerError(f"--set expects KEY=VALUE, got '{item}'")
        node = out
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = yaml.safe_load(value)
    return out


def _one_stage(stage: str, params: dict[str, Any], *, name: str | None, runs: Path, model: str,
               weights: str | None, data: str, root: str | None, size: int | None,
               from_run: Path | None, overwrite: bool, quiet: bool,
               extra_stages: list[dict[str, Any]] | None = None) -> Any:
    from tinytamer.recipe import parse_recipe, run

    if from_run is not None:
        from tinytamer.rundir import RunDir

        src = RunDir.open(from_run)
        base = yaml.safe_load(src.recipe_path.read_text())
        done = sorted(src.completed(), key=lambda c: c["index"])
        if not done:
            raise TamerError(f"run {from_run} has no finished stage to start from")
        raw = {"data": base["data"], "seed": base.get("seed", 0),
               "model": {**base["model"], "weights": str(from_run / done[-1]["checkpoint"])}}
    else:
        raw = {"data": {"name": data, "root": root, "size": size},
               "model": {"name": model, "weights": weights}}
    raw["name"] = name or f"{stage}-{raw['model']['name'].split(':')[-1]}"
    raw["stages"] = [{stage: params}, *(extra_stages or [])]
    recipe = parse_recipe(raw, source=f"tamer {stage}")
    rundir = run(recipe, runs / recipe.name, overwrite=overwrite, progress=not quiet,
                 echo=console.print)
    _summary(rundir)
    return rundir


def _summary(rundir: Any) -> None:
    stages = [r for r in rundir.records() if r.get("kind") == "stage"]
    for r in stages:
        parts = [f"{r['index']}:{r['stage']}"]
        if r.get("device_accuracy") is not None:
            parts.append(f"accuracy on device {r['device_accuracy']:.2%} ({r.get('device_accuracy_samples')} samples)")
        elif r.get("accuracy") is not None:
            parts.append(f"accuracy {r['accuracy']:.2%}")
        for key in ("nonzero_params", "macs", "bytes", "instructions", "est_cycles", "flash_bytes", "sram_bytes"):
            if r.get(key) is not None:
                parts.append(f"{key} {r[key]:,}")
        if r.get("bytes") and r.get("dense_bytes") and r.get("file", "").endswith(".tt"):
            parts.append(f"({r['dense_bytes'] / r['bytes']:.1f}x smaller than float32)")
        if r.get("latency_ms") is not None:
            parts.append(f"latency {r['latency_ms']:.3f} ms")
        console.print("  " + "  ".join(parts), soft_wrap=True)
    console.print(f"run folder: [bold]{rundir.path}[/]")
    console.print(f"report:     [bold]{rundir.path / 'report.html'}[/]")


@app.command()
def demo(runs: RunsOpt = Path("runs"), quiet: QuietOpt = False) -> None:
    """Train, compress and deploy a small CNN on the built-in digits data (no download)."""
    from importlib.resources import files

    from tinytamer.recipe import parse_recipe, run

    text = files("tinytamer").joinpath("recipes/demo.yaml").read_text()
    recipe = parse_recipe(text, source="built-in demo recipe")
    rundir = run(recipe, runs / recipe.name, overwrite=True, progress=not quiet, echo=console.print)
    _summary(rundir)
    for png in sorted(rundir.path.glob("*.png")):
        console.print(f"plot:       [bold]{png}[/]")


@app.command(name="run")
def run_cmd(recipe: Annotated[Path, typer.Argument(help="recipe YAML, or a run folder with --resume")],
            resume: Annotated[bool, typer.Option(help="resume the run folder RECIPE after a crash")] = False,
            runs: RunsOpt = Path("runs"), overwrite: OverwriteOpt = False,
            quiet: QuietOpt = False) -> None:
    """Run a recipe: validated up front, one folder per run, resumable."""
    from tinytamer.recipe import parse_recipe, run

    if resume:
        from tinytamer.rundir import RunDir

        folder = RunDir.open(recipe).path
        parsed = parse_recipe(folder / "recipe.yaml")
        rundir = run(parsed, folder, resume=True, progress=not quiet, echo=console.print)
    else:
        parsed = parse_recipe(recipe)
        rundir = run(parsed, runs / parsed.name, overwrite=overwrite, progress=not quiet,
                     echo=console.print)
    _summary(rundir)


@app.command()
def train(model: ModelOpt = "democnn", data: DataOpt = "digits", root: RootOpt = None,
          size: SizeOpt = None, weights: WeightsOpt = None,
          solver: Annotated[Path | None, typer.Option(help="Caffe solver.prototxt")] = None,
          max_iter: Annotated[int | None, typer.Option(help="iterations")] = None,
          epochs: Annotated[float | None, typer.Option(help="epochs (instead of --max-iter)")] = None,
          lr: Annotated[float | None, typer.Option(help="base learning rate")] = None,
          optimizer: Annotated[str | None, typer.Option(help="sgd, adam, radam, ranger, yellowfin")] = None,
          batch_size: Annotated[int | None, typer.Option(help="mini-batch size")] = None,
          sets: SetOpt = None, name: NameOpt = None, runs: RunsOpt = Path("runs"),
          overwrite: OverwriteOpt = False, quiet: QuietOpt = False) -> None:
    """Train a model (one-stage recipe: train, then evaluate)."""
    params = _parse_sets(sets)
    for key, value in (("max_iter", max_iter), ("epochs", epochs), ("base_lr", lr),
                       ("optimizer", optimizer), ("batch_size", batch_size),
                       ("solver", str(solver) if solver else None)):
        if value is not None:
            params[key] = value
    if "max_iter" not in params and "epochs" not in params and "solver" not in params:
        params["epochs"] = 10
    _one_stage("train", params, name=name, runs=runs, model=model, weights=weights, data=data,
               root=root, size=size, from_run=None, overwrite=overwrite, quiet=quiet,
               extra_stages=[{"evaluate": {}}])


@app.command()
def compress(method: Annotated[str, typer.Option(help="a compression stage: see `tamer stages`")],
             model: ModelOpt = "democnn", weights: WeightsOpt = None, data: DataOpt = "digits",
             root: RootOpt = None, size: SizeOpt = None, from_run: FromRunOpt = None,
             sets: SetOpt = None, save: Annotated[bool, typer.Option(help="also write the compressed file")] = True,
             name: NameOpt = None, runs: RunsOpt = Path("runs"), overwrite: OverwriteOpt = False,
             quiet: QuietOpt = False) -> None:
    """Compress a model with one method (a one-stage recipe), then save the compressed file."""
    from tinytamer.recipe import stages

    extra = [{"save_compressed": {}}] if save and "save_compressed" in stages() else []
    _one_stage(method, _parse_sets(sets), name=name, runs=runs, model=model, weights=weights,
               data=data, root=root, size=size, from_run=from_run, overwrite=overwrite,
               quiet=quiet, extra_stages=extra)


@app.command()
def sensitivity(model: ModelOpt = "democnn", weights: WeightsOpt = None, data: DataOpt = "digits",
                root: RootOpt = None, size: SizeOpt = None, from_run: FromRunOpt = None,
                sets: SetOpt = None, name: NameOpt = None, runs: RunsOpt = Path("runs"),
                overwrite: OverwriteOpt = False, quiet: QuietOpt = False) -> None:
    """Per-layer pruning sensitivity: accuracy against sparsity for each layer, plotted."""
    _one_stage("sensitivity", _parse_sets(sets), name=name, runs=runs, model=model,
               weights=weights, data=data, root=root, size=size, from_run=from_run,
               overwrite=overwrite, quiet=quiet)


@app.command()
def deploy(target: Annotated[str, typer.Option(help="target name: see `tamer targets`")],
           precision: Annotated[str, typer.Option(help="fp32, fp16 or int8")] = "fp32",
           model: ModelOpt = "democnn", weights: WeightsOpt = None, data: DataOpt = "digits",
           root: RootOpt = None, size: SizeOpt = None, from_run: FromRunOpt = None,
           sets: SetOpt = None, name: NameOpt = None, runs: RunsOpt = Path("runs"),
           overwrite: OverwriteOpt = False, quiet: QuietOpt = False) -> None:
    """Deploy to a target: export, check parity, measure cost and accuracy through the runtime."""
    params = {"target": target, "precision": precision, **_parse_sets(sets)}
    _one_stage("deploy", params, name=name, runs=runs, model=model, weights=weights, data=data,
               root=root, size=size, from_run=from_run, overwrite=overwrite, quiet=quiet)


@app.command()
def bench(targets: Annotated[list[str] | None, typer.Option("--target", help="targets (default: all)")] = None,
          precisions: Annotated[list[str] | None, typer.Option("--precision", help="fp32, fp16, int8")] = None,
          max_acc_drop: Annotated[float | None, typer.Option(help="pick the fastest within this accuracy drop")] = None,
          model: ModelOpt = "democnn", weights: WeightsOpt = None, data: DataOpt = "digits",
          root: RootOpt = None, size: SizeOpt = None, from_run: FromRunOpt = None,
          sets: SetOpt = None, name: NameOpt = None, runs: RunsOpt = Path("runs"),
          overwrite: OverwriteOpt = False, quiet: QuietOpt = False) -> None:
    """Run one model on every target and precision: latency ratio to PyTorch fp32, memory, size, accuracy."""
    params: dict[str, Any] = _parse_sets(sets)
    for key, value in (("targets", targets), ("precisions", precisions), ("max_acc_drop", max_acc_drop)):
        if value:
            params[key] = value
    rundir = _one_stage("bench", params, name=name, runs=runs, model=model, weights=weights, data=data,
                        root=root, size=size, from_run=from_run, overwrite=overwrite, quiet=quiet)
    for table in sorted(rundir.path.glob("stages/*_bench/bench.md")):
        typer.echo(table.read_text())


@app.command()
def inspect(file: Annotated[Path, typer.Argument(help="a compressed model file (.tt)")]) -> None:
    """Show a compressed file's manifest: per-tensor encoding and bytes on disk."""
    from tinytamer import codec

    typer.echo(codec.format_info(codec.info(file)))


@app.command()
def report(run_folder: Annotated[Path, typer.Argument(help="a run folder")]) -> None:
    """(Re)draw a run's plots and HTML report from its metrics.jsonl."""
    from tinytamer.rundir import RunDir
    from tinytamer.viz.report import write_report

    console.print(f"report: [bold]{write_report(RunDir.open(run_folder))}[/]")


@app.command(name="list")
def list_cmd(what: Annotated[str, typer.Argument(help="models, datasets, stages or targets")]) -> None:
    """List what is available: models, datasets, recipe stages or deployment targets."""
    if what == "models":
        from tinytamer.zoo import list_models

        items = list_models()
    elif what == "datasets":
        from tinytamer.data import list_datasets

        items = list_datasets()
    elif what == "stages":
        from tinytamer.recipe import stages

        items = [f"{n:16s} {d.help}" for n, d in sorted(stages().items())]
    elif what == "targets":
        from tinytamer.targets import list_targets

        items = list_targets()
    else:
        raise TamerError(f"cannot list '{what}': choose models, datasets, stages or targets")
    for item in items:
        typer.echo(item)


def main() -> None:
    """Entry point of the ``tamer`` command: user errors print one clear line, no traceback."""
    try:
        app()
    except TamerError as exc:
        console.print(f"[bold red]error:[/] {exc}")
        sys.exit(2)
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/]: resume with `tamer run --resume runs/<name>`")
        sys.exit(130)


if __name__ == "__main__":
    main()
