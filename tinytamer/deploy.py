"""Deploy one model to one target, or bench it on every target, measured.

``deploy`` compiles (with its parity check), measures the Cost, scores the task's
metric *through the deployed runtime* on the test set, and writes the artifacts and
``summary.json``.  ``bench`` does this for every available target and precision in one
run and reports latency as a speed-up over PyTorch fp32 measured in the same run,
peak memory, size and the accuracy change; ``BenchReport.best`` picks the fastest
under an accuracy constraint.  These are the bodies of ``tamer deploy`` / ``tamer bench``.

Both speak while they work: scoring shows a progress bar, and ``bench`` says when each
target starts and ends and rewrites its table after each one, so an interrupted bench
leaves the rows it finished.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from tinytamer.errors import ModelError, TamerError
from tinytamer.fileio import atomic_path, write_atomic
from tinytamer.scoring import top1_hits
from tinytamer.targets import Cost, Deployed, Target, get_target, list_targets
from tinytamer.targets.base import (
    ONE_ROUND,
    ROUNDS,
    combine_rounds,
    host_description,
    unavailable_reason,
    wait_for_quiet,
)
from tinytamer.targets.options import compile_options


def int8_quantizer(model: nn.Module, batches: list[torch.Tensor], method: str) -> nn.Module:
    """The quantizer the int8-only targets are given: tinytamer's post-training int8
    quantization (``compress.int8``) with ``method``'s activation ranges, and one weight
    scale for each layer whose weights are shared (``compress.int8.one_scale_layers``: a
    k-means layer keeps one codebook in integers, which the Cortex-M path stores once).
    Targets sit below ``compress`` and never import it; this module knows both."""
    from tinytamer.compress.int8 import one_scale_overrides, quantize_ptq

    return quantize_ptq(model, batches, method=method, select={"overrides": one_scale_overrides(model)})


def _with_quantizer(tgt: Target, options: dict[str, Any]) -> dict[str, Any]:
    """``options`` plus the int8 quantizer, for a target that takes one."""
    return {**options, "quantize": int8_quantizer} if getattr(tgt, "takes_quantizer", False) else options


# Samples per runtime call while scoring, so that the progress bar moves on slow runtimes
# (an emulated Cortex-M scores about 40 images a second).
EVAL_CHUNK = 64


def write_json(path: Path, payload: Any) -> Path:
    """Write ``payload`` as JSON atomically."""
    write_atomic(path, json.dumps(payload, indent=2, default=str) + "\n")
    return path


def eval_limit_for(target: Target, eval_limit: int | str | None) -> int | None:
    """How many test samples to score through ``target`` (None: all of them).

    ``eval_limit`` None takes the target's default (``default_eval_limit``: 1,000 on an
    emulated device, else all), ``"all"`` every sample, a number that many.
    """
    if not valid_eval_limit(eval_limit):
        raise TamerError(f"eval_limit must be a whole number >= 1 or 'all', got {eval_limit!r}")
    if eval_limit is None:
        return getattr(target, "default_eval_limit", None)
    return None if eval_limit == "all" else int(eval_limit)


def default_precision(target: Target) -> str:
    """fp32, or the target's own precision where it runs no fp32 (the micro targets: int8)."""
    return "fp32" if "fp32" in target.precisions else target.precisions[0]


def valid_eval_limit(value: Any) -> bool:
    """None, "all" or a whole number >= 1 (not a bool, which Python counts as an int)."""
    return value is None or value == "all" or (isinstance(value, int) and not isinstance(value, bool) and value >= 1)


def _dataset_size(loader: Iterable[Any]) -> int | None:
    try:
        return len(loader.dataset)  # type: ignore[attr-defined]
    except (AttributeError, TypeError):  # not a map-style DataLoader: size unknown
        return None


def runtime_accuracy(
    deployed: Deployed, model: nn.Module, loader: Iterable[Any], limit: int | None = None, progress: bool = False
) -> dict[str, float | int | None]:
    """Top-1 accuracy through the deployed runtime and, on the same samples, in PyTorch.

    Scores the first ``limit`` samples (all if None); ``n`` is how many were scored and
    ``total`` how many the loader holds (None if it cannot say).  ``progress`` shows a bar.
    A detector (a model carrying anchors, strides and a class count) is scored by mAP
    instead, through the shared decode and NMS (``tinytamer.detect.evaluate.PairedScore``):
    ``accuracy`` / ``accuracy_torch`` are mAP@0.5, with ``map50``, ``map50_95`` and their
    ``_torch`` twins beside them.
    """
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    model = model.eval()
    detection = _paired_score(model)
    total = _dataset_size(loader)
    want = total if limit is None else limit if total is None else min(limit, total)
    hits_rt = hits_pt = n = 0
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, disable=not progress) as bar:
        task = bar.add_task(f"scoring on {deployed.target} {deployed.precision}", total=want)
        for x, y in loader:
            if limit is not None and n >= limit:
                break
            if limit is not None:
                x, y = x[: limit - n], y[: limit - n]
            for i in range(0, len(y), EVAL_CHUNK):
                xs, labels = x[i : i + EVAL_CHUNK], y[i : i + EVAL_CHUNK].numpy()
                outs = deployed(xs.numpy())
                with torch.no_grad():
                    ref = model(xs)
                if detection is not None:
                    detection.add(outs, ref, labels, int(xs.shape[-1]))
                else:
                    hits_rt += top1_hits(np.asarray(outs[0]), labels)
                    hits_pt += top1_hits(ref, y[i : i + EVAL_CHUNK])
                n += len(labels)
                bar.advance(task, len(labels))
    if n == 0:
        raise TamerError("no test samples to evaluate the deployed model on")
    if detection is not None:
        return {**detection.result(), "n": n, "total": total}
    return {"accuracy": hits_rt / n, "accuracy_torch": hits_pt / n, "n": n, "total": total}


def for_target(model: nn.Module, tgt: Target) -> nn.Module:
    """``model`` in the form ``tgt`` runs: a float detector packed into one output map for
    the micro targets, which run a single output (:func:`tinytamer.detect.packed.for_micro`;
    the scoring unpacks it); any other model or target unchanged."""
    from tinytamer.detect.decode import Head, keep_head

    try:
        head = Head.of(model)
    except ModelError:
        return model
    # Imported for a detector only: the micro path is no concern of other models.
    from tinytamer.detect.packed import for_micro
    from tinytamer.qgraph import is_quantized
    from tinytamer.targets.micro import MicroTarget

    if not isinstance(tgt, MicroTarget):
        return model
    if is_quantized(model):
        # Packing adds a concatenation whose int8 scale no quantizer has chosen yet.
        raise ModelError(
            f"target '{tgt.name}' runs one output, and this quantized detector has {len(head.strides)} "
            "(one per scale): deploy the float detector, which is packed into one output and quantized "
            "on the way (put the deploy stage before the quantize stage)"
        )
    return keep_head(model, for_micro(model))


def _paired_score(model: nn.Module) -> Any:
    """A ``PairedScore`` for a detector, None for any other model."""
    from tinytamer.detect.decode import Head
    from tinytamer.detect.evaluate import PairedScore

    try:
        return PairedScore(Head.of(model))
    except ModelError:
        return None


def accuracy_line(accuracy: float, n: int, total: int | None) -> str:
    """``accuracy 98.10% on 1000 of 10000 test samples``: what was scored, said with it."""
    of = f" of {total}" if total is not None and total != n else ""
    return f"accuracy {accuracy:.2%} on {n}{of} test samples"


def score_line(acc: dict[str, Any]) -> str:
    """:func:`accuracy_line` of a ``runtime_accuracy`` result; a detector's says
    ``mAP@0.5 0.612, mAP@[.5:.95] 0.301 on 46 test images``."""
    if acc.get("map50") is None:
        return accuracy_line(acc["accuracy"], acc["n"], acc["total"])
    of = f" of {acc['total']}" if acc["total"] is not None and acc["total"] != acc["n"] else ""
    return f"mAP@0.5 {acc['map50']:.3f}, mAP@[.5:.95] {acc['map50_95']:.3f} on {acc['n']}{of} test images"


@dataclass
class DeployReport:
    target: str
    precision: str
    folder: str
    artifacts: list[str]
    artifact_bytes: int
    parity: dict[str, Any]
    cost: dict[str, Any] | None = None
    # The task's score: top-1, or mAP@0.5 for a detector (then map50 / map50_95 are set).
    accuracy: float | None = None
    accuracy_torch: float | None = None
    map50: float | None = None
    map50_95: float | None = None
    map50_torch: float | None = None
    map50_95_torch: float | None = None
    eval_samples: int = 0
    # Test samples the loader holds: eval_samples below it means a limited evaluation.
    eval_total: int | None = None
    source_bytes: int | None = None
    info: dict[str, Any] = field(default_factory=dict)
    # The target's options the model was compiled with, defaults included.
    options: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def deploy(
    model: nn.Module,
    target: str,
    folder: str | Path,
    *,
    example_input: torch.Tensor,
    precision: str = "fp32",
    calib: Sequence[torch.Tensor] | None = None,
    test_loader: Iterable[Any] | None = None,
    eval_limit: int | str | None = None,
    threads: int = 2,
    batch: int = 1,
    repeats: int = 30,
    warmup: int = 5,
    isolate: bool = True,
    source_file: str | Path | None = None,
    progress: bool = False,
    **target_options: Any,
) -> tuple[Deployed, DeployReport]:
    """Compile ``model`` for ``target``, measure it, score it through the runtime.

    ``calib``: batches of real inputs, e.g. a ``tinytamer.calib.Calibration`` (int8
    calibration and the parity check).
    ``eval_limit``: test samples scored (see :func:`eval_limit_for`).
    ``source_file``: the compressed model file it came from, whose size is kept beside
    the runtime's.  ``target_options``: the target's own options (its ``Options`` model,
    ``tamer list targets NAME``).  Writes the artifacts and ``summary.json`` into ``folder``.
    A detector goes to a micro target packed into one output (:func:`for_target`).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tgt = get_target(target)
    # Bad values fail before the compile.
    limit = eval_limit_for(tgt, eval_limit)
    options = compile_options(tgt, target_options)
    model = for_target(model, tgt)
    deployed = tgt.compile(
        model,
        [example_input],
        folder,
        precision=precision,
        calib=calib,
        threads=threads,
        **_with_quantizer(tgt, options),
    )
    report = DeployReport(
        target=target,
        precision=precision,
        folder=str(folder),
        artifacts=[p.name for p in deployed.artifacts],
        artifact_bytes=deployed.artifact_bytes,
        parity=deployed.parity,
        info=dict(deployed.info),
        options=options,
    )
    if source_file is not None:
        report.source_bytes = Path(source_file).stat().st_size
    if repeats > 0:
        cost = deployed.measure(batch=batch, threads=threads, repeats=repeats, warmup=warmup, isolate=isolate)
        report.cost = cost.to_dict()
    if test_loader is not None:
        acc = runtime_accuracy(deployed, model, test_loader, limit, progress=progress)
        report.accuracy = float(acc["accuracy"])
        report.accuracy_torch = float(acc["accuracy_torch"])
        report.eval_samples = int(acc["n"])
        report.eval_total = acc["total"]
        for key in ("map50", "map50_95", "map50_torch", "map50_95_torch"):
            setattr(report, key, acc.get(key))
    write_json(folder / "summary.json", report.to_dict())
    return deployed, report


@dataclass
class BenchRow:
    target: str
    precision: str
    batch: int
    status: str = "ok"
    latency_ms: float | None = None
    latency_ms_p10: float | None = None
    latency_ms_p90: float | None = None
    latency_ms_min: float | None = None
    speedup: float | None = None
    speedup_min: float | None = None
    peak_rss_mb: float | None = None
    artifact_bytes: int | None = None
    # The task's score: top-1, or mAP@0.5 for a detector (map50_95 beside it).
    accuracy: float | None = None
    map50_95: float | None = None
    # Change of that score against the model in PyTorch on the same test samples.
    acc_delta: float | None = None
    eval_samples: int | None = None
    parity: dict[str, Any] = field(default_factory=dict)
    # Seconds this target took in the bench: compile (and tuning), scoring, measuring.
    seconds: float | None = None
    # How the target built this model when it matters to read the row (TVM: "tuned, 32
    # trials/task" or "untuned"), shown beside the target's name.
    variant: str = ""
    # CPUs the timing process could run on: fewer than ``threads`` means a smaller machine.
    cpus_available: int | None = None
    # Micro targets are not timed: their estimated time under a memory profile.
    est_time_ms: float | None = None
    memory_profile: str | None = None
    # The load average exceeded the thread count while this row was timed: not a clean figure.
    loaded: bool | None = None
    # Each round's median (ms) when the bench ran several rounds.
    round_medians_ms: list[float] = field(default_factory=list)
    # torch and the runtime versions the timing process had loaded.
    runtime_versions: dict[str, str] = field(default_factory=dict)


@dataclass
class BenchReport:
    rows: list[BenchRow]
    threads: int
    baseline: str = "torch fp32"
    eval_samples: int = 0
    eval_total: int | None = None
    rounds: int = 1
    # "target precision" of the jobs not run yet: a table written mid-bench, or left by
    # an interrupted one, says what it lacks.
    pending: list[str] = field(default_factory=list)
    # The CPU that timed every row (targets.base.host_description) and how the latency
    # figures are formed.
    host: dict[str, Any] = field(default_factory=host_description)
    statistic: str = ONE_ROUND
    # What a reader must know about how some rows were built (e.g. TVM left untuned).
    notes: list[str] = field(default_factory=list)
    # What ``accuracy`` and ``acc_delta`` measure: "accuracy" (top-1) or "mAP@0.5" (a detector).
    metric: str = "accuracy"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def caption(self) -> str:
        """The machine, threads and statistic every figure of the table comes from."""
        h = self.host
        isa = ", ".join(h.get("isa", [])) or "no listed vector extensions"
        lines = [
            f"Measured on {h.get('cpu', 'unknown CPU')} ({h.get('arch', '?')}; {isa}; "
            f"{h.get('cores', '?')} cores), {self.threads} thread(s), {self.rounds} round(s). "
            f"Latency: {self.statistic}.",
        ]
        if any(r.loaded for r in self.rows):
            lines.append(
                "Rows marked (loaded) were timed while the load average exceeded the thread "
                "count: other work competed for the cores; not clean figures."
            )
        lines += [f"Note: {n}" for n in self.notes]
        return "\n".join(lines) + "\n\n"

    def best(self, max_acc_drop: float | None = None, batch: int | None = None) -> BenchRow | None:
        """The fastest row (at ``batch``) losing at most ``max_acc_drop`` of the table's
        ``metric`` against PyTorch on the same samples (a detector: mAP@0.5, 0.02 = 2 points)."""
        ok = [
            r
            for r in self.rows
            if r.status == "ok"
            and r.latency_ms is not None
            and (batch is None or r.batch == batch)
            and (max_acc_drop is None or r.acc_delta is None or -r.acc_delta <= max_acc_drop)
        ]
        return min(ok, key=lambda r: r.latency_ms, default=None)

    def table(self) -> str:
        """A markdown table of the rows."""
        detection = self.metric != "accuracy"
        score, delta = ("mAP@0.5 (mAP@[.5:.95])", "Δ mAP@0.5 points") if detection else ("accuracy", "Δ acc")
        head = (
            "| target | precision | batch | latency ms median (p10-p90) | speed-up (median) "
            f"| min ms | speed-up (min) | peak RSS MB | size KB (device: flash) | {score} "
            f"| {delta} |\n"
            "|---|---|---|---|---|---|---|---|---|---|---|\n"
        )

        def f(v: float | None, fmt: str) -> str:
            return "-" if v is None else format(v, fmt)

        def acc(r: BenchRow) -> str:
            text = f(r.accuracy, ".4f")
            if detection:
                text += f" ({f(r.map50_95, '.4f')})"
            if r.eval_samples is not None and r.eval_samples != self.eval_samples:
                return f"{text} (n={r.eval_samples})"
            return text

        lines = []
        for r in self.rows:
            if r.status != "ok":
                lines.append(f"| {r.target} | {r.precision} | {r.batch} | {r.status} | - | - | - | - | - | - | - |")
                continue
            name = f"{r.target} ({r.variant})" if r.variant else r.target
            lat = f(r.latency_ms, ".3f")
            if r.latency_ms is None and r.est_time_ms is not None:
                lat = f"est. {r.est_time_ms:.3f} ({r.memory_profile}, not timed)"
            if r.latency_ms_p10 is not None and r.latency_ms_p90 is not None:
                lat += f" ({r.latency_ms_p10:.3f}-{r.latency_ms_p90:.3f})"
            if r.loaded:
                lat += " (loaded)"
            size = None if r.artifact_bytes is None else r.artifact_bytes / 1024
            lines.append(
                f"| {name} | {r.precision} | {r.batch} | {lat} "
                f"| {f(r.speedup, '.2f')}x | {f(r.latency_ms_min, '.3f')} "
                f"| {f(r.speedup_min, '.2f')}x | {f(r.peak_rss_mb, '.0f')} "
                f"| {f(size, '.1f')} | {acc(r)} "
                f"| {f(None if r.acc_delta is None else 100 * r.acc_delta, '+.2f')} |"
            )
        return head + "\n".join(lines) + "\n"

    def plot(self, path: str | Path) -> Path:
        """Bar chart of the speed-up over PyTorch fp32, one bar per target/precision/batch."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        rows = [r for r in self.rows if r.speedup is not None]
        labels = [f"{r.target}\n{r.precision} b{r.batch}" + (f"\n{r.variant}" if r.variant else "") for r in rows]
        fig, ax = plt.subplots(figsize=(max(4.0, 1.1 * len(rows)), 3.5))
        bars = ax.bar(range(len(rows)), [r.speedup for r in rows], color="tab:blue")
        ax.bar_label(bars, labels=[f"{r.speedup:.2f}x" for r in rows], fontsize=8)
        ax.axhline(1.0, color="gray", lw=0.8, ls="--")
        ax.set_xticks(range(len(rows)), labels, fontsize=8)
        ax.set_ylabel("speed-up vs PyTorch fp32")
        ax.set_title(f"latency speed-up ({self.threads} threads)")
        fig.tight_layout()
        path = Path(path)
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=120)  # the temporary name does not say png
        plt.close(fig)
        return path


def _tvm_bench_trials(
    model: nn.Module, example_input: torch.Tensor, batches: Sequence[int], threads: int, options: dict[str, Any]
) -> str | None:
    """Set TVM's trials for a bench that did not ask for tuning: its default when the tuning
    database already holds the model (nothing is tuned), else 0.  Returns the note to show
    when TVM is left untuned."""
    from tinytamer.targets import tvm

    trials = options["trials"]
    try:
        if trials == 0 or tvm.tuned_in_database(model, [example_input], batches, threads, trials):
            return None
    except TamerError:  # not installed, or the model does not convert: its compile says so
        options["trials"] = 0
        return None
    options["trials"] = 0
    return (
        f"tvm compiled untuned: its tuning database ({tvm.cache_root()}) does not hold this model at "
        f"{trials} trials per task, and bench tunes only when asked. To tune (minutes to tens of "
        f"minutes; about 12 for a CIFAR ResNet-8 on 2 cores): tamer bench --set trials={trials}"
    )


def console_echo(line: str) -> None:
    """Print a status line to stderr (stdout keeps the tables), as plain text: target
    errors hold brackets such as ``tinytamer[tvm]`` that rich would read as markup."""
    from rich.console import Console

    Console(stderr=True, highlight=False, soft_wrap=True).print(line, markup=False)


@dataclass
class _Job:
    """One target and precision of a bench, as far as it got."""

    target: str
    precision: str
    deployed: Deployed | None = None
    acc: dict[str, Any] = field(default_factory=dict)
    costs: dict[int, Cost] = field(default_factory=dict)
    error: str | None = None
    seconds: float = 0.0


def _rows(jobs: Sequence[_Job], batches: Sequence[int]) -> list[BenchRow]:
    """The table rows of the jobs run so far, speed-ups against torch fp32 at each batch."""
    rows = []
    for b in batches:
        for job in jobs:
            if job.error is not None:
                rows.append(BenchRow(job.target, job.precision, b, status=f"failed: {job.error}", seconds=job.seconds))
                continue
            cost, acc = job.costs[b], job.acc
            rows.append(
                BenchRow(
                    job.target,
                    job.precision,
                    b,
                    latency_ms=cost.latency_ms_median,
                    latency_ms_p10=cost.latency_ms_p10,
                    latency_ms_p90=cost.latency_ms_p90,
                    latency_ms_min=cost.latency_ms_min,
                    peak_rss_mb=cost.peak_rss_mb,
                    # A device's size is its flash, not its ELF file.
                    artifact_bytes=cost.artifact_bytes if cost.flash_bytes is None else cost.flash_bytes,
                    accuracy=acc.get("accuracy"),
                    map50_95=acc.get("map50_95"),
                    acc_delta=(acc["accuracy"] - acc["accuracy_torch"]) if acc else None,
                    eval_samples=acc.get("n"),
                    parity=job.deployed.parity,
                    seconds=job.seconds,
                    variant=str(cost.extra.get("variant", "")),
                    cpus_available=cost.extra.get("cpus_available"),
                    est_time_ms=cost.est_time_ms,
                    memory_profile=cost.memory_profile,
                    loaded=cost.loaded,
                    round_medians_ms=list(cost.round_medians_ms),
                    runtime_versions=dict(cost.runtime_versions),
                )
            )
    for r in rows:
        base = next(
            (x for x in rows if (x.target, x.precision, x.batch) == ("torch", "fp32", r.batch) and x.latency_ms), None
        )
        if r.latency_ms and base is not None:
            r.speedup = base.latency_ms / r.latency_ms
            if r.latency_ms_min and base.latency_ms_min:
                r.speedup_min = base.latency_ms_min / r.latency_ms_min
    return rows


def _job_line(job: _Job, row: BenchRow | None) -> str:
    """How one bench job ended, in one line."""
    if job.error is not None:
        return f"failed after {job.seconds:.1f} s: {job.error}"
    parts = [f"done in {job.seconds:.1f} s"]
    if row is not None and row.latency_ms is not None:
        speed = f" ({row.speedup:.2f}x torch fp32)" if row.speedup is not None else ""
        parts.append(f"{row.latency_ms:.3f} ms at batch {row.batch}{speed}")
    if job.acc:
        parts.append(score_line(job.acc))
    extra = next(iter(job.costs.values())).extra
    if extra.get("variant"):
        parts.append(str(extra["variant"]))
    if "tasks_from_database" in extra:  # TVM: tuning reused from an earlier run, or not
        parts.append(f"{extra['tasks_from_database']} of {extra['tasks']} tuning tasks from {extra['database']}")
    return ", ".join(parts)


def _write_tables(folder: Path, report: BenchReport) -> None:
    """bench.json and bench.md, replaced atomically (also mid-bench, with what is done)."""
    write_json(folder / "bench.json", report.to_dict())
    note = f"Partial: {len(report.pending)} still to run ({', '.join(report.pending)}).\n\n" if report.pending else ""
    md = folder / "bench.md"
    write_atomic(md, note + report.caption() + report.table())


def bench(
    model: nn.Module,
    folder: str | Path,
    *,
    example_input: torch.Tensor,
    calib: Sequence[torch.Tensor] | None = None,
    test_loader: Iterable[Any] | None = None,
    targets: Sequence[str] | None = None,
    precisions: Sequence[str] | None = None,
    batches: Sequence[int] = (1,),
    threads: int = 2,
    repeats: int = 30,
    warmup: int = 5,
    eval_limit: int | str | None = None,
    isolate: bool = True,
    rounds: int = 1,
    settle_s: float = 0.0,
    target_options: dict[str, dict[str, Any]] | None = None,
    progress: bool = False,
    echo: Callable[[str], None] | None = None,
) -> BenchReport:
    """Deploy ``model`` on every (available) target and precision and compare them.

    Speed-ups are against PyTorch fp32 measured in this same run (always run first).
    With ``rounds`` > 1 every model is measured that many times, round-robin, so that
    load from other processes on a shared machine hits every target alike, and the
    median of its rounds' medians is reported (:func:`tinytamer.targets.base.combine_rounds`).
    ``settle_s`` > 0: before each timing, wait up to that long for the load average left by
    the compiles to fall below ``threads`` (:func:`tinytamer.targets.base.wait_for_quiet`).
    TVM is not tuned unless ``target_options["tvm"]`` names ``trials``: its tuning database
    is used when it holds the model, else it is compiled untuned (labelled so, with a note
    saying how to tune).  A target that fails (export, parity, measuring) is
    kept as a row with its error, and the others go on.  ``target_options`` maps a target
    name to its options (e.g. ``{"tvm": {"trials": 64}}``, validated against its ``Options``).
    ``eval_limit`` is resolved per target (:func:`eval_limit_for`).  ``echo`` gets one
    line as each target starts and ends (and for each target skipped as unavailable);
    ``progress`` shows a bar while scoring.  Writes ``bench.json`` and ``bench.md`` after
    every target (an interrupted bench leaves the finished rows) and ``bench.png`` at the end.
    """
    say = echo or (lambda _line: None)
    if not batches or any(isinstance(b, bool) or not isinstance(b, int) or b < 1 for b in batches):
        raise TamerError(f"bench: batches must list whole numbers >= 1, got {list(batches)!r}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if targets:
        names = list(dict.fromkeys(targets))
    else:
        names = []
        for name in list_targets():
            reason = unavailable_reason(get_target(name))
            if reason is None:
                names.append(name)
            else:
                say(f"bench: skipping {name}: {reason}")
    names = ["torch", *(n for n in names if n != "torch")]  # the baseline, measured first
    limits = {n: eval_limit_for(get_target(n), eval_limit) for n in names}
    options = {n: compile_options(get_target(n), (target_options or {}).get(n, {})) for n in names}
    notes: list[str] = []
    if "tvm" in names and "trials" not in (target_options or {}).get("tvm", {}):
        untuned = _tvm_bench_trials(model, example_input, batches, threads, options["tvm"])
        if untuned is not None:
            notes.append(untuned)
            say(f"bench: {untuned}")
    todo = [
        (n, p)
        for n in names
        for p in get_target(n).precisions
        if precisions is None or p in precisions or (n, p) == ("torch", "fp32")
    ]
    jobs: list[_Job] = []

    def report(pending: Sequence[tuple[str, str]]) -> BenchReport:
        rows = _rows(jobs, batches)
        base = next((j.acc for j in jobs if (j.target, j.precision) == ("torch", "fp32")), {})
        return BenchReport(
            rows=rows,
            threads=threads,
            eval_samples=int(base.get("n", 0)),
            eval_total=base.get("total"),
            rounds=rounds,
            pending=[f"{n} {p}" for n, p in pending],
            statistic=ONE_ROUND if rounds == 1 else ROUNDS,
            notes=notes,
            metric="mAP@0.5" if any("map50" in j.acc for j in jobs) else "accuracy",
        )

    for k, (name, prec) in enumerate(todo, 1):
        label = f"bench [{k}/{len(todo)}] {name} {prec}"
        say(f"{label}: started")
        job = _Job(name, prec)
        t0 = time.perf_counter()
        try:
            tgt = get_target(name)
            ready = for_target(model, tgt)
            job.deployed = tgt.compile(
                ready,
                [example_input],
                folder / f"{name}-{prec}",
                precision=prec,
                calib=calib,
                threads=threads,
                **_with_quantizer(tgt, options[name]),
            )
            if test_loader is not None:
                job.acc = runtime_accuracy(job.deployed, ready, test_loader, limits[name], progress=progress)
            for b in batches:
                wait_for_quiet(threads, settle_s, say)
                job.costs[b] = job.deployed.measure(
                    batch=b, threads=threads, repeats=repeats, warmup=warmup, isolate=isolate
                )
        except TamerError as exc:
            job.error, job.deployed, job.costs = str(exc), None, {}
        job.seconds = round(time.perf_counter() - t0, 2)
        jobs.append(job)
        partial = report(todo[k:])
        _write_tables(folder, partial)
        row = next((r for r in partial.rows if (r.target, r.precision) == (name, prec)), None)
        say(f"{label}: {_job_line(job, row)}")
    measured = {(id(job), b): [cost] for job in jobs for b, cost in job.costs.items()}
    for r in range(1, rounds):
        say(f"bench: measuring round {r + 1}/{rounds}")
        for job in jobs:
            for b, cost in job.costs.items():
                if cost.latency_ms_median is None:  # an estimate (micro): the same every round
                    continue
                wait_for_quiet(threads, settle_s, say)
                measured[(id(job), b)].append(
                    job.deployed.measure(batch=b, threads=threads, repeats=repeats, warmup=warmup, isolate=isolate)
                )
    for job in jobs:
        job.costs = {b: combine_rounds(measured[(id(job), b)]) for b in job.costs}
    final = report([])
    _write_tables(folder, final)
    final.plot(folder / "bench.png")
    return final
