"""Optimizers by name, with Caffe's SGD update and Caffe's regularisation.

Caffe's SGD (``SGDSolver::ComputeUpdateValue``) keeps the *step* in its history,
``v <- momentum*v + lr*g; w <- w - v``, while ``torch.optim.SGD`` keeps the gradient,
``v <- momentum*v + g; w <- w - lr*v``.  They agree while lr is constant and differ
when it changes (Caffe's old momentum keeps the old lr), so ``CaffeSGD`` implements
Caffe's form.  Regularisation is applied to the gradient before any update rule, as
Caffe's ``ApplyUpdate`` does (clip, normalise, regularise, update), so every
optimizer here is built with weight decay 0.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn
from torch.optim import Optimizer

from tinytamer.train.config import SolverConfig
from tinytamer.train.lookahead import Lookahead
from tinytamer.train.yellowfin import YellowFin


class CaffeSGD(Optimizer):
    """Caffe's momentum SGD: ``v = momentum*v + lr*grad; w -= v``."""

    def __init__(self, params: Any, lr: float = 0.01, momentum: float = 0.9) -> None:
        if lr < 0 or not 0.0 <= momentum < 1.0:
            raise ValueError(f"CaffeSGD needs lr >= 0 and 0 <= momentum < 1, got {lr}, {momentum}")
        super().__init__(params, dict(lr=lr, momentum=momentum))

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if "history" not in state:
                    state["history"] = torch.zeros_like(p)
                v = state["history"]
                v.mul_(group["momentum"]).add_(p.grad, alpha=group["lr"])
                p.sub_(v)
        return loss


@torch.no_grad()
def regularize(params: Iterable[nn.Parameter], weight_decay: float, kind: str = "L2") -> None:
    """Caffe's ``Regularize``: grad += wd*w (L2) or grad += wd*sign(w) (L1)."""
    if weight_decay == 0:
        return
    for p in params:
        if p.grad is None:
            continue
        p.grad.add_(p if kind == "L2" else torch.sign(p), alpha=weight_decay)


def build_optimizer(params: Iterable[nn.Parameter], cfg: SolverConfig) -> Optimizer:
    """The optimizer ``cfg.optimizer`` names, with Caffe's momentum/momentum2/delta meanings."""
    params = list(params)
    betas = (cfg.momentum, cfg.momentum2)
    if cfg.optimizer == "sgd":
        return CaffeSGD(params, lr=cfg.base_lr, momentum=cfg.momentum)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.base_lr, betas=betas, eps=cfg.delta)
    if cfg.optimizer == "radam":
        return torch.optim.RAdam(params, lr=cfg.base_lr, betas=betas, eps=cfg.delta)
    if cfg.optimizer == "ranger":
        inner = torch.optim.RAdam(params, lr=cfg.base_lr, betas=betas, eps=cfg.delta)
        return Lookahead(inner, k=cfg.lookahead_k, alpha=cfg.lookahead_alpha)
    return YellowFin(params, lr=cfg.base_lr)
