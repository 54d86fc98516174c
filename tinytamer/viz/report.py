"""The run report: one self-contained HTML page (every image inline as a data URI, nothing
fetched) drawn only from the run's typed records (:mod:`tinytamer.records`), plus the
training-curve plot ``training.png`` beside it.

Sections, each present when the run has what it needs: the stage table with each stage's
change against the one before; accuracy against size and against every measured cost
(latency per target, estimated cycles, flash) with the Pareto front; pruning sensitivity
and chosen sparsities; per-layer bits; per-layer cycles and the memory plan on a micro
target; training curves per stage; the embeddings animation; search progress; the recipe,
the machine the targets measured on and the runtime versions.
"""

from __future__ import annotations

import base64
import html
import json
import platform
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tinytamer.fileio import atomic_path, write_atomic
from tinytamer.records import (
    DeployRecord,
    EmbeddingsRecord,
    EvaluateRecord,
    FixedPointRecord,
    HaqRecord,
    ProxylessRecord,
    PruneRecord,
    QuantizeRecord,
    SensitivityRecord,
    SposRecord,
    StageRecord,
    TrainRecord,
    read_records,
)
from tinytamer.rundir import RunDir
from tinytamer.viz import figures

# (heading, format, the value in a stage's record; None: an empty cell)
_COLUMNS: list[tuple[str, str, Callable[[StageRecord], Any]]] = [
    ("accuracy", "{:.2%}", lambda r: r.accuracy),
    ("params", "{:,}", lambda r: r.params),
    ("non-zeros", "{:,}", lambda r: r.nonzero_params),
    ("MACs", "{:,}", lambda r: r.macs),
    ("bytes on disk", "{:,}", lambda r: _size(r) and r.bytes),
    ("flash bytes", "{:,}", lambda r: r.flash_bytes if isinstance(r, DeployRecord) else None),
    ("latency ms", "{:.3f}", lambda r: r.latency_ms if isinstance(r, DeployRecord) else None),
    ("est. cycles", "{:,}", lambda r: r.est_cycles if isinstance(r, DeployRecord) else None),
]

_STYLE = """body{font-family:sans-serif;max-width:1150px;margin:2em auto;color:#222}
table{border-collapse:collapse;font-size:13px;margin-bottom:1em}
td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}
th{background:#f3f3f3}pre{background:#f7f7f7;padding:1em;font-size:12px;overflow-x:auto}
img{max-width:100%}.up{color:#1a7f37}.down{color:#b42318}figcaption{font-size:12px;color:#555}
.note{font-size:13px;color:#555}"""


def plot_training(train: list[TrainRecord], path: Path) -> Path | None:
    """Loss and accuracy against iteration, a row per training stage; None if nothing trained."""
    png = figures.training(train)
    if png is None:
        return None
    with atomic_path(path) as tmp:
        tmp.write_bytes(png)
    return path


def _cell(value: Any, fmt: str) -> str:
    if value is None:
        return ""
    try:
        return fmt.format(value)
    except (ValueError, TypeError):
        return html.escape(str(value))


def _img(data: bytes | None, caption: str, mime: str = "image/png") -> str:
    if not data:
        return ""
    uri = f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"
    text = html.escape(caption)
    return f'<figure><img src="{uri}" alt="{text}"><figcaption>{text}</figcaption></figure>'


def _file(run: RunDir, rel: str | None) -> bytes | None:
    """A file a record names, relative to the run; None if absent or outside the run."""
    if not rel:
        return None
    path = (run.path / rel).resolve()
    if not path.is_relative_to(run.path.resolve()) or not path.is_file():
        return None
    return path.read_bytes()


def _size(r: StageRecord) -> int | None:
    # A device deploy's files on disk (sources, ELF with debug sections) are not the model's
    # size: its size is the flash of the linked image, shown in its own column and panel.
    if isinstance(r, DeployRecord) and r.flash_bytes is not None:
        return None
    return r.bytes or r.dense_bytes


def _cost(r: StageRecord) -> tuple[str, float] | None:
    """What the stage costs to run, in the unit the stage measured it in."""
    if isinstance(r, DeployRecord):
        if r.est_cycles:
            return f"est. cycles on {r.target}", float(r.est_cycles)
        if r.latency_ms:
            return f"latency on {r.target}", float(r.latency_ms)
    return ("MACs", float(r.macs)) if r.macs else None


def _change(new: float | None, old: float | None, *, ratio: bool, higher_is_better: bool) -> str:
    if new is None or old is None or (ratio and not old):
        return "<td></td>"
    if ratio:
        value, text = new / old, f"{new / old:.2f}x"
        better = value > 1 if higher_is_better else value < 1
        same = value == 1
    else:
        value, text = new - old, f"{100 * (new - old):+.2f} pp"
        better, same = value > 0, value == 0
    cls = "" if same else ("up" if better else "down")
    return f'<td class="{cls}">{text}</td>'


def _stage_table(stages: list[StageRecord]) -> str:
    base = next((r for r in stages if r.dense_bytes), None)
    head = "".join(f"<th>{h}</th>" for h, _, _ in _COLUMNS)
    rows = []
    prev: StageRecord | None = None
    for r in stages:
        cells = "".join(f"<td>{_cell(value(r), f)}</td>" for _, f, value in _COLUMNS)
        ratio = f"{base.dense_bytes / r.bytes:.1f}x" if base and r.bytes and _size(r) else ""
        note = html.escape(r.note or "")
        d_acc = _change(r.accuracy, prev.accuracy if prev else None, ratio=False, higher_is_better=True)
        d_size = _change(_size(r), _size(prev) if prev else None, ratio=True, higher_is_better=False)
        cost, old = _cost(r), _cost(prev) if prev else None
        same_unit = cost and old and cost[0] == old[0]
        d_cost = _change(cost[1], old[1], ratio=True, higher_is_better=False) if same_unit else "<td></td>"
        unit = html.escape(cost[0]) if cost else ""
        rows.append(
            f"<tr><td>{r.index}</td><td>{html.escape(r.stage)}</td>{cells}<td>{ratio}</td>"
            f"{d_acc}{d_size}{d_cost}<td>{unit}</td><td>{note}</td></tr>"
        )
        prev = r
    return (
        f"<table><tr><th>#</th><th>stage</th>{head}<th>size ratio</th><th>&Delta; accuracy</th>"
        f"<th>&Delta; size</th><th>&Delta; cost</th><th>cost measured as</th><th>note</th></tr>{''.join(rows)}</table>"
        '<p class="note">&Delta;: against the stage before (size: bytes on disk, or 4 bytes per parameter '
        "where the stage saved no file; a device deploy's size is its flash, not compared with files; "
        "cost: compared only where both stages measured it the same way).</p>"
    )


def _pruning(run: RunDir, stages: list[StageRecord]) -> str:
    from tinytamer.compress.sensitivity import SensitivityResult
    from tinytamer.errors import TamerError

    parts = []
    for r in stages:
        if isinstance(r, SensitivityRecord):
            curves = None
            json_path = run.path / Path(r.plot).with_name("sensitivity.json")
            if json_path.resolve().is_relative_to(run.path.resolve()) and json_path.is_file():
                try:
                    curves = SensitivityResult.load(json_path)
                except TamerError:
                    curves = None
            if curves is not None:
                png = figures.sensitivity(curves.curves, curves.baseline, r.chosen)
            else:
                png = _file(run, r.plot)
            parts.append(_img(png, f"stage {r.index}: accuracy with one layer pruned (max drop {r.max_drop:.2%})"))
            parts.append(
                _img(figures.per_layer_bars(r.chosen, "sparsity", "chosen sparsity per layer"), "chosen sparsities")
            )
        elif isinstance(r, PruneRecord):
            bars = figures.per_layer_bars(r.layers, "sparsity", f"stage {r.index} prune ({r.schedule})")
            parts.append(_img(bars, f"stage {r.index}: sparsity per pruned layer"))
    return "".join(parts)


def _detections(run: RunDir, stages: list[StageRecord]) -> str:
    """The predictions an evaluated detector drew (ground truth beside them)."""
    return "".join(
        _img(_file(run, r.plot), f"stage {r.index}: predictions on the {r.split} split (mAP@0.5 {r.map50:.3f})")
        for r in stages
        if isinstance(r, EvaluateRecord) and r.plot and r.map50 is not None
    )


def _bits(run: RunDir, stages: list[StageRecord]) -> str:
    parts = []
    for r in stages:
        if isinstance(r, HaqRecord):
            w = {k: v.get("w_bits", 0) for k, v in r.policy.items()}
            a = {k: v.get("a_bits", 0) for k, v in r.policy.items()}
            parts.append(
                _img(figures.per_layer_bars(w, "bits", f"stage {r.index} haq: weight bits"), "weight bits per layer")
            )
            parts.append(
                _img(
                    figures.per_layer_bars(a, "bits", f"stage {r.index} haq: activation bits"),
                    "activation bits per layer",
                )
            )
        elif isinstance(r, QuantizeRecord):
            bars = figures.per_layer_bars(dict(r.weight_bits), "bits", f"stage {r.index} quantize ({r.method})")
            parts.append(_img(bars, "weight bits per layer"))
        elif isinstance(r, FixedPointRecord):
            bits = {k: v.get("bits") or 0 for k, v in r.formats.items()}
            parts.append(_img(figures.per_layer_bars(bits, "bits", f"stage {r.index} fixed point"), "bits per layer"))
    return "".join(parts)


def _micro(stages: list[StageRecord]) -> str:
    parts = []
    for r in stages:
        if not isinstance(r, DeployRecord):
            continue
        if r.per_layer:
            cycles = {str(p.get("layer")): float(p.get("est_cycles") or 0) for p in r.per_layer}
            title = f"stage {r.index}: est. cycles per layer on {r.target} ({r.memory_profile or 'profile not named'})"
            parts.append(
                _img(figures.per_layer_bars(cycles, "est. cycles", title), f"{title}; an estimate, not a timing")
            )
        extra = r.cost.extra if r.cost else {}
        buffers, ops = extra.get("memory_buffers"), extra.get("memory_ops")
        if buffers and r.arena_bytes:
            png = figures.memory_timeline(buffers, ops or [], r.arena_bytes)
            parts.append(_img(png, f"stage {r.index}: {r.target} memory plan ({r.memory_plan or ''})"))
        elif r.memory_plan:
            parts.append(f"<p>stage {r.index} memory plan on {html.escape(r.target)}: {html.escape(r.memory_plan)}</p>")
    return "".join(parts)


def _search(run: RunDir, stages: list[StageRecord]) -> str:
    parts = []
    for r in stages:
        if isinstance(r, HaqRecord):
            raw = _file(run, r.history)
            try:
                rewards = [float(e["reward"]) for e in json.loads(raw or b"[]")]
            except (ValueError, TypeError, KeyError):
                rewards = []
            parts.append(_img(figures.search_progress(rewards, "reward"), f"stage {r.index} haq: reward per episode"))
        elif isinstance(r, SposRecord):
            best = _history(
                run, r.history, lambda h: [max(c["accuracy"] for c in g) for g in h["top_k_per_generation"]]
            )
            png = figures.search_progress(best, "best validation accuracy", "generation")
            parts.append(_img(png, f"stage {r.index} spos: best fitness per generation"))
        elif isinstance(r, ProxylessRecord):
            lat = _history(
                run, r.history, lambda h: [s["expected_latency"] for s in h["steps"] if "expected_latency" in s]
            )
            png = figures.search_progress(lat, f"E[{r.metric}]", "architecture step", higher_is_better=False)
            parts.append(_img(png, f"stage {r.index} proxylessnas: expected cost per architecture step"))
    return "".join(parts)


def _history(run: RunDir, rel: str, read: Callable[[Any], list[float]]) -> list[float]:
    """A search stage's history file, read by ``read``; [] where it is missing or malformed."""
    try:
        return [float(v) for v in read(json.loads(_file(run, rel) or b"{}"))]
    except (ValueError, TypeError, KeyError, AttributeError):
        return []


def _embeddings(run: RunDir, rec: EmbeddingsRecord | None) -> str:
    if rec is None:
        return ""
    gif = _file(run, rec.animation)
    rows = "".join(
        f"<tr><td>{k + 1}</td><td>{o['index']}</td><td>{o['label']}</td><td>{o['score']:.3f}</td></tr>"
        for k, o in enumerate(rec.outliers)
    )
    skipped = "".join(f"<li>{html.escape(s)}</li>" for s in rec.skipped)
    return (
        _img(gif, f"{rec.samples} test images, {rec.layer}, at steps {rec.steps}", mime="image/gif")
        + f"<p class='note'>The two PCA components explain {sum(rec.explained_variance):.0%} of the variance"
        + " over all frames.</p>"
        + "<table><tr><th>outlier</th><th>test image (of the drawn set)</th><th>label</th><th>OOD score</th></tr>"
        + rows
        + "</table>"
        + (f"<p>snapshots left out:</p><ul>{skipped}</ul>" if skipped else "")
    )


def _machine(stages: list[StageRecord]) -> str:
    rows = []
    seen: set[str] = set()
    for r in stages:
        if isinstance(r, DeployRecord) and r.cost is not None:
            host = ", ".join(f"{k}: {v}" for k, v in r.cost.host.items()) or "not recorded"
            versions = ", ".join(f"{k} {v}" for k, v in r.cost.runtime_versions.items()) or "not recorded"
            cells = (r.target, f"stage {r.index}", host, versions)
            line = "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>"
            if line not in seen:
                seen.add(line)
                rows.append(line)
    measured = (
        "<table><tr><th>target</th><th>stage</th><th>machine it measured on</th><th>runtime versions</th></tr>"
        + "".join(rows)
        + "</table>"
        if rows
        else "<p>no target measured this run.</p>"
    )
    import torch

    from tinytamer import __version__

    here = (
        f"python {platform.python_version()}, torch {torch.__version__}, tinytamer {__version__}, {platform.platform()}"
    )
    return measured + f"<p class='note'>This page was drawn with {html.escape(here)}.</p>"


def write_report(run: RunDir) -> Path:
    """Write ``training.png`` and ``report.html`` into the run folder; returns the HTML path."""
    train = read_records(run, TrainRecord)
    plot_training(train, run.path / "training.png")
    stages = read_records(run, StageRecord)
    embeddings = read_records(run, EmbeddingsRecord)
    sections = [
        ("Stages", _stage_table(stages)),
        (
            "Accuracy against size and cost",
            _img(figures.tradeoffs(stages), "every stage and target; red: the Pareto front"),
        ),
        ("Detections", _detections(run, stages)),
        ("Pruning", _pruning(run, stages)),
        ("Bits per layer", _bits(run, stages)),
        ("On the micro target", _micro(stages)),
        ("Training", _img(figures.training(train), "loss and accuracy per training stage")),
        ("Embeddings during training", _embeddings(run, embeddings[-1] if embeddings else None)),
        ("Search progress", _search(run, stages)),
        ("Machine and runtimes", _machine(stages)),
        ("Recipe", f"<pre>{html.escape(run.recipe_path.read_text())}</pre>"),
    ]
    body = "".join(f"<h2>{h}</h2>{content}" for h, content in sections if content)
    title = html.escape(run.path.name)
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>tinytamer run {title}</title>
<style>{_STYLE}</style></head><body>
<h1>tinytamer run: {title}</h1>
<p>Every figure below is read from <code>metrics.jsonl</code>; sizes are bytes on disk
(a device deploy's: the flash of its linked image), latencies are measured on the target,
micro cycles are estimates under a named memory profile.</p>
{body}</body></html>"""
    out = run.path / "report.html"
    write_atomic(out, page)
    return out
