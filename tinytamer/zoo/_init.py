"""Weight initialisation shared by the zoo models (He et al. 2015, as the papers use)."""

from __future__ import annotations

from torch import nn


def kaiming_init(model: nn.Module, *, linear_std: float | None = None) -> None:
    """Kaiming-normal (fan_out) convs, BN to identity; Linear to N(0, std) if given.

    ``linear_std=None`` keeps PyTorch's default Linear init (what the ResNet
    references do); MobileNetV2 / ShuffleNetV2 references use N(0, 0.01).
    """
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d | nn.BatchNorm1d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear) and linear_std is not None:
            nn.init.normal_(m.weight, 0.0, linear_std)
            nn.init.zeros_(m.bias)
