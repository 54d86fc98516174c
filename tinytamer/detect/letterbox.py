"""Letterbox: fit an image into a square of ``size`` pixels keeping its aspect ratio, padding
the rest with grey, and move its boxes the same way.

The mapping is the affine ``x' = r x + dx`` (same ``r`` on both axes), so IoU between boxes
is unchanged by it: scores computed on letterboxed coordinates equal those on the original.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

PAD_VALUE = 114  # the grey YOLO pads with


@dataclass(frozen=True)
class Letterbox:
    """Scale ``r`` and offsets ``(dx, dy)`` mapping original pixels into the square."""

    r: float
    dx: float
    dy: float
    size: int

    @classmethod
    def fit(cls, width: int, height: int, size: int) -> Letterbox:
        r = size / max(width, height)
        return cls(r, (size - width * r) / 2, (size - height * r) / 2, size)

    def matrix(self) -> np.ndarray:
        """The 3 x 3 affine matrix (original -> letterboxed)."""
        return np.array([[self.r, 0, self.dx], [0, self.r, self.dy], [0, 0, 1]], dtype=np.float64)

    def boxes_to_original(self, boxes: np.ndarray) -> np.ndarray:
        """Letterboxed corner boxes back in the original image's pixels."""
        out = np.asarray(boxes, dtype=np.float64).copy()
        out[:, [0, 2]] = (out[:, [0, 2]] - self.dx) / self.r
        out[:, [1, 3]] = (out[:, [1, 3]] - self.dy) / self.r
        return out


def warp(image: Image.Image, matrix: np.ndarray, size: int) -> Image.Image:
    """``image`` under the affine ``matrix`` (original -> output), into a ``size`` square."""
    inv = np.linalg.inv(matrix)  # PIL maps output pixels back to input ones
    return image.transform(
        (size, size),
        Image.Transform.AFFINE,
        data=tuple(inv[:2].reshape(-1)),
        resample=Image.Resampling.BILINEAR,
        fillcolor=(PAD_VALUE,) * len(image.getbands()),
    )


def warp_boxes(boxes: np.ndarray, matrix: np.ndarray, size: int, min_keep: float = 0.25) -> np.ndarray:
    """Corner boxes (N, 4+) under an axis-aligned affine ``matrix``, clipped to the square.

    A box keeps its extra columns (its class).  Boxes left with under ``min_keep`` of their
    transformed area, or under 2 pixels wide or high, are dropped (they left the picture).
    """
    boxes = np.asarray(boxes, dtype=np.float64)
    if not len(boxes):
        return boxes
    xy = boxes[:, :4].reshape(-1, 2)
    xy = xy @ matrix[:2, :2].T + matrix[:2, 2]
    moved = xy.reshape(-1, 4)
    moved = np.concatenate([np.minimum(moved[:, :2], moved[:, 2:]), np.maximum(moved[:, :2], moved[:, 2:])], axis=1)
    area = (moved[:, 2] - moved[:, 0]) * (moved[:, 3] - moved[:, 1])
    clipped = np.clip(moved, 0, size)
    w, h = clipped[:, 2] - clipped[:, 0], clipped[:, 3] - clipped[:, 1]
    keep = (w >= 2) & (h >= 2) & (w * h >= min_keep * np.maximum(area, 1e-9))
    out = boxes.copy()
    out[:, :4] = clipped
    return out[keep]


def letterbox(image: Image.Image, boxes: np.ndarray, size: int) -> tuple[Image.Image, np.ndarray, Letterbox]:
    """``image`` letterboxed into ``size`` x ``size``, its boxes moved, and the mapping used."""
    lb = Letterbox.fit(image.width, image.height, size)
    return warp(image, lb.matrix(), size), warp_boxes(boxes, lb.matrix(), size), lb
