"""LeNet-300-100, LeNet-5 (Caffe variant) and a tiny demo CNN.

LeNet-300-100 and LeNet-5 are the networks of LeCun et al. 1998 as used by
the pruning / Deep Compression papers (Han et al. 2015, "Learning both Weights
and Connections"; Han et al. 2016, "Deep Compression"), i.e. the Caffe
``lenet`` example: conv 20 5x5 - maxpool 2 - conv 50 5x5 - maxpool 2 - fc 500 -
relu - fc 10 (no ReLU after the convs, as in Caffe).
"""

from __future__ import annotations

from torch import Tensor, nn

from tinytamer.errors import ModelError
from tinytamer.zoo._init import kaiming_init
from tinytamer.zoo.registry import register_model


def _caffe_xavier(model: nn.Module) -> nn.Module:
    """Caffe's ``xavier`` filler (U(+-sqrt(3 / fan_in)), zero bias), as the Caffe LeNets use."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d | nn.Linear):
            nn.init.kaiming_uniform_(m.weight, nonlinearity="linear")
            nn.init.zeros_(m.bias)
    return model


@register_model("lenet300", input_shape=(1, 28, 28))
def lenet300(num_classes: int = 10, in_channels: int = 1, input_size: int = 28) -> nn.Module:
    """LeNet-300-100: flatten - fc 300 - relu - fc 100 - relu - fc classes (266,610 params)."""
    return _caffe_xavier(
        nn.Sequential(
            nn.Flatten(),
            nn.Linear(in_channels * input_size * input_size, 300),
            nn.ReLU(),
            nn.Linear(300, 100),
            nn.ReLU(),
            nn.Linear(100, num_classes),
        )
    )


def _after_conv_pool(size: int, kernel: int, where: str) -> int:
    out = (size - kernel + 1) // 2
    if out < 1:
        raise ModelError(f"{where}: input_size too small for a {kernel}x{kernel} conv + 2x2 pool")
    return out


class LeNet5(nn.Module):
    """Caffe LeNet-5 (431,080 params at 1x28x28)."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, input_size: int = 28) -> None:
        super().__init__()
        side = _after_conv_pool(_after_conv_pool(input_size, 5, "lenet5"), 5, "lenet5")
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 20, 5),
            nn.MaxPool2d(2),
            nn.Conv2d(20, 50, 5),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(50 * side * side, 500),
            nn.ReLU(),
            nn.Linear(500, num_classes),
        )
        _caffe_xavier(self)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))


@register_model("lenet5", input_shape=(1, 28, 28))
def lenet5(num_classes: int = 10, in_channels: int = 1, input_size: int = 28) -> nn.Module:
    """Caffe LeNet-5; the flatten size follows ``input_size``."""
    return LeNet5(num_classes, in_channels, input_size)


class DemoCNN(nn.Module):
    """Tiny CNN for 1x16x16 digits: conv 8 - relu - pool - conv 16 - relu - pool - fc."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, input_size: int = 16) -> None:
        super().__init__()
        if input_size < 4 or input_size % 4:
            raise ModelError(f"democnn: input_size must be a multiple of 4, got {input_size}")
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 8, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(16 * (input_size // 4) ** 2, num_classes))
        kaiming_init(self)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))


@register_model("democnn", input_shape=(1, 16, 16))
def democnn(num_classes: int = 10, in_channels: int = 1, input_size: int = 16) -> nn.Module:
    """The demo model (3,818 params at 1x16x16, 10 classes)."""
    return DemoCNN(num_classes, in_channels, input_size)
