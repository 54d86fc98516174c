"""The YOLO-FastestV2 loss (its ``compute_loss``), on the cells :mod:`tinytamer.detect.assign` picks.

Per scale: box ``1 - CIoU`` (Zheng et al. 2020, "Distance-IoU Loss", Eq. 10-11: IoU minus the
normalized centre distance minus ``alpha v``, the aspect-ratio term) averaged over assigned
cells; objectness binary cross-entropy on every anchor of every cell against 1 at assigned
cells and 0 elsewhere, weighted 1.0 at stride 16 and 0.4 at stride 32; class cross-entropy at
assigned cells divided by the class count (none for one class: it is constant).  Total:
``3.2 box + 64 obj + 32 cls`` (the released gains), a mean over the batch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from tinytamer.detect.assign import assign, flatten_targets
from tinytamer.detect.decode import Head

BALANCE = (1.0, 0.4)  # objectness weight per scale, stride 16 first
GAINS = {"box": 3.2, "obj": 64.0, "cls": 32.0}


def ciou(pred: Tensor, target: Tensor, eps: float = 1e-7) -> Tensor:
    """Complete IoU of boxes given as (cx, cy, w, h), row by row."""
    p1, p2 = pred[:, :2] - pred[:, 2:] / 2, pred[:, :2] + pred[:, 2:] / 2
    t1, t2 = target[:, :2] - target[:, 2:] / 2, target[:, :2] + target[:, 2:] / 2
    inter = (torch.min(p2, t2) - torch.max(p1, t1)).clamp(min=0).prod(dim=1)
    union = pred[:, 2:].prod(dim=1) + target[:, 2:].prod(dim=1) - inter + eps
    iou = inter / union
    enclose = (torch.max(p2, t2) - torch.min(p1, t1)).pow(2).sum(dim=1) + eps
    centre = (pred[:, :2] - target[:, :2]).pow(2).sum(dim=1)
    v = (4 / math.pi**2) * (
        torch.atan(target[:, 2] / (target[:, 3] + eps)) - torch.atan(pred[:, 2] / (pred[:, 3] + eps))
    ).pow(2)
    with torch.no_grad():
        alpha = v / (1 - iou + v + eps)
    return iou - centre / enclose - alpha * v


class DetectionLoss:
    """``loss(outputs, targets)``: outputs the detector's maps, targets padded ``(B, K, 5)``
    boxes (as the ``voc`` dataset gives them).  ``parts`` after a call holds the three terms."""

    def __init__(self, head: Head) -> None:
        self.head = head
        self.anchors = torch.as_tensor(head.anchors, dtype=torch.float32)
        self.parts: dict[str, float] = {}

    def __call__(self, outputs: Sequence[Tensor], targets: Tensor) -> Tensor:
        head, a, c = self.head, self.head.num_anchors, self.head.num_classes
        gt = flatten_targets(targets)
        box_loss = obj_loss = cls_loss = outputs[0].new_zeros(())
        for level, (out, stride) in enumerate(zip(outputs, head.strides, strict=True)):
            n, _, h, w = out.shape
            box = out[:, : 4 * a].reshape(n, a, 4, h, w)
            obj = out[:, 4 * a : 5 * a]
            cls = out[:, 5 * a :]
            cells = assign(gt, self.anchors[level * a : (level + 1) * a], stride, h, w)
            tobj = torch.zeros_like(obj)
            if len(cells.image):
                p = box[cells.image, cells.anchor, :, cells.row, cells.col]
                pxy = p[:, :2].sigmoid() * 2 - 0.5
                pwh = (p[:, 2:].sigmoid() * 2) ** 2 * cells.anchor_wh
                box_loss = box_loss + (1 - ciou(torch.cat([pxy, pwh], 1), cells.box)).mean()
                tobj[cells.image, cells.anchor, cells.row, cells.col] = 1.0
                if c > 1:
                    logits = cls[cells.image, :, cells.row, cells.col]
                    cls_loss = cls_loss + F.cross_entropy(logits, cells.cls) / c
            obj_loss = obj_loss + F.binary_cross_entropy_with_logits(obj, tobj) * BALANCE[level]
        self.parts = {k: float(v.detach()) for k, v in (("box", box_loss), ("obj", obj_loss), ("cls", cls_loss))}
        return GAINS["box"] * box_loss + GAINS["obj"] * obj_loss + GAINS["cls"] * cls_loss
