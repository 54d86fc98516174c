"""Lookahead: Zhang, Lucas, Hinton, Ba, "Lookahead Optimizer: k steps forward, 1 step back"
(NeurIPS 2019), Algorithm 1.

The inner ("fast") optimizer takes ``k`` steps; then the slow weights move part of
the way towards the fast ones, ``phi <- phi + alpha * (theta - phi)``, and the
fast weights restart from them, ``theta <- phi``.  The fast optimizer's state
(moments) is kept across the sync, as in the paper's reference code.
Ranger is ``Lookahead(torch.optim.RAdam(...))``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.optim import Optimizer


class Lookahead(Optimizer):
    """Wraps ``base``; shares its param groups so lr schedulers (SWALR) act on the inner one."""

    def __init__(self, base: Optimizer, k: int = 6, alpha: float = 0.5) -> None:
        if k < 1 or not 0.0 < alpha <= 1.0:
            raise ValueError(f"Lookahead needs k >= 1 and 0 < alpha <= 1, got k={k} alpha={alpha}")
        params = [p for g in base.param_groups for p in g["params"]]
        super().__init__(params, dict(base.defaults))
        self.base = base
        self.param_groups = base.param_groups  # one set of groups: setting lr sets the inner lr
        self.k = k
        self.alpha = alpha
        self.fast_steps = 0
        self.slow = [p.detach().clone() for p in params]

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> Any:
        loss = self.base.step(closure)
        self.fast_steps += 1
        if self.fast_steps % self.k == 0:
            params = [p for g in self.param_groups for p in g["params"]]
            for p, slow in zip(params, self.slow, strict=True):
                slow.add_(p - slow, alpha=self.alpha)
                p.copy_(slow)
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.base.zero_grad(set_to_none)

    def state_dict(self) -> dict[str, Any]:
        return {"base": self.base.state_dict(), "slow": [s.clone() for s in self.slow], "fast_steps": self.fast_steps}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.base.load_state_dict(state_dict["base"])
        self.param_groups = self.base.param_groups
        if len(state_dict["slow"]) != len(self.slow):
            raise ValueError("Lookahead state has a different number of parameters")
        for s, saved in zip(self.slow, state_dict["slow"], strict=True):
            s.copy_(saved)
        self.fast_steps = int(state_dict["fast_steps"])
