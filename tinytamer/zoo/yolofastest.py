"""YOLO-FastestV2 (dog-qiuqiu, 2021: "Yolo-FastestV2", an anchor-based single-stage detector
for the edge; no paper, the released code is the reference).

Structure, as released:

- backbone: ShuffleNetV2 (Ma et al. 2018) at the narrow 0.25x-style widths 24 / 48 / 96 / 192:
  conv 3x3/2 + maxpool 3x3/2, then stages of 4 / 8 / 4 units (the units of
  :class:`ShuffleUnit`).  Stage 3 (stride 16) and stage 4 (stride 32) feed the neck.
- light FPN: stride 32: 1x1 conv 192 -> 72; stride 16: the stride-32 map upsampled x2
  (nearest) and concatenated with stage 3 (192 + 96 = 288 channels), 1x1 conv -> 72.
- per scale, decoupled heads: two branches of (dw 5x5, pw 1x1, dw 5x5, pw 1x1), one for
  regression, one shared by objectness and class (as released); then three 1x1 output convs
  shared by both scales: box (4 per anchor), objectness (1 per anchor) and class (C per
  cell, not per anchor).  Three anchors per scale.

``forward`` returns one map per scale, stride 16 first: ``(N, 5A + C, H/s, W/s)`` logits,
channels ``[box 4A | objectness A | class C]``; decoding them is
:mod:`tinytamer.detect.decode` (shared by PyTorch and every runtime).  The anchors
(``anchors``: 2 x 3 (w, h) in input pixels, stride 16 first) are a buffer, so a checkpoint
keeps the ones it was trained with.

Published: about 0.25 M parameters and 0.21 GFLOPs at 352 x 352 (80 COCO classes).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tinytamer.errors import ModelError
from tinytamer.zoo._init import kaiming_init
from tinytamer.zoo.registry import register_model

_WIDTHS = (24, 48, 96, 192)  # conv1, stages 2-4 (the released stage_out_channels)
_REPEATS = (4, 8, 4)
NECK = 72  # the released out_depth
NUM_ANCHORS = 3
STRIDES = (16, 32)
# The released COCO anchors at 352 x 352 (w, h in pixels), stride 16 first; k-means on the
# training boxes (tinytamer.detect.anchors) replaces them for a dataset.
COCO_ANCHORS_352 = (
    (12.64, 19.39),
    (37.88, 51.48),
    (55.71, 138.31),
    (126.91, 78.23),
    (131.57, 214.55),
    (279.92, 258.87),
)


def _pw_relu(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]


def _dw(channels: int, stride: int) -> list[nn.Module]:
    return [nn.Conv2d(channels, channels, 3, stride, 1, groups=channels, bias=False), nn.BatchNorm2d(channels)]


class ShuffleUnit(nn.Module):
    """A ShuffleNetV2 unit (Ma et al. 2018, Fig. 3c/d): stride 1 passes the first half of the
    channels and transforms the second; stride 2 transforms the whole input on both branches;
    then concatenation and a channel shuffle of 2 groups (``nn.ChannelShuffle``)."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        self.keep = cout // 2
        self.proj = nn.Sequential(*_dw(cin, stride), *_pw_relu(cin, self.keep)) if stride > 1 else None
        branch_in = cin if stride > 1 else self.keep
        self.branch = nn.Sequential(
            *_pw_relu(branch_in, self.keep), *_dw(self.keep, stride), *_pw_relu(self.keep, self.keep)
        )
        self.shuffle = nn.ChannelShuffle(2)
        # The split as slices (what ncnn's converter maps) or torch.narrow (what the micro
        # lowering maps); the same arithmetic either way (see split_by_narrow).
        self.split_by = "slice"

    def forward(self, x: Tensor) -> Tensor:
        if self.proj is None:
            if self.split_by == "narrow":
                kept, rest = torch.narrow(x, 1, 0, self.keep), torch.narrow(x, 1, self.keep, self.keep)
            else:
                kept, rest = x[:, : self.keep], x[:, self.keep :]
            out = torch.cat((kept, self.branch(rest)), 1)
        else:
            out = torch.cat((self.proj(x), self.branch(x)), 1)
        return self.shuffle(out)

    def fixed_width_layers(self) -> dict[str, str]:
        """The layers whose output channels channel pruning must leave whole (relative name
        -> why); read by :func:`tinytamer.compress.channel.prune_channels`.  The inner width
        (``branch.0`` with its depthwise ``branch.3``) may be pruned."""
        why = (
            "its output channels are concatenated and shuffled by the ShuffleNetV2 unit, and the next "
            "unit splits them at a fixed index (prune the unit's inner width instead: branch.0 with "
            "its depthwise branch.3)"
        )
        fixed = {"branch.5": why}
        if self.proj is not None:
            fixed["proj.2"] = why
            fixed["proj.0"] = (
                "this depthwise conv's channels are the unit's input, which the previous unit's "
                "concatenation and shuffle fix (prune the unit's inner width instead: branch.0 with "
                "its depthwise branch.3)"
            )
        return fixed


def _dw_block(channels: int) -> nn.Sequential:
    """dw 5x5 - BN - ReLU - pw - BN - dw 5x5 - BN - ReLU - pw - BN (the released DWConvblock)."""
    layers: list[nn.Module] = []
    for _ in range(2):
        layers += [
            nn.Conv2d(channels, channels, 5, 1, 2, groups=channels, bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(),
            nn.Conv2d(channels, channels, 1, bias=False),
            nn.BatchNorm2d(channels),
        ]
    return nn.Sequential(*layers)


def _pw(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class YoloFastest(nn.Module):
    """YOLO-FastestV2 for ``num_classes`` classes on ``input_size`` x ``input_size`` inputs."""

    def __init__(self, num_classes: int, in_channels: int, input_size: int, anchors: Tensor) -> None:
        super().__init__()
        if input_size % 32 or input_size < 32:
            raise ModelError(f"yolofastest: input_size must be a positive multiple of 32, got {input_size}")
        if num_classes < 1:
            raise ModelError(f"yolofastest: num_classes must be >= 1, got {num_classes}")
        if tuple(anchors.shape) != (len(STRIDES) * NUM_ANCHORS, 2) or not bool((anchors > 0).all()):
            raise ModelError(f"yolofastest: anchors must be {len(STRIDES) * NUM_ANCHORS} positive (w, h) pairs")
        self.num_classes = num_classes
        self.num_anchors = NUM_ANCHORS
        self.input_size = input_size
        self.strides = STRIDES
        c0, c2, c3, c4 = _WIDTHS
        self.conv1 = nn.Sequential(nn.Conv2d(in_channels, c0, 3, 2, 1, bias=False), nn.BatchNorm2d(c0), nn.ReLU())
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        stages = []
        cin = c0
        for repeats, cout in zip(_REPEATS, (c2, c3, c4), strict=True):
            stages.append(
                nn.Sequential(ShuffleUnit(cin, cout, 2), *(ShuffleUnit(cout, cout, 1) for _ in range(repeats - 1)))
            )
            cin = cout
        self.stage2, self.stage3, self.stage4 = stages
        self.lateral32 = _pw(c4, NECK)
        self.lateral16 = _pw(c3 + c4, NECK)
        self.cls_head16, self.reg_head16 = _dw_block(NECK), _dw_block(NECK)
        self.cls_head32, self.reg_head32 = _dw_block(NECK), _dw_block(NECK)
        self.out_box = nn.Conv2d(NECK, 4 * NUM_ANCHORS, 1)
        self.out_obj = nn.Conv2d(NECK, NUM_ANCHORS, 1)
        self.out_cls = nn.Conv2d(NECK, num_classes, 1)
        self.register_buffer("anchors", anchors.detach().clone().float())
        kaiming_init(self)
        # Objectness starts at a prior of 0.01 (Lin et al. 2017, "Focal Loss", Sec. 4.1 "prior
        # initialization"), not 0.5: nearly every anchor is background, and at 0.5 their loss
        # swamps the first updates.  (The released model starts from a pretrained backbone;
        # this one trains from scratch.)
        nn.init.constant_(self.out_obj.bias, -math.log(99.0))
        # Output convs start small (N(0, 0.01), as classifiers do), so the first predictions
        # are the priors: anchor-sized boxes at the cell centres, objectness 0.01.
        for conv in (self.out_box, self.out_obj, self.out_cls):
            nn.init.normal_(conv.weight, 0.0, 0.01)

    def fixed_width_layers(self) -> dict[str, str]:
        """Channel pruning leaves the stem whole: it feeds the first unit's depthwise
        projection, whose channels stay whole (see :meth:`ShuffleUnit.fixed_width_layers`)."""
        return {"conv1.0": "the stem feeds the first ShuffleNetV2 unit's depthwise projection, which stays whole"}

    def _head(self, cls_feat: Tensor, reg_feat: Tensor) -> Tensor:
        return torch.cat((self.out_box(reg_feat), self.out_obj(cls_feat), self.out_cls(cls_feat)), dim=1)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        c3 = self.stage3(self.stage2(self.maxpool(self.conv1(x))))
        c4 = self.stage4(c3)
        s32 = self.lateral32(c4)
        s16 = self.lateral16(torch.cat((F.interpolate(c4, scale_factor=2.0, mode="nearest"), c3), dim=1))
        p16 = self._head(self.cls_head16(s16), self.reg_head16(s16))
        p32 = self._head(self.cls_head32(s32), self.reg_head32(s32))
        return p16, p32


def split_by_narrow(model: nn.Module) -> nn.Module:
    """``model`` with its ShuffleNetV2 splits written as ``torch.narrow`` (in place), the form
    the micro lowering reads; outputs are unchanged."""
    for m in model.modules():
        if isinstance(m, ShuffleUnit):
            m.split_by = "narrow"
    return model


def scaled_coco_anchors(input_size: int) -> Tensor:
    """The released COCO anchors rescaled from 352 to ``input_size`` pixels."""
    return torch.tensor(COCO_ANCHORS_352) * (input_size / 352.0)


@register_model("yolofastest", input_shape=(3, 352, 352), num_classes=80)
def yolofastest(
    num_classes: int = 80,
    in_channels: int = 3,
    input_size: int = 352,
    anchors: list[list[float]] | None = None,
) -> nn.Module:
    """YOLO-FastestV2; ``anchors``: six (w, h) pairs in input pixels, stride 16 first
    (default: the released COCO anchors scaled to ``input_size``)."""
    table = scaled_coco_anchors(input_size) if anchors is None else torch.tensor(anchors, dtype=torch.float32)
    if table.dim() != 2:
        raise ModelError("yolofastest: anchors must be a list of [w, h] pairs")
    return YoloFastest(num_classes, in_channels, input_size, table)
