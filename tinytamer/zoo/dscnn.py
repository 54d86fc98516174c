"""DS-CNN small, the MLPerf Tiny keyword-spotting reference model.

Zhang et al. 2017, "Hello Edge: Keyword Spotting on Microcontrollers"
(depthwise-separable CNN), in the configuration of the MLPerf Tiny
benchmark (Banbury et al. 2021): a 1x49x10 MFCC input; conv 64 (10x4,
stride 2, 'same') + BN + ReLU + dropout 0.2; four depthwise-separable blocks
(dw 3x3 + BN + ReLU, pw 1x1 64 + BN + ReLU); dropout 0.4; global average
pool; fc to 12 classes.  Convolutions keep their biases as in the Keras
reference: 23,756 parameters (plus BN running statistics), 2.66 M MACs.

The input is not square, so the spatial size is ``input_hw`` rather than
``input_size``.  The stem's 'same' padding is computed from it (symmetric,
rounded up; output ceil(H/2) x ceil(W/2) as Keras gives).
"""

from __future__ import annotations

from torch import Tensor, nn

from tinytamer.errors import ModelError
from tinytamer.zoo._init import kaiming_init
from tinytamer.zoo.registry import register_model


def _same_padding(size: int, kernel: int, stride: int) -> int:
    """Symmetric padding whose output size is ceil(size / stride), like 'same'."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return -(-total // 2)


def _conv_bn_relu(cin: int, cout: int, kernel: int, groups: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, kernel, padding=kernel // 2, groups=groups), nn.BatchNorm2d(cout), nn.ReLU()]


class DSCNN(nn.Module):
    """DS-CNN small (see the module docstring)."""

    def __init__(
        self,
        num_classes: int,
        in_channels: int,
        input_hw: tuple[int, int],
        filters: int = 64,
        blocks: int = 4,
    ) -> None:
        super().__init__()
        if len(input_hw) != 2 or min(input_hw) < 1:
            raise ModelError(f"dscnn: input_hw must be (height, width), got {input_hw}")
        kernel, stride = (10, 4), 2
        padding = tuple(_same_padding(s, k, stride) for s, k in zip(input_hw, kernel, strict=True))
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, filters, kernel, stride, padding),
            nn.BatchNorm2d(filters),
            nn.ReLU(),
            nn.Dropout(0.2),
        )
        self.blocks = nn.Sequential(
            *[
                nn.Sequential(*_conv_bn_relu(filters, filters, 3, groups=filters), *_conv_bn_relu(filters, filters, 1))
                for _ in range(blocks)
            ]
        )
        self.dropout = nn.Dropout(0.4)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(filters, num_classes)
        kaiming_init(self)

    def forward(self, x: Tensor) -> Tensor:
        x = self.dropout(self.blocks(self.stem(x)))
        return self.fc(self.flatten(self.pool(x)))


@register_model("dscnn", input_shape=(1, 49, 10), num_classes=12)
def dscnn(num_classes: int = 12, in_channels: int = 1, input_hw: tuple[int, int] = (49, 10)) -> nn.Module:
    """DS-CNN small for a ``in_channels x input_hw`` spectrogram (default 1x49x10, 12 classes)."""
    return DSCNN(num_classes, in_channels, tuple(input_hw))
