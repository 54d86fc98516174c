"""The built-in default dataset: scikit-learn's 8x8 handwritten digits (1,797 images, offline)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tinytamer.data.arrays import split_indices
from tinytamer.data.images import ImageSplit, build_image_bundle
from tinytamer.data.registry import DatasetBundle, register_dataset

_TEST_FRACTION = 0.2


@register_dataset("digits")
def load_digits_dataset(
    root: Path | None,
    *,
    size: int | None,
    augment: bool,
    val_fraction: float,
    seed: int,
    limit: int | None,
    cache_dir: str | Path | None,
) -> DatasetBundle:
    """Digits with a stratified 80/20 train/test split by ``seed``; val is carved from train.

    Pixels 0..16 are scaled to 0..255; normalization is computed from the train split.
    ``root`` and ``cache_dir`` are unused: the data ships with scikit-learn.
    """
    from sklearn.datasets import load_digits  # slow to import; only when digits are asked for

    raw = load_digits()
    images = np.rint(raw.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)[..., None]
    labels = raw.target.astype(np.int64)
    train_idx, test_idx = split_indices(labels, _TEST_FRACTION, seed)
    source = "sklearn.datasets.load_digits"
    return build_image_bundle(
        "digits",
        train=ImageSplit(images[train_idx], labels[train_idx], source),
        test=ImageSplit(images[test_idx], labels[test_idx], source),
        class_names=[str(i) for i in range(10)],
        size=size,
        augment=augment,
        flip=False,
        val_fraction=val_fraction,
        seed=seed,
        limit=limit,
    )
