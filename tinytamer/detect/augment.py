"""Training augmentations for detection that move the boxes with the pixels.

One random affine (scale about the centre, then translate) composed with the letterbox, so
the image is resampled once; a horizontal flip; HSV jitter (the gains YOLOv5 uses by default:
hue 0.015, saturation 0.7, value 0.4).  Boxes follow the affine and the flip and are clipped
(:func:`tinytamer.detect.letterbox.warp_boxes`); colour jitter leaves them alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from tinytamer.detect.letterbox import Letterbox, warp, warp_boxes


@dataclass(frozen=True)
class Augment:
    """Ranges of the random transforms (0 turns one off)."""

    scale: float = 0.25  # zoom factor drawn from [1 - scale, 1 + scale]
    translate: float = 0.1  # shift drawn from +-translate x size, per axis
    flip: float = 0.5  # probability of a horizontal flip
    hue: float = 0.015
    saturation: float = 0.7
    value: float = 0.4

    def __call__(
        self, image: Image.Image, boxes: np.ndarray, size: int, rng: np.random.Generator
    ) -> tuple[Image.Image, np.ndarray]:
        """``image`` (RGB) and its corner boxes (N, 4+), letterboxed into ``size`` and augmented."""
        s = rng.uniform(1 - self.scale, 1 + self.scale)
        tx, ty = rng.uniform(-self.translate, self.translate, size=2) * size
        c = size / 2
        zoom = np.array([[s, 0, c - s * c + tx], [0, s, c - s * c + ty], [0, 0, 1]])
        if rng.random() < self.flip:
            zoom = np.array([[-1, 0, size], [0, 1, 0], [0, 0, 1]]) @ zoom
        matrix = zoom @ Letterbox.fit(image.width, image.height, size).matrix()
        out = hsv_jitter(warp(image, matrix, size), self.hue, self.saturation, self.value, rng)
        return out, warp_boxes(boxes, matrix, size)


def hsv_jitter(image: Image.Image, hue: float, sat: float, val: float, rng: np.random.Generator) -> Image.Image:
    """Random gains on hue (a shift), saturation and value, as YOLOv5's augment_hsv."""
    if not (hue or sat or val):
        return image
    gains = rng.uniform(-1, 1, 3) * (hue, sat, val) + 1
    hsv = np.asarray(image.convert("HSV"), dtype=np.float64)
    hsv[..., 0] = (hsv[..., 0] * gains[0]) % 256
    hsv[..., 1:] = np.clip(hsv[..., 1:] * gains[1:], 0, 255)
    return Image.fromarray(hsv.astype(np.uint8), "HSV").convert("RGB")
