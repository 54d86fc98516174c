"""MNIST and Fashion-MNIST from the standard idx files (gzip'd or raw), parsed with numpy.

The idx format: a big-endian int32 magic number (2051 for images, 2049 for labels), the item
count, for images the rows and columns, then one unsigned byte per pixel or label.
"""

from __future__ import annotations

import gzip
import math
import struct
import zlib
from pathlib import Path

import numpy as np

from tinytamer.data.images import ImageSplit, build_image_bundle
from tinytamer.data.registry import DatasetBundle, register_dataset
from tinytamer.errors import DataError

IMAGES_MAGIC = 2051
LABELS_MAGIC = 2049
# Declared (decompressed) size over gzip'd size above which an idx file is refused unread.
# Deflate tops out near 1032:1 on constant data; real image and label files compress 2-10:1.
MAX_GZIP_RATIO = 256

_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

MNIST_MEAN, MNIST_STD = (0.1307,), (0.3081,)
FASHION_MEAN, FASHION_STD = (0.2860,), (0.3530,)
FASHION_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]


def find_idx_file(root: Path, stem: str) -> Path:
    """``root/stem`` or ``root/stem.gz``; a DataError lists what was expected if neither exists."""
    for candidate in (root / stem, root / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    expected = ", ".join(f"{s}[.gz]" for pair in _FILES.values() for s in pair)
    raise DataError(f"{root}: missing {stem}[.gz]; an idx dataset folder holds {expected}")


def read_idx(path: Path, magic: int) -> np.ndarray:
    """Parse one idx file: ``uint8 N x rows x cols`` for images (2051), ``uint8 N`` for labels.

    The header is read first and bounds everything after it: a raw file must be exactly as
    long as it declares; a gzip'd one may not declare more than MAX_GZIP_RATIO times its
    compressed size, and is inflated only up to the declared size (plus one byte, to tell
    an oversized file), so a gzip bomb costs neither the memory nor the time it asks for.
    """
    ndim = 3 if magic == IMAGES_MAGIC else 1
    header_len = 4 * (1 + ndim)
    gzipped = path.suffix == ".gz"
    try:
        on_disk = path.stat().st_size
        with gzip.open(path, "rb") if gzipped else open(path, "rb") as f:
            header = f.read(header_len)
            if len(header) < header_len:
                raise DataError(
                    f"{path}: truncated idx file: expected at least a {header_len}-byte "
                    f"header, found {len(header)} bytes"
                )
            found, *dims = struct.unpack(f">{1 + ndim}i", header)
            if found != magic:
                raise DataError(
                    f"{path}: wrong idx magic number: found {found}, expected {magic} "
                    f"({'images' if magic == IMAGES_MAGIC else 'labels'})"
                )
            if min(dims) < 0 or (ndim == 3 and min(dims[1:]) == 0):
                raise DataError(f"{path}: invalid idx dimensions {tuple(dims)}")
            size = math.prod(dims)
            if gzipped and size > MAX_GZIP_RATIO * on_disk:
                raise DataError(
                    f"{path}: the idx header declares {tuple(dims)} = {size:,} bytes, over "
                    f"{MAX_GZIP_RATIO}x the {on_disk:,}-byte gzip file: no real image data "
                    "compresses that well (a corrupt header or a gzip bomb); if it is genuine, "
                    "gunzip it and point root at the raw file"
                )
            if not gzipped and on_disk != header_len + size:
                raise _size_error(path, dims, header_len + size, on_disk)
            payload = f.read(size + 1)
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"{path}: cannot read ({e})") from e
    if len(payload) != size:
        raise _size_error(path, dims, header_len + size, header_len + len(payload))
    return np.frombuffer(payload, dtype=np.uint8).reshape(dims)


def _size_error(path: Path, dims: list[int], expected: int, found: int) -> DataError:
    # A gzip'd file is read only up to one byte past the declared size.
    if found < expected:
        what, seen = "truncated", f"{found}" + (" decompressed" if path.suffix == ".gz" else "")
    else:
        what, seen = "oversized", f"{found}" if path.suffix != ".gz" else "more (reading stopped there)"
    return DataError(f"{path}: {what} idx file: header says {tuple(dims)}, so expected {expected} bytes, found {seen}")


def read_idx_split(root: Path, split: str) -> ImageSplit:
    """The images and labels of ``split`` ("train" or "test"), checked against each other."""
    img_stem, lbl_stem = _FILES[split]
    img_path = find_idx_file(root, img_stem)
    lbl_path = find_idx_file(root, lbl_stem)
    images = read_idx(img_path, IMAGES_MAGIC)
    labels = read_idx(lbl_path, LABELS_MAGIC)
    if len(images) != len(labels):
        raise DataError(
            f"label count does not match image count: {len(labels)} labels in "
            f"{lbl_path}, {len(images)} images in {img_path}"
        )
    return ImageSplit(images[..., None], labels.astype(np.int64), f"{img_path} / {lbl_path}")


def _load(
    name: str,
    root: Path | None,
    class_names: list[str],
    mean: tuple[float, ...],
    std: tuple[float, ...],
    size: int | None,
    augment: bool,
    val_fraction: float,
    seed: int,
    limit: int | None,
) -> DatasetBundle:
    if root is None:
        raise DataError(f"dataset '{name}' needs root=<folder with the idx files train-images-idx3-ubyte[.gz], ...>")
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
    root: Path | None,
    *,
    size: int | None,
    augment: bool,
    val_fraction: float,
    seed: int,
    limit: int | None,
    cache_dir: str | Path | None,
) -> DatasetBundle:
    """MNIST from ``root`` (idx files); the standard normalization 0.1307 / 0.3081."""
    return _load(
        "mnist", root, [str(i) for i in range(10)], MNIST_MEAN, MNIST_STD, size, augment, val_fraction, seed, limit
    )


@register_dataset("fashion-mnist")
def load_fashion_mnist(
    root: Path | None,
    *,
    size: int | None,
    augment: bool,
    val_fraction: float,
    seed: int,
    limit: int | None,
    cache_dir: str | Path | None,
) -> DatasetBundle:
    """Fashion-MNIST from ``root`` (idx files); the standard normalization 0.2860 / 0.3530."""
    return _load(
        "fashion-mnist", root, FASHION_CLASSES, FASHION_MEAN, FASHION_STD, size, augment, val_fraction, seed, limit
    )
