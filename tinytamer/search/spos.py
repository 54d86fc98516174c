"""SPOS: Single Path One-Shot neural architecture search with uniform sampling (Guo et al.,
ECCV 2020, "Single Path One-Shot Neural Architecture Search with Uniform Sampling").

The steps of the paper this module implements:

1. **Supernet training** (Sec. 3.2, Eq. 7): the weights W of every choice are trained
   together, one path per step: each step draws an architecture from the uniform prior
   Gamma(A) (every choice's option uniformly, :meth:`Supernet.sample`) and makes one SGD
   step on a training batch through that path only (:class:`PathSampler`, a Solver hook).
2. **Evolutionary architecture search** (Sec. 3.3, Algorithm 1 of its supplement): a
   population of ``population`` (50) architectures; every generation keeps the ``top_k``
   (10) best evaluated so far, and makes ``mutations`` (25) children by re-drawing each
   choice of a top-k parent with probability ``mutation_prob`` (0.1) and ``crossovers`` (25)
   by taking each choice from one of two top-k parents at random; the rest of the
   population is drawn at random.  A candidate outside the **budget** is rejected before
   it is evaluated (Sec. 3.3: the constraint is checked on each candidate as it is made, so
   every evaluated architecture meets it); none is evaluated twice.
3. **Candidate evaluation**: the candidate's weights are inherited from the supernet (its
   derived network), its BatchNorm statistics are **recomputed** on ``bn_batches``
   training batches (Sec. 3.3: the supernet's statistics are those of the average path,
   not this one), and its accuracy is measured on the validation split.  Every
   evaluation goes through an executor (:mod:`tinytamer.search.executor`: in process, a
   process pool or Ray).
4. The best architecture is **retrained from scratch** (Sec. 4) - done by the caller
   (:func:`reinitialize`, then the caller's training).

The search state (every evaluated architecture and its score, every priced architecture,
the population, the random state) is written after every generation, atomically; a search
started again with the same state file resumes after the last finished generation and
ends with the result an uninterrupted search would have given.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tinytamer.errors import CorruptFileError, TamerError
from tinytamer.fileio import read_json, write_atomic
from tinytamer.search.budget import Budget
from tinytamer.search.space import Arch, Supernet
from tinytamer.train.solver import TrainHook

STATE_FORMAT = "tinytamer-spos-state"
MAX_DRAWS = 100  # candidate draws per wanted candidate before a generation gives up


class SposError(TamerError):
    """A search that cannot run: no architecture in budget, a state file of another search."""


# ----------------------------------------------------------------------------- supernet training


class PathSampler(TrainHook):
    """Step 1: a uniformly drawn path before every update (seeded by the iteration, so a
    training resumed from a snapshot draws the same paths as an uninterrupted one)."""

    def __init__(self, net: Supernet, seed: int) -> None:
        self.net, self.seed = net, seed
        self.draw(0)

    def draw(self, iteration: int) -> None:
        self.net.activate(self.net.sample(random.Random(f"spos:{self.seed}:{iteration}")))

    def after_step(self, model: nn.Module, iteration: int) -> None:
        self.draw(iteration)


# ----------------------------------------------------------------------------- BN recalibration


def recalibrate_bn(model: nn.Module, batches: Iterable[torch.Tensor]) -> nn.Module:
    """Step 3: every BatchNorm's running mean and variance recomputed as the plain average
    over ``batches`` (momentum None), the weights untouched; returns ``model`` in eval mode."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None
    model.train()
    seen = 0
    with torch.no_grad():
        for x in batches:
            model(x)
            seen += 1
    if bns and not seen:
        raise TamerError("BatchNorm recalibration got no batch")
    for bn in bns:
        bn.momentum = 0.1
    return model.eval()


def reinitialize(model: nn.Module, seed: int) -> nn.Module:
    """Step 4: fresh weights (each layer's own initialization) and BN statistics."""
    torch.manual_seed(seed)
    for m in model.modules():
        if hasattr(m, "reset_parameters"):
            m.reset_parameters()
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
    return model


@dataclass
class Scorer:
    """One candidate's evaluation (picklable, for worker processes and Ray): its network
    derived from the supernet, BN recalibrated on ``bn_batches``, top-1 on ``val``."""

    net: Supernet
    bn_batches: list[torch.Tensor]
    val: list[tuple[torch.Tensor, torch.Tensor]]

    def __call__(self, arch: Sequence[int], seed: int = 0) -> float:
        model = recalibrate_bn(self.net.derive(arch), self.bn_batches)
        hits = n = 0
        with torch.no_grad():
            for x, y in self.val:
                hits += int((model(x).argmax(1) == y).sum())
                n += len(y)
        if not n:
            raise TamerError("SPOS: the validation batches are empty")
        return hits / n


# ----------------------------------------------------------------------------- evolution


@dataclass
class Candidate:
    arch: Arch
    accuracy: float
    cost: dict[str, float]
    generation: int


@dataclass
class SposResult:
    best: Candidate
    history: list[list[Candidate]]  # the top-k after each generation
    evaluated: list[Candidate]
    rejected: int  # candidates drawn outside the budget (never evaluated)
    budget: dict[str, float]


@dataclass
class _State:
    generation: int = 0
    evaluated: dict[Arch, tuple[float, int]] = field(default_factory=dict)  # arch -> (accuracy, generation)
    costs: dict[Arch, dict[str, float]] = field(default_factory=dict)
    population: list[Arch] = field(default_factory=list)  # to evaluate in the next generation
    history: list[list[Arch]] = field(default_factory=list)
    rejected: int = 0
    rng: Any = None

    def to_json(self, sizes: tuple[int, ...], budget: Budget, settings: dict[str, Any]) -> str:
        def key(a: Arch) -> str:
            return ",".join(map(str, a))

        version, internal, gauss = self.rng
        return json.dumps(
            {
                "format": STATE_FORMAT,
                "sizes": list(sizes),
                "budget": budget.to_dict(),
                "settings": settings,
                "generation": self.generation,
                "evaluated": {key(a): list(v) for a, v in self.evaluated.items()},
                "costs": {key(a): c for a, c in self.costs.items()},
                "population": [list(a) for a in self.population],
                "history": [[list(a) for a in g] for g in self.history],
                "rejected": self.rejected,
                "rng": [version, list(internal), gauss],
            }
        )

    @classmethod
    def load(cls, path: Path, sizes: tuple[int, ...], budget: Budget, settings: dict[str, Any]) -> _State:
        data = read_json(path, "SPOS search state")
        if not isinstance(data, dict) or data.get("format") != STATE_FORMAT:
            raise CorruptFileError(f"{path} is not a SPOS search state")
        for what, mine in (("sizes", list(sizes)), ("budget", budget.to_dict()), ("settings", settings)):
            if data.get(what) != mine:
                raise SposError(
                    f"{path} holds a search with other {what} ({data.get(what)!r}, not {mine!r}): "
                    "delete it to start afresh"
                )
        try:

            def arch(s: str | list) -> Arch:
                a = tuple(int(v) for v in (s.split(",") if isinstance(s, str) else s))
                if len(a) != len(sizes) or any(not 0 <= v < n for v, n in zip(a, sizes, strict=True)):
                    raise ValueError(f"architecture {a} is not one of this space")
                return a

            version, internal, gauss = data["rng"]
            return cls(
                generation=int(data["generation"]),
                evaluated={arch(k): (float(v[0]), int(v[1])) for k, v in data["evaluated"].items()},
                costs={arch(k): {m: float(x) for m, x in c.items()} for k, c in data["costs"].items()},
                population=[arch(a) for a in data["population"]],
                history=[[arch(a) for a in g] for g in data["history"]],
                rejected=int(data["rejected"]),
                rng=(int(version), tuple(int(v) for v in internal), gauss),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise CorruptFileError(f"{path}: a damaged SPOS search state ({exc})") from None


def evolve(
    net: Supernet,
    score: Callable[[Arch, int], float],
    cost: Callable[[Arch], dict[str, float]],
    budget: Budget,
    *,
    generations: int = 20,
    population: int = 50,
    top_k: int = 10,
    mutations: int = 25,
    crossovers: int = 25,
    mutation_prob: float = 0.1,
    seed: int = 0,
    executor: Any = None,
    state_path: str | Path | None = None,
    on_generation: Callable[[int, list[Candidate]], None] | None = None,
) -> SposResult:
    """Steps 2-3: the evolutionary search under ``budget``.

    ``score(arch, seed)``: a candidate's validation accuracy (e.g. a :class:`Scorer`), run
    through ``executor`` (a :mod:`tinytamer.search.executor` executor; None: a local one in
    this process).  ``cost(arch)``: its predicted cost (e.g. a
    :class:`~tinytamer.search.budget.ArchCost`).  ``state_path``: the search state, written
    after each generation and resumed from when it exists.
    """
    sizes = net.sizes()
    if min(population, top_k, generations) < 1 or mutations < 0 or crossovers < 0:
        raise SposError("SPOS: population, top_k and generations must be >= 1, mutations and crossovers >= 0")
    if not 0 <= mutation_prob <= 1:
        raise SposError(f"SPOS: mutation_prob must be in [0, 1], got {mutation_prob}")
    settings = {
        "population": population,
        "top_k": top_k,
        "mutations": mutations,
        "crossovers": crossovers,
        "mutation_prob": mutation_prob,
        "seed": seed,
    }
    path = Path(state_path) if state_path is not None else None
    if path is not None and path.exists():
        st = _State.load(path, sizes, budget, settings)
    else:
        st = _State(rng=random.Random(seed).getstate())
    rng = random.Random()
    rng.setstate(st.rng)
    own = executor is None
    if own:
        from tinytamer.search.executor import make_executor

        executor = make_executor("local", progress=False)

    def priced(a: Arch) -> dict[str, float]:
        if a not in st.costs:
            st.costs[a] = {k: float(v) for k, v in cost(a).items()}
        return st.costs[a]

    def draw(make: Callable[[], Arch | None], want: int, taken: set[Arch]) -> list[Arch]:
        """Up to ``want`` new in-budget candidates from ``make`` (rejected ones counted)."""
        out: list[Arch] = []
        for _ in range(want * MAX_DRAWS):
            if len(out) >= want:
                break
            a = make()
            if a is None or a in taken or a in st.evaluated:
                continue
            taken.add(a)
            if budget.fits(priced(a)):
                out.append(a)
            else:
                st.rejected += 1
        return out

    def ranked() -> list[Arch]:
        return sorted(st.evaluated, key=lambda a: (-st.evaluated[a][0], st.evaluated[a][1], a))

    def mutate() -> Arch:
        parent = rng.choice(ranked()[:top_k])
        return tuple(
            rng.randrange(n) if rng.random() < mutation_prob else v for v, n in zip(parent, sizes, strict=True)
        )

    def cross() -> Arch | None:
        top = ranked()[:top_k]
        if len(top) < 2:
            return None
        p1, p2 = rng.sample(top, 2)
        return tuple(rng.choice(pair) for pair in zip(p1, p2, strict=True))

    def uniform() -> Arch:
        return net.sample(rng)

    try:
        while st.generation < generations:
            g = st.generation
            if g == 0 and not st.population:
                st.population = draw(uniform, population, set())
                if not st.population:
                    raise SposError(
                        f"SPOS: no architecture of the space meets the budget "
                        f"{budget.to_dict()} in {population * MAX_DRAWS} draws"
                    )
            todo = [a for a in st.population if a not in st.evaluated]
            results = executor.map(score, todo, seed=seed + g, desc=f"SPOS generation {g + 1}/{generations}")
            for a, r in zip(todo, results, strict=True):
                # A candidate whose evaluation failed twice scores 0, the worst, not a crash.
                st.evaluated[a] = (float(r.value) if r.ok else 0.0, g)
            top = ranked()[:top_k]
            st.history.append(top)
            taken: set[Arch] = set()
            nxt = draw(mutate, mutations, taken)
            nxt += draw(cross, crossovers, taken)
            nxt += draw(uniform, population - len(nxt), taken)
            st.population = nxt
            st.generation = g + 1
            st.rng = rng.getstate()
            if path is not None:
                write_atomic(path, st.to_json(sizes, budget, settings) + "\n")
            if on_generation is not None:
                on_generation(g, [_candidate(st, a) for a in top])
    finally:
        if own:
            executor.close()
    ranked_all = ranked()
    return SposResult(
        best=_candidate(st, ranked_all[0]),
        history=[[_candidate(st, a) for a in gen] for gen in st.history],
        evaluated=[_candidate(st, a) for a in ranked_all],
        rejected=st.rejected,
        budget=budget.to_dict(),
    )


def _candidate(st: _State, a: Arch) -> Candidate:
    acc, gen = st.evaluated[a]
    return Candidate(a, acc, st.costs[a], gen)


def random_search(
    net: Supernet,
    score: Callable[[Arch, int], float],
    cost: Callable[[Arch], dict[str, float]],
    budget: Budget,
    n: int,
    *,
    seed: int = 0,
    executor: Any = None,
) -> list[Candidate]:
    """The baseline of the paper's Table 6: ``n`` uniformly drawn in-budget architectures,
    scored like SPOS's candidates; best first."""
    rng = random.Random(f"random:{seed}")
    archs: list[Arch] = []
    costs: dict[Arch, dict[str, float]] = {}
    for _ in range(n * MAX_DRAWS):
        if len(archs) >= n:
            break
        a = net.sample(rng)
        if a in costs:
            continue
        costs[a] = cost(a)
        if budget.fits(costs[a]):
            archs.append(a)
    own = executor is None
    if own:
        from tinytamer.search.executor import make_executor

        executor = make_executor("local", progress=False)
    try:
        results = executor.map(score, archs, seed=seed, desc="random search")
    finally:
        if own:
            executor.close()
    out = [Candidate(a, float(r.value) if r.ok else 0.0, costs[a], 0) for a, r in zip(archs, results, strict=True)]
    return sorted(out, key=lambda c: -c.accuracy)
