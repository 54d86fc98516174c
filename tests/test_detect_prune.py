"""Channel pruning inside the detector's ShuffleNetV2 backbone: each unit's inner width prunes
physically; the layers whose channels a unit splits, concatenates and shuffles are refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tinytamer.compress.channel import prune_channels
from tinytamer.errors import ModelError
from tinytamer.export.onnx import export_onnx
from tinytamer.zoo import count, create

SIZE = 64
OUTPUTS = ["out_box", "out_obj", "out_cls"]
INNER = {"regex": [r"branch\.[03]$"]}  # each unit's inner pw conv and its depthwise conv


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return create("yolofastest", num_classes=2, input_size=SIZE).eval()


@pytest.fixture(scope="module")
def pruned(model: torch.nn.Module) -> torch.nn.Module:
    x = torch.rand(2, 3, SIZE, SIZE)
    return prune_channels(model, x, ratio=0.5, select=INNER, ignore=OUTPUTS, round_to=None)


def test_unit_inner_width_prunes_and_runs(model: torch.nn.Module, pruned: torch.nn.Module) -> None:
    for name in ("stage2.0", "stage3.1", "stage4.3"):
        before, after = model.get_submodule(name), pruned.get_submodule(name)
        assert after.branch[0].out_channels == before.branch[0].out_channels // 2
        assert after.branch[3].out_channels == after.branch[0].out_channels  # the depthwise follows
        assert after.branch[5].out_channels == before.branch[5].out_channels  # the unit's output: whole
    assert count(pruned, (3, SIZE, SIZE)).params < 0.8 * count(model, (3, SIZE, SIZE)).params
    x = torch.rand(2, 3, SIZE, SIZE)
    with torch.no_grad():
        assert [o.shape for o in pruned(x)] == [o.shape for o in model(x)]


@pytest.mark.slow  # the ONNX export: about 35 s on a loaded 2-core machine
def test_pruned_backbone_exports_to_onnx(pruned: torch.nn.Module, tmp_path: Path) -> None:
    x = torch.rand(2, 3, SIZE, SIZE)
    info = export_onnx(pruned, [x[:1]], tmp_path / "pruned.onnx")
    ort = pytest.importorskip("onnxruntime")
    sess = ort.InferenceSession(str(info["path"]), providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        want = pruned(x)
    for a, b in zip(got, want, strict=True):
        np.testing.assert_allclose(a, b.numpy(), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize(
    ("regex", "layer"),
    [
        (r"^stage", "stage2.0.branch.5"),  # a unit's output half
        (r"proj\.2$", "stage2.0.proj.2"),  # the projection half of a stride-2 unit
        (r"proj\.0$", "stage2.0.proj.0"),  # the depthwise conv on the unit's input
        (r"^conv1", "conv1.0"),  # the stem
    ],
)
def test_backbone_layers_fixed_by_the_unit_are_refused(model: torch.nn.Module, regex: str, layer: str) -> None:
    x = torch.rand(1, 3, SIZE, SIZE)
    with pytest.raises(ModelError, match=f"layer '{layer.replace('.', '[.]')}' cannot be pruned"):
        prune_channels(model, x, ratio=0.5, select={"regex": [regex]}, ignore=OUTPUTS)


def test_default_selection_names_the_first_fixed_layer(model: torch.nn.Module) -> None:
    with pytest.raises(ModelError, match="'conv1.0' cannot be pruned"):
        prune_channels(model, torch.rand(1, 3, SIZE, SIZE), ignore=OUTPUTS)
