"""MobileNetV2 (Sandler et al. 2018, "MobileNetV2: Inverted Residuals and Linear Bottlenecks").

Table 2 of the paper: a 3x3/2 conv with 32 filters, then the inverted
residual bottlenecks (expand 1x1 + ReLU6, depthwise 3x3 + ReLU6, linear
project 1x1; residual add when stride is 1 and the shape is kept) with
settings (t, c, n, s) below, a 1x1 conv to 1280, global average pool,
dropout and fc.  ``width_mult`` scales every width, rounded to a multiple of
8 (the last conv is not thinned below 1280).  At 224x224 with 1000 classes:
3.5 M parameters, 300 M MACs.

Small inputs (``input_size <= 64``, e.g. CIFAR): like the common CIFAR
variants, the stem conv has stride 1 and the first stride-2 bottleneck stage
(t=6, c=24) has stride 1, so a 32x32 image reaches the last stage at 4x4
instead of 1x1.
"""

from __future__ import annotations

from torch import Tensor, nn

from tinytamer.errors import ModelError
from tinytamer.zoo._init import kaiming_init
from tinytamer.zoo.registry import register_model

# (expansion t, output channels c, repeats n, first stride s), Table 2.
_SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round a width to a multiple of ``divisor``, never more than 10% below it."""
    out = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return out + divisor if out < 0.9 * value else out


def conv_bn_relu6(cin: int, cout: int, kernel: int, stride: int, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU6(),
    )


class InvertedResidual(nn.Module):
    """Expand - depthwise - linear project, with a residual add when shapes match."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers.append(conv_bn_relu6(cin, hidden, 1, 1))
        layers += [
            conv_bn_relu6(hidden, hidden, 3, stride, groups=hidden),
            nn.Conv2d(hidden, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        ]
        self.conv = nn.Sequential(*layers)
        self.use_residual = stride == 1 and cin == cout

    def forward(self, x: Tensor) -> Tensor:
        if self.use_residual:  # fixed at construction: not data-dependent
            return x + self.conv(x)
        return self.conv(x)


class MobileNetV2(nn.Module):
    """MobileNetV2 with ``width_mult`` and a small-input variant (see the module docstring)."""

    def __init__(
        self,
        num_classes: int,
        in_channels: int,
        input_size: int,
        width_mult: float,
        dropout: float,
    ) -> None:
        super().__init__()
        if width_mult <= 0:
            raise ModelError(f"mobilenetv2: width_mult must be > 0, got {width_mult}")
        small = input_size <= 64
        cin = make_divisible(32 * width_mult)
        self.last_channels = make_divisible(1280 * max(1.0, width_mult))
        layers: list[nn.Module] = [conv_bn_relu6(in_channels, cin, 3, 1 if small else 2)]
        for t, c, n, s in _SETTINGS:
            cout = make_divisible(c * width_mult)
            first_stride = 1 if small and c == 24 else s
            for i in range(n):
                layers.append(InvertedResidual(cin, cout, first_stride if i == 0 else 1, t))
                cin = cout
        layers.append(conv_bn_relu6(cin, self.last_channels, 1, 1))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(self.last_channels, num_classes)
        kaiming_init(self, linear_std=0.01)

    def forward(self, x: Tensor) -> Tensor:
        x = self.flatten(self.pool(self.features(x)))
        return self.classifier(self.dropout(x))


@register_model("mobilenetv2", input_shape=(3, 224, 224), num_classes=1000)
def mobilenetv2(
    num_classes: int = 1000,
    in_channels: int = 3,
    input_size: int = 224,
    width_mult: float = 1.0,
    dropout: float = 0.2,
) -> nn.Module:
    """MobileNetV2; ImageNet strides for input_size > 64, CIFAR strides otherwise."""
    return MobileNetV2(num_classes, in_channels, input_size, width_mult, dropout)
