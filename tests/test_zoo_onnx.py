"""The zoo models with unusual ops export to ONNX and run the same in onnxruntime."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tinytamer.zoo import create


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        pytest.param(
            "shufflenetv2",
            {"width_mult": 0.5, "input_size": 32},  # shuffle, chunk
            marks=pytest.mark.slow,
        ),
        ("resnet20", {}),  # option A slice + zero pad
    ],
)
def test_onnx_export_runs_in_onnxruntime(name: str, kwargs: dict, tmp_path) -> None:
    ort = pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    model = create(name, **kwargs).eval()
    x = torch.randn(1, 3, 32, 32)
    path = tmp_path / f"{name}.onnx"
    torch.onnx.export(model, (x,), str(path), dynamo=True, verbose=False)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        np.testing.assert_allclose(out, model(x).numpy(), rtol=1e-4, atol=1e-4)
