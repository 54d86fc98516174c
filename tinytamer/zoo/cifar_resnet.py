"""CIFAR ResNets: ResNet-20/32/56 (He et al. 2016) and ResNet-8 (MLPerf Tiny).

ResNet-20/32/56 follow He et al. 2016, "Deep Residual Learning for Image
Recognition", Sec. 4.2: a 3x3 conv with 16 filters, then three stages of n
basic blocks (16/32/64 filters, the first block of stages 2 and 3 with
stride 2), global average pool, fc; depth = 6n + 2.  Shortcuts are option A
of the paper by default (identity; when the shape changes, subsample by 2
and zero-pad the new channels, so no parameters), or option B (1x1 conv +
BN projection).  ResNet-20 has 0.27 M parameters and 41 M MACs, ResNet-56
0.85 M.

ResNet-8 is the MLPerf Tiny image-classification reference
(``resnet_v1_eembc`` of the TinyML Perf benchmark): conv 16 3x3 + BN + ReLU,
three stages of one basic block (16/32/64 filters, strides 1/2/2) with 1x1
conv projection shortcuts (no BN) on the stride-2 stages, average pool, fc 10.
Its convolutions keep their biases, as in the Keras reference, so it has
78,186 parameters plus 480 BN running statistics: the 78,666 that Keras
reports.  Keras pads stride-2 'same' convs asymmetrically; symmetric padding
here gives the same shapes and MACs (12.5 M at 32x32x3).
"""

from __future__ import annotations

from typing import Literal

import torch.nn.functional as F
from torch import Tensor, nn

from tinytamer.errors import ModelError
from tinytamer.zoo._init import kaiming_init
from tinytamer.zoo.registry import register_model
from tinytamer.zoo.resnet import BasicBlock, projection_b


class ZeroPadShortcut(nn.Module):
    """Option A shortcut: take every ``stride``-th pixel and zero-pad the new channels."""

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        self.extra = planes - in_planes

    def forward(self, x: Tensor) -> Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        # Split the new channels evenly before and after, as the reference code does.
        return F.pad(x, (0, 0, 0, 0, self.extra // 2, self.extra - self.extra // 2))


def _eembc_projection(in_planes: int, planes: int, stride: int) -> nn.Module:
    """The MLPerf Tiny ResNet-8 projection: a biased 1x1 conv without BN."""
    return nn.Conv2d(in_planes, planes, 1, stride, bias=True)


_PROJECTIONS = {"A": ZeroPadShortcut, "B": projection_b, "eembc": _eembc_projection}


class CifarBlock(BasicBlock):
    """Basic block (He et al. 2016 Fig. 2) with an option A / B / EEMBC shortcut.

    A class of its own so that saved architectures, which name their classes, still load.
    """

    def __init__(self, in_planes: int, planes: int, stride: int, shortcut: str, conv_bias: bool) -> None:
        super().__init__(in_planes, planes, stride, conv_bias=conv_bias, projection=_PROJECTIONS[shortcut])


class CifarResNet(nn.Module):
    """Stem conv 16, three stages of ``blocks`` basic blocks (16/32/64), avgpool, fc."""

    def __init__(
        self,
        blocks: int,
        num_classes: int,
        in_channels: int,
        shortcut: str,
        conv_bias: bool = False,
    ) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, 16, 3, 1, 1, bias=conv_bias), nn.BatchNorm2d(16), nn.ReLU())
        stages: list[nn.Module] = []
        in_planes = 16
        for i, planes in enumerate((16, 32, 64)):
            stage = []
            for j in range(blocks):
                stride = 2 if i > 0 and j == 0 else 1
                stage.append(CifarBlock(in_planes, planes, stride, shortcut, conv_bias))
                in_planes = planes
            stages.append(nn.Sequential(*stage))
        self.layer1, self.layer2, self.layer3 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(64, num_classes)
        kaiming_init(self)

    def forward(self, x: Tensor) -> Tensor:
        x = self.layer3(self.layer2(self.layer1(self.stem(x))))
        return self.fc(self.flatten(self.pool(x)))


def _cifar_resnet(depth: int, num_classes: int, in_channels: int, shortcut: str) -> nn.Module:
    if shortcut not in ("A", "B"):
        raise ModelError(f"resnet{depth}: shortcut must be 'A' or 'B', got '{shortcut}'")
    return CifarResNet((depth - 2) // 6, num_classes, in_channels, shortcut)


@register_model("resnet20")
def resnet20(num_classes: int = 10, in_channels: int = 3, shortcut: Literal["A", "B"] = "A") -> nn.Module:
    """ResNet-20 (n=3), 0.27 M parameters with option A shortcuts."""
    return _cifar_resnet(20, num_classes, in_channels, shortcut)


@register_model("resnet32")
def resnet32(num_classes: int = 10, in_channels: int = 3, shortcut: Literal["A", "B"] = "A") -> nn.Module:
    """ResNet-32 (n=5), 0.46 M parameters with option A shortcuts."""
    return _cifar_resnet(32, num_classes, in_channels, shortcut)


@register_model("resnet56")
def resnet56(num_classes: int = 10, in_channels: int = 3, shortcut: Literal["A", "B"] = "A") -> nn.Module:
    """ResNet-56 (n=9), 0.85 M parameters with option A shortcuts."""
    return _cifar_resnet(56, num_classes, in_channels, shortcut)


@register_model("resnet8")
def resnet8(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    """MLPerf Tiny ResNet-8 (78,186 parameters + 480 BN statistics at 10 classes)."""
    return CifarResNet(1, num_classes, in_channels, shortcut="eembc", conv_bias=True)
