"""MNIST and Fashion-MNIST from the standard idx files (gzip'd or raw), parsed with numpy.

The idx format: a big-endian int32 magic number (2051 for images, 2049 for labels), the item
count, for images the rows and columns, then one unsigned byte per pixel or label.
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np

from tinytamer.data.images import ImageSplit, build_image_bundle
from tinytamer.data.registry import DatasetBundle, register_dataset
from tinytamer.errors import DataError

IMAGES_MAGIC = 2051
LABELS_MAGIC = 2049

_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

MNIST_MEAN, MNIST_STD = (0.1307,), (0.3081,)
FASHION_MEAN, FASHION_STD = (0.2860,), (0.3530,)
FASHION_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]


def find_idx_file(root: Path, stem: str) -> Path:
    """``root/stem`` or ``root/stem.gz``; a DataError lists what was expected if neither exists."""
    for candidate in (root / stem, root / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    expected = ", ".join(f"{s}[.gz]" for pair in _FILES.values() for s in pair)
    raise DataError(f"{root}: missing {stem}[.gz]; an idx dataset folder holds {expected}")


def _read_bytes(path: Path) -> bytes:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"{path}: cannot read ({e})") from e


def read_idx(path: Path, magic: int) -> np.ndarray:
    """Parse one idx file: ``uint8 N x rows x cols`` for images (2051), ``uint8 N`` for labels."""
    data = _read_bytes(path)
    ndim = 3 if magic == IMAGES_MAGIC else 1
    header = 4 * (1 + ndim)
    if len(data) < header:
        raise DataError(f"{path}: truncated idx file: expected at least a {header}-byte header, "
                        f"found {len(data)} bytes")
    fields = np.frombuffer(data, dtype=">i4", count=1 + ndim)
    found = int(fields[0])
    if found != magic:
        raise DataError(f"{path}: wrong idx magic number: found {found}, expected {magic} "
                        f"({'images' if magic == IMAGES_MAGIC else 'labels'})")
    dims = tuple(int(d) for d in fields[1:])
    if min(dims) < 0 or (ndim == 3 and min(dims[1:]) == 0):
        raise DataError(f"{path}: invalid idx dimensions {dims}")
    expected = header + int(np.prod(dims, dtype=np.int64))
    if len(data) != expected:
        what = "truncated" if len(data) < expected else "oversized"
        raise DataError(f"{path}: {what} idx file: header says {dims}, so expected "
                        f"{expected} bytes, found {len(data)}")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def read_idx_split(root: Path, split: str) -> ImageSplit:
    """The images and labels of ``split`` ("train" or "test"), checked against each other."""
    img_stem, lbl_stem = _FILES[split]
    img_path = find_idx_file(root, img_stem)
    lbl_path = find_idx_file(root, lbl_stem)
    images = read_idx(img_path, IMAGES_MAGIC)
    labels = read_idx(lbl_path, LABELS_MAGIC)
    if len(images) != len(labels):
        raise DataError(f"label count does not match image count: {len(labels)} labels in "
                        f"{lbl_path}, {len(images)} images in {img_path}")
    return ImageSplit(images[..., None], labels.astype(np.int64), f"{img_path} / {lbl_path}")


def _load(
    name: str, root: Path | None, class_names: list[str], mean: tuple[float, ...],
    std: tuple[float, ...], size: int | None, augment: bool, val_fraction: float, seed: int,
    limit: int | None,
) -> DatasetBundle:
    if root is None:
        raise DataError(f"dataset '{name}' needs root=<folder with the idx files "
                        "train-images-idx3-ubyte[.gz], ...>")
    if not root.is_dir():
        raise DataError(f"dataset '{name}': root folder {root} does not exist")
    return build_image_bundle(
        name,
        train=read_idx_split(root, "train"),
        test=read_idx_split(root, "test"),
        class_names=class_names,
        mean=mean,
        std=std,
        size=size,
        augment=augment,
        flip=False,
        val_fraction=val_fraction,
        seed=seed,
        limit=limit,
    )


@register_dataset("mnist")
def load_mnist(
    root: Path | None, *, size: int | None, augment: bool, val_fraction: float, seed: int,
    limit: int | None, cache_dir: str | Path | None,
) -> DatasetBundle:
    """MNIST from ``root`` (idx files); the standard normalization 0.1307 / 0.3081."""
    return _load("mnist", root, [str(i) for i in range(10)], MNIST_MEAN, MNIST_STD, size,
                 augment, val_fraction, seed, limit)


@register_dataset("fashion-mnist")
def load_fashion_mnist(
    root: Path | None, *, size: int | None, augment: bool, val_fraction: float, seed: int,
    limit: int | None, cache_dir: str | Path | None,
) -> DatasetBundle:
    """Fashion-MNIST from ``root`` (idx files); the standard normalization 0.2860 / 0.3530."""
    return _load("fashion-mnist", root, FASHION_CLASSES, FASHION_MEAN, FASHION_STD, size,
                 augment, val_fraction, seed, limit)
