"""The dataset registry: what a dataset is (meta + three splits) and how a name finds its loader.

A loader is a function registered under a name with :func:`register_dataset`; it takes the
arguments of :func:`get_dataset` as keywords and returns a :class:`DatasetBundle`.  Image
classification loaders share :func:`tinytamer.data.images.build_image_bundle`; other kinds of
data (audio, detection) register their own loaders the same way.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

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
    **options: object,
) -> DatasetBundle:
    """Load dataset ``name`` (see :func:`list_datasets`) as train/val/test splits.

    ``size`` resizes images to ``size x size``; ``augment`` turns on the dataset's standard
    training augmentation (train split only); ``val`` is carved from train with
    ``val_fraction`` and ``seed`` unless the data has its own val split; ``limit`` keeps the
    first N items of each split; ``cache_dir`` holds decoded arrays and extracted archives
    (default ``$TINYTAMER_CACHE`` or ``~/.cache/tinytamer``).  ``options`` are loader-specific.
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
    return loader(
        Path(root).expanduser() if root is not None else None,
        size=size,
        augment=augment,
        val_fraction=val_fraction,
        seed=seed,
        limit=limit,
        cache_dir=cache_dir,
        **options,
    )


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
