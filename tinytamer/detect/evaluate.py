"""Scoring a detector on a split: PyTorch or any runtime, through one post-processing.

:func:`score` takes a function from an image batch (numpy, N x 3 x S x S) to the raw output
maps, so PyTorch and a compiled target are scored by the same decode, NMS and mAP code.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from tinytamer.detect.decode import Detections, Head, postprocess
from tinytamer.detect.loss import DetectionLoss
from tinytamer.detect.metrics import GroundTruth, mean_ap
from tinytamer.errors import DataError

Runner = Callable[[np.ndarray], Sequence[np.ndarray]]


def truths(targets: np.ndarray | torch.Tensor) -> list[GroundTruth]:
    """Padded ``(B, K, 5)`` target rows as one GroundTruth per image."""
    t = np.asarray(targets, dtype=np.float64)
    keep = t[..., 4] >= 0
    return [GroundTruth(t[i][keep[i], :4], t[i][keep[i], 4].astype(np.int64)) for i in range(len(t))]


def detect_all(
    run: Runner, loader: Iterable, head: Head, size: int, **nms: Any
) -> tuple[list[Detections], list[GroundTruth]]:
    """Every image of ``loader`` through ``run`` and :func:`postprocess`, with its truth."""
    dets: list[Detections] = []
    gts: list[GroundTruth] = []
    for batch in loader:
        x, y = batch
        outputs = run(np.asarray(x, dtype=np.float32))
        dets += postprocess(outputs, head, clip=size, **nms)
        gts += truths(y)
    if not gts:
        raise DataError("detection scoring: the loader gave no images")
    return dets, gts


def score(run: Runner, loader: Iterable, head: Head, size: int, **nms: Any) -> dict[str, float]:
    """mAP of ``run`` on ``loader``: accuracy (= mAP@0.5, the task's score), map50, map50_95, n."""
    dets, gts = detect_all(run, loader, head, size, **nms)
    result = mean_ap(dets, gts, head.num_classes)
    return {"accuracy": result.map50, "map50": result.map50, "map50_95": result.map50_95, "n": len(gts)}


def as_maps(outputs: Any, head: Head) -> list[np.ndarray]:
    """A model's or a runtime's raw outputs as the per-scale maps :func:`postprocess` takes:
    tensors become numpy, and one output holding every scale packed
    (:class:`tinytamer.detect.packed.SingleOutput`) is unpacked."""
    maps = [np.asarray(o.detach().cpu() if isinstance(o, torch.Tensor) else o) for o in _as_list(outputs)]
    if len(maps) == 1 and len(head.strides) > 1:
        from tinytamer.detect.packed import unpack

        return unpack(maps[0], head)
    return maps


def _as_list(outputs: Any) -> list[Any]:
    return list(outputs) if isinstance(outputs, list | tuple) else [outputs]


class PairedScore:
    """mAP of a runtime's outputs and, on the same images, of the reference (PyTorch) model's,
    both through :func:`postprocess`: a runtime's figure differs from PyTorch's only by its
    raw outputs.  :meth:`add` takes one batch; :meth:`result` the figures so far."""

    def __init__(self, head: Head, **nms: Any) -> None:
        self.head, self.nms = head, nms
        self.runtime: list[Detections] = []
        self.reference: list[Detections] = []
        self.truths: list[GroundTruth] = []

    def add(self, outputs: Any, reference: Any, targets: np.ndarray | torch.Tensor, size: int) -> None:
        """One batch: the runtime's ``outputs``, the reference model's, the padded targets,
        and the input side in pixels (boxes are clipped to it)."""
        self.runtime += postprocess(as_maps(outputs, self.head), self.head, clip=size, **self.nms)
        self.reference += postprocess(as_maps(reference, self.head), self.head, clip=size, **self.nms)
        self.truths += truths(targets)

    def result(self) -> dict[str, float]:
        """``accuracy`` / ``accuracy_torch``: mAP@0.5 (the task's score) through the runtime /
        in PyTorch; ``map50``, ``map50_95`` and their ``_torch`` twins."""
        if not self.truths:
            raise DataError("detection scoring: no images were scored")
        c = self.head.num_classes
        rt, pt = mean_ap(self.runtime, self.truths, c), mean_ap(self.reference, self.truths, c)
        return {
            "accuracy": rt.map50,
            "accuracy_torch": pt.map50,
            "map50": rt.map50,
            "map50_95": rt.map50_95,
            "map50_torch": pt.map50,
            "map50_95_torch": pt.map50_95,
        }


def torch_runner(model: nn.Module) -> Runner:
    """A model as a Runner (no gradients, on the model's device; put it in eval mode first)."""
    device = next((p.device for p in model.parameters()), torch.device("cpu"))

    def run(x: np.ndarray) -> list[np.ndarray]:
        with torch.no_grad():
            return [o.detach().cpu().numpy() for o in model(torch.from_numpy(x).to(device))]

    return run


def evaluate(model: nn.Module, loader: Iterable, head: Head | None = None) -> dict[str, float]:
    """Mean loss and mAP of a detector on ``loader`` (the detection task's ``evaluate``);
    restores every submodule's train / eval mode afterwards.  ``head``: the detector's
    anchors and strides when ``model`` no longer carries them (a converted int8 graph)."""
    head = head or Head.of(model)
    loss_fn = DetectionLoss(head)
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    losses: list[float] = []
    dets: list[Detections] = []
    gts: list[GroundTruth] = []
    try:
        for x, y in loader:
            with torch.no_grad():
                out = model(x)
            losses.append(float(loss_fn(out, y)) * len(x))
            dets += postprocess([o.numpy() for o in out], head, clip=int(x.shape[-1]))
            gts += truths(y)
    finally:
        for m, mode in modes:
            m.training = mode
    if not gts:
        raise DataError("evaluate: the loader gave no batches")
    result = mean_ap(dets, gts, head.num_classes)
    return {
        "loss": sum(losses) / len(gts),
        "accuracy": result.map50,
        "map50": result.map50,
        "map50_95": result.map50_95,
        "n": len(gts),
    }
