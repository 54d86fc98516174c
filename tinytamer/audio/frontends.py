"""Frontends by name: what turns a fixed-length 16 kHz clip into a model's C x H x W input."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from tinytamer.audio import mfcc, mfcc_fixed, vggish_frontend
from tinytamer.errors import DataError


@dataclass(frozen=True)
class Frontend:
    """``fn`` maps ``samples`` float samples in [-1, 1] at 16 kHz to an ``shape[1:]`` array."""

    name: str
    fn: Callable[[np.ndarray], np.ndarray]
    shape: tuple[int, int, int]  # C, H, W
    samples: int = 16000

    def __call__(self, wave: np.ndarray) -> np.ndarray:
        return self.fn(wave)


def _vggish_first(wave: np.ndarray) -> np.ndarray:
    # A one-second clip holds one 0.96 s example; the tail frames are dropped as VGGish does.
    return vggish_frontend.examples(wave)[0]


_FRONTENDS: dict[str, Frontend] = {
    "mfcc": Frontend("mfcc", mfcc.mfcc, (1, mfcc.FRAMES, mfcc.COEFFICIENTS)),
    # The device's fixed-point MFCC (bit-exact with the C kernel), as floats for training.
    "mfcc-q": Frontend("mfcc-q", mfcc_fixed.mfcc_float, (1, mfcc.FRAMES, mfcc.COEFFICIENTS)),
    "vggish": Frontend("vggish", _vggish_first, (1, vggish_frontend.EXAMPLE_FRAMES, vggish_frontend.MEL_BANDS)),
}


def list_frontends() -> list[str]:
    """Names of the registered frontends, sorted."""
    return sorted(_FRONTENDS)


def get_frontend(name: str) -> Frontend:
    """The frontend called ``name``."""
    if name not in _FRONTENDS:
        raise DataError(f"unknown audio frontend '{name}'; known frontends: {', '.join(list_frontends())}")
    return _FRONTENDS[name]
