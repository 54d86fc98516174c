"""In-memory image datasets: decoded once to ``uint8 N x H x W x C``, transformed per item."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from tinytamer.data.transforms import Transform


class ArrayDataset(Dataset):
    """Items are ``(transform(float32 C x H x W in [0, 1]), int label)``.

    ``images`` and ``labels`` stay public so evaluation code can read them in bulk.
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform: Transform | None = None) -> None:
        if images.ndim != 4 or images.dtype != np.uint8:
            raise ValueError(f"images must be uint8 N x H x W x C, got {images.dtype} {images.shape}")
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        # torch.from_numpy warns on read-only arrays (np.frombuffer gives them); own a copy.
        self.images = images if images.flags.writeable else images.copy()
        self.labels = np.asarray(labels, dtype=np.int64)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        x = torch.from_numpy(self.images[index]).permute(2, 0, 1).float().div_(255.0)
        if self.transform is not None:
            x = self.transform(x)
        return x, int(self.labels[index])

    def subset(self, indices: np.ndarray) -> ArrayDataset:
        """A new dataset of the given items (copied), with the same transform."""
        return ArrayDataset(self.images[indices], self.labels[indices], self.transform)


def split_indices(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split ``range(len(labels))`` into (keep, held_out) with ``fraction`` held out.

    Stratified: each class gives its share of the ``round(n * fraction)`` held-out items
    (largest remainder, so the total is exact), drawn at random with ``seed``.  Both index
    arrays come back sorted, so the kept items keep their original order.  The result
    depends only on ``labels``, ``fraction`` and ``seed``.
    """
    labels = np.asarray(labels)
    n = len(labels)
    k = int(round(n * fraction))
    idx = np.arange(n)
    if k == 0:
        return idx, idx[:0]
    _, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    quota = counts * (k / n)
    take = np.floor(quota).astype(np.int64)
    take[np.argsort(-(quota - take), kind="stable")[: k - int(take.sum())]] += 1
    rng = np.random.default_rng(seed)
    held = np.sort(np.concatenate([rng.permutation(np.flatnonzero(inverse == c))[:t] for c, t in enumerate(take)]))
    return np.setdiff1d(idx, held, assume_unique=True), held


def interleave_by_class(labels: np.ndarray) -> np.ndarray:
    """Order that takes one item of each class in turn (class order, then original order).

    Folder layouts list a whole class before the next; interleaving makes the first N items
    (``limit``) cover every class instead of only the first one.
    """
    labels = np.asarray(labels)
    rank = np.empty(len(labels), dtype=np.int64)
    for c in np.unique(labels):
        where = np.flatnonzero(labels == c)
        rank[where] = np.arange(len(where))
    return np.lexsort((labels, rank))
