"""ResNet-18 (He et al. 2016, "Deep Residual Learning for Image Recognition", Table 1).

The ImageNet network: 7x7/2 conv stem + 3x3/2 maxpool, four stages of two
basic blocks (64/128/256/512 filters), projection (1x1 conv + BN, option B)
shortcuts where the shape changes, global average pool, fc.  With 1000
classes at 224x224 it has 11,689,512 parameters and 1.82 G MACs, the figures
of the paper and of the common reference implementation.

``stem="cifar"`` swaps the stem for a 3x3/1 conv without maxpool, the usual
adaptation for 32x32 inputs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

from torch import Tensor, nn

from tinytamer.errors import ModelError
from tinytamer.zoo._init import kaiming_init
from tinytamer.zoo.registry import register_model


def projection_b(in_planes: int, planes: int, stride: int) -> nn.Module:
    """Option B shortcut, where the shape changes: a 1x1 conv + BN projection."""
    return nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with a residual add (He et al. 2016, Fig. 2).

    Where the shape changes the shortcut is ``projection(in_planes, planes, stride)``.
    """

    def __init__(
        self,
        in_planes: int,
        planes: int,
        stride: int = 1,
        *,
        conv_bias: bool = False,
        projection: Callable[[int, int, int], nn.Module] = projection_b,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=conv_bias)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=conv_bias)
        self.bn2 = nn.BatchNorm2d(planes)
        # Made after the convs: the order of layers (and of seeded initial weights) is the paper's.
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            self.shortcut = projection(in_planes, planes, stride)
        self.relu2 = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class ResNet18(nn.Module):
    """ResNet-18 with an ImageNet or a CIFAR stem."""

    def __init__(self, num_classes: int, in_channels: int, stem: Literal["imagenet", "cifar"]) -> None:
        super().__init__()
        if stem == "imagenet":
            self.stem = nn.Sequential(
                nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False),
                nn.BatchNorm2d(64),
                nn.ReLU(),
                nn.MaxPool2d(3, 2, 1),
            )
        elif stem == "cifar":
            self.stem = nn.Sequential(nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU())
        else:
            raise ModelError(f"resnet18: stem must be 'imagenet' or 'cifar', got '{stem}'")
        layers: list[nn.Module] = []
        in_planes = 64
        for i, planes in enumerate((64, 128, 256, 512)):
            stride = 1 if i == 0 else 2
            layers.append(nn.Sequential(BasicBlock(in_planes, planes, stride), BasicBlock(planes, planes)))
            in_planes = planes
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(512, num_classes)
        kaiming_init(self)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.flatten(self.pool(x)))


@register_model("resnet18", input_shape=(3, 224, 224), num_classes=1000)
def resnet18(
    num_classes: int = 1000,
    in_channels: int = 3,
    input_size: int = 224,
    stem: Literal["imagenet", "cifar"] | None = None,
) -> nn.Module:
    """ResNet-18; ``stem`` defaults to ``"imagenet"`` when input_size >= 64, else ``"cifar"``."""
    return ResNet18(num_classes, in_channels, stem or ("imagenet" if input_size >= 64 else "cifar"))
