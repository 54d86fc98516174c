"""Every zoo model is torch.export friendly and matches eager mode."""

from __future__ import annotations

import pytest
import torch

from tinytamer.zoo import create, list_models, model_info


def _small(name: str) -> tuple[torch.nn.Module, tuple[int, ...]]:
    """The model at its natural input, or at 32x32 for the ImageNet-sized ones (fast)."""
    c, h, w = model_info(name).input_shape
    if h == w:
        h = w = min(h, 32)
    model = create(name, num_classes=10, in_channels=c, input_size=h)
    return model.eval(), (c, h, w)


@pytest.mark.parametrize("name", [n for n in list_models() if not n.startswith("test_")])
def test_torch_export_matches_eager(name: str) -> None:
    torch.manual_seed(0)
    model, shape = _small(name)
    x = torch.randn(2, *shape)
    program = torch.export.export(model, (x,))
    with torch.no_grad():
        torch.testing.assert_close(program.module()(x), model(x), rtol=1e-5, atol=1e-5)
