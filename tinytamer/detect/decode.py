"""Decoding YOLO-FastestV2's output maps into boxes, and class-wise non-maximum suppression.

Written once, in numpy, and used by PyTorch evaluation and by every runtime's
post-processing, so a runtime's mAP differs from PyTorch's only by its raw outputs.

Per scale, a map ``(N, 5A + C, H, W)`` holds, per cell, ``[box 4A | objectness A | class C]``
logits (A anchors, C classes; the class scores are per cell, shared by its anchors, as
released).  For anchor ``a`` at cell ``(i, j)`` of stride ``s`` (the released decoding,
YOLOv5's form):

    cx = (2 sigmoid(tx) - 0.5 + j) s        w = (2 sigmoid(tw))^2 anchor_w
    cy = (2 sigmoid(ty) - 0.5 + i) s        h = (2 sigmoid(th))^2 anchor_h
    score(class c) = sigmoid(objectness) softmax(class logits)_c

Every (box, class) pair above ``conf`` is a candidate; NMS then runs per class (boxes of
different classes never suppress each other), keeping at most ``max_det`` per image.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import torch
from torch import nn

from tinytamer.detect.boxes import box_iou
from tinytamer.errors import ModelError

M = TypeVar("M", bound=nn.Module)


@dataclass(frozen=True)
class Head:
    """What decoding needs to know of a detector: anchors (w, h) in input pixels, ``A`` per
    scale in the order of ``strides``, and the class count."""

    anchors: np.ndarray  # (len(strides) * A, 2)
    strides: tuple[int, ...]
    num_classes: int

    @property
    def num_anchors(self) -> int:
        return len(self.anchors) // len(self.strides)

    @classmethod
    def of(cls, model: object) -> Head:
        """The head of a model that carries ``anchors`` (buffer), ``strides`` and ``num_classes``."""
        try:
            anchors = np.asarray(model.anchors.detach().cpu(), dtype=np.float64)  # type: ignore[attr-defined]
            return cls(anchors, tuple(model.strides), int(model.num_classes))  # type: ignore[attr-defined]
        except AttributeError as exc:
            raise ModelError(
                f"{type(model).__name__} is not a detector with anchors, strides and num_classes ({exc})"
            ) from None


def keep_head(source: nn.Module, target: M) -> M:
    """``target`` (in place) carrying ``source``'s anchors, strides and class count when
    ``source`` is a detector: a model rebuilt from a traced graph (int8's GraphModule, a
    QuantizedGraph) keeps only what its forward reads, and the anchors are read by decoding,
    not by forward.  Anything else is returned unchanged."""
    try:
        head = Head.of(source)
    except ModelError:
        return target
    anchors = torch.as_tensor(head.anchors, dtype=torch.float32)
    if "anchors" in target._buffers:  # a buffer already there is replaced, not shadowed
        del target._buffers["anchors"]
    target.register_buffer("anchors", anchors)
    target.strides = head.strides
    target.num_classes = head.num_classes
    return target


@dataclass
class Detections:
    """One image's detections: corner boxes (K, 4) in input pixels, scores (K,), classes (K,)."""

    boxes: np.ndarray
    scores: np.ndarray
    classes: np.ndarray

    def __len__(self) -> int:
        return len(self.scores)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))  # overflow-free form of 1 / (1 + e^-x)


def _softmax(x: np.ndarray, axis: int) -> np.ndarray:
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def decode(outputs: Sequence[np.ndarray], head: Head) -> tuple[np.ndarray, np.ndarray]:
    """All candidate boxes of a batch: corner boxes (N, K, 4) and class scores (N, K, C)."""
    if len(outputs) != len(head.strides):
        raise ModelError(f"decode: {len(outputs)} output maps for {len(head.strides)} strides")
    a, c = head.num_anchors, head.num_classes
    all_boxes, all_scores = [], []
    for level, (out, stride) in enumerate(zip(outputs, head.strides, strict=True)):
        out = np.asarray(out, dtype=np.float64)
        if out.ndim != 4 or out.shape[1] != 5 * a + c:
            raise ModelError(f"decode: output {level} has shape {out.shape}, expected (N, {5 * a + c}, H, W)")
        n, _, h, w = out.shape
        box = out[:, : 4 * a].reshape(n, a, 4, h, w)
        obj = _sigmoid(out[:, 4 * a : 5 * a])  # (n, a, h, w)
        cls = _softmax(out[:, 5 * a :], axis=1)  # (n, c, h, w)
        gy, gx = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
        anchors = head.anchors[level * a : (level + 1) * a]
        cx = (2 * _sigmoid(box[:, :, 0]) - 0.5 + gx) * stride
        cy = (2 * _sigmoid(box[:, :, 1]) - 0.5 + gy) * stride
        bw = (2 * _sigmoid(box[:, :, 2])) ** 2 * anchors[None, :, 0, None, None]
        bh = (2 * _sigmoid(box[:, :, 3])) ** 2 * anchors[None, :, 1, None, None]
        corners = np.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], axis=-1)  # (n, a, h, w, 4)
        scores = obj[:, :, None] * cls[:, None]  # (n, a, c, h, w)
        all_boxes.append(corners.reshape(n, -1, 4))
        all_scores.append(scores.transpose(0, 1, 3, 4, 2).reshape(n, -1, c))
    return np.concatenate(all_boxes, axis=1), np.concatenate(all_scores, axis=1)


def nms(boxes: np.ndarray, scores: np.ndarray, iou: float) -> np.ndarray:
    """Indices of the boxes greedy NMS keeps, highest score first (one class)."""
    order = np.argsort(-scores, kind="stable")
    keep = []
    while len(order):
        i = order[0]
        keep.append(i)
        if len(order) == 1:
            break
        overlap = box_iou(boxes[i : i + 1], boxes[order[1:]])[0]
        order = order[1:][overlap <= iou]
    return np.array(keep, dtype=np.int64)


def postprocess(
    outputs: Sequence[np.ndarray],
    head: Head,
    *,
    conf: float = 0.01,
    iou: float = 0.4,
    max_det: int = 100,
    clip: int | None = None,
) -> list[Detections]:
    """Decode + class-wise NMS for each image of the batch (the released evaluation's
    conf 0.01, NMS IoU 0.4); ``clip`` clips boxes to a ``clip``-pixel square."""
    boxes, scores = decode(outputs, head)
    result = []
    for b, s in zip(boxes, scores, strict=True):
        idx, cls = np.nonzero(s > conf)
        cand_boxes, cand_scores = b[idx], s[idx, cls]
        if clip is not None:
            cand_boxes = np.clip(cand_boxes, 0, clip)
        kept = [np.nonzero(cls == c)[0][nms(cand_boxes[cls == c], cand_scores[cls == c], iou)] for c in np.unique(cls)]
        keep = np.concatenate(kept) if kept else np.zeros(0, dtype=np.int64)
        keep = keep[np.argsort(-cand_scores[keep], kind="stable")][:max_det]
        result.append(Detections(cand_boxes[keep], cand_scores[keep], cls[keep]))
    return result
