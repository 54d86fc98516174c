"""Datasets: a registry of loaders returning train/val/test splits with their meta.

Built in: ``digits`` (scikit-learn, offline; the default), ``mnist`` and ``fashion-mnist``
(idx files), ``cifar10`` (python batches, image tree or .tar.gz) and ``imagefolder``.
Other kinds of data add themselves with :func:`register_dataset`.
"""

from tinytamer.data import audio, cifar, digits, idx, imagefolder, keywords  # noqa: F401  (register loaders)
from tinytamer.data.arrays import ArrayDataset
from tinytamer.data.loader import make_loader
from tinytamer.data.registry import (
    DatasetBundle,
    DatasetMeta,
    get_dataset,
    list_datasets,
    register_dataset,
)

# The detection datasets register themselves; imported after the registry they use.
from tinytamer.detect import voc as _voc  # noqa: E402, F401

__all__ = [
    "ArrayDataset",
    "DatasetBundle",
    "DatasetMeta",
    "get_dataset",
    "list_datasets",
    "make_loader",
    "register_dataset",
]
