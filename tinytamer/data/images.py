"""Turn decoded image arrays into a :class:`DatasetBundle`: val split, limit, transforms, meta.

Every image classification loader (digits, MNIST, CIFAR-10, image folders) decodes its files
to ``uint8 N x H x W x C`` arrays and hands them here, so splitting, normalization and
augmentation behave the same for all of them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from tinytamer.data.arrays import ArrayDataset, split_indices
from tinytamer.data.registry import DatasetBundle, DatasetMeta
from tinytamer.data.transforms import (
    Compose,
    Normalize,
    RandomCrop,
    RandomHorizontalFlip,
    Resize,
    Transform,
)
from tinytamer.errors import DataError


@dataclass
class ImageSplit:
    """One split as decoded arrays; ``source`` names the file(s) it came from, for errors."""

    images: np.ndarray  # uint8 N x H x W x C
    labels: np.ndarray  # int N
    source: str


def build_image_bundle(
    name: str,
    *,
    train: ImageSplit,
    test: ImageSplit,
    val: ImageSplit | None = None,
    class_names: Sequence[str],
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    size: int | None,
    augment: bool,
    flip: bool,
    val_fraction: float,
    seed: int,
    limit: int | None,
) -> DatasetBundle:
    """Assemble the bundle.

    ``mean``/``std`` of None are computed from the train split (after val is carved out).
    ``augment`` adds a random crop with zero padding (an eighth of the side when ``flip``,
    as for CIFAR-10; a fourteenth otherwise, as for MNIST's 2 of 28) and, if ``flip``, a
    random horizontal flip, to the train split only.
    """
    splits = [train, test] + ([val] if val is not None else [])
    num_classes = len(class_names)
    for split in splits:
        _check_split(split, num_classes)
    channels = train.images.shape[3]
    hw = train.images.shape[1:3]
    for split in splits[1:]:
        if split.images.shape[3] != channels or (size is None and split.images.shape[1:3] != hw):
            raise DataError(
                f"{split.source}: images are {split.images.shape[1:]} (H, W, C) but the train "
                f"images ({train.source}) are {train.images.shape[1:]}"
            )
    if len(train.images) == 0:
        raise DataError(f"{train.source}: the train split has no images")

    train_ds = ArrayDataset(train.images, train.labels)
    if val is None:
        keep, held = split_indices(train_ds.labels, val_fraction, seed)
        val_ds = train_ds.subset(held)
        train_ds = train_ds.subset(keep)
    else:
        val_ds = ArrayDataset(val.images, val.labels)
    test_ds = ArrayDataset(test.images, test.labels)

    if mean is None or std is None:
        mean, std = channel_stats(train_ds.images)
        if min(std) <= 0:
            raise DataError(f"{train.source}: train images are constant, cannot normalize them")
    if len(mean) != channels or len(std) != channels:
        raise DataError(f"{train.source}: images have {channels} channels, normalization has {len(mean)}")

    if limit is not None:
        train_ds, val_ds, test_ds = (ds.subset(np.arange(min(limit, len(ds)))) for ds in (train_ds, val_ds, test_ds))

    out_hw = (size, size) if size is not None else (int(hw[0]), int(hw[1]))
    head: list[Transform] = [Resize(out_hw)] if size is not None else []
    normalize = Normalize(mean, std)
    eval_tf = Compose([*head, normalize])
    train_tf = eval_tf
    if augment:
        pad = max(1, round(out_hw[0] / (8 if flip else 14)))
        aug: list[Transform] = [RandomCrop(out_hw, padding=pad)]
        if flip:
            aug.append(RandomHorizontalFlip(0.5))
        train_tf = Compose([*head, *aug, normalize])
    train_ds.transform = train_tf
    val_ds.transform = eval_tf
    test_ds.transform = eval_tf

    meta = DatasetMeta(
        name=name,
        task="classification",
        num_classes=num_classes,
        class_names=list(class_names),
        input_shape=(int(channels), *out_hw),
        mean=tuple(float(m) for m in mean),
        std=tuple(float(s) for s in std),
    )
    return DatasetBundle(train=train_ds, val=val_ds, test=test_ds, meta=meta)


def _check_split(split: ImageSplit, num_classes: int) -> None:
    if split.images.ndim != 4 or split.images.dtype != np.uint8:
        raise DataError(
            f"{split.source}: decoded images are {split.images.dtype} "
            f"{split.images.shape}, expected uint8 N x H x W x C"
        )
    if len(split.images) != len(split.labels):
        raise DataError(f"{split.source}: {len(split.images)} images but {len(split.labels)} labels")
    if len(split.labels) and (split.labels.min() < 0 or split.labels.max() >= num_classes):
        bad = split.labels[(split.labels < 0) | (split.labels >= num_classes)][0]
        raise DataError(f"{split.source}: label {int(bad)} is outside 0..{num_classes - 1}")


def channel_stats(images: np.ndarray, chunk: int = 4096) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of ``uint8 N x H x W x C`` images scaled to [0, 1].

    Sums in float64 over chunks so 60k images never need a float copy of the whole set.
    """
    c = images.shape[3]
    s = np.zeros(c)
    s2 = np.zeros(c)
    for i in range(0, len(images), chunk):
        block = images[i : i + chunk].reshape(-1, c).astype(np.float64)
        s += block.sum(0)
        s2 += np.square(block).sum(0)
    n = images.shape[0] * images.shape[1] * images.shape[2]
    mean = s / n
    var = np.maximum(s2 / n - mean**2, 0.0)
    return list(mean / 255.0), list(np.sqrt(var) / 255.0)
