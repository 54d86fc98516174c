"""A low-rank model is a plain module tree: it exports with torch.export and to ONNX."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tinytamer.compress import lowrank
from tinytamer.zoo import create


@pytest.fixture(scope="module")
def approx() -> torch.nn.Module:
    torch.manual_seed(0)
    model = create("resnet8").eval()
    calib = [torch.randn(16, 3, 32, 32) for _ in range(2)]
    return lowrank.decompose(model, calib, speedup=2.0, iters=2, samples_per_batch=256).eval()


def test_torch_export(approx) -> None:
    x = torch.randn(2, 3, 32, 32)
    program = torch.export.export(approx, (x,))
    with torch.no_grad():
        assert torch.allclose(program.module()(x), approx(x), atol=1e-5)


def test_onnx_export_runs_in_onnxruntime(approx, tmp_path) -> None:
    ort = pytest.importorskip("onnxruntime")
    x = torch.randn(1, 3, 32, 32)
    path = tmp_path / "lowrank.onnx"
    torch.onnx.export(approx, (x,), str(path), dynamo=True, verbose=False)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        np.testing.assert_allclose(out, approx(x).numpy(), rtol=1e-4, atol=1e-4)
