"""Decode, class-wise NMS and mAP (VOC all-point by hand; COCO against pycocotools)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tinytamer.detect.boxes import box_iou
from tinytamer.detect.decode import Detections, Head, decode, nms, postprocess
from tinytamer.detect.metrics import GroundTruth, average_precision, mean_ap


def _logit(p: float) -> float:
    return float(np.log(p / (1 - p)))


def test_box_iou() -> None:
    a = np.array([[0, 0, 10, 10]], float)
    b = np.array([[5, 0, 15, 10], [20, 20, 30, 30], [0, 0, 10, 10]], float)
    np.testing.assert_allclose(box_iou(a, b), [[50 / 150, 0, 1]])


def test_nms_suppresses_overlaps_only() -> None:
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30], [0, 0, 10, 9]], float)
    scores = np.array([0.9, 0.8, 0.7, 0.95])
    assert list(nms(boxes, scores, 0.5)) == [3, 2]
    assert list(nms(boxes, scores, 0.95)) == [3, 0, 1, 2]


def _head() -> Head:
    return Head(np.array([[8, 8], [16, 16], [24, 24], [32, 32], [48, 48], [64, 64]], float), (16, 32), 2)


def _maps(n: int = 1) -> list[np.ndarray]:
    """Output maps of a 64 x 64 input with every logit very negative (no detections)."""
    return [np.full((n, 5 * 3 + 2, 64 // s, 64 // s), -20.0) for s in (16, 32)]


def test_decode_inverts_the_box_parametrization() -> None:
    maps = _maps()
    # stride 16, anchor 1 (16 x 16), cell row 2 col 1: centre offset 0.5 -> sigmoid 0.5; size x1.
    m = maps[0]
    m[0, 4:8, 2, 1] = [0.0, 0.0, _logit(0.5), _logit(0.5)]  # anchor 1's (tx, ty, tw, th)
    m[0, 12 + 1, 2, 1] = 5.0  # objectness of anchor 1
    m[0, 15:17, 2, 1] = [0.0, 3.0]  # class logits: class 1 wins
    boxes, scores = decode(maps, _head())
    k = int(np.argmax(scores[0].max(axis=1)))
    cx, cy = (0.5 + 1) * 16, (0.5 + 2) * 16
    np.testing.assert_allclose(boxes[0, k], [cx - 8, cy - 8, cx + 8, cy + 8])
    sig = 1 / (1 + np.exp(-5.0))
    soft = np.exp([0.0, 3.0]) / np.exp([0.0, 3.0]).sum()
    np.testing.assert_allclose(scores[0, k], sig * soft)


def test_postprocess_is_class_wise() -> None:
    maps = _maps()
    for anchor in (0, 1):  # two anchors of one cell, same place
        maps[0][0, anchor * 4 : anchor * 4 + 4, 1, 1] = [0, 0, _logit(0.5), _logit(0.5)]
        maps[0][0, 12 + anchor, 1, 1] = 4.0
    maps[0][0, 15:17, 1, 1] = [0.0, 0.0]
    head = Head(np.array([[16, 16]] * 6, float), (16, 32), 2)
    (d,) = postprocess(maps, head, conf=0.1, iou=0.4)
    # Two identical boxes x two classes: NMS keeps one per class.
    assert len(d) == 2 and sorted(d.classes.tolist()) == [0, 1]


def test_voc_all_point_ap_by_hand() -> None:
    gt = [GroundTruth(np.array([[0, 0, 10, 10], [20, 20, 30, 30]], float), np.array([0, 0]))]
    # scores 0.9 TP, 0.8 FP, 0.7 TP -> precision 1, 1/2, 2/3 at recall 1/2, 1/2, 1
    det = [
        Detections(
            np.array([[0, 0, 10, 10], [50, 50, 60, 60], [20, 20, 30, 31]], float),
            np.array([0.9, 0.8, 0.7]),
            np.array([0, 0, 0]),
        )
    ]
    assert average_precision(det, gt, 0, 0.5, coco=False) == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)
    # A duplicate of a matched box is a false positive under VOC.
    dup = [Detections(np.array([[0, 0, 10, 10], [0, 0, 10, 10]], float), np.array([0.9, 0.8]), np.array([0, 0]))]
    assert average_precision(dup, gt, 0, 0.5, coco=False) == pytest.approx(0.5)
    assert average_precision(det, gt, 1, 0.5, coco=False) is None


def _random_split(seed: int, images: int = 25, classes: int = 3) -> tuple[list[Detections], list[GroundTruth]]:
    rng = np.random.default_rng(seed)
    dets, gts = [], []
    for _ in range(images):
        m = int(rng.integers(0, 5))
        xy = rng.uniform(0, 200, (m, 2))
        wh = rng.uniform(10, 80, (m, 2))
        g = np.concatenate([xy, xy + wh], 1)
        gc = rng.integers(0, classes, m)
        gts.append(GroundTruth(g, gc))
        k = int(rng.integers(0, 8))
        src = rng.integers(0, max(m, 1), k)
        jitter = rng.normal(0, 8, (k, 4))
        boxes = (g[src] if m else rng.uniform(0, 200, (k, 4))) + jitter
        boxes = np.concatenate([np.minimum(boxes[:, :2], boxes[:, 2:]), np.maximum(boxes[:, :2], boxes[:, 2:])], 1)
        cls = np.where(rng.random(k) < 0.8, gc[src] if m else 0, rng.integers(0, classes, k))
        dets.append(Detections(boxes, rng.uniform(0.05, 1, k), cls.astype(np.int64)))
    return dets, gts


def _pycocotools(dets: list[Detections], gts: list[GroundTruth], classes: int) -> tuple[float, float]:
    coco_mod = pytest.importorskip("pycocotools.coco", reason="pycocotools (the dev extra) is not installed")
    cocoeval = pytest.importorskip("pycocotools.cocoeval")
    images, anns, results = [], [], []
    for i, (d, g) in enumerate(zip(dets, gts, strict=True)):
        images.append({"id": i, "width": 300, "height": 300})
        for b, c in zip(g.boxes, g.classes, strict=True):
            w, h = b[2] - b[0], b[3] - b[1]
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": i,
                    "category_id": int(c),
                    "bbox": [*b[:2], w, h],
                    "area": w * h,
                    "iscrowd": 0,
                }
            )
        for b, s, c in zip(d.boxes, d.scores, d.classes, strict=True):
            results.append(
                {"image_id": i, "category_id": int(c), "bbox": [*b[:2], b[2] - b[0], b[3] - b[1]], "score": float(s)}
            )
    truth = coco_mod.COCO()
    truth.dataset = {"images": images, "annotations": anns, "categories": [{"id": c} for c in range(classes)]}
    truth.createIndex()
    ev = cocoeval.COCOeval(truth, truth.loadRes(results), "bbox")
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    return float(ev.stats[0]), float(ev.stats[1])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_coco_map_matches_pycocotools(seed: int) -> None:
    dets, gts = _random_split(seed)
    ours = mean_ap(dets, gts, 3)
    ref_map, ref_map50 = _pycocotools(dets, gts, 3)
    assert ours.map50_95 == pytest.approx(ref_map, abs=1e-6)
    assert ours.coco_map50 == pytest.approx(ref_map50, abs=1e-6)
    # VOC all-point and COCO 101-point at IoU 0.5 differ only by interpolation and matching.
    assert ours.map50 == pytest.approx(ref_map50, abs=0.05)


def test_perfect_detections_score_one() -> None:
    gts = [GroundTruth(np.array([[0, 0, 10, 10]], float), np.array([1]))]
    dets = [Detections(np.array([[0, 0, 10, 10]], float), np.array([0.5]), np.array([1]))]
    r = mean_ap(dets, gts, 2)
    assert (r.map50, r.map50_95) == (1.0, 1.0) and r.per_class == {1: 1.0}
    none = [Detections(np.zeros((0, 4)), np.zeros(0), np.zeros(0, int))]
    assert (mean_ap(none, gts, 2).map50, mean_ap(none, gts, 2).map50_95) == (0.0, 0.0)
    with pytest.raises(ValueError, match="no ground-truth"):
        mean_ap(dets, [GroundTruth(np.zeros((0, 4)), np.zeros(0, int))], 2)


def test_plot_predictions_writes_a_png(tmp_path: Path) -> None:
    from tinytamer.detect.plot import plot_predictions

    img = np.zeros((32, 32, 3))
    det = Detections(np.array([[2, 2, 20, 20.0]]), np.array([0.9]), np.array([0]))
    gt = GroundTruth(np.array([[3, 3, 21, 21.0]]), np.array([0]))
    out = plot_predictions([img, img], [det, det], [gt, gt], ["thing"], tmp_path / "p.png", title="t")
    assert out.read_bytes()[:4] == b"\x89PNG"
