"""ShuffleNetV2 (Ma et al. 2018, "ShuffleNet V2: Practical Guidelines for Efficient CNN
Architecture Design").

Table 5 of the paper: conv1 3x3/2 (24) + maxpool 3x3/2, stages 2-4 of 4/8/4
units, conv5 1x1 (1024), global pool, fc.  A unit (Fig. 3c/d) splits the
channels in two (stride 1) or feeds both branches (stride 2, the
downsampling unit), runs 1x1 conv - 3x3 depthwise - 1x1 conv on one branch,
concatenates and shuffles the channels (Sec. 3, channel shuffle of Zhang et
al. 2018).  The shuffle is a reshape / transpose / flatten so that graph
capture (torch.export, ONNX) sees plain tensor ops.  1.0x: 2.28 M
parameters, 146 M MACs at 224x224; 0.5x: 1.37 M, 41 M.

Small inputs (``input_size <= 64``): conv1 has stride 1 and the maxpool is
dropped, as common CIFAR variants do, so a 32x32 image ends at 4x4.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from tinytamer.errors import ModelError
from tinytamer.zoo._init import kaiming_init
from tinytamer.zoo.registry import register_model

# Output channels of conv1, stages 2-4 and conv5 per width (Table 5).
_WIDTHS = {
    0.5: (24, 48, 96, 192, 1024),
    1.0: (24, 116, 232, 464, 1024),
    1.5: (24, 176, 352, 704, 1024),
    2.0: (24, 244, 488, 976, 2048),
}
_REPEATS = (4, 8, 4)


def channel_shuffle(x: Tensor, groups: int) -> Tensor:
    """Interleave the channels of ``groups`` groups (reshape - transpose - flatten)."""
    n, c, h, w = x.shape
    return x.reshape(n, groups, c // groups, h, w).transpose(1, 2).flatten(1, 2)


def _pw(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]


def _dw(channels: int, stride: int) -> list[nn.Module]:
    return [nn.Conv2d(channels, channels, 3, stride, 1, groups=channels, bias=False), nn.BatchNorm2d(channels)]


class ShuffleUnit(nn.Module):
    """The basic unit (stride 1, channel split) or the downsampling unit (stride 2)."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        half = cout // 2
        if stride > 1:
            self.branch1 = nn.Sequential(*_dw(cin, stride), *_pw(cin, half))
        branch_in = cin if stride > 1 else half
        self.branch2 = nn.Sequential(*_pw(branch_in, half), *_dw(half, stride), *_pw(half, half))

    def forward(self, x: Tensor) -> Tensor:
        if self.stride == 1:  # fixed at construction: not data-dependent
            x1, x2 = x.chunk(2, dim=1)
            out = torch.cat((x1, self.branch2(x2)), dim=1)
        else:
            out = torch.cat((self.branch1(x), self.branch2(x)), dim=1)
        return channel_shuffle(out, 2)


class ShuffleNetV2(nn.Module):
    """ShuffleNetV2 at a width of the paper (0.5, 1.0, 1.5, 2.0)."""

    def __init__(self, num_classes: int, in_channels: int, input_size: int, width_mult: float) -> None:
        super().__init__()
        if width_mult not in _WIDTHS:
            raise ModelError(f"shufflenetv2: width_mult must be one of {sorted(_WIDTHS)}, got {width_mult}")
        widths = _WIDTHS[width_mult]
        small = input_size <= 64
        self.conv1 = nn.Sequential(
            nn.Conv2d(in_channels, widths[0], 3, 1 if small else 2, 1, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(),
        )
        self.maxpool: nn.Module = nn.Identity() if small else nn.MaxPool2d(3, 2, 1)
        stages: list[nn.Module] = []
        cin = widths[0]
        for repeats, cout in zip(_REPEATS, widths[1:4], strict=True):
            units = [ShuffleUnit(cin, cout, 2)] + [ShuffleUnit(cout, cout, 1) for _ in range(repeats - 1)]
            stages.append(nn.Sequential(*units))
            cin = cout
        self.stage2, self.stage3, self.stage4 = stages
        self.conv5 = nn.Sequential(*_pw(cin, widths[4]))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(widths[4], num_classes)
        kaiming_init(self, linear_std=0.01)

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.conv1(x))
        x = self.conv5(self.stage4(self.stage3(self.stage2(x))))
        return self.fc(self.flatten(self.pool(x)))


@register_model("shufflenetv2", input_shape=(3, 224, 224), num_classes=1000)
def shufflenetv2(
    num_classes: int = 1000, in_channels: int = 3, input_size: int = 224, width_mult: float = 1.0
) -> nn.Module:
    """ShuffleNetV2; ImageNet stem for input_size > 64, stride-1 stem without maxpool otherwise."""
    return ShuffleNetV2(num_classes, in_channels, input_size, float(width_mult))
