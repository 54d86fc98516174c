"""Top-1 classification scores, shared by training, deployment and the targets' parity checks.

Nothing is imported at run time: the functions take numpy arrays or torch tensors alike, so
the parts that must not load torch (the targets) use them as freely as the Solver does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np
    import torch


def top1_hits(scores: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor) -> int:
    """How many rows of class scores ``scores`` (N, C) score highest the class in ``labels``
    (N,); both numpy arrays or both torch tensors."""
    return int((scores.argmax(1) == labels).sum())


def top1_agreement(a: np.ndarray, b: np.ndarray) -> float:
    """The fraction of rows whose highest-scoring class is the same in two (N, C) score arrays."""
    return float((a.argmax(1) == b.argmax(1)).mean())
