"""YellowFin: Zhang & Mitliagkas, "YellowFin and the Art of Momentum Tuning" (SysML 2019,
arXiv:1706.03471), Algorithms 1-4.

Each step measures, over all parameters as one vector:

- Algorithm 2 (CurvatureRange): h_t = ||g_t||^2; h_max/h_min are EMAs of the max/min of
  h over a sliding window of the last ``window`` steps;
- Algorithm 3 (Variance): C = sum(EMA(g*g) - EMA(g)^2);
- Algorithm 4 (Distance): D = EMA(EMA(||g||) / EMA(h));

then Algorithm 1 tunes momentum and learning rate (the "SingleStep" problem):
minimise mu*D^2 + lr^2*C with lr = (1 - sqrt(mu))^2 / h_min.  With x = sqrt(mu)
the optimum solves p*x = (1 - x)^3, p = D^2 h_min^2 / (2C); substituting y = x - 1
gives the depressed cubic y^3 + p*y + p = 0, solved in closed form (Vieta).  Then

    mu_t = max(x^2, ((sqrt(h_max/h_min) - 1) / (sqrt(h_max/h_min) + 1))^2)
    lr_t = (1 - sqrt(mu_t))^2 / h_min

and the used values are smoothed, mu <- beta*mu + (1-beta)*mu_t (same for lr), starting
from the given ``lr`` and ``mu`` as the paper's reference code does.  The measurement
EMAs (beta = 0.999) are zero-debiased (divided by 1 - beta^t).  The update is heavy-ball
momentum, x_{t+1} = x_t - lr*g_t + mu*(x_t - x_{t-1}).  ``lr_factor`` in a param group
scales the tuned lr (for a manual decay schedule).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch.optim import Optimizer


def single_step_sqrt_mu(dist: float, grad_var: float, h_min: float) -> float:
    """x = sqrt(mu) in [0, 1] minimising x^2 D^2 + (1-x)^4 C / h_min^2 (Algorithm 1, SingleStep)."""
    p = dist**2 * h_min**2 / (2.0 * grad_var)
    # w^3 = (-p - sqrt(p^2 + 4p^3/27)) / 2, written to avoid overflowing p^3
    w3 = -p * (1.0 + math.sqrt(1.0 + 4.0 * p / 27.0)) / 2.0
    w = math.copysign(abs(w3) ** (1.0 / 3.0), w3)
    y = w - p / (3.0 * w)
    return min(1.0, max(0.0, y + 1.0))


class YellowFin(Optimizer):
    """Momentum SGD whose learning rate and momentum are tuned every step (see module doc)."""

    def __init__(
        self, params: Any, lr: float = 0.1, mu: float = 0.0, beta: float = 0.999, window: int = 20, eps: float = 1e-12
    ) -> None:
        if not 0.0 < beta < 1.0 or window < 1:
            raise ValueError(f"YellowFin needs 0 < beta < 1 and window >= 1, got {beta}, {window}")
        super().__init__(params, dict(lr_factor=1.0))
        self.beta, self.window, self.eps = beta, window, eps
        # Global (not per-parameter) state; kept in plain python so state_dict stays simple.
        self.tuner: dict[str, Any] = dict(
            t=0,
            lr=lr,
            mu=mu,
            curv=[],
            h_max=0.0,
            h_min=0.0,
            g_norm=0.0,
            h=0.0,
            dist=0.0,
        )
        self.last: dict[str, float] = {}  # the last step's measurements, for logs and tests

    def _ema(self, key: str, value: float) -> float:
        """Update EMA ``key`` with ``value``; return its zero-debiased value."""
        s = self.tuner
        s[key] = self.beta * s[key] + (1 - self.beta) * value
        return s[key] / (1 - self.beta ** s["t"])

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        params = [p for g in self.param_groups for p in g["params"] if p.grad is not None]
        if not params:
            return loss
        s, beta = self.tuner, self.beta
        s["t"] += 1
        debias = 1 - beta ** s["t"]
        # Algorithm 2: curvature range over a sliding window
        h_t = float(sum(p.grad.double().pow(2).sum() for p in params))
        s["curv"] = (s["curv"] + [h_t])[-self.window :]
        h_max = self._ema("h_max", max(s["curv"]))
        h_min = max(self._ema("h_min", min(s["curv"])), self.eps)
        # Algorithm 3: gradient variance
        var = 0.0
        for p in params:
            st = self.state[p]
            if "g_avg" not in st:
                st["g_avg"] = torch.zeros_like(p)
                st["g2_avg"] = torch.zeros_like(p)
                st["velocity"] = torch.zeros_like(p)
            st["g_avg"].mul_(beta).add_(p.grad, alpha=1 - beta)
            st["g2_avg"].mul_(beta).addcmul_(p.grad, p.grad, value=1 - beta)
            var += float((st["g2_avg"] / debias - (st["g_avg"] / debias) ** 2).double().sum())
        grad_var = max(var, self.eps)
        # Algorithm 4: distance to the optimum
        g_norm = self._ema("g_norm", math.sqrt(h_t))
        h_avg = max(self._ema("h", h_t), self.eps)
        dist = self._ema("dist", g_norm / h_avg)
        # Algorithm 1: tune mu and lr, then smooth them
        x = single_step_sqrt_mu(dist, grad_var, h_min)
        ratio = math.sqrt(max(h_max / h_min, 1.0))
        mu_t = max(x**2, ((ratio - 1) / (ratio + 1)) ** 2)
        lr_t = (1 - math.sqrt(mu_t)) ** 2 / h_min
        s["mu"] = beta * s["mu"] + (1 - beta) * mu_t
        s["lr"] = beta * s["lr"] + (1 - beta) * lr_t
        self.last = dict(
            h_max=h_max,
            h_min=h_min,
            grad_var=grad_var,
            dist=dist,
            sqrt_mu=x,
            mu_t=mu_t,
            lr_t=lr_t,
            mu=s["mu"],
            lr=s["lr"],
        )
        for group in self.param_groups:
            lr = s["lr"] * group["lr_factor"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                v = self.state[p]["velocity"]
                v.mul_(s["mu"]).add_(p.grad, alpha=-lr)  # v = mu*(x_t - x_{t-1}) - lr*g
                p.add_(v)
        return loss

    def state_dict(self) -> dict[str, Any]:
        out = super().state_dict()
        out["tuner"] = {k: (list(v) if isinstance(v, list) else v) for k, v in self.tuner.items()}
        return out

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state_dict = dict(state_dict)
        tuner = state_dict.pop("tuner")
        super().load_state_dict(state_dict)
        self.tuner = {k: (list(v) if isinstance(v, list) else v) for k, v in tuner.items()}
