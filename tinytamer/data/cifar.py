"""CIFAR-10 from the official python batches or from an image-folder tree (or a .tar.gz of
either, read in place without extracting it).

The official ``cifar-10-batches-py`` files are pickles.  They are read with a restricted
unpickler that can rebuild only dicts, lists, strings, bytes, numbers and numpy arrays; any
other global in the stream is refused, so a crafted file cannot run code.
"""

from __future__ import annotations

import codecs
import io
import pickle
import tarfile
from pathlib import Path
from typing import Any

import numpy as np

from tinytamer.data.imagefolder import find_tree, is_archive, is_image_name, load_images
from tinytamer.data.images import ImageSplit, build_image_bundle
from tinytamer.data.registry import DatasetBundle, register_dataset
from tinytamer.errors import DataError

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR10_CLASSES = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
]
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"
META_FILE = "batches.meta"


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    # Protocol-2 pickles rebuild bytes as _codecs.encode(str, "latin1"); allow only that.
    if encoding != "latin1":
        raise pickle.UnpicklingError(f"_codecs.encode with encoding {encoding!r} is not allowed")
    return codecs.encode(text, "latin1")


def _numpy_globals() -> dict[tuple[str, str], Any]:
    # The functions numpy itself names when it pickles arrays and scalars, under both the
    # numpy 1 ("numpy.core") and numpy 2 ("numpy._core") module names.
    reconstruct = np.zeros(1).__reduce__()[0]
    frombuffer = np.zeros(1).__reduce_ex__(5)[0]
    scalar = np.int64(0).__reduce__()[0]
    allowed: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): _latin1_encode,
    }
    for core in ("numpy.core", "numpy._core"):
        allowed[(f"{core}.multiarray", "_reconstruct")] = reconstruct
        allowed[(f"{core}.multiarray", "scalar")] = scalar
        allowed[(f"{core}.numeric", "_frombuffer")] = frombuffer
    return allowed


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickles plain containers and numpy arrays only; any other global is refused."""

    _allowed = _numpy_globals()

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refusing to load '{module}.{name}': only numpy arrays and plain containers "
                "are allowed in a CIFAR batch"
            ) from None


def load_pickle_safely(data: bytes, name: str) -> Any:
    """Unpickle ``data`` with :class:`RestrictedUnpickler` (Python 2 pickles included).

    ``name`` (the file, or ``archive:member``) labels errors.
    """
    try:
        return RestrictedUnpickler(io.BytesIO(data), encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError) as e:
        raise DataError(f"{name}: not a valid CIFAR batch pickle ({e})") from e


def _str_keys(d: dict[Any, Any]) -> dict[str, Any]:
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in d.items()}


def read_batch(data: bytes, name: str) -> tuple[np.ndarray, np.ndarray]:
    """One batch file as ``uint8 N x 32 x 32 x 3`` images and int64 labels."""
    obj = load_pickle_safely(data, name)
    if not isinstance(obj, dict):
        raise DataError(f"{name}: expected a dict with 'data' and 'labels', found {type(obj).__name__}")
    batch = _str_keys(obj)
    missing = [k for k in ("data", "labels") if k not in batch]
    if missing:
        raise DataError(f"{name}: CIFAR batch is missing key(s) {missing}; found {sorted(batch)}")
    images = np.asarray(batch["data"])
    labels = np.asarray(batch["labels"])
    if images.dtype != np.uint8 or images.ndim != 2 or images.shape[1] != 3 * 32 * 32:
        raise DataError(
            f"{name}: 'data' is {images.dtype} {images.shape}, expected uint8 N x 3072 (3 x 32 x 32 planes)"
        )
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{name}: 'labels' must be a list of integers, found {labels.dtype} {labels.shape}")
    if len(labels) != len(images):
        raise DataError(f"{name}: {len(labels)} labels but {len(images)} images")
    images = images.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), labels.astype(np.int64)


def parse_batches(blobs: dict[str, bytes], where: str) -> tuple[list[str], ImageSplit, ImageSplit]:
    """Class names and train/test splits from the batch files' bytes (by file name)."""
    expected = [*TRAIN_BATCHES, TEST_BATCH]
    missing = [f for f in expected if f not in blobs]
    if missing:
        raise DataError(
            f"{where}: missing CIFAR-10 batch file(s) {', '.join(missing)}; "
            f"expected {', '.join(expected)} (and optionally {META_FILE})"
        )
    parts = [read_batch(blobs[f], f"{where}/{f}") for f in TRAIN_BATCHES]
    train = ImageSplit(
        np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]), f"{where}/data_batch_[1-5]"
    )
    test = ImageSplit(*read_batch(blobs[TEST_BATCH], f"{where}/{TEST_BATCH}"), f"{where}/{TEST_BATCH}")
    class_names = CIFAR10_CLASSES
    if META_FILE in blobs:
        meta = load_pickle_safely(blobs[META_FILE], f"{where}/{META_FILE}")
        names = _str_keys(meta).get("label_names") if isinstance(meta, dict) else None
        if not isinstance(names, list) or not names:
            raise DataError(f"{where}/{META_FILE}: expected a dict with a 'label_names' list")
        class_names = [n.decode() if isinstance(n, bytes) else str(n) for n in names]
    return class_names, train, test


def find_batches_dir(root: Path) -> Path | None:
    """``root``, ``root/cifar-10-batches-py`` or ``root``'s only subfolder if it holds batches."""
    subdirs = [p for p in root.iterdir() if p.is_dir()]
    candidates = [root / "cifar-10-batches-py", root] + (subdirs if len(subdirs) == 1 else [])
    for d in candidates:
        if any((d / f).is_file() for f in (*TRAIN_BATCHES, TEST_BATCH)):
            return d
    return None


def read_batches_dir(folder: Path) -> tuple[list[str], ImageSplit, ImageSplit]:
    """Class names and the train/test splits from a ``cifar-10-batches-py`` folder."""
    blobs: dict[str, bytes] = {}
    for name in (*TRAIN_BATCHES, TEST_BATCH, META_FILE):
        path = folder / name
        if path.is_file():
            try:
                blobs[name] = path.read_bytes()
            except OSError as e:
                raise DataError(f"{path}: cannot read ({e})") from e
    return parse_batches(blobs, str(folder))


def read_batches_archive(archive: Path) -> tuple[list[str], ImageSplit, ImageSplit] | None:
    """The batches inside a tar archive (as ``cifar-10-python.tar.gz``), or None if it holds
    images instead; stops at the first image member, so an image archive costs no full pass.
    """
    wanted = {*TRAIN_BATCHES, TEST_BATCH, META_FILE}
    blobs: dict[str, bytes] = {}
    folders: set[str] = set()
    try:
        with tarfile.open(archive, "r|*") as tar:
            for member in tar:
                base = member.name.rsplit("/", 1)[-1]
                if member.isfile() and base in wanted:
                    f = tar.extractfile(member)
                    if f is not None:
                        blobs[base] = f.read()
                        folders.add(member.name.rpartition("/")[0])
                elif member.isfile() and is_image_name(member.name):
                    return None
    except (tarfile.TarError, EOFError, OSError) as e:
        raise DataError(f"{archive}: cannot read the archive ({e})") from e
    if not blobs:
        return None
    return parse_batches(blobs, f"{archive}:{'|'.join(sorted(folders))}")


@register_dataset("cifar10")
def load_cifar10(
    root: Path | None,
    *,
    size: int | None,
    augment: bool,
    val_fraction: float,
    seed: int,
    limit: int | None,
    cache_dir: str | Path | None,
) -> DatasetBundle:
    """CIFAR-10 from ``root``: a folder holding ``cifar-10-batches-py`` (or the batch files),
    an image tree ``train/<class>/*.jpg`` + ``test/<class>/*.jpg``, or a ``.tar.gz`` of
    either.  ``augment`` = random crop 32 with padding 4 + horizontal flip; the standard
    CIFAR-10 normalization.
    """
    if root is None:
        raise DataError("dataset 'cifar10' needs root=<cifar-10-batches-py folder, image folder tree or .tar.gz>")
    if not root.exists():
        raise DataError(f"dataset 'cifar10': root {root} does not exist")
    val = None
    if is_archive(root):
        batches = read_batches_archive(root)
    else:
        folder = find_batches_dir(root) if root.is_dir() else None
        batches = read_batches_dir(folder) if folder is not None else None
    if batches is not None:
        class_names, train, test = batches
    else:
        if root.is_dir() and find_tree(root) is None:
            raise DataError(
                f"{root}: no CIFAR-10 data found; expected cifar-10-batches-py/ "
                f"({', '.join([*TRAIN_BATCHES, TEST_BATCH])}), or train/<class>/*.jpg and "
                "test/<class>/*.jpg, or a .tar.gz of either"
            )
        class_names, splits = load_images(root, size=None, channels=3, cache_dir=cache_dir)
        train, test, val = splits["train"], splits["test"], splits.get("val")
    return build_image_bundle(
        "cifar10",
        train=train,
        test=test,
        val=val,
        class_names=class_names,
        mean=CIFAR10_MEAN,
        std=CIFAR10_STD,
        size=size,
        augment=augment,
        flip=True,
        val_fraction=val_fraction,
        seed=seed,
        limit=limit,
    )
