"""Anchor boxes by k-means on the training boxes with ``d = 1 - IoU`` as the distance
(Redmon & Farhadi 2017, "YOLO9000", Sec. 2 "Dimension Clusters").

Boxes are compared by width and height alone, as if centred on one point (Eq. of Sec. 2:
``d(box, centroid) = 1 - IoU(box, centroid)``); a centroid moves to the mean (w, h) of its
boxes, the update of YOLOv2's and YOLO-FastestV2's anchor scripts.  Centroids start by
k-means++ seeding (under the same distance) with a fixed seed, the best of ``restarts``
runs (highest mean IoU) is kept, and the anchors are sorted by area: the smaller half
belongs to stride 16, the larger to stride 32.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from tinytamer.detect.boxes import wh_iou
from tinytamer.errors import DataError


def kmeans_iou(wh: np.ndarray, k: int, *, seed: int = 0, restarts: int = 10, iters: int = 300) -> np.ndarray:
    """``k`` centroids (w, h) of the boxes ``wh`` (N, 2) under ``1 - IoU``, sorted by area."""
    wh = np.asarray(wh, dtype=np.float64)
    if wh.ndim != 2 or wh.shape[1] != 2 or not len(wh):
        raise DataError(f"anchor k-means: need (N, 2) box sizes, got shape {wh.shape}")
    if not np.all(wh > 0):
        raise DataError("anchor k-means: box sizes must be positive")
    unique = np.unique(wh, axis=0)
    if len(unique) < k:  # fewer distinct boxes than anchors: repeat them (still valid anchors)
        unique = np.resize(unique, (k, 2))
        return unique[np.argsort(unique.prod(axis=1), kind="stable")]
    rng = np.random.default_rng(seed)
    best, best_fit = None, -1.0
    for _ in range(restarts):
        centroids = _seed(wh, k, rng)
        for _ in range(iters):
            assign = wh_iou(wh, centroids).argmax(axis=1)
            moved = np.array([wh[assign == j].mean(axis=0) if np.any(assign == j) else centroids[j] for j in range(k)])
            if np.allclose(moved, centroids):
                break
            centroids = moved
        fit = float(wh_iou(wh, centroids).max(axis=1).mean())
        if fit > best_fit:
            best, best_fit = centroids, fit
    assert best is not None
    return best[np.argsort(best.prod(axis=1), kind="stable")]


def _seed(wh: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k-means++ seeding under the 1 - IoU distance."""
    chosen = [wh[rng.integers(len(wh))]]
    for _ in range(1, k):
        d = 1 - wh_iou(wh, np.array(chosen)).max(axis=1)
        p = d**2
        total = p.sum()
        chosen.append(wh[rng.choice(len(wh), p=p / total)] if total > 0 else wh[rng.integers(len(wh))])
    return np.array(chosen)


def mean_iou(wh: np.ndarray, anchors: np.ndarray) -> float:
    """Mean over boxes of the best IoU with an anchor (the fit k-means maximizes)."""
    return float(wh_iou(wh, anchors).max(axis=1).mean())


def kmeans_anchors(annotations: Sequence[Any], size: int, k: int = 6) -> np.ndarray:
    """Anchors (k, 2) in letterboxed pixels at ``size`` from annotations' boxes
    (objects with ``width``, ``height`` and ``boxes`` rows (x1, y1, x2, y2, ...))."""
    sizes = []
    for a in annotations:
        r = size / max(a.width, a.height)
        if len(a.boxes):
            sizes.append((a.boxes[:, 2:4] - a.boxes[:, 0:2]) * r)
    if not sizes:
        raise DataError("anchor k-means: the training split has no boxes")
    return kmeans_iou(np.concatenate(sizes), k)
