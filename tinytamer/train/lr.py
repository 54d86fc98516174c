"""Caffe's learning-rate policies.

The formulas are those of ``SGDSolver::GetLearningRate`` in Caffe's
src/caffe/solvers/sgd_solver.cpp.

``it`` is the 0-based iteration about to be taken, as in Caffe.
"""

from __future__ import annotations

import bisect
import math

from tinytamer.errors import RecipeError
from tinytamer.train.config import SolverConfig


def learning_rate(cfg: SolverConfig, it: int) -> float:
    """The learning rate Caffe uses for update number ``it`` (0-based).

    - fixed:     base_lr
    - step:      base_lr * gamma ^ floor(it / stepsize)
    - exp:       base_lr * gamma ^ it
    - inv:       base_lr * (1 + gamma * it) ^ (-power)
    - multistep: base_lr * gamma ^ (number of stepvalues <= it)
    - poly:      base_lr * (1 - it / max_iter) ^ power
    - sigmoid:   base_lr * 1 / (1 + exp(-gamma * (it - stepsize)))
    """
    p, lr = cfg.lr_policy, cfg.base_lr
    if p == "fixed":
        return lr
    if p == "step":
        return lr * cfg.gamma ** (it // cfg.stepsize)
    if p == "exp":
        return lr * cfg.gamma**it
    if p == "inv":
        return lr * (1 + cfg.gamma * it) ** (-cfg.power)
    if p == "multistep":
        # Caffe advances a counter once per call when it >= stepvalue[counter]; called
        # every iteration with sorted stepvalues that equals this count.
        return lr * cfg.gamma ** bisect.bisect_right(cfg.stepvalue, it)
    if p == "poly":
        if cfg.max_iter is None:
            raise RecipeError("lr_policy 'poly' needs max_iter (resolve epochs first)")
        return lr * (1 - it / cfg.max_iter) ** cfg.power
    if p == "sigmoid":
        return lr * (1 / (1 + math.exp(-cfg.gamma * (it - cfg.stepsize))))
    raise RecipeError(f"unknown lr_policy '{p}'")
