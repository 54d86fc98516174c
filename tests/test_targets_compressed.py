"""Compressed models are plain modules: channel-pruned and low-rank ones run on every target."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from tinytamer.targets import get_target, list_targets
from tinytamer.zoo import create


def _calib() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return [torch.randn(16, 1, 16, 16, generator=g) for _ in range(2)]


def _compressed(kind: str) -> torch.nn.Module:
    torch.manual_seed(0)
    model = create("democnn", num_classes=10, in_channels=1, input_size=16).eval()
    if kind == "channel":
        from tinytamer.compress.channel import prune_channels

        return prune_channels(model, torch.randn(1, 1, 16, 16), ratio=0.5, round_to=4)
    from tinytamer.compress.lowrank import decompose

    return decompose(model, _calib(), speedup=2.0, iters=2).eval()


@pytest.mark.slow  # three targets per model; ~30-40 s on a busy 2-core machine
@pytest.mark.parametrize("kind", ["channel", "lowrank"])
def test_compressed_model_deploys_on_every_installed_target(tmp_path, kind):
    model = _compressed(kind)
    targets = [t for t in ("torch", "onnxruntime", "ncnn") if t in list_targets(True)]
    if importlib.util.find_spec("ncnn") is None:
        assert "ncnn" not in targets
    for name in targets:
        d = get_target(name).compile(model, [torch.randn(1, 1, 16, 16)], tmp_path / name, calib=_calib())
        assert d.parity["ok"] and d.parity["inputs"] == 32, name
        assert d(torch.randn(3, 1, 16, 16).numpy())[0].shape == (3, 10)
