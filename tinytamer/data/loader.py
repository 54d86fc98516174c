"""Deterministic DataLoaders: the shuffle order depends only on the seed and the epoch."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset


def make_loader(
    dataset: Dataset,
    batch_size: int,
    *,
    shuffle: bool,
    seed: int = 0,
    drop_last: bool = False,
    num_workers: int = 0,
) -> DataLoader:
    """A DataLoader whose order and worker seeds come from a ``torch.Generator`` seeded by ``seed``.

    Each pass over the loader (an epoch) draws its permutation from that generator in turn, so
    epoch k has the same order in every run with the same seed.  Workers' torch RNGs (used by
    the random transforms) are seeded from the same generator.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    generator = torch.Generator()
    generator.manual_seed(seed)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        drop_last=drop_last,
        num_workers=num_workers,
        generator=generator,
    )
