"""The dataset registry: what a dataset is (meta + three splits) and how a name finds its loader.

A loader is a function registered under a name with :func:`register_dataset`; it takes the
arguments of :func:`get_dataset` as keywords and returns a :class:`DatasetBundle`.  Image
classification loaders share :func:`tinytamer.data.images.build_image_bundle`; other kinds of
data (audio, detection) register their own loaders the same way.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch.utils.data

from tinytamer.errors import DataError


@dataclass(frozen=True)
class DatasetMeta:
    """What a model needs to know about a dataset, after transforms."""

    name: str
    task: str  # "classification"
    num_classes: int
    class_names: list[str]
    input_shape: tuple[int, int, int]  # (C, H, W) after transforms
    mean: tuple[float, ...]  # per-channel normalization used
    std: tuple[float, ...]


@dataclass
class DatasetBundle:
    """The three splits of a dataset; items are ``(float32 C x H x W tensor, int label)``."""

    train: torch.utils.data.Dataset
    val: torch.utils.data.Dataset
    test: torch.utils.data.Dataset
    meta: DatasetMeta


Loader = Callable[..., DatasetBundle]

_LOADERS: dict[str, Loader] = {}


def _canonical(name: str) -> str:
    # "Fashion_MNIST" and "fashion-mnist" name the same dataset.
    return name.strip().lower().replace("_", "-")


def register_dataset(name: str) -> Callable[[Loader], Loader]:
    """Decorator: register ``loader(root, *, size, augment, ...) -> DatasetBundle`` as ``name``."""

    def deco(loader: Loader) -> Loader:
        key = _canonical(name)
        if key in _LOADERS and _LOADERS[key] is not loader:
            raise ValueError(f"dataset '{key}' is already registered by {_LOADERS[key]!r}")
        _LOADERS[key] = loader
        return loader

    return deco


def list_datasets() -> list[str]:
    """Names of the registered datasets, sorted."""
    return sorted(_LOADERS)


def get_dataset(
    name: str,
    root: str | Path | None = None,
    *,
    size: int | None = None,
    augment: bool = False,
    val_fraction: float = 0.1,
    seed: int = 0,
    limit: int | None = None,
    cache_dir: str | Path | None = None,
    classes: Sequence[int | str] | None = None,
    **options: object,
) -> DatasetBundle:
    """Load dataset ``name`` (see :func:`list_datasets`) as train/val/test splits.

    ``size`` resizes images to ``size x size``; ``augment`` turns on the dataset's standard
    training augmentation (train split only); ``val`` is carved from train with
    ``val_fraction`` and ``seed`` unless the data has its own val split; ``limit`` keeps the
    first N items of each split; ``cache_dir`` holds decoded arrays and extracted archives
    (default ``$TINYTAMER_CACHE`` or ``~/.cache/tinytamer``).  ``classes`` (indices or names)
    keeps only those classes, relabelled ``0..k-1`` in the order given, before ``limit``; the
    normalization stays the one of the whole dataset.  ``options`` are loader-specific.
    """
    key = _canonical(name)
    loader = _LOADERS.get(key)
    if loader is None:
        raise DataError(f"unknown dataset '{name}'; known datasets: {', '.join(list_datasets())}")
    if not 0.0 <= val_fraction < 1.0:
        raise DataError(f"dataset '{key}': val_fraction must be in [0, 1), got {val_fraction}")
    if limit is not None and limit < 1:
        raise DataError(f"dataset '{key}': limit must be a positive number of items, got {limit}")
    if size is not None and size < 1:
        raise DataError(f"dataset '{key}': size must be a positive number of pixels, got {size}")
    _check_options(key, loader, options)
    if classes is not None and not len(classes):
        raise DataError(f"dataset '{key}': classes (data.classes) is empty; name at least one class or leave it out")
    bundle = loader(
        Path(root).expanduser() if root is not None else None,
        size=size,
        augment=augment,
        val_fraction=val_fraction,
        seed=seed,
        limit=limit if classes is None else None,  # the limit counts items of the kept classes
        cache_dir=cache_dir,
        **options,
    )
    return bundle if classes is None else keep_classes(bundle, classes, limit)


def keep_classes(bundle: DatasetBundle, classes: Sequence[int | str], limit: int | None = None) -> DatasetBundle:
    """The items of ``classes`` (indices or names) only, relabelled ``0..k-1`` in that order;
    then the first ``limit`` items of each split.  Splits must hold ``labels`` and ``subset``
    (as the image and audio datasets do)."""
    meta = bundle.meta
    where = f"dataset '{meta.name}': classes (data.classes)"
    if meta.task != "classification":
        raise DataError(f"{where}: only classification data can keep a subset of classes, this is {meta.task}")
    picked = [_class_index(c, meta.class_names, where) for c in classes]
    if len(set(picked)) != len(picked):
        raise DataError(f"{where}: a class is named twice in {list(classes)}")
    relabel = np.full(meta.num_classes, -1, dtype=np.int64)
    relabel[picked] = np.arange(len(picked))
    splits = {}
    for name in ("train", "val", "test"):
        ds = getattr(bundle, name)
        if not hasattr(ds, "labels") or not hasattr(ds, "subset"):
            raise DataError(f"{where}: the {name} split of this dataset cannot be filtered by class")
        keep = np.flatnonzero(relabel[ds.labels] >= 0)[:limit]
        kept = ds.subset(keep)
        kept.labels = relabel[kept.labels]
        splits[name] = kept
    if not len(splits["train"]):
        raise DataError(f"{where}: the train split holds no item of {list(classes)}")
    names = [meta.class_names[i] for i in picked]
    return DatasetBundle(**splits, meta=dataclasses.replace(meta, num_classes=len(picked), class_names=names))


def _class_index(c: int | str, names: list[str], where: str) -> int:
    # bool is an int to Python; 'true' in a YAML list is a typo, not class 1.
    if isinstance(c, int) and not isinstance(c, bool):
        if 0 <= c < len(names):
            return c
        raise DataError(f"{where}: class index {c} is outside 0..{len(names) - 1}")
    if isinstance(c, str) and c in names:
        return names.index(c)
    raise DataError(f"{where}: unknown class {c!r}; its classes: {', '.join(names)} (or their indices)")


_COMMON = {"root", "size", "augment", "val_fraction", "seed", "limit", "cache_dir"}


def _check_options(key: str, loader: Loader, options: dict[str, object]) -> None:
    # A misspelt option should name itself, not surface as a TypeError deep in a loader.
    params = inspect.signature(loader).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    known = sorted(set(params) - _COMMON)
    unknown = sorted(set(options) - set(params))
    if unknown:
        raise DataError(
            f"dataset '{key}' has no option {', '.join(repr(u) for u in unknown)}; "
            f"its options: {', '.join(known) or 'none'}"
        )
