"""Object detection: what it adds to the classification path.

- :mod:`~tinytamer.detect.voc`: the ``voc`` dataset (Pascal VOC XML, fixed split by image)
- :mod:`~tinytamer.detect.letterbox`, :mod:`~tinytamer.detect.augment`: geometry that moves
  boxes with the pixels
- :mod:`~tinytamer.detect.anchors`: anchors by k-means under 1 - IoU
- :mod:`~tinytamer.detect.assign`, :mod:`~tinytamer.detect.loss`: YOLO-FastestV2's target
  assignment and loss
- :mod:`~tinytamer.detect.decode`: decode + class-wise NMS, shared by PyTorch and runtimes
- :mod:`~tinytamer.detect.metrics`: mAP@0.5 (VOC) and mAP@[.5:.95] (COCO)
- :mod:`~tinytamer.detect.evaluate`: a split scored through any runner
- :mod:`~tinytamer.detect.plot`: predictions drawn on images
- :mod:`~tinytamer.detect.packed`: the maps packed into one output for the micro targets
"""

from tinytamer.detect.decode import Detections, Head, postprocess
from tinytamer.detect.evaluate import evaluate, score
from tinytamer.detect.loss import DetectionLoss
from tinytamer.detect.metrics import GroundTruth, MapResult, mean_ap

__all__ = [
    "DetectionLoss",
    "Detections",
    "GroundTruth",
    "Head",
    "MapResult",
    "evaluate",
    "mean_ap",
    "postprocess",
    "score",
]
