"""The run report: a training-curve plot and a one-page HTML summary, drawn only from the
run's typed records (:mod:`tinytamer.records`)."""

from __future__ import annotations

import html
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tinytamer.fileio import atomic_path, write_atomic
from tinytamer.records import DeployRecord, StageRecord, TrainRecord, read_records
from tinytamer.rundir import RunDir

# (heading, format, the value in a stage's record; None: an empty cell)
_COLUMNS: list[tuple[str, str, Callable[[StageRecord], Any]]] = [
    ("accuracy", "{:.2%}", lambda r: r.accuracy),
    ("params", "{:,}", lambda r: r.params),
    ("non-zeros", "{:,}", lambda r: r.nonzero_params),
    ("MACs", "{:,}", lambda r: r.macs),
    ("bytes on disk", "{:,}", lambda r: r.bytes),
    ("latency ms", "{:.3f}", lambda r: r.latency_ms if isinstance(r, DeployRecord) else None),
    ("est. cycles", "{:,}", lambda r: r.est_cycles if isinstance(r, DeployRecord) else None),
]


def plot_training(train: list[TrainRecord], path: Path) -> Path | None:
    """Loss and accuracy against iteration for every training stage; None if nothing trained."""
    if not train:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 3.6))
    for stage in dict.fromkeys((r.index, r.stage) for r in train):
        rs = [r for r in train if (r.index, r.stage) == stage]
        label = f"{stage[0]}: {stage[1]}"
        for ax, keys in ((ax_loss, ("train_loss", "test_loss")), (ax_acc, ("train_acc", "test_acc"))):
            for key, style in zip(keys, ("-", "o--"), strict=True):
                pts = [(r.iter, getattr(r, key)) for r in rs if getattr(r, key) is not None]
                if pts:
                    xs, ys = zip(*pts, strict=True)
                    split = "train batches" if key.startswith("train") else "held-out"
                    ax.plot(xs, ys, style, label=f"{label} ({split})", markersize=3)
    ax_loss.set(xlabel="iteration", ylabel="loss", title="loss")
    ax_acc.set(xlabel="iteration", ylabel="top-1 accuracy", title="accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)  # the temporary name does not say png
    plt.close(fig)
    return path


def _cell(value: Any, fmt: str) -> str:
    if value is None:
        return ""
    try:
        return fmt.format(value)
    except (ValueError, TypeError):
        return html.escape(str(value))


def write_report(run: RunDir) -> Path:
    """Write ``training.png`` and ``report.html`` into the run folder; returns the HTML path."""
    plot = plot_training(read_records(run, TrainRecord), run.path / "training.png")
    stages = read_records(run, StageRecord)
    base = next((r for r in stages if r.dense_bytes), None)
    head = "".join(f"<th>{h}</th>" for h, _, _ in _COLUMNS)
    rows = []
    for r in stages:
        cells = "".join(f"<td>{_cell(value(r), f)}</td>" for _, f, value in _COLUMNS)
        ratio = ""
        if base and r.bytes:
            ratio = f"{base.dense_bytes / r.bytes:.1f}x"
        note = html.escape(r.note or "")
        rows.append(f"<tr><td>{r.index}</td><td>{html.escape(r.stage)}</td>{cells}<td>{ratio}</td><td>{note}</td></tr>")
    images = "".join(
        f'<figure><img src="{html.escape(str(p.relative_to(run.path)))}" style="max-width:100%">'
        f"<figcaption>{html.escape(p.name)}</figcaption></figure>"
        for p in ([plot] if plot else []) + sorted(run.path.glob("stages/*/*.png"))
    )
    recipe = html.escape(run.recipe_path.read_text())
    title = html.escape(run.path.name)
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>tinytamer run {title}</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}}
table{{border-collapse:collapse;font-size:13px}}td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}
th{{background:#f3f3f3}}pre{{background:#f7f7f7;padding:1em;font-size:12px}}</style></head><body>
<h1>tinytamer run: {title}</h1>
<p>Every figure below is read from <code>metrics.jsonl</code>; sizes are bytes on disk,
costs are measured on the target.</p>
<h2>Stages</h2><table><tr><th>#</th><th>stage</th>{head}<th>size ratio</th><th>note</th></tr>{"".join(rows)}</table>
<h2>Plots</h2>{images or "<p>no plots</p>"}
<h2>Recipe</h2><pre>{recipe}</pre></body></html>"""
    out = run.path / "report.html"
    write_atomic(out, page)
    return out
