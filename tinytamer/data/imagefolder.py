"""Image-folder datasets: ``<root>/<split>/<class>/<image>`` with splits train, test, optional val.

The tree may be a folder or a ``.tar[.gz|.bz2|.xz]`` of one (optionally inside one top
folder).  Images are decoded once with Pillow into ``uint8 N x H x W x C`` arrays and cached
as an ``.npz``.  A folder's cache key covers its path, the decode settings and every file's
name, size and mtime; an archive's covers its path, size and mtime.  An archive is decoded
straight from the compressed stream in one pass: nothing is extracted to disk, so a 60k-image
archive costs one ``.npz`` in the cache instead of 60k small files.
"""

from __future__ import annotations

import os
import tarfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

import numpy as np
from PIL import Image
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeRemainingColumn

from tinytamer.data.arrays import interleave_by_class
from tinytamer.data.cache import cache_root, digest, load_arrays, save_arrays
from tinytamer.data.images import ImageSplit, build_image_bundle
from tinytamer.data.registry import DatasetBundle, register_dataset
from tinytamer.errors import DataError

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".ppm", ".pgm", ".pbm", ".webp", ".tif", ".tiff"}
)
SPLITS = ("train", "val", "test")
_ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")
_GREY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "F"})
_LAYOUT = "train/<class>/<image> and test/<class>/<image> (optionally val/<class>/<image>)"

# found[split][class] = names of that class's images (file paths, or archive member names)
Found = dict[str, dict[str, list[str]]]


def is_archive(path: Path) -> bool:
    """Whether ``path`` names a tar archive this module can read."""
    return path.is_file() and path.name.lower().endswith(_ARCHIVE_SUFFIXES)


def is_image_name(name: str) -> bool:
    """Whether a file name has an image extension (hidden files excluded)."""
    base = os.path.basename(name)
    return not base.startswith(".") and os.path.splitext(base)[1].lower() in IMAGE_EXTENSIONS


def find_tree(root: Path) -> Path | None:
    """The folder holding ``train/``: ``root`` itself or its only subfolder."""
    if (root / "train").is_dir():
        return root
    subdirs = [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")]
    if len(subdirs) == 1 and (subdirs[0] / "train").is_dir():
        return subdirs[0]
    return None


def organize(found: Found, where: str) -> tuple[list[str], dict[str, list[tuple[str, int]]]]:
    """Check a scanned layout and order it: class names and each split's ``(name, label)``.

    Classes are the sorted train subfolders; within a class, names are sorted; the classes
    are then interleaved (see :func:`interleave_by_class`) so the first N of a split cover
    every class.
    """
    for required in ("train", "test"):
        if required not in found:
            raise DataError(f"{where}: missing the '{required}' folder; expected {_LAYOUT}")
    class_names = sorted(found["train"])
    index = {c: i for i, c in enumerate(class_names)}
    splits: dict[str, list[tuple[str, int]]] = {}
    for split in SPLITS:
        if split not in found:
            continue
        names: list[str] = []
        labels: list[int] = []
        for cname in sorted(found[split]):
            if cname not in index:
                raise DataError(
                    f"{where}/{split}/{cname}: class '{cname}' is not among the "
                    f"train classes ({', '.join(class_names)})"
                )
            images = sorted(found[split][cname])
            if not images:
                raise DataError(
                    f"{where}/{split}/{cname}: empty class folder (no images with "
                    f"extensions {', '.join(sorted(IMAGE_EXTENSIONS))})"
                )
            names += images
            labels += [index[cname]] * len(images)
        if not names:
            raise DataError(f"{where}/{split}: no images found (expected {split}/<class>/<image>)")
        order = interleave_by_class(np.array(labels))
        splits[split] = [(names[i], labels[i]) for i in order]
    return class_names, splits


@contextmanager
def _decoding(intro: str, total: int) -> Iterator[Callable[[int], None]]:
    """Say on stderr that a long first decode starts (one line, also in a log), then draw a
    progress bar on a terminal while the caller reports how much of ``total`` is done."""
    console = Console(stderr=True)
    console.print(intro, markup=False, highlight=False, soft_wrap=True)
    columns = [TextColumn("decoding"), BarColumn(), TaskProgressColumn(), TimeRemainingColumn()]
    with Progress(*columns, console=console, disable=not console.is_terminal) as bar:
        task = bar.add_task("decode", total=total)
        yield lambda done: bar.update(task, completed=done)


def decode_image(source: Path | IO[bytes], mode: str | None, size: int | None, name: str | None = None) -> np.ndarray:
    """One image as ``uint8 H x W x C``, resized to ``size`` x ``size`` if given.

    ``mode`` "L" or "RGB" converts; None keeps grey images grey and makes the rest RGB.
    ``name`` labels errors (default: the path).
    """
    try:
        with Image.open(source) as im:
            target = mode or ("L" if im.mode in _GREY_MODES else "RGB")
            im = im.convert(target)
            if size is not None and im.size != (size, size):
                im = im.resize((size, size), Image.Resampling.BILINEAR)
            arr = np.asarray(im, dtype=np.uint8)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise DataError(f"{name or source}: unreadable or corrupt image ({e})") from e
    return arr[..., None] if arr.ndim == 2 else arr


def stack_images(arrays: list[np.ndarray], names: list[str]) -> np.ndarray:
    """Stack decoded images into ``N x H x W x C``; all must share one shape."""
    first = arrays[0]
    out = np.empty((len(arrays), *first.shape), dtype=np.uint8)
    for i, (arr, name) in enumerate(zip(arrays, names, strict=True)):
        if arr.shape != first.shape:
            raise DataError(
                f"{name}: image is {arr.shape[1]}x{arr.shape[0]}x{arr.shape[2]} but "
                f"{names[0]} is {first.shape[1]}x{first.shape[0]}x{first.shape[2]}; "
                "pass size= (and channels=) to make all images alike"
            )
        out[i] = arr
    return out


def _mode(channels: int | None, where: object) -> str | None:
    if channels not in (None, 1, 3):
        raise DataError(f"{where}: channels must be 1 (grey) or 3 (RGB), got {channels}")
    return {1: "L", 3: "RGB"}.get(channels) if channels else None


def _as_splits(arrays: dict[str, np.ndarray], where: str) -> tuple[list[str], dict[str, ImageSplit]]:
    splits = {
        s: ImageSplit(arrays[f"{s}_images"], arrays[f"{s}_labels"], f"{where}/{s}")
        for s in SPLITS
        if f"{s}_images" in arrays
    }
    return [str(c) for c in arrays["class_names"]], splits


def _pack(class_names: list[str], images: dict[str, np.ndarray], labels: dict[str, list[int]]) -> dict[str, np.ndarray]:
    arrays = {"class_names": np.array(class_names)}
    for split in images:
        arrays[f"{split}_images"] = images[split]
        arrays[f"{split}_labels"] = np.array(labels[split], dtype=np.int64)
    return arrays


def _uniform_mode(mode: str | None, decoded: list[np.ndarray]) -> list[np.ndarray]:
    # With the mode inferred per image, a tree mixing grey and colour becomes all RGB.
    if mode is None and len({a.shape[2] for a in decoded}) > 1:
        return [np.repeat(a, 3, axis=2) if a.shape[2] == 1 else a for a in decoded]
    return decoded


def scan_tree(tree: Path) -> tuple[Found, list[tuple[str, int, int]]]:
    """The layout under ``tree`` and each image's ``(relative path, size, mtime_ns)``."""
    found: Found = {}
    stats: list[tuple[str, int, int]] = []
    for split in SPLITS:
        folder = tree / split
        if not folder.is_dir():
            continue
        found[split] = {}
        with os.scandir(folder) as classes:
            for cdir in classes:
                if not cdir.is_dir() or cdir.name.startswith("."):
                    continue
                files = found[split].setdefault(cdir.name, [])
                with os.scandir(cdir.path) as entries:
                    for e in entries:
                        if is_image_name(e.name) and e.is_file():
                            st = e.stat()
                            files.append(e.path)
                            stats.append((f"{split}/{cdir.name}/{e.name}", st.st_size, st.st_mtime_ns))
    stats.sort()
    return found, stats


def load_tree(
    tree: Path, *, size: int | None, channels: int | None, cache_dir: str | Path | None
) -> tuple[list[str], dict[str, ImageSplit]]:
    """Decode (or read from the cache) every split of an image folder tree."""
    mode = _mode(channels, tree)
    found, stats = scan_tree(tree)
    class_names, files = organize(found, str(tree))
    key = digest("imagefolder-v1", str(tree.resolve()), channels, size, stats)
    cache_file = cache_root(cache_dir) / f"imagefolder-{tree.name}-{key}.npz"
    arrays = load_arrays(cache_file)
    if arrays is None:
        count = sum(len(items) for items in files.values())
        with _decoding(f"decoding {count} images from {tree} (first time; cached after)", total=count) as report:
            decoded: dict[str, list[np.ndarray]] = {s: [] for s in files}
            done = 0
            for s, items in files.items():
                for p, _ in items:
                    decoded[s].append(decode_image(Path(p), mode, size))
                    done += 1
                    report(done)
        every = _uniform_mode(mode, [a for s in decoded for a in decoded[s]])
        images, at = {}, 0
        for s, items in files.items():
            images[s] = stack_images(every[at : at + len(items)], [p for p, _ in items])
            at += len(items)
        arrays = _pack(class_names, images, {s: [lbl for _, lbl in it] for s, it in files.items()})
        save_arrays(cache_file, arrays)
    return _as_splits(arrays, str(tree))


def _member_place(name: str) -> tuple[str, str, str] | None:
    """``(prefix, split, class)`` of an archive member ``[prefix/]split/class/file``."""
    parts = name.strip("/").split("/")
    if len(parts) >= 3 and parts[-3] in SPLITS:
        return "/".join(parts[:-3]), parts[-3], parts[-2]
    return None


def decode_archive(
    archive: Path, mode: str | None, size: int | None
) -> tuple[list[str], dict[str, np.ndarray], dict[str, list[int]]]:
    """Decode every ``[prefix/]split/class/image`` member of a tar archive in one pass."""
    found: Found = {}
    decoded: dict[str, np.ndarray] = {}
    prefixes: set[str] = set()
    total = archive.stat().st_size
    intro = f"decoding the images in {archive} ({total / 1e6:.0f} MB; first time; cached after)"
    try:
        # streaming: no seeks back in the gzip; progress is the compressed bytes read so far
        with (
            _decoding(intro, total=total) as report,
            open(archive, "rb") as raw,
            tarfile.open(fileobj=raw, mode="r|*") as tar,
        ):
            for member in tar:
                report(raw.tell())
                if member.isdir():
                    place = _member_place(member.name + "/x")
                    if place:
                        found.setdefault(place[1], {}).setdefault(place[2], [])
                    continue
                place = _member_place(member.name)
                if not (member.isfile() and place and is_image_name(member.name)):
                    continue
                prefixes.add(place[0])
                found.setdefault(place[1], {}).setdefault(place[2], []).append(member.name)
                f = tar.extractfile(member)
                if f is None:
                    continue
                decoded[member.name] = decode_image(f, mode, size, f"{archive}:{member.name}")
    except (tarfile.TarError, EOFError, OSError) as e:
        raise DataError(f"{archive}: cannot read the archive ({e})") from e
    if len(prefixes) > 1:
        raise DataError(
            f"{archive}: images under several top folders "
            f"({', '.join(sorted(prefixes))}); expected one tree with {_LAYOUT}"
        )
    where = f"{archive}:{next(iter(prefixes))}" if prefixes else str(archive)
    class_names, members = organize(found, where)
    every = _uniform_mode(mode, list(decoded.values()))
    decoded = dict(zip(decoded, every, strict=True))
    images = {
        s: stack_images([decoded[m] for m, _ in items], [f"{archive}:{m}" for m, _ in items])
        for s, items in members.items()
    }
    labels = {s: [lbl for _, lbl in items] for s, items in members.items()}
    return class_names, images, labels


def load_archive(
    archive: Path, *, size: int | None, channels: int | None, cache_dir: str | Path | None
) -> tuple[list[str], dict[str, ImageSplit]]:
    """Decode (or read from the cache) an archive of an image folder tree."""
    mode = _mode(channels, archive)
    st = archive.stat()
    key = digest("imagefolder-archive-v1", str(archive.resolve()), st.st_size, st.st_mtime_ns, channels, size)
    cache_file = cache_root(cache_dir) / f"imagefolder-{archive.name.split('.')[0]}-{key}.npz"
    arrays = load_arrays(cache_file)
    if arrays is None:
        arrays = _pack(*decode_archive(archive, mode, size))
        save_arrays(cache_file, arrays)
    return _as_splits(arrays, str(archive))


def load_images(
    root: Path, *, size: int | None, channels: int | None, cache_dir: str | Path | None
) -> tuple[list[str], dict[str, ImageSplit]]:
    """An image tree from a folder or an archive; a DataError says what layout was expected."""
    if is_archive(root):
        return load_archive(root, size=size, channels=channels, cache_dir=cache_dir)
    tree = find_tree(root) if root.is_dir() else None
    if tree is None:
        raise DataError(f"{root}: no image folder layout found; expected {_LAYOUT} inside (or a .tar.gz of that)")
    return load_tree(tree, size=size, channels=channels, cache_dir=cache_dir)


@register_dataset("imagefolder")
def load_imagefolder(
    root: Path | None,
    *,
    size: int | None,
    augment: bool,
    val_fraction: float,
    seed: int,
    limit: int | None,
    cache_dir: str | Path | None,
    channels: int | None = None,
    flip: bool = True,
) -> DatasetBundle:
    """Any ``<root>/<split>/<class>/<image>`` tree, or a ``.tar[.gz]`` of one.

    Images of different sizes need ``size``.  ``channels`` (1 or 3) forces grey or RGB; by
    default grey images stay grey (a mix becomes RGB).  Normalization is computed from train.
    ``flip=False`` turns off the horizontal flip of ``augment`` (for text, digits...).
    """
    if root is None:
        raise DataError(f"dataset 'imagefolder' needs root=<folder with {_LAYOUT}>")
    if not root.exists():
        raise DataError(f"dataset 'imagefolder': root {root} does not exist")
    class_names, splits = load_images(root, size=size, channels=channels, cache_dir=cache_dir)
    return build_image_bundle(
        "imagefolder",
        train=splits["train"],
        test=splits["test"],
        val=splits.get("val"),
        class_names=class_names,
        size=size,
        augment=augment,
        flip=flip,
        val_fraction=val_fraction,
        seed=seed,
        limit=limit,
    )
