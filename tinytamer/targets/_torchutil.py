"""Torch-side helpers every target's ``compile`` shares: reference outputs and parity."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from tinytamer.errors import TamerError
from tinytamer.targets.base import Deployed, check_parity

Batch = torch.Tensor | Sequence[torch.Tensor]


def as_inputs(batch: Batch) -> list[torch.Tensor]:
    """A calibration batch as the list of model inputs (one tensor for one input)."""
    return [batch] if isinstance(batch, torch.Tensor) else list(batch)


def to_numpy(out: Any) -> list[np.ndarray]:
    outs = out if isinstance(out, (tuple, list)) else [out]
    return [o.detach().cpu().float().numpy() for o in outs]


def torch_outputs(model: nn.Module, inputs: Sequence[torch.Tensor]) -> list[np.ndarray]:
    """PyTorch's outputs for ``inputs`` (eval mode, no grad): the parity reference."""
    with torch.no_grad():
        return to_numpy(model.eval()(*inputs))


def require_calib(target: str, calib: Sequence[Batch] | None) -> list[Batch]:
    """The calibration batches of an int8 compile, refused when there is no real sample.

    Without this check an empty or missing ``calib`` would calibrate on whatever example
    input was at hand (one sample), silently.
    """
    batches = list(calib) if calib is not None else []
    for i, batch in enumerate(batches):
        inputs = [batch] if isinstance(batch, torch.Tensor) else list(batch) if isinstance(batch, (tuple, list)) else []
        if not inputs or not all(isinstance(x, torch.Tensor) for x in inputs):
            raise TamerError(
                f"target '{target}': calibration batch {i} is a "
                f"{type(batch).__name__}, not a tensor or a tuple of tensors "
                "(calib=...)"
            )
        if inputs[0].ndim == 0 or inputs[0].shape[0] == 0:
            raise TamerError(
                f"target '{target}': calibration batch {i} holds no sample (shape {tuple(inputs[0].shape)}; calib=...)"
            )
    if not batches:
        raise TamerError(
            f"target '{target}' int8 needs calibration batches of real inputs "
            f"(calib=...), got {'none' if calib is None else 'an empty list'}"
        )
    return batches


def parity_inputs(
    example_inputs: Sequence[torch.Tensor], calib: Sequence[Batch] | None, max_samples: int = 64
) -> list[torch.Tensor]:
    """Real samples to check parity on: up to ``max_samples`` from ``calib`` if given."""
    if not calib:
        return list(example_inputs)
    parts: list[list[torch.Tensor]] = []
    n = 0
    for batch in calib:
        parts.append(as_inputs(batch))
        n += parts[-1][0].shape[0]
        if n >= max_samples:
            break
    return [torch.cat(cols)[:max_samples] for cols in zip(*parts, strict=True)]


def verify(deployed: Deployed, model: nn.Module, inputs: Sequence[torch.Tensor], where: str) -> dict[str, Any]:
    """Check ``deployed`` against PyTorch on ``inputs``; store and return the numbers."""
    ref = torch_outputs(model, inputs)
    out = deployed(*[x.detach().numpy() for x in inputs])
    deployed.parity = check_parity(ref, out, precision=deployed.precision, where=where)
    deployed.parity["inputs"] = int(inputs[0].shape[0])
    return deployed.parity
