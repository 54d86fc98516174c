"""Helpers that several parts share: top-1 scoring, picking plain layers, the ResNet block,
and the atomic writes of the files a run leaves."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from tinytamer.compress import fixedpoint, int8, ttq
from tinytamer.compress.selector import select_plain
from tinytamer.errors import ModelError
from tinytamer.scoring import top1_agreement, top1_hits
from tinytamer.train import snapshot
from tinytamer.zoo import create
from tinytamer.zoo.cifar_resnet import CifarBlock
from tinytamer.zoo.resnet import BasicBlock


def test_top1_hits_counts_the_same_on_numpy_and_torch() -> None:
    scores = np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]], dtype=np.float32)
    labels = np.array([1, 1, 1])
    assert top1_hits(scores, labels) == 2
    assert top1_hits(torch.from_numpy(scores), torch.from_numpy(labels)) == 2
    assert top1_agreement(scores, scores[:, ::-1]) == 0.0
    assert top1_agreement(scores, scores * 2) == 1.0


class _Quantized(nn.Conv2d):
    """A subclass stands for a layer a method has already replaced."""


def test_select_plain_leaves_replaced_layers_out_and_names_the_method() -> None:
    model = nn.Sequential(nn.Conv2d(1, 2, 3), _Quantized(2, 2, 1), nn.Flatten(), nn.Linear(8, 3))
    assert [n for n, _ in select_plain(model, None, "m")] == ["0", "3"]
    with pytest.raises(
        ModelError,
        match=r"^m: the selector picked no plain Conv2d / Linear layer "
        r"\(1: _Quantized\)$",
    ):
        select_plain(model, {"names": ["1"]}, "m")
    with pytest.raises(ModelError, match=r"^m: the selector picked no .* \(why\)$"):
        select_plain(model, {"names": ["1"]}, "m", "why")


def test_methods_refuse_layers_they_already_replaced() -> None:
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(64, 10))
    calib = [torch.randn(4, 1, 8, 8)]
    fixed = fixedpoint.quantize(model, calib, bits=8)
    with pytest.raises(ModelError, match="fixed-point quantization: .* not quantized again"):
        fixedpoint.quantize(fixed, calib, bits=8)
    ternary = ttq.ternarize(model)
    assert type(ternary[2]) is ttq.TernaryConv2d
    with pytest.raises(ModelError, match="ttq: .* at least three such layers"):
        ttq.ternarize(ternary, select={"names": ["2"]})
    prepared = int8.prepare(model, calib[0])
    with pytest.raises(ModelError, match=r"int8 quantization: .* \(0: QuantConv2d, 5: QuantLinear\)"):
        int8.prepare(prepared, calib[0])


def test_the_cifar_block_is_the_resnet_block_with_its_own_shortcuts() -> None:
    assert issubclass(CifarBlock, BasicBlock)
    a = dict(create("resnet20").layer2[0].named_children())
    b = dict(create("resnet20", shortcut="B").layer2[0].named_children())
    assert list(a) == ["conv1", "bn1", "relu1", "conv2", "bn2", "shortcut", "relu2"] == list(b)
    assert type(a["shortcut"]).__name__ == "ZeroPadShortcut"
    assert isinstance(b["shortcut"], nn.Sequential)
    assert isinstance(create("resnet8").layer2[0].shortcut, nn.Conv2d)
    assert isinstance(create("resnet18").layer2[0].shortcut, nn.Sequential)


def test_snapshot_written_atomically_leaves_no_temporary_file(tmp_path) -> None:
    path = tmp_path / "iter_1.pt"
    snapshot.save(path, {"iter": 1, "model": {"w": torch.ones(2)}})
    snapshot.save(path, {"iter": 1, "model": {"w": torch.zeros(2)}})
    assert [p.name for p in tmp_path.iterdir()] == ["iter_1.pt"]
    assert torch.equal(snapshot.load(path)["model"]["w"], torch.zeros(2))
