"""What an architecture of a search space costs on a target, and the budget it must meet.

The figures come from part one's cost model (:mod:`tinytamer.search.cost`): a lookup table
measured on the target and ``predict``; nothing here is a hardware number.

- :class:`Budget` - limits on the table's metrics, written ``cycles=2e6,sram=64000,flash=...``
  (``cycles`` is the estimated cycles under the table's memory profile, ``sram`` / ``flash``
  bytes, ``instructions``, ``latency`` milliseconds on host targets).
- :class:`ArchCost` - the predicted cost of an architecture (its derived network quantized
  and priced from the table; cached per architecture), and :meth:`ArchCost.per_choice`,
  each option's own share (the layers that option puts in its block), the F(op) of
  ProxylessNAS's expected latency.  :meth:`ArchCost.cover` first measures the few
  architectures that put every option of every choice on the target once, so that every
  later prediction is a table lookup.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tinytamer.errors import TamerError
from tinytamer.search import cost
from tinytamer.search.space import Arch, OpChoice, Residual, Supernet, Zero

ALIASES = {
    "cycles": "est_cycles",
    "sram": "sram_bytes",
    "flash": "flash_bytes",
    "instructions": "instructions",
    "latency": "latency_ms",
}


class BudgetError(TamerError):
    """A budget that cannot be read or used."""


@dataclass(frozen=True)
class Budget:
    """Upper limits on cost metrics (table metric names: ``est_cycles``, ``sram_bytes`` ...)."""

    limits: Mapping[str, float]

    @classmethod
    def parse(cls, text: str | Mapping[str, float]) -> Budget:
        """``cycles=2e6,sram=64000`` (or a mapping of the same names) as a Budget."""
        items = text.items() if isinstance(text, Mapping) else _pairs(str(text))
        limits: dict[str, float] = {}
        for key, value in items:
            metric = ALIASES.get(str(key).strip(), str(key).strip())
            if metric not in ALIASES.values():
                raise BudgetError(f"budget: unknown resource '{key}'; use {', '.join(ALIASES)}")
            try:
                v = float(value)
            except (TypeError, ValueError):
                raise BudgetError(f"budget: '{key}' must be a number, got '{value}'") from None
            if not math.isfinite(v) or v <= 0:
                raise BudgetError(f"budget: '{key}' must be a positive number, got {value}")
            limits[metric] = v
        if not limits:
            raise BudgetError("budget: give at least one limit, e.g. cycles=2e6,sram=65536")
        return cls(limits)

    def check(self, metrics: tuple[str, ...], target: str) -> None:
        """BudgetError when the target's table does not measure a limited metric."""
        for m in self.limits:
            if m not in metrics:
                raise BudgetError(f"budget: '{m}' is not measured on {target} (its table has {', '.join(metrics)})")

    def violations(self, cost_: Mapping[str, float]) -> list[str]:
        """The limits ``cost_`` exceeds, as ``metric value > limit``."""
        return [f"{m} {cost_[m]:g} > {v:g}" for m, v in self.limits.items() if cost_[m] > v]

    def fits(self, cost_: Mapping[str, float]) -> bool:
        return not self.violations(cost_)

    def to_dict(self) -> dict[str, float]:
        return dict(self.limits)


def _pairs(text: str) -> list[tuple[str, str]]:
    out = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = part.partition("=")
        if not sep:
            raise BudgetError(f"budget: expected KEY=VALUE, got '{part}' (e.g. cycles=2e6,sram=65536)")
        out.append((key, value))
    return out


def cover_archs(net: Supernet) -> list[Arch]:
    """Architectures that together use every option of every choice (option j everywhere)."""
    sizes = net.sizes()
    return [tuple(min(j, n - 1) for n in sizes) for j in range(max(sizes))]


@dataclass
class ArchCost:
    """Predicted costs of a space's architectures on ``target`` from the table at ``table``."""

    net: Supernet
    target: str
    table: str | Path
    example: torch.Tensor
    progress: Callable[[str], None] | None = None
    memory_profile: str | None = None
    _preds: dict[Arch, cost.Prediction] = field(default_factory=dict, repr=False)
    _table: cost.CostTable | None = field(default=None, repr=False)

    def open(self) -> cost.CostTable:
        """The table (created if absent; micro cycles under the board's memory profile by default)."""
        if self._table is None:
            profile = self.memory_profile
            if self.target in cost.MICRO_TARGETS:
                from tinytamer.micro.profiles import BOARD, get_profile

                profile = get_profile(profile or BOARD[self.target], self.target).name
            self._table = cost.CostTable.open(self.table, self.target, profile)
        return self._table

    def __call__(self, arch: Arch) -> dict[str, float]:
        return dict(self.predict(arch).total)

    def predict(self, arch: Arch) -> cost.Prediction:
        """The prediction for ``arch`` (made once: later table entries do not move it)."""
        arch = tuple(arch)
        if arch not in self._preds:
            self._preds[arch] = self._predict(arch)
        return self._preds[arch]

    def _predict(self, arch: Arch) -> cost.Prediction:
        # The supernet's path is the caller's: derive from a copy of the choices' state.
        saved = [c.active for _, c in self.net.choices()]
        try:
            model = self.net.derive(arch).eval()
        finally:
            self.net.activate(saved)
        name = "arch-" + "-".join(map(str, arch))
        table = self.open()
        pred = cost.predict(model, self.target, table, example=self.example, name=name)
        if pred.fresh or not Path(self.table).exists():
            table.save(self.table)
        return pred

    def metrics(self) -> tuple[str, ...]:
        return self.open().metrics

    def cover(self) -> None:
        """Measure the covering architectures on the target (those not in the table yet)."""
        for arch in cover_archs(self.net):
            self(arch)
            if self.progress is not None:
                self.progress("arch " + ",".join(map(str, arch)))

    def per_choice(self, metric: str) -> list[list[float]]:
        """[choice][option]: the ``metric`` of the layers that option adds to its block
        (a zero op: 0).  Layers outside every choice (stem, head, overhead) are the same for
        every architecture and are :meth:`fixed`."""
        out = [[0.0] * n for n in self.net.sizes()]
        for arch in cover_archs(self.net):
            pred = self.predict(arch)
            for c, (name, choice) in enumerate(self.net.choices()):
                if not isinstance(choice, OpChoice):
                    raise BudgetError(f"per-option costs are for op choices; '{name}' is a {type(choice).__name__}")
                if isinstance(choice.candidates[arch[c]], Zero):
                    continue
                prefix = _block_prefix(self.net, name)
                out[c][arch[c]] = sum(la.metrics[metric] for la in pred.layers if _in_block(la.name, prefix))
        return out

    def floors(self) -> dict[str, tuple[float, str]]:
        """Lower bounds on what *every* architecture of the space is predicted to cost from
        the table as it stands, where it proves one without measuring more:
        {metric: (bound, what sets it)}.

        - ``est_cycles`` and ``instructions`` (micro targets), in a space of op choices only:
          the fixed layers plus each choice's cheapest option, each layer with its share of
          the per-layer overhead: the exact minimum, as such a prediction is a sum over
          layers and options of different choices do not interact.  Flash (kernel code is
          shared) and host latency (a fitted line) are not sums, and get no floor.
        - ``sram_bytes`` (micro targets): the int8 input and output of some convolution that
          every architecture runs (see :func:`tensor_floor`), plus the table's stack.
        """
        metrics = self.metrics()
        out: dict[str, tuple[float, str]] = {}
        if all(isinstance(c, OpChoice) for _, c in self.net.choices()):
            first = self.predict(cover_archs(self.net)[0])
            for m in ("est_cycles", "instructions"):
                if m in metrics:
                    per_layer = first.overhead[m] / len(first.layers)
                    options = [
                        [share + per_layer * n for share, n in zip(shares, counts, strict=True)]
                        for shares, counts in zip(self.per_choice(m), self._option_layers(), strict=True)
                    ]
                    fixed = first.total[m] - sum(options[c][a] for c, a in enumerate(cover_archs(self.net)[0]))
                    out[m] = (fixed + sum(min(o) for o in options), "every choice at its cheapest option")
        if "sram_bytes" in metrics:
            stack = self.predict(cover_archs(self.net)[0]).overhead["sram_bytes"]
            tensors, why = tensor_floor(self.net, self.example)
            out["sram_bytes"] = (tensors + stack, f"{why}, plus {stack:g} B of stack")
        return out

    def _option_layers(self) -> list[list[int]]:
        """[choice][option]: how many table layers the option puts in its block."""
        out = [[0] * n for n in self.net.sizes()]
        for arch in cover_archs(self.net):
            names = [la.name for la in self.predict(arch).layers]
            for c, (name, _) in enumerate(self.net.choices()):
                prefix = _block_prefix(self.net, name)
                out[c][arch[c]] = sum(_in_block(n, prefix) for n in names)
        return out

    def infeasible(self, budget: Budget) -> list[str]:
        """The budget's limits that no architecture of the space can meet (empty: maybe all)."""
        floors = self.floors()
        return [
            f"{m} >= {floors[m][0]:g} > limit {v:g} ({floors[m][1]})"
            for m, v in budget.limits.items()
            if m in floors and floors[m][0] > v
        ]

    def fixed(self, metric: str) -> float:
        """The ``metric`` every architecture pays whatever its choices (first cover arch's
        total minus its choices' shares)."""
        arch = cover_archs(self.net)[0]
        shares = self.per_choice(metric)
        return self(arch)[metric] - sum(shares[c][a] for c, a in enumerate(arch))


def tensor_floor(net: Supernet, example: torch.Tensor) -> tuple[int, str]:
    """A lower bound on the int8 tensor bytes (arena, input and output) of every
    architecture of ``net``, and the layer that sets it.

    The micro planner never places a convolution's output over its own input, so each
    convolution holds both at once: input plus output bytes (only the input for a pointwise
    stride-1 convolution that keeps the shape: a fused residual add may write its output
    over its input).  Width choices only add channels, so every one is taken at its narrowest; each
    op choice contributes its best option's largest such layer (a zero option, nothing).
    The bound is the largest over layers outside every op choice and over op choices.
    """
    choices = net.choices()
    ops = [(i, name) for i, (name, c) in enumerate(choices) if isinstance(c, OpChoice)]
    narrow = [min(range(len(c.options)), key=c.options.__getitem__) for _, c in choices]
    per_op: dict[int, list[tuple[int, str]]] = {i: [] for i, _ in ops}
    fixed: tuple[int, str] = (0, "")
    for j in range(max((len(choices[i][1].options) for i, _ in ops), default=1)):
        arch = list(narrow)
        for i, _ in ops:
            arch[i] = min(j, len(choices[i][1].options) - 1)
        layers = _conv_tensor_bytes(net, tuple(arch), example)
        for i, name in ops:
            prefix = _block_prefix(net, name)
            mine = [la for la in layers if _in_block(la[1], prefix)]
            per_op[i].append(max(mine, default=(0, f"'{name}' option {choices[i][1].options[arch[i]]}")))
        outside = [la for la in layers if not any(_in_block(la[1], _block_prefix(net, n)) for _, n in ops)]
        fixed = max([fixed, *outside])
    best = max([fixed, *(min(options) for options in per_op.values())])
    return best[0], f"layer '{best[1]}' holds {best[0]:,} B of int8 tensors in every architecture"


def _conv_tensor_bytes(net: Supernet, arch: Arch, example: torch.Tensor) -> list[tuple[int, str]]:
    """(int8 bytes a convolution holds at once, its name) of each convolution of ``arch``."""
    saved = [c.active for _, c in net.choices()]
    try:
        model = net.derive(arch).eval()
    finally:
        net.activate(saved)
    found: list[tuple[int, str]] = []

    def hook(name: str, conv: nn.Conv2d) -> Callable[..., None]:
        def record(_m: nn.Module, args: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
            n_in, n_out = args[0][:1].numel(), out[:1].numel()
            # Only y = conv(x) + x (pointwise, stride 1, same shape) may overwrite its input.
            in_place = conv.kernel_size == (1, 1) and conv.stride == (1, 1) and n_in == n_out
            found.append((n_in if in_place else n_in + n_out, name))

        return record

    handles = [m.register_forward_hook(hook(n, m)) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    try:
        with torch.no_grad():
            model(example[:1])
    finally:
        for h in handles:
            h.remove()
    return found


def _block_prefix(net: Supernet, name: str) -> str:
    # A Residual around the choice keeps the residual add's layers on the block's path.
    parent = name.rsplit(".", 1)[0] if "." in name else ""
    mod = net.body.get_submodule(parent) if parent else None
    return parent if isinstance(mod, Residual) else name


def _in_block(layer: str, prefix: str) -> bool:
    return layer == prefix or layer.startswith(prefix + ".")


# What a deployment measures, by the cost-table metric it corresponds to (host latency: the
# fastest run, as the table's single-op timings are).
_MEASURED = {
    "instructions": "instructions",
    "est_cycles": "est_cycles",
    "flash_bytes": "flash_bytes",
    "sram_bytes": "sram_bytes",
    "latency_ms": "latency_ms_min",
}


def measure(
    model: nn.Module,
    target: str,
    workdir: str | Path,
    *,
    example: torch.Tensor,
    calib: Sequence[torch.Tensor],
    memory_profile: str | None = None,
) -> dict[str, float]:
    """The network deployed on ``target`` (int8 on the micro devices, fp32 on host targets)
    and measured there: the metrics of its cost table, as the target reports them."""
    from tinytamer.deploy import deploy

    micro = target in cost.MICRO_TARGETS
    opts: dict[str, Any] = {"memory_profile": memory_profile} if micro and memory_profile else {}
    _, report = deploy(
        model.eval(),
        target,
        workdir,
        example_input=example[:1],
        precision="int8" if micro else "fp32",
        calib=list(calib),
        threads=1,
        repeats=1 if micro else 50,
        warmup=0 if micro else 5,
        isolate=False,
        **opts,
    )
    got = report.cost or {}
    return {m: float(got[k]) for m, k in _MEASURED.items() if got.get(k) is not None}
