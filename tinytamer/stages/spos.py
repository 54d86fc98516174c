"""Stage ``spos``: SPOS (Guo et al., ECCV 2020) finds a network of a search space within a
budget measured on a target, retrains it from scratch and measures it there.

::

    stages:
      - spos:
          space: shufflenet            # or mbconv (tinytamer.search.spaces)
          target: cortex-m4
          budget: {cycles: 4.0e6, sram: 65536, flash: 262144}
          supernet: {max_iter: 3000, base_lr: 0.05, lr_policy: poly}
          generations: 20              # population 50, top-k 10, 25 mutations, 25 crossovers
          retrain: {max_iter: 3000, base_lr: 0.05, lr_policy: poly}
      - deploy: {target: cortex-m4}

The stage's input model is not used: the stage returns the network it found (a plain
``nn.Module``).  Candidates are scored on the validation split (never the test split); the
cost table is built in the stage folder unless ``cost_table`` names one; the search state
(``search.json``) and the supernet's snapshots make an interrupted stage resume.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import Field
from torch import nn

from tinytamer.fileio import write_atomic
from tinytamer.recipe import Context, register_stage
from tinytamer.records import SposRecord
from tinytamer.search import spos
from tinytamer.search.executor import make_executor
from tinytamer.stages._search import SearchParams, finish, open_space, solver_config


class SposParams(SearchParams):
    generations: int = Field(20, ge=1, description="generations of the evolutionary search")
    population: int = Field(50, ge=1, description="architectures per generation")
    top_k: int = Field(10, ge=1, description="parents kept")
    mutations: int = Field(25, ge=0, description="children by mutation per generation")
    crossovers: int = Field(25, ge=0, description="children by crossover per generation")
    mutation_prob: float = Field(0.1, ge=0, le=1, description="probability of re-drawing each choice")
    bn_batches: int = Field(10, ge=1, description="training batches that recompute BN statistics per candidate")
    val_batches: int | None = Field(None, ge=1, description="validation batches per candidate (default: all)")
    executor: Literal["local", "ray"] = Field("local", description="where candidate evaluations run")
    address: str | None = Field(None, description="ray: the cluster to join")
    workers: int = Field(0, ge=0, description="local: worker processes (0: in process); ray: CPUs (0: all)")
    random_baseline: bool = Field(
        False, description="also score as many uniformly drawn in-budget architectures (the paper's random search)"
    )


@register_stage("spos", SposParams, help="SPOS architecture search under a target budget, Guo et al. 2020")
def spos_stage(model: nn.Module, ctx: Context, p: SposParams) -> nn.Module:
    net, budget, costs, table_name = open_space(ctx, p)
    # No held-out figure for the supernet: its shared BN statistics mix every path, so its plain
    # forward scores near chance; each candidate is scored after its own BN recalibration.
    ctx.finetune(
        net, solver_config(p.supernet), hooks=[spos.PathSampler(net, ctx.seed)], name="supernet", monitor=False
    )
    bn = [x for x, _ in _first(ctx.train_loader(), p.bn_batches)]
    val = _first(ctx.val_loader(), p.val_batches)
    scorer = spos.Scorer(net.eval(), bn, val)
    with make_executor(p.executor, address=p.address, workers=p.workers, progress=ctx.progress) as ex:
        result = spos.evolve(
            net,
            scorer,
            costs,
            budget,
            generations=p.generations,
            population=p.population,
            top_k=p.top_k,
            mutations=p.mutations,
            crossovers=p.crossovers,
            mutation_prob=p.mutation_prob,
            seed=ctx.seed,
            executor=ex,
            state_path=ctx.stage_dir / "search.json",
        )
        rand = (
            spos.random_search(net, scorer, costs, budget, len(result.evaluated), seed=ctx.seed, executor=ex)
            if p.random_baseline
            else []
        )
    history = ctx.stage_dir / "history.json"
    write_atomic(
        history,
        json.dumps(
            {
                "top_k_per_generation": [[_row(c) for c in gen] for gen in result.history],
                "evaluated": [_row(c) for c in result.evaluated],
                "rejected": result.rejected,
                "random": [_row(c) for c in rand],
            }
        )
        + "\n",
    )
    found, fields = finish(ctx, p, net, result.best.arch, costs)
    ctx.log(
        ctx.record(
            SposRecord,
            found,
            **fields,
            cost_table=table_name,
            val_accuracy_search=result.best.accuracy,
            history=str(history.relative_to(ctx.rundir.path)),
            generations=p.generations,
            evaluated=len(result.evaluated),
            rejected=result.rejected,
            **({"random_val_accuracy": rand[0].accuracy, "random_arch_indices": list(rand[0].arch)} if rand else {}),
        )
    )
    return found


def _first(loader: Any, n: int | None) -> list[Any]:
    out = []
    for batch in loader:
        if n is not None and len(out) >= n:
            break
        out.append((batch[0], batch[1]))
    return out


def _row(c: spos.Candidate) -> dict[str, Any]:
    return {"arch": list(c.arch), "accuracy": c.accuracy, "cost": c.cost, "generation": c.generation}
