"""Stage ``proxylessnas``: ProxylessNAS (Cai et al., ICLR 2019) learns architecture parameters
with binarized paths and the expected latency on the target in the loss, derives the most
likely path, retrains it from scratch and measures it on the target.

::

    stages:
      - proxylessnas:
          space: mbconv
          target: cortex-m4
          budget: {cycles: 4.0e6}       # the latency target T of the loss (and a limit)
          loss: mul                     # CE x 0.2 (log E[LAT] / log T)^0.3; add: CE + 0.1 (E[LAT] - T) / T
                                        # hinge (not the paper's): CE + 0.1 max(E[LAT] - T, 0) / T
          iters: 3000
          retrain: {max_iter: 3000, base_lr: 0.05, lr_policy: poly}
      - deploy: {target: cortex-m4}

F(op) in E[LAT] is each candidate's share of ``metric`` from the cost table measured on the
target (:meth:`tinytamer.search.budget.ArchCost.per_choice`).  Only that metric steers the
loss (as in the paper); the whole budget is enforced when the path is derived: the network
is the most probable path whose *predicted* cost fits every entry (SRAM and flash included),
among the ``beam_width`` most probable (:func:`tinytamer.search.proxyless.derive_within`).
When the argmax path is over budget the record says so (``argmax_arch_indices``,
``argmax_violations``), and when no path in the beam fits the stage fails naming the entry.
The retrained network is then measured on the target; a measured violation is recorded
(``within_budget``, ``violations``) and printed as a warning.  The stage's input model is
not used.
``search.pt`` (weights, alphas, optimizers, step) makes an interrupted stage resume.
"""

from __future__ import annotations

import json
from typing import Literal

from pydantic import Field
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from torch import nn

from tinytamer.deploy import console_echo
from tinytamer.errors import RecipeError
from tinytamer.fileio import write_atomic
from tinytamer.recipe import Context, register_stage
from tinytamer.records import ProxylessRecord
from tinytamer.search import proxyless
from tinytamer.stages._search import SearchParams, finish, open_space


class ProxylessParams(SearchParams):
    space: Literal["shufflenet", "mbconv"] = Field("mbconv", description="mbconv (the paper's space) or shufflenet")
    metric: str | None = Field(
        None, description="the budget entry that is the loss's latency target (default: cycles, else latency)"
    )
    loss: Literal["mul", "add", "hinge"] = Field(
        "mul",
        description="mul: CE x alpha (log E[LAT] / log T)^beta; add: CE + lambda (E[LAT] - T) / T; "
        "hinge (not the paper's: MnasNet's hard constraint): CE + lambda max(E[LAT] - T, 0) / T",
    )
    alpha: float = Field(0.2, gt=0, description="mul: the scale alpha")
    beta: float = Field(0.3, gt=0, description="mul: the exponent beta")
    lam: float = Field(0.1, ge=0, description="add, hinge: lambda")
    gradient: Literal["binary", "reinforce"] = Field(
        "binary", description="architecture gradient: BinaryConnect with two sampled paths, or REINFORCE"
    )
    iters: int = Field(2000, ge=1, description="weight steps of the search")
    warmup: int = Field(200, ge=0, description="first weight steps with the architecture frozen")
    arch_every: int = Field(1, ge=1, description="an architecture step after every N weight steps")
    lr: float = Field(0.05, gt=0, description="weight learning rate (SGD, Nesterov momentum 0.9)")
    arch_lr: float = Field(6e-3, gt=0, description="architecture learning rate (Adam, betas 0 and 0.999)")
    checkpoint_every: int = Field(100, ge=1, description="save the search state every N steps")
    beam_width: int = Field(
        proxyless.BEAM_WIDTH,
        ge=1,
        description="derive: the most probable paths searched for one whose predicted cost fits the budget",
    )


@register_stage("proxylessnas", ProxylessParams, help="ProxylessNAS search with the target's latency, Cai et al. 2019")
def proxylessnas_stage(model: nn.Module, ctx: Context, p: ProxylessParams) -> nn.Module:
    net, budget, costs, table_name = open_space(ctx, p)
    metric = p.metric or next((m for m in ("est_cycles", "latency_ms") if m in budget.limits), None)
    if metric is None or metric not in budget.limits:
        raise RecipeError(
            f"proxylessnas: the budget {budget.to_dict()} has no latency entry to be the loss's target "
            "(give cycles= or latency=, or set metric)"
        )
    with Progress(disable=not ctx.progress) as bar:
        task = bar.add_task("per-op costs", total=None)
        table, fixed = costs.per_choice(metric), costs.fixed(metric)
        bar.update(task, completed=1, total=1)
    state = proxyless.Proxyless(
        net,
        table,
        fixed,
        budget.limits[metric],
        loss=p.loss,
        gradient=p.gradient,
        lr=p.lr,
        arch_lr=p.arch_lr,
        alpha=p.alpha,
        beta=p.beta,
        lam=p.lam,
        seed=ctx.seed,
    )
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn()]
    with Progress(*columns, disable=not ctx.progress) as bar:
        task = bar.add_task("proxylessnas", total=p.iters)
        result = proxyless.search(
            state,
            ctx.train_loader(),
            ctx.val_loader(),
            iters=p.iters,
            warmup=p.warmup,
            arch_every=p.arch_every,
            checkpoint=ctx.stage_dir / "search.pt",
            checkpoint_every=p.checkpoint_every,
            on_step=lambda step, _rec: bar.update(task, completed=step),
        )
    history = ctx.stage_dir / "history.json"
    write_atomic(
        history,
        json.dumps(
            {
                "alphas": result.alphas,
                "probs": result.probs,
                "choices": [n for n, _ in net.choices()],
                "per_op": table,
                "fixed": fixed,
                "steps": result.history,
            }
        )
        + "\n",
    )
    derived = proxyless.derive_within(result.alphas, costs, budget, width=p.beam_width)
    if derived.argmax_violations:
        console_echo(
            f"proxylessnas: the most likely path {list(derived.argmax)} is over budget on predicted cost "
            f"({'; '.join(derived.argmax_violations)}); derived {list(derived.arch)}, the most likely one that fits"
        )
    found, fields = finish(ctx, p, net, derived.arch, costs)
    if fields["violations"]:
        console_echo(
            f"WARNING proxylessnas: the retrained network is over budget on {p.target} as measured: "
            f"{'; '.join(fields['violations'])}"
        )
    ctx.log(
        ctx.record(
            ProxylessRecord,
            found,
            **fields,
            cost_table=table_name,
            history=str(history.relative_to(ctx.rundir.path)),
            loss=p.loss,
            metric=metric,
            latency_target=budget.limits[metric],
            expected_latency=result.expected_latency,
            gradient=p.gradient,
            argmax_arch_indices=list(derived.argmax),
            argmax_violations=derived.argmax_violations,
        )
    )
    return found
