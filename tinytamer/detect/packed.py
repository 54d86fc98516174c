"""One output tensor for runtimes that take a single one (the micro targets).

:func:`for_micro` prepares a detector for the micro targets: its splits as ``torch.narrow``
(:func:`tinytamer.zoo.yolofastest.split_by_narrow`, on a copy) and its maps packed.

:class:`SingleOutput` upsamples every coarser map (nearest) to the finest map's grid and
concatenates them along the channels; :func:`unpack` takes every ``k``-th pixel back, so the
shared post-processing sees the detector's own maps.  Nearest upsampling copies values, so
unpacking is exact (after int8, every map shares the concatenation's one scale).
"""

from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tinytamer.detect.decode import Head
from tinytamer.detect.evaluate import Runner


class SingleOutput(nn.Module):
    """``detector`` with its per-scale maps packed into one ``(N, S x (5A + C), H, W)`` map."""

    def __init__(self, detector: nn.Module) -> None:
        super().__init__()
        self.detector = detector
        self.strides = tuple(detector.strides)

    def forward(self, x: Tensor) -> Tensor:
        maps = self.detector(x)
        base = self.strides[0]
        up = [maps[0]] + [
            F.interpolate(m, scale_factor=float(s // base), mode="nearest")
            for m, s in zip(maps[1:], self.strides[1:], strict=True)
        ]
        return torch.cat(up, dim=1)


def for_micro(detector: nn.Module) -> SingleOutput:
    """A copy of ``detector`` in the form the micro lowering takes (see the module doc)."""
    from tinytamer.zoo.yolofastest import split_by_narrow

    return SingleOutput(split_by_narrow(copy.deepcopy(detector))).eval()


def unpack(packed: np.ndarray, head: Head) -> list[np.ndarray]:
    """The per-scale maps of a :class:`SingleOutput` result."""
    per = 5 * head.num_anchors + head.num_classes
    base = head.strides[0]
    return [packed[:, i * per : (i + 1) * per, :: s // base, :: s // base] for i, s in enumerate(head.strides)]


def packed_runner(run: Runner, head: Head) -> Runner:
    """A runner of a packed model as a runner of the detector's maps."""

    def unpacked(x: np.ndarray) -> list[np.ndarray]:
        (out,) = run(x)
        return unpack(np.asarray(out), head)

    return unpacked
