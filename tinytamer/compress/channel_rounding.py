"""Target-aware channel counts: the kept channels of each layer chosen by latency measured
on the deployment target, not by a rule such as "multiples of 8".

How fast a convolution runs at a given output-channel count depends on the runtime's
kernels and the CPU's vector width: a count one below a multiple of the kernel's block can
cost as much as the next block, and which block is best differs between runtimes and CPUs
(multiples of 16 helped on one CPU and not on another).  So, the way HAQ asks the hardware
instead of a proxy (Wang et al., "HAQ: Hardware-Aware Automated Quantization with Mixed
Precision", CVPR 2019, Sec. 3.2: direct feedback from the hardware, a latency measured on
it, in place of FLOPs or model size), this module measures:

1. For every layer channel pruning may thin (conv / linear, depthwise and the output layer
   excepted), the count the requested ratio keeps, ``k`` (:func:`channel.kept_channels`
   without rounding).
2. Candidates at or below ``k`` (the requested ratio is a floor on what is removed): ``k``
   itself and ``k`` rounded down to multiples of 2, 4, 8, 16 and 32, none below
   ``(1 - slack) * k``.  With ``headroom`` > 0 also ``k`` rounded *up* to those multiples,
   none above ``(1 + headroom) * k`` nor the layer's channels: a runtime whose kernels work
   in blocks of 16 channels may run 16 faster than 12, and a count the runtime likes can
   then cost less time than the one asked for (the ratio is no longer a floor).
3. Each candidate is timed on the target as a single-layer model (the layer with that many
   output channels, its input at the shape it has in the model, with its input channels
   thinned by the same ratio unless it reads the model input), at the deployment's
   precision, threads and batch.  Times are kept in a table on disk, keyed by the layer's
   shape (:func:`layer_key`, the fields of the search cost tables' keys), one table per
   target, precision, threads, batch and CPU, so a shape is measured once.
4. Layers whose output channels are coupled (a residual add: Torch-Pruning's dependency
   graph, which prunes them as one group) keep one count: the candidate whose times summed
   over the group's layers are least.  Otherwise, per layer, the fastest candidate.  Either
   way a candidate within ``tie`` of the fastest with more channels is preferred (the same
   speed, more capacity).
5. Optionally (:func:`refine_whole_model`), the choice is checked on *whole models*: a
   single-layer model does not see what the whole model pays between layers (ONNX
   Runtime's blocked layouts insert reorders where a count is not a multiple of its
   block).  One sweep of coordinate descent: for each layer or coupled group in model
   order, the whole pruned model is timed with that unit at each of its candidate counts,
   the others at their current choice, and the fastest (``tie`` as above) is kept.

The chosen counts become a per-layer ratio for :func:`channel.prune_channels`.
"""

from __future__ import annotations

import copy
import json
import math
import os
import re
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch_pruning as tp
from torch import Tensor, nn

from tinytamer.compress.channel import _PRUNABLE, channel_counts, kept_channels, output_layer, prune_channels
from tinytamer.compress.selector import Selector
from tinytamer.compress.selector import select as select_layers
from tinytamer.errors import CompressError, CorruptFileError, ModelError
from tinytamer.fileio import read_json, write_atomic

FORMAT = "tinytamer-channel-latency"
# Version 2: times are the fastest run (version 1 held medians, which a 0.2 ms model's
# bimodal run times moved by 20% between measurements of the same counts).
VERSION = 2
MULTIPLES = (2, 4, 8, 16, 32)

# ``timer(module, x) -> ms``: the latency of one single-layer model on input ``x``.
Timer = Callable[[nn.Module, Tensor], float]


def cache_root() -> Path:
    """Where latency tables live: ``$TINYTAMER_CACHE/channels`` or ``~/.cache/tinytamer/channels``."""
    root = os.environ.get("TINYTAMER_CACHE") or Path.home() / ".cache" / "tinytamer"
    return Path(root) / "channels"


def table_name(target: str, precision: str, threads: int, batch: int, cpu: str) -> str:
    """One table per target, precision, threads, batch, CPU model and table version (an
    older version's cached table is left as it is, not read)."""
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", cpu).strip("_")[:60] or "cpu"
    return f"{target}-{precision}-t{threads}-b{batch}-{slug}-v{VERSION}.json"


@dataclass
class LatencyTable:
    """Measured single-layer latencies (ms) by layer key, for one target setting on one CPU."""

    target: str
    precision: str
    threads: int
    batch: int
    host: dict[str, Any]
    entries: dict[str, float] = field(default_factory=dict)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, json.dumps({"format": FORMAT, "version": VERSION, **asdict(self)}, indent=1) + "\n")
        return path

    @classmethod
    def open(cls, path: str | Path, target: str, precision: str, threads: int, batch: int) -> LatencyTable:
        """The table at ``path`` (checked to be this setting's), or a new one when there is none."""
        from tinytamer.targets.base import host_description

        setting = {"target": target, "precision": precision, "threads": threads, "batch": batch}
        if not Path(path).exists():
            return cls(**setting, host=host_description())
        data = read_json(path, "channel latency table")
        if isinstance(data, dict) and data.get("format") == FORMAT and data.get("version") == 1:
            raise CompressError(
                f"channel latency table {path} holds median times (version 1); this version compares "
                "fastest runs: delete it, or give another path, and it is measured again"
            )
        if not isinstance(data, dict) or data.get("format") != FORMAT or data.get("version") != VERSION:
            raise CorruptFileError(f"{path} is not a tinytamer channel latency table (version {VERSION})")
        have = {k: data.get(k) for k in setting}
        if have != setting:
            raise CompressError(f"channel latency table {path} was measured for {have}, not {setting}")
        entries = data.get("entries")
        if not isinstance(entries, dict) or not all(
            isinstance(v, int | float) and math.isfinite(v) and v > 0 for v in entries.values()
        ):
            raise CorruptFileError(f"channel latency table {path}: 'entries' must map keys to positive ms")
        return cls(**setting, host=data.get("host") or {}, entries=dict(entries))


@dataclass
class LayerChoice:
    """One layer's channels: as it was, as the ratio asked, as chosen, the times (ms)
    measured for each candidate count, and the layers coupled to it (chosen together)."""

    channels: int
    requested: int
    chosen: int
    latency_ms: dict[int, float]
    group: list[str] = field(default_factory=list)


@dataclass
class WholeModelStep:
    """One step of :func:`refine_whole_model`: the layers set together, the whole model's
    latency (ms) with them at each candidate count (the other layers as then chosen), and
    the count kept."""

    layers: list[str]
    latency_ms: dict[int, float]
    chosen: int


@dataclass
class ChannelPlan:
    """The kept channels chosen per layer, the table their times came from, and the
    whole-model steps that refined them (empty when not refined)."""

    layers: dict[str, LayerChoice]
    table: str
    measured_now: int
    whole_model: list[WholeModelStep] = field(default_factory=list)

    def ratios(self) -> dict[str, float]:
        """Per-layer pruning ratios that keep exactly the chosen counts (prune_channels with
        ``round_to=None``; the half channel absorbs float rounding)."""
        return {n: (c.channels - c.chosen + 0.5) / c.channels for n, c in self.layers.items() if c.chosen < c.channels}

    def to_dict(self) -> dict[str, Any]:
        return {
            "table": self.table,
            "measured_now": self.measured_now,
            "layers": {n: asdict(c) for n, c in self.layers.items()},
            "whole_model": [asdict(s) for s in self.whole_model],
        }


def layer_key(layer: nn.Module, in_shape: Sequence[int], out_shape: Sequence[int], precision: str) -> str:
    """``conv2d|in=16x32x32|out=8x32x32|k=3x3|s=1x1|p=1x1|g=1|bits=int8``: one sample's shapes
    (CHW) and the layer's geometry, as the search cost tables key a layer."""

    def dims(v: Sequence[int]) -> str:
        return "x".join(str(int(d)) for d in v)

    fields = [type(layer).__name__.lower(), f"in={dims(in_shape)}", f"out={dims(out_shape)}"]
    if not isinstance(layer, nn.Linear):
        fields += [f"k={dims(layer.kernel_size)}", f"s={dims(layer.stride)}", f"p={dims(layer.padding)}", "g=1"]
    return "|".join([*fields, f"bits={precision}"])


def candidates(requested: int, slack: float, headroom: float = 0.0, channels: int | None = None) -> list[int]:
    """Counts to time: ``requested`` and its round-downs to :data:`MULTIPLES`, none below
    ``(1 - slack) * requested`` (and never below one); with ``headroom`` > 0 also its
    round-ups, none above ``(1 + headroom) * requested`` nor ``channels``."""
    floor = max(1, math.ceil((1.0 - slack) * requested))
    counts = {requested} | {requested - requested % m for m in MULTIPLES}
    if headroom > 0:
        ceiling = math.floor((1.0 + headroom) * requested)
        if channels is not None:
            ceiling = min(ceiling, channels)
        counts |= {c for c in (-(-requested // m) * m for m in MULTIPLES) if c <= ceiling}
    return sorted((c for c in counts if c >= floor), reverse=True)


def _single_layer(layer: nn.Module, in_channels: int, out_channels: int) -> nn.Module:
    """``layer`` rebuilt with other channel counts (random weights: timing does not depend on them)."""
    if isinstance(layer, nn.Linear):
        return nn.Linear(in_channels, out_channels, bias=layer.bias is not None)
    conv = type(layer)(
        in_channels,
        out_channels,
        layer.kernel_size,
        stride=layer.stride,
        padding=layer.padding,
        dilation=layer.dilation,
        groups=1,
        bias=layer.bias is not None,
    )
    return nn.Sequential(conv, nn.ReLU())  # conv + activation: what runtimes fuse and run


def _layer_inputs(model: nn.Module, example: Tensor, names: set[str]) -> dict[str, tuple[Tensor, bool]]:
    """The input each named layer receives on ``example`` (one sample), and whether it is
    the model's own input (whose channels no pruning removes)."""
    x = example[:1].clone()
    seen: dict[str, tuple[Tensor, bool]] = {}
    modules = dict(model.named_modules())

    def keep(name: str) -> Callable[..., None]:
        def hook(_module: nn.Module, inp: tuple[Tensor, ...], _out: Tensor) -> None:
            seen.setdefault(name, (inp[0].detach(), inp[0] is x))

        return hook

    hooks = [modules[n].register_forward_hook(keep(n)) for n in names]
    try:
        with torch.no_grad():
            model.eval()(x)
    finally:
        for h in hooks:
            h.remove()
    return seen


def plan_channels(
    model: nn.Module,
    example: Tensor,
    timer: Timer,
    table: LatencyTable,
    *,
    ratio: float,
    select: Selector | dict | None = None,
    ignore: Sequence[str] | None = None,
    slack: float = 0.25,
    headroom: float = 0.0,
    tie: float = 0.02,
    table_path: str | Path | None = None,
    progress: bool = False,
) -> ChannelPlan:
    """Choose each prunable layer's kept channels by measured latency (module docstring;
    ``slack`` and ``headroom``: how far below and above the requested count candidates go).

    ``timer`` times one single-layer model (:func:`target_timer` builds one for a target);
    times already in ``table`` are reused and new ones added (and saved to ``table_path``
    after each measurement, so an interrupted plan keeps them).
    """
    from rich.progress import Progress

    if not 0.0 <= ratio < 1.0:
        raise CompressError(f"channel_prune: ratio must be in [0, 1), got {ratio}")
    if not 0.0 <= slack < 1.0:
        raise CompressError(f"channel_prune: rounding slack must be in [0, 1), got {slack}")
    if not 0.0 <= headroom <= 1.0:
        raise CompressError(f"channel_prune: rounding headroom must be in [0, 1], got {headroom}")
    model = copy.deepcopy(model).eval()
    ignore = [output_layer(model, example)] if ignore is None else list(ignore)
    layers = {
        n: m
        for n, m in select_layers(model, select)
        if isinstance(m, _PRUNABLE) and n not in ignore and getattr(m, "groups", 1) == 1
    }
    if not layers:
        raise CompressError("channel_prune: no conv / linear layer to choose channel counts for")
    inputs = _layer_inputs(model, example, set(layers))
    jobs: list[tuple[str, int, str, nn.Module, Tensor]] = []
    plan: dict[str, LayerChoice] = {}
    for name, layer in layers.items():
        if name not in inputs:
            continue  # not run by forward: nothing to time
        x, model_input = inputs[name]
        n = layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels
        c_in = x.shape[1]
        # The input's channels are thinned by the same ratio, unless they are the model's input.
        if not model_input:
            c_in = kept_channels(c_in, ratio, None)
        shape = (table.batch, c_in, *x.shape[2:])
        requested = kept_channels(n, ratio, None)
        plan[name] = LayerChoice(n, requested, requested, {})
        for count in candidates(requested, slack, headroom, n):
            single = _single_layer(layer, c_in, count)
            xs = torch.randn(shape, generator=torch.Generator().manual_seed(0))
            with torch.no_grad():
                out = single(xs)
            key = layer_key(layer, shape[1:], out.shape[1:], table.precision)
            jobs.append((name, count, key, single, xs))
    todo = {key: (single, xs) for _n, _c, key, single, xs in jobs if key not in table.entries}
    with Progress(disable=not progress) as bar:
        task = bar.add_task(f"timing channel counts on {table.target} {table.precision}", total=len(todo))
        for key, (single, xs) in todo.items():
            ms = float(timer(single.eval(), xs))
            if not math.isfinite(ms) or ms <= 0:
                raise CompressError(f"channel_prune: timing '{key}' on {table.target} gave {ms} ms")
            table.entries[key] = ms
            if table_path is not None:
                table.save(table_path)
            bar.advance(task)
    for name, count, key, _s, _x in jobs:
        plan[name].latency_ms[count] = table.entries[key]
    grouped: set[str] = set()
    for group in coupled_layers(model, example, ignore):
        members = [n for n in group if n in plan]
        if len(members) < 2 or len({plan[n].requested for n in members}) > 1:
            continue
        chosen = _fastest({c: sum(plan[n].latency_ms[c] for n in members) for c in plan[members[0]].latency_ms}, tie)
        for n in members:
            plan[n].chosen, plan[n].group = chosen, members
        grouped.update(members)
    for name, choice in plan.items():
        if name not in grouped:
            choice.chosen = _fastest(choice.latency_ms, tie)
    return ChannelPlan(plan, str(table_path) if table_path is not None else "", len(todo))


def refine_whole_model(
    model: nn.Module,
    example: Tensor,
    plan: ChannelPlan,
    timer: Timer,
    *,
    batch: int = 1,
    tie: float = 0.02,
    select: Selector | dict | None = None,
    ignore: Sequence[str] | None = None,
    progress: bool = False,
) -> ChannelPlan:
    """Step 5 of the module docstring: ``plan``'s counts checked on whole pruned models
    (``timer`` times one whole model on a ``batch``-sample input; for a trained model, a
    :func:`target_timer` given real ``calib`` samples), one sweep over the
    layers and coupled groups; returns a new plan with the counts kept and the steps.
    ``select`` and ``ignore`` as the plan and the final pruning take them, so that the
    models timed are the ones that pruning will make."""
    from rich.progress import Progress

    units: list[list[str]] = []
    for name, choice in plan.layers.items():
        unit = [n for n in choice.group if n in plan.layers] or [name]
        if unit not in units:
            units.append(unit)
    chosen = {n: c.chosen for n, c in plan.layers.items()}
    x = torch.randn((batch, *example.shape[1:]), generator=torch.Generator().manual_seed(0))
    seen: dict[tuple[tuple[str, int], ...], float] = {}

    def with_counts(counts: dict[str, int], steps: list[WholeModelStep]) -> ChannelPlan:
        layers = {n: LayerChoice(**{**asdict(c), "chosen": counts[n]}) for n, c in plan.layers.items()}
        return ChannelPlan(layers, plan.table, plan.measured_now, steps)

    def time_counts(counts: dict[str, int]) -> float:
        key = tuple(sorted(counts.items()))
        if key not in seen:
            pruned = prune_channels(
                model, example[:1], ratio=with_counts(counts, []).ratios(), round_to=None, select=select, ignore=ignore
            )
            have = channel_counts(pruned)
            wrong = {n: (have.get(n), k) for n, k in counts.items() if have.get(n) != k}
            if wrong:
                raise CompressError(f"channel_prune: pruning kept other counts than planned (have, planned): {wrong}")
            ms = float(timer(pruned.eval(), x))
            if not math.isfinite(ms) or ms <= 0:
                raise CompressError(f"channel_prune: timing the whole model at {counts} gave {ms} ms")
            seen[key] = ms
        return seen[key]

    steps: list[WholeModelStep] = []
    with Progress(disable=not progress) as bar:
        task = bar.add_task("timing whole pruned models", total=len(units))
        for unit in units:
            counts = sorted(plan.layers[unit[0]].latency_ms, reverse=True)
            times = {k: time_counts({**chosen, **dict.fromkeys(unit, k)}) for k in counts}
            best = _fastest(times, tie)
            chosen.update(dict.fromkeys(unit, best))
            steps.append(WholeModelStep(unit, times, best))
            bar.advance(task)
    return with_counts(chosen, steps)


def _fastest(latency_ms: dict[int, float], tie: float) -> int:
    """The most channels among the counts within ``tie`` of the fastest."""
    best = min(latency_ms.values())
    return max(c for c, ms in latency_ms.items() if ms <= best * (1.0 + tie))


def coupled_layers(model: nn.Module, example: Tensor, ignore: Sequence[str]) -> list[list[str]]:
    """Names of the conv / linear layers whose output channels Torch-Pruning's dependency
    graph prunes together, one list per group (a layer alone is a group of one)."""
    names = {m: n for n, m in model.named_modules()}
    modules = dict(model.named_modules())
    try:
        graph = tp.DependencyGraph().build_dependency(model, example_inputs=example[:1])
        groups = graph.get_all_groups(ignored_layers=[modules[n] for n in ignore], root_module_types=_PRUNABLE)
        return [
            list(
                dict.fromkeys(
                    names[dep.target.module]
                    for dep, _idxs in g
                    if isinstance(dep.target.module, _PRUNABLE) and graph.is_out_channel_pruning_fn(dep.handler)
                )
            )
            for g in groups
        ]
    except Exception as exc:  # the tracer fails in many untyped ways
        raise ModelError(
            "channel_prune: Torch-Pruning cannot follow this model's channel dependencies "
            f"({type(exc).__name__}: {exc})"
        ) from exc


def target_timer(
    target: str,
    precision: str,
    threads: int,
    batch: int,
    *,
    repeats: int = 30,
    options: dict[str, Any] | None = None,
    calib: Sequence[Any] | None = None,
) -> Timer:
    """A :data:`Timer` that deploys each model it is given to ``target`` and returns its
    fastest latency (ms) of ``repeats`` timed runs, measured in this process: interference
    only ever slows a run, and on a 0.2 ms model the median of 20-30 runs lands on either of
    two modes (measured: medians of 0.135-0.196 ms for the same counts, their 10th percentiles
    within 1%).

    ``calib``: samples of the timed models' input (batches as the targets take them) to
    calibrate int8 on and to check parity on.  By default random normal samples of the
    timed input's shape, which suits single-layer models; a trained *whole* model
    (:func:`refine_whole_model`) needs real samples, or its near-tied logits on noise
    fail int8 parity and no time comes back."""
    from tinytamer.targets import get_target
    from tinytamer.targets.base import unavailable_reason

    tgt = get_target(target)
    why = unavailable_reason(tgt)
    if why is not None:
        raise CompressError(f"channel_prune: rounding target '{target}' cannot run here: {why}")
    if precision not in tgt.precisions:
        raise CompressError(
            f"channel_prune: target '{target}' runs {', '.join(tgt.precisions)}, not rounding precision '{precision}'"
        )
    extra = dict(options or {})
    if getattr(tgt, "takes_quantizer", False):
        from tinytamer.compress.int8 import quantize_ptq

        extra["quantize"] = lambda m, batches, method: quantize_ptq(m, batches, method=method)

    def timer(module: nn.Module, x: Tensor) -> float:
        samples = (
            list(calib)
            if calib
            else [torch.randn((8, *x.shape[1:]), generator=torch.Generator().manual_seed(i)) for i in range(2)]
        )
        with tempfile.TemporaryDirectory(prefix="tamer-channels-") as tmp:
            deployed = tgt.compile(module, [x[:1]], tmp, precision=precision, calib=samples, threads=threads, **extra)
            cost = deployed.measure(batch=batch, threads=threads, repeats=repeats, warmup=5, isolate=False)
        return float(cost.latency_ms_min)

    return timer


def measure_plans(
    model: nn.Module,
    example: Tensor,
    target: str,
    precision: str,
    threads: int,
    batch: int,
    *,
    ratio: float,
    repeats: int = 30,
    slack: float = 0.25,
    headroom: float = 0.0,
    tie: float = 0.02,
    select: Selector | dict | None = None,
    ignore: Sequence[str] | None = None,
    whole_model: bool = True,
    calib: Sequence[Any] | None = None,
    table_path: str | Path | None = None,
    progress: bool = False,
) -> tuple[ChannelPlan, ChannelPlan | None, Path]:
    """Steps 1-5 on a real target: the single-layer plan (times from the table at
    ``table_path``, default the cache's for this target, precision, threads, batch and
    CPU), the plan checked on whole models when ``whole_model`` (else None; ``calib``: real
    samples for the whole models, see :func:`target_timer`), and the table's path."""
    from tinytamer.targets.base import host_description

    path = (
        Path(table_path)
        if table_path
        else cache_root() / table_name(target, precision, threads, batch, host_description()["cpu"])
    )
    table = LatencyTable.open(path, target, precision, threads, batch)
    timer = target_timer(target, precision, threads, batch, repeats=repeats)
    plan = plan_channels(
        model,
        example,
        timer,
        table,
        ratio=ratio,
        select=select,
        ignore=ignore,
        slack=slack,
        headroom=headroom,
        tie=tie,
        table_path=path,
        progress=progress,
    )
    if not whole_model:
        return plan, None, path
    model_timer = target_timer(target, precision, threads, batch, repeats=repeats, calib=calib)
    whole = refine_whole_model(
        model, example, plan, model_timer, batch=batch, tie=tie, select=select, ignore=ignore, progress=progress
    )
    return plan, whole, path
