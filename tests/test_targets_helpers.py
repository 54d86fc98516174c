"""Small models the target/deploy tests share."""

from __future__ import annotations

import torch
from torch import nn


class ResidualNet(nn.Module):
    """A tiny CNN with BN, a residual add, global pooling and a linear head."""

    def __init__(self, width: int = 8, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU())
        self.conv = nn.Conv2d(width, width, 3, padding=1)
        self.bn = nn.BatchNorm2d(width)
        self.fc = nn.Linear(width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.stem(x)
        y = torch.relu(self.bn(self.conv(y)) + y)
        return self.fc(y.mean((2, 3)))


class DigitNet(ResidualNet):
    """ResidualNet with a spatial head, which learns 8x8 digits in a few steps."""

    def __init__(self, width: int = 8) -> None:
        super().__init__(width)
        self.fc = nn.Linear(width * 16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.stem(x)
        y = torch.relu(self.bn(self.conv(y)) + y)
        return self.fc(torch.flatten(nn.functional.max_pool2d(y, 2), 1))


class Branchy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.gate = Gate()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.gate(self.fc(x))


class Gate(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:  # data-dependent control flow: no graph capture can keep both
            return x * 2
        return x


def residual_model(width: int = 8) -> nn.Module:
    torch.manual_seed(0)
    m = ResidualNet(width)
    # Non-trivial BN statistics so that folding them is exercised.
    with torch.no_grad():
        for bn in (m.stem[1], m.bn):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
    return m.eval()


def calib_batches(n: int = 4, batch: int = 16) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return [torch.randn(batch, 1, 8, 8, generator=g) for _ in range(n)]
