"""Target assignment as YOLO-FastestV2 does it (its ``build_target``, YOLOv5's rule).

For each scale of stride ``s`` and each ground-truth box (centre ``g = (cx, cy) / s`` and
size ``(w, h) / s`` in grid cells):

1. anchor match: anchor ``a`` of the scale takes the box when the worse of its width and height
   ratios is under ``ANCHOR_T`` = 2 (released value): ``max(r, 1/r) < 2`` with
   ``r = (w, h) / anchor`` (a box may match several anchors, or none at this scale);
2. cells: the cell holding the centre, plus the neighbour left / above / right / below when
   the centre lies in that half of its cell and the neighbour is inside the grid (not in the
   outermost cell), so each match trains up to three cells;
3. regression targets: the centre relative to the cell's corner, ``g - (i, j)`` (in
   [-0.5, 1.5] for a neighbour), and the size in cells; the prediction is decoded the same
   way (:mod:`tinytamer.detect.decode`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

ANCHOR_T = 2.0
_OFFSETS = torch.tensor([[0, 0], [1, 0], [0, 1], [-1, 0], [0, -1]], dtype=torch.float32) * 0.5


@dataclass
class Assigned:
    """The cells one scale trains: image, anchor, row, column; box targets; anchor (cells); class."""

    image: Tensor
    anchor: Tensor
    row: Tensor
    col: Tensor
    box: Tensor  # (M, 4): centre offset in the cell, size in cells
    anchor_wh: Tensor  # (M, 2) in cells
    cls: Tensor


def flatten_targets(targets: Tensor) -> Tensor:
    """Padded ``(B, K, 5)`` rows (x1, y1, x2, y2, class; class -1 = padding) as ``(M, 6)``
    rows (image, class, cx, cy, w, h) in pixels."""
    b, k = torch.nonzero(targets[..., 4] >= 0, as_tuple=True)
    rows = targets[b, k]
    xy = (rows[:, :2] + rows[:, 2:4]) / 2
    wh = rows[:, 2:4] - rows[:, :2]
    return torch.cat([b[:, None].float(), rows[:, 4:5], xy, wh], dim=1)


def assign(gt: Tensor, anchors: Tensor, stride: int, grid_h: int, grid_w: int) -> Assigned:
    """Cells of one scale for the ground truth ``gt`` (M, 6 from :func:`flatten_targets`);
    ``anchors`` (A, 2) in pixels."""
    device = gt.device
    anchors_g = anchors.to(device) / stride
    na = len(anchors_g)
    g = gt.clone()
    g[:, 2:6] /= stride
    if not len(g):
        empty = torch.zeros(0, dtype=torch.long, device=device)
        return Assigned(
            empty, empty, empty, empty, torch.zeros(0, 4, device=device), torch.zeros(0, 2, device=device), empty
        )
    # (A, M, ...) pairs of anchor and box; keep the pairs within the ratio limit.
    ratio = g[None, :, 4:6] / anchors_g[:, None]
    ok = torch.max(ratio, 1 / ratio).max(dim=2).values < ANCHOR_T
    a_idx = torch.arange(na, device=device)[:, None].expand(na, len(g))[ok]
    t = g[None].expand(na, -1, -1)[ok]
    gxy = t[:, 2:4]
    inv = torch.tensor([grid_w, grid_h], device=device, dtype=gxy.dtype) - gxy
    left, up = ((gxy % 1 < 0.5) & (gxy > 1)).T
    right, down = ((inv % 1 < 0.5) & (inv > 1)).T
    use = torch.stack([torch.ones_like(left), left, up, right, down])  # (5, M')
    offsets = _OFFSETS.to(device)[:, None].expand(-1, len(t), -1)[use]
    t = t[None].expand(5, -1, -1)[use]
    a_idx = a_idx[None].expand(5, -1)[use]
    gxy = t[:, 2:4]
    cell = (gxy - offsets).long()
    col = cell[:, 0].clamp(0, grid_w - 1)
    row = cell[:, 1].clamp(0, grid_h - 1)
    return Assigned(
        image=t[:, 0].long(),
        anchor=a_idx,
        row=row,
        col=col,
        box=torch.cat([gxy - cell, t[:, 4:6]], dim=1),
        anchor_wh=anchors_g[a_idx],
        cls=t[:, 1].long(),
    )
