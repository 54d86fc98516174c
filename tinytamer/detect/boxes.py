"""Box geometry shared by the detection parts: corner boxes ``(x1, y1, x2, y2)`` in pixels."""

from __future__ import annotations

import numpy as np


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box of ``a`` (N, 4) with every box of ``b`` (M, 4): an (N, M) array.

    Continuous coordinates (no "+1" pixel convention), as COCO scores them.
    """
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(axis=2)
    area_a = np.clip(a[:, 2:] - a[:, :2], 0, None).prod(axis=1)
    area_b = np.clip(b[:, 2:] - b[:, :2], 0, None).prod(axis=1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def wh_iou(wh: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """IoU of boxes given only as (w, h) with centroids (w, h), both centred on one point."""
    wh = np.asarray(wh, dtype=np.float64)[:, None, :]
    c = np.asarray(centroids, dtype=np.float64)[None, :, :]
    inter = np.minimum(wh, c).prod(axis=2)
    return inter / (wh.prod(axis=2) + c.prod(axis=2) - inter)
