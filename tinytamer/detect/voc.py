"""The ``voc`` detection dataset: any folder of Pascal VOC XML annotations and their images.

Layout: annotations in ``Annotations/`` or ``annotations/`` (one ``.xml`` per image), images
in ``JPEGImages/`` or ``images/`` under the name the XML's ``<filename>`` gives.

Split (fixed, by image, independent of the seed and of the order of files): an image is in
``test`` when the first 8 hex digits of the SHA-1 of its annotation file's stem, modulo 100,
fall below ``test_percent`` (default 20); ``val`` takes the next ``val_fraction`` x
(100 - ``test_percent``) buckets; the rest is ``train``.  Adding images never moves others.

An item is ``(image, boxes)``: the image letterboxed to ``size`` (default 352) as a float
``3 x size x size`` tensor in [0, 1], and its boxes as a ``max_boxes x 5`` float tensor of
rows ``(x1, y1, x2, y2, class)`` in the letterboxed pixels, padded with rows of class -1
(fixed shape, so the default collate batches it).  ``augment`` applies
:class:`tinytamer.detect.augment.Augment` to the train split.

The XML is untrusted: files are read up to 1 MiB, documents with a DTD or entity
declarations are refused (no entity expansion can happen), and every field is checked.  A
box outside its image, an empty or malformed file, a missing field or a bad file name is a
``DataError`` naming the file.  Boxes marked ``difficult`` are kept as ordinary boxes.
"""

from __future__ import annotations

import hashlib
import math
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from tinytamer.data.registry import DatasetBundle, DatasetMeta, register_dataset
from tinytamer.detect.augment import Augment
from tinytamer.detect.letterbox import letterbox
from tinytamer.errors import DataError

MAX_XML_BYTES = 1 << 20
MAX_OBJECTS = 1000  # per image
MAX_SIDE = 1 << 15  # pixels, per image side
DEFAULT_SIZE = 352


@dataclass(frozen=True)
class DetectionMeta(DatasetMeta):
    """A detection dataset's meta: anchors fitted on its training boxes at its input size."""

    anchors: tuple[tuple[float, float], ...] = ()
    max_boxes: int = 0


@dataclass
class Annotation:
    """One image: where it is, its size, and its boxes as rows ``(x1, y1, x2, y2, class)``."""

    source: Path  # the XML file
    image: Path
    width: int
    height: int
    boxes: np.ndarray = field(repr=False)


def _text(node: ET.Element, tag: str, where: Path) -> str:
    child = node.find(tag)
    if child is None or child.text is None or not child.text.strip():
        raise DataError(f"{where}: missing <{tag}>")
    return child.text.strip()


def _number(node: ET.Element, tag: str, where: Path) -> float:
    raw = _text(node, tag, where)
    try:
        value = float(raw)
    except ValueError:
        raise DataError(f"{where}: <{tag}> is not a number: {raw[:40]!r}") from None
    if not math.isfinite(value):
        raise DataError(f"{where}: <{tag}> is not finite")
    return value


def read_xml(path: Path) -> ET.Element:
    """The root element of the VOC file ``path``, read safely (bounded, no DTD)."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_XML_BYTES + 1)
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror})") from None
    if len(data) > MAX_XML_BYTES:
        raise DataError(f"{path}: annotation larger than {MAX_XML_BYTES} bytes")
    if not data.strip():
        raise DataError(f"{path}: empty annotation file")
    if b"<!DOCTYPE" in data or b"<!ENTITY" in data:
        raise DataError(f"{path}: DTD / entity declarations are not accepted in an annotation")
    try:
        return ET.fromstring(data)  # noqa: S314 - bounded, and no DTD (so no entities) reaches it
    except ET.ParseError as exc:
        raise DataError(f"{path}: not valid XML ({exc})") from None


def parse_annotation(path: Path, image_dir: Path, classes: dict[str, int] | None) -> tuple[Annotation, list[str]]:
    """One VOC XML file; ``classes`` maps names to indices (None: names are returned, boxes
    get class -1 to be filled by the caller).  Returns the annotation and its object names."""
    root = read_xml(path)
    if root.tag != "annotation":
        raise DataError(f"{path}: root element is <{root.tag}>, not <annotation>")
    name = _text(root, "filename", path)
    if Path(name).name != name or name in (".", "..") or "\\" in name:
        raise DataError(f"{path}: <filename> must be a plain file name, got {name[:80]!r}")
    size = root.find("size")
    if size is None:
        raise DataError(f"{path}: missing <size>")
    width, height = _number(size, "width", path), _number(size, "height", path)
    if not (1 <= width <= MAX_SIDE and 1 <= height <= MAX_SIDE) or width % 1 or height % 1:
        raise DataError(f"{path}: image size {width:g} x {height:g} is not a whole size in 1..{MAX_SIDE}")
    objects = root.findall("object")
    if len(objects) > MAX_OBJECTS:
        raise DataError(f"{path}: more than {MAX_OBJECTS} objects")
    rows, names = [], []
    for i, obj in enumerate(objects):
        label = _text(obj, "name", path)
        box = obj.find("bndbox")
        if box is None:
            raise DataError(f"{path}: object {i} ({label[:40]}) has no <bndbox>")
        x1, y1, x2, y2 = (_number(box, t, path) for t in ("xmin", "ymin", "xmax", "ymax"))
        if not (0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height):
            raise DataError(
                f"{path}: object {i} ({label[:40]}) box ({x1:g}, {y1:g}, {x2:g}, {y2:g}) "
                f"is empty or outside the {width:g} x {height:g} image"
            )
        if classes is not None and label not in classes:
            raise DataError(f"{path}: object {i} has class {label[:40]!r}, not one of {sorted(classes)}")
        names.append(label)
        rows.append((x1, y1, x2, y2, classes[label] if classes is not None else -1))
    boxes = np.array(rows, dtype=np.float64).reshape(-1, 5)
    return Annotation(path, image_dir / name, int(width), int(height), boxes), names


def _find(root: Path, names: tuple[str, ...], what: str) -> Path:
    for n in names:
        if (root / n).is_dir():
            return root / n
    raise DataError(f"voc dataset {root}: no {what} folder ({' or '.join(names)})")


def load_annotations(root: Path, class_names: list[str] | None = None) -> tuple[list[Annotation], list[str]]:
    """Every annotation under ``root`` (sorted by file name) and the class names (sorted
    unless given)."""
    if not root.is_dir():
        raise DataError(f"voc dataset: {root} is not a folder")
    ann_dir = _find(root, ("Annotations", "annotations"), "annotation")
    image_dir = _find(root, ("JPEGImages", "images"), "image")
    files = sorted(ann_dir.glob("*.xml"))
    if not files:
        raise DataError(f"voc dataset: no .xml files in {ann_dir}")
    fixed = {c: i for i, c in enumerate(class_names)} if class_names else None
    parsed = [parse_annotation(f, image_dir, fixed) for f in files]
    names = list(class_names) if class_names else sorted({n for _, ns in parsed for n in ns})
    if not names:
        raise DataError(f"voc dataset {root}: no objects in any annotation")
    index = {c: i for i, c in enumerate(names)}
    for ann, ns in parsed:
        ann.boxes[:, 4] = [index[n] for n in ns]
    return [a for a, _ in parsed], names


def bucket(stem: str) -> int:
    """The split bucket (0..99) of an image, from its annotation file's stem."""
    return int(hashlib.sha1(stem.encode()).hexdigest()[:8], 16) % 100


def split(annotations: list[Annotation], test_percent: int, val_fraction: float) -> dict[str, list[Annotation]]:
    """The fixed train / val / test split described in the module doc."""
    val_end = test_percent + round(val_fraction * (100 - test_percent))
    out: dict[str, list[Annotation]] = {"train": [], "val": [], "test": []}
    for a in annotations:
        b = bucket(a.source.stem)
        out["test" if b < test_percent else "val" if b < val_end else "train"].append(a)
    return out


class VOCDetection(Dataset):
    """Letterboxed images and their padded boxes (see the module doc)."""

    def __init__(
        self, annotations: list[Annotation], size: int, max_boxes: int, augment: Augment | None = None
    ) -> None:
        self.annotations = annotations
        self.size = size
        self.max_boxes = max_boxes
        self.augment = augment

    def __len__(self) -> int:
        return len(self.annotations)

    def load_image(self, i: int) -> Image.Image:
        """Image ``i`` as RGB, checked against the size its annotation gives."""
        a = self.annotations[i]
        try:
            with Image.open(a.image) as im:
                image = im.convert("RGB")
        except (OSError, Image.DecompressionBombError) as exc:
            raise DataError(f"{a.source}: cannot read its image {a.image.name} ({exc})") from None
        if image.size != (a.width, a.height):
            raise DataError(
                f"{a.source}: image {a.image.name} is {image.width} x {image.height}, "
                f"the annotation says {a.width} x {a.height}"
            )
        return image

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, boxes = self.load_image(i), self.annotations[i].boxes
        if self.augment is not None:
            # Drawn from torch's generator, which the loaders seed per run and per worker.
            rng = np.random.default_rng(int(torch.randint(2**31 - 1, ()).item()))
            out, moved = self.augment(image, boxes, self.size, rng)
        else:
            out, moved, _ = letterbox(image, boxes, self.size)
        x = torch.from_numpy(np.asarray(out, dtype=np.float32) / 255.0).permute(2, 0, 1).contiguous()
        target = torch.full((self.max_boxes, 5), -1.0)
        target[: len(moved)] = torch.from_numpy(moved[: self.max_boxes]).float()
        return x, target


@register_dataset("voc")
def load_voc(
    root: Path | None,
    *,
    size: int | None,
    augment: bool,
    val_fraction: float,
    seed: int,
    limit: int | None,
    cache_dir: Path | None = None,
    classes: list[str] | None = None,
    test_percent: int = 20,
) -> DatasetBundle:
    """A VOC folder as train / val / test (the split of the module doc); ``classes`` fixes
    the class list and its order (default: the names found, sorted)."""
    del seed, cache_dir  # the split is fixed by file name; nothing is cached
    from tinytamer.detect.anchors import kmeans_anchors

    if root is None:
        raise DataError("dataset 'voc' needs a root: a folder with Annotations/ (or annotations/) and its images")
    if not 1 <= test_percent < 100:
        raise DataError(f"dataset 'voc': test_percent must be in 1..99, got {test_percent}")
    size = size or DEFAULT_SIZE
    if size % 32:
        raise DataError(f"dataset 'voc': size must be a multiple of 32 (the detector's stride), got {size}")
    annotations, names = load_annotations(Path(root), classes)
    parts = split(annotations, test_percent, val_fraction)
    if limit is not None:
        parts = {k: v[:limit] for k, v in parts.items()}
    if not parts["train"]:
        raise DataError(f"dataset 'voc' {root}: no training images after the split")
    max_boxes = max(1, max(len(a.boxes) for a in annotations))
    anchors = kmeans_anchors(parts["train"], size)
    meta = DetectionMeta(
        name="voc",
        task="detection",
        num_classes=len(names),
        class_names=names,
        input_shape=(3, size, size),
        mean=(0.0, 0.0, 0.0),
        std=(1.0, 1.0, 1.0),
        anchors=tuple((float(w), float(h)) for w, h in anchors),
        max_boxes=max_boxes,
    )
    return DatasetBundle(
        train=VOCDetection(parts["train"], size, max_boxes, Augment() if augment else None),
        val=VOCDetection(parts["val"], size, max_boxes),
        test=VOCDetection(parts["test"], size, max_boxes),
        meta=meta,
    )
