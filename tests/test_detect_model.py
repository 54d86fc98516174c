"""YOLO-FastestV2 in the zoo: structure, size against the published figures, outputs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tinytamer.detect.decode import Head
from tinytamer.errors import ModelError
from tinytamer.zoo import count, create, model_info


def test_published_size_at_352() -> None:
    model = create("yolofastest", num_classes=80, input_size=352)
    c = count(model, (3, 352, 352))
    # Published: about 0.25 M parameters and 0.21 GFLOPs (2 FLOPs per MAC) at 352 x 352.
    assert 0.23e6 < c.params < 0.26e6
    assert 0.20e9 < 2 * c.macs < 0.22e9
    assert model_info("yolofastest").input_shape == (3, 352, 352)


@pytest.mark.parametrize("size", [64, 128, 160])
def test_outputs_per_scale(size: int) -> None:
    model = create("yolofastest", num_classes=3, input_size=size).eval()
    p16, p32 = model(torch.zeros(2, 3, size, size))
    assert p16.shape == (2, 5 * 3 + 3, size // 16, size // 16)
    assert p32.shape == (2, 5 * 3 + 3, size // 32, size // 32)


def test_anchors_are_a_buffer_the_head_reads() -> None:
    anchors = [[1, 2], [3, 4], [5, 6], [7, 8], [9, 10], [11, 12]]
    model = create("yolofastest", num_classes=1, input_size=64, anchors=anchors)
    assert "anchors" in model.state_dict()
    head = Head.of(model)
    assert head.strides == (16, 32) and head.num_anchors == 3 and head.num_classes == 1
    assert head.anchors.tolist() == anchors
    # Default anchors: the released COCO ones, scaled to the input.
    default = Head.of(create("yolofastest", num_classes=1, input_size=704))
    assert default.anchors[0].tolist() == pytest.approx([12.64 * 2, 19.39 * 2])


def test_bad_arguments() -> None:
    with pytest.raises(ModelError, match="multiple of 32"):
        create("yolofastest", input_size=100)
    with pytest.raises(ModelError, match="anchors"):
        create("yolofastest", input_size=64, anchors=[[1, 2]])
    with pytest.raises(ModelError, match="not a detector"):
        Head.of(torch.nn.Linear(1, 1))


def test_checkpoint_round_trip_keeps_anchors_and_outputs(tmp_path: Path) -> None:
    from tinytamer.checkpoint import load_checkpoint, save_checkpoint

    model = create("yolofastest", num_classes=2, input_size=64, anchors=[[i + 1, i + 2] for i in range(6)]).eval()
    back = load_checkpoint(save_checkpoint(model, tmp_path / "m.safetensors")).eval()
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        for a, b in zip(model(x), back(x), strict=True):
            assert torch.equal(a, b)
    assert Head.of(back).anchors.tolist() == Head.of(model).anchors.tolist()
