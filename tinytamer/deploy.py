"""Deploy one model to one target, or bench it on every target, measured.

``deploy`` compiles (with its parity check), measures the Cost, scores the task's
metric *through the deployed runtime* on the test set, and writes the artifacts and
``summary.json``.  ``bench`` does this for every available target and precision in one
run and reports latency as a speed-up over PyTorch fp32 measured in the same run,
peak memory, size and the accuracy change; ``BenchReport.best`` picks the fastest
under an accuracy constraint.  These are the bodies of ``tamer deploy`` / ``tamer bench``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from tinytamer.errors import TamerError
from tinytamer.targets import Cost, Deployed, get_target, list_targets
from tinytamer.targets.base import better_round


def write_json(path: Path, payload: Any) -> Path:
    """Write ``payload`` as JSON atomically."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    os.replace(tmp, path)
    return path


def calib_from_loader(loader: Iterable[Any], batches: int) -> list[torch.Tensor]:
    """The inputs of the first ``batches`` batches of a ``(x, y)`` loader (real samples)."""
    out = []
    for i, (x, _y) in enumerate(loader):
        if i >= batches:
            break
        out.append(x)
    if not out:
        raise TamerError("no calibration samples: the data loader is empty")
    return out


def runtime_accuracy(deployed: Deployed, model: nn.Module, loader: Iterable[Any],
                     limit: int | None = None) -> dict[str, float | int]:
    """Top-1 accuracy through the deployed runtime and, on the same samples, in PyTorch."""
    model = model.eval()
    hits_rt = hits_pt = n = 0
    for x, y in loader:
        if limit is not None and n >= limit:
            break
        if limit is not None:
            x, y = x[:limit - n], y[:limit - n]
        out = deployed(x.numpy())[0]
        with torch.no_grad():
            ref = model(x)
        labels = y.numpy()
        hits_rt += int((np.asarray(out).argmax(1) == labels).sum())
        hits_pt += int((ref.argmax(1).numpy() == labels).sum())
        n += len(labels)
    if n == 0:
        raise TamerError("no test samples to evaluate the deployed model on")
    return {"accuracy": hits_rt / n, "accuracy_torch": hits_pt / n, "n": n}


@dataclass
class DeployReport:
    target: str
    precision: str
    folder: str
    artifacts: list[str]
    artifact_bytes: int
    parity: dict[str, Any]
    cost: dict[str, Any] | None = None
    accuracy: float | None = None
    accuracy_torch: float | None = None
    eval_samples: int = 0
    source_bytes: int | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def deploy(model: nn.Module, target: str, folder: str | Path, *,
           example_input: torch.Tensor, precision: str = "fp32",
           calib: Sequence[torch.Tensor] | None = None, test_loader: Iterable[Any] | None = None,
           eval_limit: int | None = None, threads: int = 2, batch: int = 1, repeats: int = 30,
           warmup: int = 5, isolate: bool = True, source_file: str | Path | None = None,
           **target_options: Any) -> tuple[Deployed, DeployReport]:
    """Compile ``model`` for ``target``, measure it, score it through the runtime.

    ``calib``: batches of real inputs (int8 calibration and the parity check).
    ``source_file``: the compressed model file it came from, whose size is kept beside
    the runtime's.  Writes the artifacts and ``summary.json`` into ``folder``.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    deployed = get_target(target).compile(model, [example_input], folder, precision=precision,
                                          calib=calib, threads=threads, **target_options)
    report = DeployReport(target=target, precision=precision, folder=str(folder),
                          artifacts=[p.name for p in deployed.artifacts],
                          artifact_bytes=deployed.artifact_bytes, parity=deployed.parity,
                          info=dict(deployed.info))
    if source_file is not None:
        report.source_bytes = Path(source_file).stat().st_size
    if repeats > 0:
        cost = deployed.measure(batch=batch, threads=threads, repeats=repeats, warmup=warmup,
                                isolate=isolate)
        report.cost = cost.to_dict()
    if test_loader is not None:
        acc = runtime_accuracy(deployed, model, test_loader, eval_limit)
        report.accuracy = float(acc["accuracy"])
        report.accuracy_torch = float(acc["accuracy_torch"])
        report.eval_samples = int(acc["n"])
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
    accuracy: float | None = None
    acc_delta: float | None = None
    parity: dict[str, Any] = field(default_factory=dict)
    # How the target built this model when it matters to read the row (TVM: "tuned, 32
    # trials/task" or "untuned"), shown beside the target's name.
    variant: str = ""
    # CPUs the timing process could run on: fewer than ``threads`` means a smaller machine.
    cpus_available: int | None = None


@dataclass
class BenchReport:
    rows: list[BenchRow]
    threads: int
    baseline: str = "torch fp32"
    eval_samples: int = 0
    rounds: int = 1

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def best(self, max_acc_drop: float | None = None, batch: int | None = None
             ) -> BenchRow | None:
        """The fastest row (at ``batch``) losing at most ``max_acc_drop`` accuracy."""
        ok = [r for r in self.rows if r.status == "ok" and r.latency_ms is not None
              and (batch is None or r.batch == batch)
              and (max_acc_drop is None or r.acc_delta is None or -r.acc_delta <= max_acc_drop)]
        return min(ok, key=lambda r: r.latency_ms, default=None)

    def table(self) -> str:
        """A markdown table of the rows."""
        head = ("| target | precision | batch | latency ms median (p10-p90) | speed-up (median) "
                "| min ms | speed-up (min) | peak RSS MB | size KB | accuracy | Δ acc |\n"
                "|---|---|---|---|---|---|---|---|---|---|---|\n")

        def f(v: float | None, fmt: str) -> str:
            return "-" if v is None else format(v, fmt)

        lines = []
        for r in self.rows:
            if r.status != "ok":
                lines.append(f"| {r.target} | {r.precision} | {r.batch} | {r.status} "
                             "| - | - | - | - | - | - | - |")
                continue
            name = f"{r.target} ({r.variant})" if r.variant else r.target
            lat = f(r.latency_ms, ".3f")
            if r.latency_ms_p10 is not None and r.latency_ms_p90 is not None:
                lat += f" ({r.latency_ms_p10:.3f}-{r.latency_ms_p90:.3f})"
            size = None if r.artifact_bytes is None else r.artifact_bytes / 1024
            lines.append(f"| {name} | {r.precision} | {r.batch} | {lat} "
                         f"| {f(r.speedup, '.2f')}x | {f(r.latency_ms_min, '.3f')} "
                         f"| {f(r.speedup_min, '.2f')}x | {f(r.peak_rss_mb, '.0f')} "
                         f"| {f(size, '.1f')} | {f(r.accuracy, '.4f')} "
                         f"| {f(None if r.acc_delta is None else 100 * r.acc_delta, '+.2f')} |")
        return head + "\n".join(lines) + "\n"

    def plot(self, path: str | Path) -> Path:
        """Bar chart of the speed-up over PyTorch fp32, one bar per target/precision/batch."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        rows = [r for r in self.rows if r.speedup is not None]
        labels = [f"{r.target}\n{r.precision} b{r.batch}" + (f"\n{r.variant}" if r.variant else "")
                  for r in rows]
        fig, ax = plt.subplots(figsize=(max(4.0, 1.1 * len(rows)), 3.5))
        bars = ax.bar(range(len(rows)), [r.speedup for r in rows], color="tab:blue")
        ax.bar_label(bars, labels=[f"{r.speedup:.2f}x" for r in rows], fontsize=8)
        ax.axhline(1.0, color="gray", lw=0.8, ls="--")
        ax.set_xticks(range(len(rows)), labels, fontsize=8)
        ax.set_ylabel("speed-up vs PyTorch fp32")
        ax.set_title(f"latency speed-up ({self.threads} threads)")
        fig.tight_layout()
        path = Path(path)
        tmp = path.with_name(path.stem + ".tmp.png")
        fig.savefig(tmp, dpi=120)
        plt.close(fig)
        os.replace(tmp, path)
        return path


def bench(model: nn.Module, folder: str | Path, *, example_input: torch.Tensor,
          calib: Sequence[torch.Tensor] | None = None, test_loader: Iterable[Any] | None = None,
          targets: Sequence[str] | None = None, precisions: Sequence[str] | None = None,
          batches: Sequence[int] = (1,), threads: int = 2, repeats: int = 30, warmup: int = 5,
          eval_limit: int | None = None, isolate: bool = True, rounds: int = 1,
          target_options: dict[str, dict[str, Any]] | None = None) -> BenchReport:
    """Deploy ``model`` on every (available) target and precision and compare them.

    Speed-ups are against PyTorch fp32 measured in this same run.  With ``rounds`` > 1
    every model is measured that many times, round-robin, and its round with the lowest
    median is kept, so that load from other processes on a shared machine hits every
    target alike.  A target that fails (export, parity) is kept as a row with its error,
    and the others go on.  ``target_options`` maps a target name to extra keyword
    arguments of its ``compile`` (e.g. ``{"tvm": {"trials": 64}}``).  Writes
    ``bench.json``, ``bench.md`` and ``bench.png``.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    names = list(targets) if targets else list_targets(available_only=True)
    if "torch" not in names:
        names.insert(0, "torch")  # the baseline is always measured
    rows: list[BenchRow] = []
    accs: dict[tuple[str, str], dict[str, float | int]] = {}
    deployed_all: list[tuple[str, str, Deployed]] = []
    for name in names:
        tgt = get_target(name)
        for prec in [p for p in tgt.precisions if precisions is None or p in precisions
                     or (name, p) == ("torch", "fp32")]:
            try:
                d = tgt.compile(model, [example_input], folder / f"{name}-{prec}",
                                precision=prec, calib=calib, threads=threads,
                                **(target_options or {}).get(name, {}))
            except TamerError as exc:
                rows.extend(BenchRow(name, prec, b, status=f"failed: {exc}") for b in batches)
                continue
            deployed_all.append((name, prec, d))
            if test_loader is not None:
                accs[(name, prec)] = runtime_accuracy(d, model, test_loader, eval_limit)
    for b in batches:
        best: dict[int, Cost] = {}
        for _ in range(rounds):
            for i, (_n, _p, d) in enumerate(deployed_all):
                best[i] = better_round(best.get(i), d.measure(
                    batch=b, threads=threads, repeats=repeats, warmup=warmup, isolate=isolate))
        for i, (name, prec, d) in enumerate(deployed_all):
            cost = best[i]
            acc = accs.get((name, prec), {})
            rows.append(BenchRow(name, prec, b, latency_ms=cost.latency_ms_median,
                                 latency_ms_p10=cost.latency_ms_p10,
                                 latency_ms_p90=cost.latency_ms_p90,
                                 latency_ms_min=cost.latency_ms_min,
                                 peak_rss_mb=cost.peak_rss_mb, artifact_bytes=cost.artifact_bytes,
                                 accuracy=acc.get("accuracy"), parity=d.parity,
                                 variant=str(cost.extra.get("variant", "")),
                                 cpus_available=cost.extra.get("cpus_available")))
    base_acc = accs.get(("torch", "fp32"), {}).get("accuracy")
    for r in rows:
        base = next((x for x in rows if (x.target, x.precision, x.batch) == ("torch", "fp32", r.batch)
                     and x.latency_ms), None)
        if r.latency_ms and base is not None:
            r.speedup = base.latency_ms / r.latency_ms
            if r.latency_ms_min and base.latency_ms_min:
                r.speedup_min = base.latency_ms_min / r.latency_ms_min
        if r.accuracy is not None and base_acc is not None:
            r.acc_delta = r.accuracy - base_acc
    n_eval = int(next(iter(accs.values()))["n"]) if accs else 0
    report = BenchReport(rows=rows, threads=threads, eval_samples=n_eval, rounds=rounds)
    write_json(folder / "bench.json", report.to_dict())
    md = folder / "bench.md"
    md.with_name("bench.md.tmp").write_text(report.table())
    os.replace(md.with_name("bench.md.tmp"), md)
    report.plot(folder / "bench.png")
    return report
