"""A grid of images with their predicted boxes (and ground truth) drawn on them."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tinytamer.detect.decode import Detections
from tinytamer.detect.metrics import GroundTruth


def plot_predictions(
    images: Sequence[np.ndarray],
    detections: Sequence[Detections],
    truths: Sequence[GroundTruth],
    class_names: Sequence[str],
    path: str | Path,
    *,
    min_score: float = 0.3,
    max_boxes: int = 10,
    title: str = "",
) -> Path:
    """Save ``images`` (H x W x 3, floats in [0, 1] or uint8) with ground truth (green, dashed)
    and the ``max_boxes`` best detections scoring at least ``min_score`` (red, labelled) as a PNG
    at ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    n = len(images)
    cols = min(4, max(n, 1))
    rows = max(1, -(-n // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 3 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, img, det, gt in zip(axes.ravel(), images, detections, truths, strict=False):
        ax.imshow(img)
        for b in gt.boxes:
            ax.add_patch(Rectangle(b[:2], b[2] - b[0], b[3] - b[1], fill=False, ec="lime", ls="--", lw=1.2))
        top = np.argsort(-det.scores, kind="stable")[:max_boxes]
        for b, s, c in zip(det.boxes[top], det.scores[top], det.classes[top], strict=True):
            if s < min_score:
                continue
            ax.add_patch(Rectangle(b[:2], b[2] - b[0], b[3] - b[1], fill=False, ec="red", lw=1.5))
            ax.text(b[0], b[1], f"{class_names[int(c)]} {s:.2f}", color="white", fontsize=7, backgroundcolor="red")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def plot_split(model: Any, dataset: Any, class_names: Sequence[str], path: str | Path, *, n: int = 8) -> Path:
    """The first ``n`` images of a detection split through ``model`` (PyTorch, eval mode) and
    the shared decode + NMS, drawn with their ground truth by :func:`plot_predictions`."""
    import torch

    from tinytamer.detect.decode import Head, postprocess
    from tinytamer.detect.evaluate import torch_runner, truths

    head, run = Head.of(model), torch_runner(model.eval())
    images: list[np.ndarray] = []
    dets: list[Detections] = []
    gts: list[GroundTruth] = []
    for i in range(min(n, len(dataset))):
        x, y = dataset[i]
        x = torch.as_tensor(x)
        dets += postprocess(run(x[None].numpy()), head, clip=int(x.shape[-1]))
        gts += truths(torch.as_tensor(y)[None])
        images.append(x.permute(1, 2, 0).numpy())
    title = f"{len(images)} images, {x.shape[-1]} px (green: truth, red: score >= 0.3)"
    return plot_predictions(images, dets, gts, class_names, path, title=title)
