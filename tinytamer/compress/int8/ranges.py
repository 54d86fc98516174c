"""Observers' arithmetic: from the activation values calibration saw to a quantization range.

Min/max, a percentile of the values (both as in Wu et al. 2020, "Integer Quantization
for Deep Learning Inference: Principles and Empirical Evaluation", Sec. 4.1), or the
clipping threshold that minimises the mean squared quantization error on the observed
values (searched over 100 thresholds; Banner et al. 2019 minimise the same error
analytically).  Plain tensor functions: the modules that observe live in ``modules``.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

CalibMethod = Literal["minmax", "percentile", "mse"]
CALIB_METHODS = ("minmax", "percentile", "mse")
# Calibration keeps a random sample of each activation's values (percentile / MSE
# need the distribution, not only its extremes); these bound its memory.
SAMPLE_PER_BATCH = 1 << 16
SAMPLE_CAP = 1 << 18
_MSE_CANDIDATES = 100


def act_qparams(lo: float, hi: float, qmin: int, qmax: int) -> tuple[float, int]:
    """Asymmetric (scale, zero_point) for the range [lo, hi], widened to contain 0 exactly."""
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    if hi - lo <= 0:
        return 1.0, qmin if lo >= 0 else 0
    scale = (hi - lo) / (qmax - qmin)
    zp = int(min(max(qmin - round(lo / scale), qmin), qmax))
    return float(scale), zp


def _fq_mse(x: Tensor, lo: float, hi: float, qmin: int, qmax: int) -> float:
    scale, zp = act_qparams(lo, hi, qmin, qmax)
    q = (torch.round(x / scale) + zp).clamp(qmin, qmax)
    return float(((q - zp) * scale - x).square().mean())


def choose_range(
    lo: float, hi: float, samples: list[Tensor], method: CalibMethod, percentile: float, qmin: int, qmax: int
) -> tuple[float, float]:
    """The range [lo, hi] to quantize to, by ``method``, from the observed extremes and a
    sample of the values (minmax, or no sample: the extremes)."""
    if method == "percentile" and samples:
        values = torch.cat(samples)
        qs = torch.tensor([(100.0 - percentile) / 100.0, percentile / 100.0])
        lo, hi = (float(v) for v in torch.quantile(values, qs))
    elif method == "mse" and samples:
        values = torch.cat(samples)
        # Clip the magnitudes at a threshold t (so a one-sided outlier is cut first) and
        # keep the t with the least quantization error.
        amax = max(-lo, hi)
        clips = [(max(lo, -t), min(hi, t)) for t in (amax * k / _MSE_CANDIDATES for k in range(1, _MSE_CANDIDATES + 1))]
        errs = [_fq_mse(values, a, b, qmin, qmax) for a, b in clips]
        lo, hi = clips[min(range(len(errs)), key=errs.__getitem__)]
    return lo, hi
