"""Mean average precision: mAP@0.5 as PASCAL VOC scores it, and COCO's mAP@[.5:.95].

- VOC (Everingham et al. 2010, "The PASCAL Visual Object Classes (VOC) Challenge", Sec. 4.2,
  with the all-point interpolation of VOC 2010 onwards): detections sorted by score; each is a
  true positive when its best-overlapping ground truth (IoU >= 0.5) is not yet taken; AP is the
  area under the precision envelope ``p_interp(r) = max_{r' >= r} p(r')`` summed at every
  recall step.
- COCO (Lin et al. 2014, "Microsoft COCO", detection evaluation): at each IoU threshold
  0.50:0.05:0.95 a detection takes the best-overlapping ground truth *not yet matched*; AP is
  the mean of the precision envelope at 101 recall points 0:0.01:1 (as pycocotools computes
  it); mAP@[.5:.95] averages over thresholds and classes.  The top ``max_det`` detections per
  image and class count (COCO: 100); VOC counts every detection.

Classes with no ground truth in the split are left out of the mean (both protocols).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from tinytamer.detect.boxes import box_iou
from tinytamer.detect.decode import Detections

COCO_THRESHOLDS = np.linspace(0.5, 0.95, 10)
_RECALL_POINTS = np.linspace(0.0, 1.0, 101)


@dataclass(frozen=True)
class GroundTruth:
    """One image's ground truth: corner boxes (M, 4) and classes (M,)."""

    boxes: np.ndarray
    classes: np.ndarray


def _match(
    dets: Detections, gt: GroundTruth, cls: int, thr: float, coco: bool, max_det: int
) -> tuple[np.ndarray, np.ndarray]:
    """(scores, true-positive flags) of one image's detections of class ``cls`` (COCO: its
    top ``max_det``, as pycocotools keeps per image and class)."""
    d = dets.classes == cls
    boxes, scores = dets.boxes[d], dets.scores[d]
    order = np.argsort(-scores, kind="mergesort")[: max_det if coco else None]
    boxes, scores = boxes[order], scores[order]
    g = gt.boxes[gt.classes == cls]
    tp = np.zeros(len(scores), dtype=bool)
    if not len(g) or not len(scores):
        return scores, tp
    ious = box_iou(boxes, g)
    taken = np.zeros(len(g), dtype=bool)
    for i, row in enumerate(ious):
        if coco:
            row = np.where(taken, -1.0, row)
        j = int(row.argmax())
        if row[j] >= thr and not taken[j]:
            taken[j] = tp[i] = True
    return scores, tp


def _curve(scores: list[np.ndarray], tps: list[np.ndarray], n_gt: int) -> tuple[np.ndarray, np.ndarray]:
    s, t = np.concatenate(scores), np.concatenate(tps)
    order = np.argsort(-s, kind="mergesort")
    t = t[order]
    tp, fp = np.cumsum(t), np.cumsum(~t)
    return tp / n_gt, tp / np.maximum(tp + fp, np.finfo(np.float64).eps)


def average_precision(
    detections: Sequence[Detections],
    truths: Sequence[GroundTruth],
    cls: int,
    thr: float,
    *,
    coco: bool,
    max_det: int = 100,
) -> float | None:
    """AP of class ``cls`` at IoU ``thr`` (None when the class has no ground truth)."""
    n_gt = sum(int((g.classes == cls).sum()) for g in truths)
    if n_gt == 0:
        return None
    matched = [_match(d, g, cls, thr, coco, max_det) for d, g in zip(detections, truths, strict=True)]
    recall, precision = _curve([m[0] for m in matched], [m[1] for m in matched], n_gt)
    if not len(recall):  # no detection of the class: nothing recalled
        return 0.0
    envelope = np.maximum.accumulate(precision[::-1])[::-1] if len(precision) else precision
    if coco:
        idx = np.searchsorted(recall, _RECALL_POINTS, side="left")
        return float(np.where(idx < len(envelope), envelope[np.minimum(idx, len(envelope) - 1)], 0.0).mean())
    steps = np.diff(np.concatenate([[0.0], recall]))
    return float(np.sum(steps * envelope))


@dataclass(frozen=True)
class MapResult:
    """mAP@0.5 (VOC all-point), mAP@[.5:.95] and mAP@0.5 (COCO, 101-point), per-class VOC AP."""

    map50: float
    map50_95: float
    coco_map50: float
    per_class: dict[int, float]
    images: int


def mean_ap(
    detections: Sequence[Detections], truths: Sequence[GroundTruth], num_classes: int, *, max_det: int = 100
) -> MapResult:
    """Score a split: one Detections and one GroundTruth per image."""
    if len(detections) != len(truths):
        raise ValueError(f"mean_ap: {len(detections)} detection lists for {len(truths)} images")
    voc = {c: average_precision(detections, truths, c, 0.5, coco=False) for c in range(num_classes)}
    voc = {c: ap for c, ap in voc.items() if ap is not None}
    if not voc:
        raise ValueError("mean_ap: the split has no ground-truth boxes")
    coco = np.array(
        [
            [average_precision(detections, truths, c, t, coco=True, max_det=max_det) for c in voc]
            for t in COCO_THRESHOLDS
        ],
        dtype=np.float64,
    )
    return MapResult(
        map50=float(np.mean(list(voc.values()))),
        map50_95=float(coco.mean()),
        coco_map50=float(coco[0].mean()),
        per_class=voc,
        images=len(truths),
    )
