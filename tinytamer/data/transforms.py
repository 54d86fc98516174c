"""Per-item image transforms on float ``C x H x W`` tensors.

Random transforms draw from torch's global RNG, so a run is repeatable given
``torch.manual_seed`` (and, in DataLoader workers, given the loader's generator, which
seeds each worker).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

Transform = Callable[[torch.Tensor], torch.Tensor]


def _pair(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    h, w = size
    return int(h), int(w)


class Compose:
    """Apply transforms in order."""

    def __init__(self, transforms: Sequence[Transform]) -> None:
        self.transforms = list(transforms)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        for t in self.transforms:
            x = t(x)
        return x

    def __repr__(self) -> str:
        return f"Compose({self.transforms!r})"


class Normalize:
    """``(x - mean) / std`` per channel."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        if len(mean) != len(std):
            raise ValueError(f"Normalize: {len(mean)} means but {len(std)} stds")
        if any(s <= 0 for s in std):
            raise ValueError(f"Normalize: std must be positive, got {tuple(std)}")
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self._mean = torch.tensor(self.mean, dtype=torch.float32).view(-1, 1, 1)
        self._inv_std = 1.0 / torch.tensor(self.std, dtype=torch.float32).view(-1, 1, 1)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-3] != self._mean.shape[0]:
            raise ValueError(f"Normalize: image has {x.shape[-3]} channels, normalization has {self._mean.shape[0]}")
        return (x - self._mean) * self._inv_std

    def __repr__(self) -> str:
        return f"Normalize(mean={self.mean}, std={self.std})"


class Resize:
    """Bilinear resize to ``size`` (int: square), antialiased when shrinking."""

    def __init__(self, size: int | Sequence[int]) -> None:
        self.size = _pair(size)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[-2:]) == self.size:
            return x
        return F.interpolate(
            x.unsqueeze(0), size=self.size, mode="bilinear", align_corners=False, antialias=True
        ).squeeze(0)

    def __repr__(self) -> str:
        return f"Resize({self.size})"


class RandomCrop:
    """Zero-pad by ``padding`` on every side, then crop a random ``size`` window."""

    def __init__(self, size: int | Sequence[int], padding: int = 0) -> None:
        self.size = _pair(size)
        self.padding = int(padding)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.padding:
            p = self.padding
            x = F.pad(x, (p, p, p, p))
        h, w = x.shape[-2:]
        th, tw = self.size
        if th > h or tw > w:
            raise ValueError(f"RandomCrop: crop {self.size} larger than padded image {(h, w)}")
        i = int(torch.randint(0, h - th + 1, ()))
        j = int(torch.randint(0, w - tw + 1, ()))
        return x[..., i : i + th, j : j + tw]

    def __repr__(self) -> str:
        return f"RandomCrop({self.size}, padding={self.padding})"


class RandomHorizontalFlip:
    """Mirror left-right with probability ``p``."""

    def __init__(self, p: float = 0.5) -> None:
        self.p = float(p)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if float(torch.rand(())) < self.p:
            return x.flip(-1)
        return x

    def __repr__(self) -> str:
        return f"RandomHorizontalFlip(p={self.p})"
