"""The voc dataset (parsing, hostile files, the fixed split), letterbox and augmentations that
move boxes with the pixels, and anchors by k-means under 1 - IoU."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tinytamer.data import get_dataset
from tinytamer.detect.anchors import kmeans_iou, mean_iou
from tinytamer.detect.augment import Augment
from tinytamer.detect.letterbox import Letterbox, letterbox
from tinytamer.detect.voc import bucket, load_annotations, parse_annotation, split
from tinytamer.errors import DataError

XML = """<annotation><filename>{name}</filename><size><width>{w}</width><height>{h}</height><depth>3</depth></size>
{objects}</annotation>"""
OBJ = (
    "<object><name>{label}</name>"
    "<bndbox><xmin>{0}</xmin><ymin>{1}</ymin><xmax>{2}</xmax><ymax>{3}</ymax></bndbox></object>"
)


def make_voc(root: Path, n: int = 12, size: tuple[int, int] = (96, 64), seed: int = 0) -> Path:
    """A VOC folder of ``n`` grey images, each with one or two white / red rectangles boxed."""
    rng = np.random.default_rng(seed)
    (root / "annotations").mkdir(parents=True)
    (root / "images").mkdir()
    w, h = size
    for i in range(n):
        img = np.full((h, w, 3), 90, np.uint8)
        objs = []
        for k in range(1 + i % 2):
            bw, bh = int(rng.integers(16, w // 2)), int(rng.integers(16, h // 2))
            x1, y1 = int(rng.integers(0, w - bw)), int(rng.integers(0, h - bh))
            label = ("box", "red")[k]
            img[y1 : y1 + bh, x1 : x1 + bw] = (255, 255, 255) if k == 0 else (255, 0, 0)
            objs.append(OBJ.format(x1, y1, x1 + bw, y1 + bh, label=label))
        Image.fromarray(img).save(root / "images" / f"im{i}.png")
        (root / "annotations" / f"im{i}.xml").write_text(XML.format(name=f"im{i}.png", w=w, h=h, objects="".join(objs)))
    return root


def fitted_detector(root: Path, n: int, size: int = 64, steps: int = 30) -> tuple:
    """A voc dataset of ``n`` images at ``size`` (half of them test) and a yolofastest fitted
    ``steps`` Adam steps to its test images, so that mAP is no trivial 0: an untrained
    detector's activations also shrink layer by layer to scales no int32 bias can follow."""
    from tinytamer.data import make_loader
    from tinytamer.detect.decode import Head
    from tinytamer.detect.loss import DetectionLoss
    from tinytamer.zoo import create

    data = get_dataset("voc", make_voc(root, n=n), size=size, test_percent=50)
    torch.manual_seed(0)
    model = create("yolofastest", num_classes=2, input_size=size, anchors=[list(a) for a in data.meta.anchors])
    loss_fn = DetectionLoss(Head.of(model))
    x, y = next(iter(make_loader(data.test, len(data.test), shuffle=False)))
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    for _ in range(steps):
        opt.zero_grad()
        loss_fn(model(x), y).backward()
        opt.step()
    return data, model.eval()


def _write(tmp_path: Path, text: str | bytes) -> Path:
    p = tmp_path / "a.xml"
    p.write_bytes(text if isinstance(text, bytes) else text.encode())
    return p


def test_parse_reads_boxes_and_classes(tmp_path: Path) -> None:
    p = _write(tmp_path, XML.format(name="x.jpg", w=50, h=40, objects=OBJ.format(1, 2, 30, 40, label="cat")))
    ann, names = parse_annotation(p, tmp_path, None)
    assert names == ["cat"] and (ann.width, ann.height) == (50, 40)
    np.testing.assert_array_equal(ann.boxes, [[1, 2, 30, 40, -1]])
    assert ann.image == tmp_path / "x.jpg"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty annotation"),
        ("<annotation><filename>x", "not valid XML"),
        (XML.format(name="x.jpg", w=50, h=40, objects=OBJ.format(10, 2, 60, 20, label="c")), "outside"),
        (XML.format(name="x.jpg", w=50, h=40, objects=OBJ.format(30, 2, 10, 20, label="c")), "empty or outside"),
        (XML.format(name="../x.jpg", w=50, h=40, objects=""), "plain file name"),
        (XML.format(name="x.jpg", w="nan", h=40, objects=""), "not finite"),
        (XML.format(name="x.jpg", w="ten", h=40, objects=""), "not a number"),
        (XML.format(name="x.jpg", w=0, h=40, objects=""), "whole size"),
        ('<!DOCTYPE a [<!ENTITY x "xx">]><annotation/>', "DTD"),
        ("<other/>", "not <annotation>"),
        ("<annotation><size><width>3</width><height>3</height></size></annotation>", "missing <filename>"),
    ],
)
def test_bad_annotations_name_the_file(tmp_path: Path, text: str, message: str) -> None:
    p = _write(tmp_path, text)
    with pytest.raises(DataError, match=message) as info:
        parse_annotation(p, tmp_path, None)
    assert str(p) in str(info.value)


def test_oversized_annotation_is_refused_before_parsing(tmp_path: Path) -> None:
    p = _write(tmp_path, b"<annotation>" + b" " * (1 << 20) + b"</annotation>")
    with pytest.raises(DataError, match="larger than"):
        parse_annotation(p, tmp_path, None)


def test_unknown_class_under_a_fixed_list(tmp_path: Path) -> None:
    p = _write(tmp_path, XML.format(name="x.jpg", w=50, h=40, objects=OBJ.format(1, 2, 30, 40, label="dog")))
    with pytest.raises(DataError, match="'dog'"):
        parse_annotation(p, tmp_path, {"cat": 0})


def test_split_is_fixed_by_file_name(tmp_path: Path) -> None:
    anns, names = load_annotations(make_voc(tmp_path / "v", n=40))
    assert names == ["box", "red"]
    parts = split(anns, 20, 0.1)
    assert sum(len(v) for v in parts.values()) == 40
    again = split(list(reversed(anns)), 20, 0.1)
    for k in parts:
        assert sorted(a.source.name for a in parts[k]) == sorted(a.source.name for a in again[k])
    assert all(bucket(a.source.stem) < 20 for a in parts["test"])


def test_dataset_items_and_errors(tmp_path: Path) -> None:
    root = make_voc(tmp_path / "v", n=12)
    bundle = get_dataset("voc", root, size=64, test_percent=50)
    assert bundle.meta.task == "detection" and bundle.meta.num_classes == 2
    assert len(bundle.meta.anchors) == 6 and bundle.meta.input_shape == (3, 64, 64)
    x, y = bundle.test[0]
    assert x.shape == (3, 64, 64) and 0 <= float(x.min()) and float(x.max()) <= 1
    assert y.shape == (bundle.meta.max_boxes, 5)
    with pytest.raises(DataError, match="multiple of 32"):
        get_dataset("voc", root, size=50)
    with pytest.raises(DataError, match="needs a root"):
        get_dataset("voc")
    with pytest.raises(DataError, match="no annotation folder"):
        get_dataset("voc", tmp_path)


def test_image_size_must_match_its_annotation(tmp_path: Path) -> None:
    root = make_voc(tmp_path / "v", n=12)
    Image.new("RGB", (10, 10)).save(root / "images" / "im0.png")
    bundle = get_dataset("voc", root, size=64, test_percent=50, val_fraction=0.0)
    ds = bundle.test if any(a.source.stem == "im0" for a in bundle.test.annotations) else bundle.train
    i = [a.source.stem for a in ds.annotations].index("im0")
    with pytest.raises(DataError, match="im0.xml.*10 x 10"):
        ds[i]


def _white_box(img: Image.Image) -> np.ndarray:
    """The bounding box of the white pixels."""
    a = np.asarray(img, dtype=np.int64)
    ys, xs = np.nonzero((a > 200).all(axis=2))
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=np.float64)


def _picture(w: int, h: int, box: tuple[int, int, int, int]) -> Image.Image:
    a = np.zeros((h, w, 3), np.uint8)
    a[box[1] : box[3], box[0] : box[2]] = 255
    return Image.fromarray(a)


def test_letterbox_moves_boxes_with_pixels() -> None:
    box = (30, 10, 70, 50)
    out, boxes, lb = letterbox(_picture(120, 60, box), np.array([[*box, 0]], float), 96)
    assert out.size == (96, 96)
    np.testing.assert_allclose(boxes[0, :4], _white_box(out), atol=1.5)
    np.testing.assert_allclose(lb.boxes_to_original(boxes[:, :4])[0], box, atol=1e-9)
    assert Letterbox.fit(120, 60, 96).dy == 24


@pytest.mark.parametrize("seed", range(6))
def test_augment_moves_boxes_with_pixels(seed: int) -> None:
    box = (40, 20, 80, 60)
    aug = Augment(scale=0.3, translate=0.1, flip=0.5, hue=0, saturation=0, value=0)
    out, boxes = aug(_picture(128, 96, box), np.array([[*box, 3]], float), 96, np.random.default_rng(seed))
    assert boxes.shape == (1, 5) and boxes[0, 4] == 3
    np.testing.assert_allclose(boxes[0, :4], _white_box(out), atol=1.5)


def test_augment_flip_mirrors_the_box() -> None:
    box = (10, 10, 30, 40)
    aug = Augment(scale=0, translate=0, flip=1.0, hue=0, saturation=0, value=0)
    out, boxes = aug(_picture(64, 64, box), np.array([[*box, 0]], float), 64, np.random.default_rng(0))
    np.testing.assert_allclose(boxes[0, :4], [34, 10, 54, 40], atol=1e-6)
    np.testing.assert_allclose(_white_box(out), [34, 10, 54, 40], atol=1)


def test_augment_drops_boxes_that_leave_the_picture() -> None:
    aug = Augment(scale=0, translate=0.5, flip=0, hue=0, saturation=0, value=0)
    kept = [
        len(aug(_picture(64, 64, (0, 0, 8, 8)), np.array([[0, 0, 8, 8, 0]], float), 64, np.random.default_rng(s))[1])
        for s in range(20)
    ]
    assert 0 in kept  # shifted out of view: gone, not a degenerate sliver


def test_hsv_jitter_changes_colour_not_boxes() -> None:
    aug = Augment(scale=0, translate=0, flip=0)
    img = Image.fromarray(np.tile(np.array([200, 80, 40], np.uint8), (32, 32, 1)))
    out, boxes = aug(img, np.array([[4, 4, 20, 20, 0]], float), 32, np.random.default_rng(1))
    assert not np.array_equal(np.asarray(out), np.asarray(img))
    np.testing.assert_allclose(boxes[0, :4], [4, 4, 20, 20])


def test_kmeans_recovers_clusters_under_iou_distance() -> None:
    rng = np.random.default_rng(0)
    centres = np.array([[10, 20], [40, 40], [120, 60]], float)
    wh = np.concatenate([c * rng.uniform(0.9, 1.1, (50, 2)) for c in centres])
    anchors = kmeans_iou(wh, 3)
    np.testing.assert_allclose(anchors, centres, rtol=0.05)
    assert mean_iou(wh, anchors) > 0.85
    assert mean_iou(wh, anchors) > mean_iou(wh, anchors[[0, 0, 0]])


def test_kmeans_fewer_boxes_than_anchors_and_bad_input() -> None:
    assert kmeans_iou(np.array([[5.0, 5.0]]), 3).shape == (3, 2)
    with pytest.raises(DataError):
        kmeans_iou(np.array([[0.0, 5.0]]), 1)


def test_augmented_train_items_are_seeded_by_torch(tmp_path: Path) -> None:
    bundle = get_dataset("voc", make_voc(tmp_path / "v", n=6), size=64, augment=True, test_percent=1)
    torch.manual_seed(3)
    a = bundle.train[0]
    torch.manual_seed(3)
    b = bundle.train[0]
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
