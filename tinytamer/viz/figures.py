"""The report's figures, each drawn from typed records and returned as PNG bytes (None
when the run has nothing to draw), so the page can carry them inline."""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

from tinytamer.records import DeployRecord, StageRecord, TrainRecord


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    _plt().close(fig)
    return buf.getvalue()


def pareto(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats: lower x (cost) and higher y (accuracy)
    or equal in one and better in the other.  Sorted by x."""
    front = []
    for i, (x, y) in enumerate(points):
        beaten = any((x2 <= x and y2 >= y) and (x2 < x or y2 > y) for j, (x2, y2) in enumerate(points) if j != i)
        if not beaten:
            front.append(i)
    return sorted(front, key=lambda i: points[i])


def _label(r: StageRecord) -> str:
    where = f" {r.target}" if isinstance(r, DeployRecord) else ""
    return f"{r.index}:{r.stage}{where}"


def tradeoffs(stages: Sequence[StageRecord]) -> bytes | None:
    """Accuracy against size and against every measured cost, the Pareto front in red."""
    # A device deploy's size is its flash (a panel below), not its files on disk.
    size = [
        (float(r.bytes or r.dense_bytes), r.accuracy, _label(r))
        for r in stages
        if r.accuracy is not None
        and (r.bytes or r.dense_bytes)
        and not (isinstance(r, DeployRecord) and r.flash_bytes is not None)
    ]
    panels: list[tuple[str, list[tuple[float, float, str]]]] = [("size: bytes on disk (float32 if not saved)", size)]
    deploys = [r for r in stages if isinstance(r, DeployRecord) and r.accuracy is not None]
    for target in dict.fromkeys(r.target for r in deploys if r.latency_ms is not None):
        pts = [(r.latency_ms, r.accuracy, _label(r)) for r in deploys if r.target == target and r.latency_ms]
        panels.append((f"latency ms, measured on {target} (median)", pts))
    cycles = [(float(r.est_cycles), r.accuracy, _label(r)) for r in deploys if r.est_cycles]
    if cycles:
        panels.append(("cycles per inference (an estimate, see memory profile)", cycles))
    flash = [(float(r.flash_bytes), r.accuracy, _label(r)) for r in deploys if r.flash_bytes]
    if flash:
        panels.append(("flash bytes (linked image)", flash))
    panels = [(t, p) for t, p in panels if p]
    if not panels:
        return None
    plt = _plt()
    cols = min(len(panels), 2)
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 3.6 * rows), squeeze=False)
    for ax, (title, pts) in zip(axes.flat, panels, strict=False):
        xs, ys = [p[0] for p in pts], [p[1] for p in pts]
        ax.scatter(xs, ys, color="#4a78b0", zorder=3)
        for x, y, name in pts:
            ax.annotate(name, (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
        front = pareto(list(zip(xs, ys, strict=True)))
        ax.plot([xs[i] for i in front], [ys[i] for i in front], "o-", color="crimson", zorder=4, label="Pareto front")
        if max(xs) > 20 * min(xs) > 0:
            ax.set_xscale("log")
        ax.set(xlabel=title, ylabel="accuracy")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    fig.tight_layout()
    return _png(fig)


def training(train: Sequence[TrainRecord]) -> bytes | None:
    """Loss and accuracy against iteration, one row per training stage."""
    keys = list(dict.fromkeys((r.index, r.stage) for r in train))
    if not keys:
        return None
    plt = _plt()
    fig, axes = plt.subplots(len(keys), 2, figsize=(10, 2.6 * len(keys)), squeeze=False)
    for (ax_loss, ax_acc), key in zip(axes, keys, strict=True):
        rs = [r for r in train if (r.index, r.stage) == key]
        for ax, pair in ((ax_loss, ("train_loss", "test_loss")), (ax_acc, ("train_acc", "test_acc"))):
            for name, style in zip(pair, ("-", "o--"), strict=True):
                pts = [(r.iter, getattr(r, name)) for r in rs if getattr(r, name) is not None]
                if pts:
                    split = "train batches" if name.startswith("train") else "held-out"
                    ax.plot(*zip(*pts, strict=True), style, markersize=3, label=split)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        ax_loss.set(ylabel="loss", title=f"stage {key[0]}: {key[1]}", xlabel="iteration")
        ax_acc.set(ylabel="top-1", title=f"stage {key[0]}: {key[1]}", xlabel="iteration")
    fig.tight_layout()
    return _png(fig)


def per_layer_bars(values: dict[str, float], ylabel: str, title: str) -> bytes | None:
    """One bar per layer, in the order given."""
    if not values:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(5.0, 0.45 * len(values) + 2), 3.2))
    ax.bar(range(len(values)), list(values.values()), color="#4a78b0")
    ax.set_xticks(range(len(values)), list(values), rotation=60, ha="right", fontsize=7)
    ax.set(ylabel=ylabel, title=title)
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    return _png(fig)


def sensitivity(curves: dict[str, list[tuple[float, float]]], baseline: float, chosen: dict[str, float]) -> bytes:
    """Accuracy with one layer pruned against its sparsity; the chosen sparsity marked."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 3.8))
    for name, pts in curves.items():
        (line,) = ax.plot(*zip(*pts, strict=True), "o-", markersize=3, label=name)
        s = chosen.get(name)
        if s:
            acc = dict(pts).get(s)
            if acc is not None:
                ax.plot([s], [acc], "*", markersize=12, color=line.get_color())
    ax.axhline(baseline, color="gray", ls=":", label="unpruned")
    ax.set(xlabel="sparsity of that layer alone", ylabel="accuracy", title="pruning sensitivity (star: chosen)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    return _png(fig)


def memory_timeline(buffers: Sequence[dict[str, Any]], ops: Sequence[str], arena: int) -> bytes | None:
    """Each arena buffer as a box: ops it lives across against its byte range; the op
    where the live bytes peak marked."""
    placed = [b for b in buffers if b.get("offset", -1) >= 0]
    if not placed:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(9, 3.8))
    n_ops = max(len(ops), max(b["last"] for b in placed) + 1)
    live = [sum(b["size"] for b in placed if b["first"] <= i <= b["last"]) for i in range(n_ops)]
    peak = max(range(n_ops), key=live.__getitem__)
    cmap = plt.get_cmap("tab20")
    for k, b in enumerate(placed):
        ax.broken_barh(
            [(b["first"] - 0.4, b["last"] - b["first"] + 0.8)], (b["offset"], b["size"]), color=cmap(k % 20), alpha=0.8
        )
        ax.text(b["first"] - 0.35, b["offset"] + b["size"] / 2, str(b["name"]), fontsize=6, va="center")
    ax.axvline(peak, color="crimson", ls="--", label=f"peak: {live[peak]:,} B live at op {peak}")
    ax.axhline(arena, color="black", lw=1, label=f"arena {arena:,} B")
    ax.set_xticks(range(n_ops), list(ops) if len(ops) == n_ops else range(n_ops), rotation=60, ha="right", fontsize=7)
    ax.set(
        xlabel="op (execution order)", ylabel="arena offset (bytes)", title="memory plan: tensor lifetimes in the arena"
    )
    ax.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    return _png(fig)


def search_progress(
    rewards: Sequence[float], label: str, xlabel: str = "episode", higher_is_better: bool = True
) -> bytes | None:
    """The score of each step (episode, generation) and the best so far."""
    if not rewards:
        return None
    plt = _plt()
    pick = max if higher_is_better else min
    best = [pick(rewards[: i + 1]) for i in range(len(rewards))]
    fig, ax = plt.subplots(figsize=(7, 3.2))
    ax.plot(range(1, len(rewards) + 1), rewards, "o", markersize=3, label=label)
    ax.plot(range(1, len(rewards) + 1), best, "-", color="crimson", label="best so far")
    ax.set(xlabel=xlabel, ylabel=label, title="search progress")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return _png(fig)
