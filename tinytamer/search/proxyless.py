"""ProxylessNAS: direct neural architecture search on the target task and hardware (Cai et al.,
ICLR 2019, "ProxylessNAS: Direct Neural Architecture Search on Target Task and Hardware").

The steps of the paper this module implements, on a :class:`~tinytamer.search.space.Supernet`
whose choices are :class:`~tinytamer.search.space.OpChoice` mixed edges:

1. **Architecture parameters** (Sec. 3.1): one real-valued alpha per candidate of each
   mixed edge; p = softmax(alpha) are the path probabilities (alpha starts at 0: uniform).
2. **Binarized paths** (Sec. 3.1, Eq. 3): the gates g are one-hot, so one path is active.
   A **weight step** samples one path per edge from p and makes an SGD step on a training
   batch through it.
3. **Architecture step** (Sec. 3.2, Eq. 4 and "two paths"): on a validation batch, two paths
   per edge are sampled from p (multinomially, without replacement), one of them made
   active by their renormalized probabilities; the edge's output is ``sum_j g_j o_j`` so
   autograd gives dL/dg_j, and the BinaryConnect gradient
   ``dL/dalpha_i = sum_j dL/dg_j p_j (delta_ij - p_i)`` (p over the two) updates their
   alphas (Adam); the two updated alphas are then shifted by a common offset so that the
   sum of their exp is unchanged, which keeps the probability of every path not sampled
   (:func:`binary_alpha_grad`, :func:`rescale`).  The **REINFORCE** variant (Sec. 3.2,
   Eq. 5) is an option: one path per edge, reward ``accuracy x (T / LAT(a))^beta`` on the
   validation batch, a moving-average baseline, and the score-function gradient.
4. **Latency in the loss** (Sec. 3.3, Eq. 6-7): E[LAT] = sum over edges of sum_i p_i F(op_i)
   plus what every architecture pays, F from the cost table measured on the target
   (:meth:`~tinytamer.search.budget.ArchCost.per_choice`); the loss is either
   ``CE x a (log E[LAT] / log T)^b`` (``mul``, a = 0.2, b = 0.3) or
   ``CE + lambda (E[LAT] - T) / T`` (``add``, lambda = 0.1), T the latency target.  Both
   keep rewarding latency below T, so the search may settle well under it.  ``hinge`` (our
   option, not the paper's) is ``CE + lambda max(E[LAT] - T, 0) / T``: the hard-constraint
   form of MnasNet's reward (Tan et al., CVPR 2019, Eq. 2 with alpha = 0, beta = -1), which
   leaves the architecture to the cross-entropy below the target and pushes back above it.
5. **Derive** the most likely path (argmax alpha per edge); the caller retrains it.  The
   loss steers only the latency entry, so :func:`derive_within` makes the step budget-aware
   (our addition, not the paper's): the derived path is the most probable one (largest sum
   of log p over the edges) whose cost predicted from the table fits *every* budget entry
   (SRAM and flash included), searched among the ``width`` most probable paths
   (:data:`BEAM_WIDTH` by default).  When the argmax path fits it is the one derived, as in
   the paper.

The search state (weights, alphas, both optimizers, the step, the REINFORCE baseline) is
saved every ``checkpoint_every`` steps and at the end; a search started again with the same
file resumes from it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from tinytamer.errors import CorruptFileError, TamerError
from tinytamer.fileio import atomic_path
from tinytamer.search.budget import Budget
from tinytamer.search.space import Arch, OpChoice, Supernet

LossForm = Literal["mul", "add", "hinge"]
Gradient = Literal["binary", "reinforce"]


class ProxylessError(TamerError):
    """A space or setting ProxylessNAS cannot search."""


def binary_alpha_grad(gate_grad: Tensor, probs: Tensor) -> Tensor:
    """dL/dalpha_i = sum_j dL/dg_j p_j (delta_ij - p_i), over the sampled paths (Eq. 4)."""
    jac = torch.diag(probs) - probs[:, None] * probs[None, :]  # dp_j/dalpha_i, symmetric
    return jac @ gate_grad


def rescale(alpha: Tensor, idx: Sequence[int], old: Tensor) -> None:
    """Shift ``alpha[idx]`` so that sum exp over them equals that of ``old`` (their values
    before the update): the paths not sampled keep their probability."""
    new = alpha[list(idx)]
    offset = torch.logsumexp(new, 0) - torch.logsumexp(old, 0)
    alpha[list(idx)] = new - offset


def expected_latency(alphas: Sequence[Tensor], table: Sequence[Sequence[float]], fixed: float) -> Tensor:
    """E[LAT] = fixed + sum over edges of sum_i softmax(alpha)_i F(op_i) (Eq. 6), differentiable."""
    total = torch.tensor(float(fixed))
    for a, f in zip(alphas, table, strict=True):
        total = total + (F.softmax(a, 0) * torch.tensor(f, dtype=a.dtype)).sum()
    return total


def latency_loss(ce: Tensor, lat: Tensor, target: float, form: LossForm, *, a=0.2, b=0.3, lam=0.1) -> Tensor:
    """The two published forms (Eq. 7 and the released code's ``mul#log`` / ``add#linear``),
    and ``hinge``, which charges only latency above the target (see the module docstring)."""
    if form == "mul":
        return ce * a * (torch.log(lat) / math.log(target)) ** b
    if form == "add":
        return ce + lam * (lat - target) / target
    if form == "hinge":
        return ce + lam * torch.clamp(lat - target, min=0) / target
    raise ProxylessError(f"proxylessnas: unknown loss form '{form}' (mul, add or hinge)")


@dataclass
class ProxylessResult:
    arch: Arch
    alphas: list[list[float]]
    probs: list[list[float]]
    expected_latency: float
    history: list[dict[str, float]] = field(default_factory=list)


BEAM_WIDTH = 32  # paths priced by derive_within: each costs one prediction from the table


def top_paths(logp: Sequence[Sequence[float]], width: int) -> list[tuple[float, Arch]]:
    """The ``width`` most probable paths, most probable first, as (sum of log p, path).

    A beam over the edges keeping the ``width`` best prefixes.  It is exact: the edges'
    log-probabilities add independently, so a prefix of one of the ``width`` best paths is
    one of the ``width`` best prefixes.  Ties go to the lower option index, as argmax does.
    """
    if width < 1:
        raise ProxylessError(f"proxylessnas: the beam width must be at least 1, got {width}")
    beam: list[tuple[float, Arch]] = [(0.0, ())]
    for edge in logp:
        grown = [(score + float(lp), (*path, i)) for score, path in beam for i, lp in enumerate(edge)]
        beam = sorted(grown, key=lambda c: (-c[0], c[1]))[:width]
    return beam


@dataclass
class Derived:
    """The derived path, the argmax path, and why the argmax path was replaced (its
    predicted budget violations, empty when it fits and is the one derived)."""

    arch: Arch
    argmax: Arch
    argmax_violations: list[str]
    priced: int


def derive_within(
    alphas: Sequence[Sequence[float]],
    cost: Callable[[Arch], Mapping[str, float]],
    budget: Budget,
    *,
    width: int = BEAM_WIDTH,
) -> Derived:
    """The most probable path whose predicted ``cost`` fits every entry of ``budget``,
    among the ``width`` most probable (:func:`top_paths`); ProxylessError naming each
    entry and the smallest predicted value found when none of them fits."""
    logp = [F.log_softmax(torch.as_tensor(a, dtype=torch.float64), 0).tolist() for a in alphas]
    paths = [path for _, path in top_paths(logp, width)]
    argmax = paths[0]
    smallest: dict[str, float] = {}
    first: list[str] = []
    for n, path in enumerate(paths, 1):
        got = cost(path)
        missing = [m for m in budget.limits if m not in got]
        if missing:
            raise ProxylessError(f"proxylessnas: the cost model does not predict {', '.join(missing)}")
        over = budget.violations(got)
        if n == 1:
            first = over
        if not over:
            return Derived(path, argmax, first, n)
        for m in budget.limits:
            smallest[m] = min(smallest.get(m, math.inf), float(got[m]))
    worst = [
        f"{m} smallest predicted {smallest[m]:g} > limit {v:g}" for m, v in budget.limits.items() if smallest[m] > v
    ]
    why = (
        "; ".join(worst)
        or "no one of them meets all entries at once (smallest predicted: "
        + ", ".join(f"{m} {smallest[m]:g} <= {v:g}" for m, v in budget.limits.items())
        + ")"
    )
    raise ProxylessError(
        f"proxylessnas: none of the {len(paths)} most probable architectures fits the budget "
        f"{budget.to_dict()}: {why} (raise the limit, or widen the beam)"
    )


def _cycle(loader: Iterable[Any]) -> Iterator[Any]:
    while True:
        empty = True
        for batch in loader:
            empty = False
            yield batch
        if empty:
            raise ProxylessError("proxylessnas: a data loader is empty")


class Proxyless:
    """The search state and its steps (see the module docstring)."""

    def __init__(
        self,
        net: Supernet,
        latency: Sequence[Sequence[float]],
        fixed: float,
        target: float,
        *,
        loss: LossForm = "mul",
        gradient: Gradient = "binary",
        lr: float = 0.05,
        momentum: float = 0.9,
        weight_decay: float = 4e-5,
        arch_lr: float = 6e-3,
        alpha: float = 0.2,
        beta: float = 0.3,
        lam: float = 0.1,
        seed: int = 0,
    ) -> None:
        self.net, self.target, self.fixed, self.loss, self.gradient = net, float(target), float(fixed), loss, gradient
        self.edges = [c for _, c in net.choices()]
        if not all(isinstance(c, OpChoice) for c in self.edges):
            raise ProxylessError("proxylessnas searches op choices only (a space without width choices)")
        if [len(f) for f in latency] != [len(c.options) for c in self.edges]:
            raise ProxylessError("proxylessnas: the latency table does not match the space's choices")
        if target <= 0 or (loss == "mul" and target <= 1):
            raise ProxylessError(f"proxylessnas: the latency target must be > 1, got {target}")
        if gradient not in ("binary", "reinforce"):
            raise ProxylessError(f"proxylessnas: unknown gradient '{gradient}' (binary or reinforce)")
        self.latency = [list(map(float, f)) for f in latency]
        self.coef = {"a": alpha, "b": beta, "lam": lam}
        self.alphas = [torch.zeros(len(c.options), requires_grad=True) for c in self.edges]
        self.opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=momentum, nesterov=True, weight_decay=weight_decay)
        # The released code's architecture optimizer: Adam with beta1 = 0.
        self.arch_opt = torch.optim.Adam(self.alphas, lr=arch_lr, betas=(0.0, 0.999), eps=1e-8)
        self.step = 0
        self.baseline: float | None = None
        self.rng = torch.Generator().manual_seed(seed)

    # ------------------------------------------------------------------ paths
    def probs(self) -> list[Tensor]:
        return [F.softmax(a.detach(), 0) for a in self.alphas]

    def sample(self) -> Arch:
        """One path per edge from p (the weight step's binarized gates)."""
        return tuple(int(torch.multinomial(p, 1, generator=self.rng)) for p in self.probs())

    def derive(self) -> Arch:
        """The most likely path: argmax alpha per edge."""
        return tuple(int(torch.argmax(a.detach())) for a in self.alphas)

    def expected(self) -> Tensor:
        return expected_latency(self.alphas, self.latency, self.fixed)

    # ------------------------------------------------------------------ steps
    def weight_step(self, x: Tensor, y: Tensor) -> float:
        self.net.train()
        for c in self.edges:
            c.mix = None
        self.net.activate(self.sample())
        loss = F.cross_entropy(self.net(x), y)
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        return float(loss.detach())

    def arch_step(self, x: Tensor, y: Tensor) -> float:
        """One architecture update on a validation batch; returns the loss."""
        self.net.train()  # batch statistics, as in the weight steps
        if self.gradient == "reinforce":
            return self._reinforce(x, y)
        picks, gates, olds = [], [], []
        for c, a, p in zip(self.edges, self.alphas, self.probs(), strict=True):
            two = torch.multinomial(p, min(2, len(p)), replacement=False, generator=self.rng).tolist()
            on = int(torch.multinomial(F.softmax(a.detach()[two], 0), 1, generator=self.rng))
            g = torch.zeros(len(two))
            g[on] = 1.0
            g.requires_grad_(True)
            c.mix = list(zip(two, g, strict=True))
            picks.append(two)
            gates.append(g)
            olds.append(a.detach()[two].clone())
        try:
            ce = F.cross_entropy(self.net(x), y)
            loss = latency_loss(ce, self.expected(), self.target, self.loss, **self.coef)
            self.arch_opt.zero_grad()
            self.opt.zero_grad()
            loss.backward()  # alphas get the latency term; gates dL/dg
        finally:
            for c in self.edges:
                c.mix = None
        with torch.no_grad():
            for a, two, g in zip(self.alphas, picks, gates, strict=True):
                sub = F.softmax(a[two], 0)
                a.grad[two] += binary_alpha_grad(g.grad, sub)
        self.arch_opt.step()
        with torch.no_grad():
            for a, two, old in zip(self.alphas, picks, olds, strict=True):
                rescale(a, two, old)
        self.opt.zero_grad()
        return float(loss.detach())

    def _reinforce(self, x: Tensor, y: Tensor, decay: float = 0.99) -> float:
        arch = self.sample()
        self.net.activate(arch)
        with torch.no_grad():
            acc = float((self.net(x).argmax(1) == y).float().mean())
        lat = self.fixed + sum(f[i] for f, i in zip(self.latency, arch, strict=True))
        reward = acc * (self.target / lat) ** self.coef["b"]
        self.baseline = reward if self.baseline is None else decay * self.baseline + (1 - decay) * reward
        logp = sum(F.log_softmax(a, 0)[i] for a, i in zip(self.alphas, arch, strict=True))
        loss = -(reward - self.baseline) * logp
        self.arch_opt.zero_grad()
        loss.backward()
        self.arch_opt.step()
        return float(loss.detach())

    # ------------------------------------------------------------------ state
    def state(self) -> dict[str, Any]:
        return {
            "net": self.net.state_dict(),
            "alphas": [a.detach().clone() for a in self.alphas],
            "opt": self.opt.state_dict(),
            "arch_opt": self.arch_opt.state_dict(),
            "step": self.step,
            "baseline": self.baseline,
            "rng": self.rng.get_state(),
        }

    def save(self, path: Path) -> None:
        with atomic_path(path) as tmp:
            torch.save(self.state(), tmp)

    def load(self, path: Path) -> None:
        try:
            st = torch.load(path, weights_only=True)  # tensors and plain values only: no code runs
            self.net.load_state_dict(st["net"])
            if len(st["alphas"]) != len(self.alphas):
                raise ValueError("another space")
            for a, v in zip(self.alphas, st["alphas"], strict=True):
                if v.shape != a.shape:
                    raise ValueError("another space")
                a.data.copy_(v)
            self.opt.load_state_dict(st["opt"])
            self.arch_opt.load_state_dict(st["arch_opt"])
            self.step, self.baseline = int(st["step"]), st["baseline"]
            self.rng.set_state(st["rng"])
        except Exception as exc:
            raise CorruptFileError(f"{path}: not a proxylessnas state of this search ({exc})") from None


def search(
    state: Proxyless,
    train: Iterable[Any],
    val: Iterable[Any],
    *,
    iters: int,
    warmup: int = 0,
    arch_every: int = 1,
    checkpoint: str | Path | None = None,
    checkpoint_every: int = 100,
    on_step: Callable[[int, dict[str, float]], None] | None = None,
) -> ProxylessResult:
    """``iters`` weight steps (the first ``warmup`` with the architecture frozen), an
    architecture step after every ``arch_every``-th; resumes from ``checkpoint`` if it exists."""
    path = Path(checkpoint) if checkpoint is not None else None
    if path is not None and path.exists():
        state.load(path)
    # The loaders restart where an uninterrupted run's would be: batches are skipped, not replayed.
    tr, va = _cycle(train), _cycle(val)
    for _ in range(state.step):
        next(tr)
    for _ in range(sum(1 for s in range(1, state.step + 1) if s > warmup and s % arch_every == 0)):
        next(va)
    history: list[dict[str, float]] = []
    while state.step < iters:
        x, y = next(tr)[:2]
        rec = {"weight_loss": state.weight_step(x, y)}
        state.step += 1
        if state.step > warmup and state.step % arch_every == 0:
            xv, yv = next(va)[:2]
            rec["arch_loss"] = state.arch_step(xv, yv)
            rec["expected_latency"] = float(state.expected().detach())
        history.append(rec)
        if on_step is not None:
            on_step(state.step, rec)
        if path is not None and (state.step % checkpoint_every == 0 or state.step == iters):
            state.save(path)
    return ProxylessResult(
        state.derive(),
        [a.detach().tolist() for a in state.alphas],
        [p.tolist() for p in state.probs()],
        float(state.expected().detach()),
        history,
    )
