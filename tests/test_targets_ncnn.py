"""ncnn through pnnx: fp32 and fp16 parity (skipped when the extra is not installed)."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch
from test_targets_helpers import calib_batches, residual_model

from tinytamer.targets import get_target


@pytest.mark.skipif(
    importlib.util.find_spec("ncnn") is None or importlib.util.find_spec("pnnx") is None,
    reason="ncnn/pnnx not installed (pip install 'tinytamer[ncnn]')",
)
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_ncnn_parity(tmp_path, precision):
    model = residual_model()
    d = get_target("ncnn").compile(
        model, [torch.randn(1, 1, 8, 8)], tmp_path, precision=precision, calib=calib_batches(2)
    )
    assert d.parity["ok"] and d.parity["inputs"] == 32
    x = torch.randn(3, 1, 8, 8)
    out = d(x.numpy())[0]
    assert out.shape == (3, 10)
    tol = 1e-4 if precision == "fp32" else 2e-2
    np.testing.assert_allclose(out, model(x).detach().numpy(), atol=tol, rtol=tol)
    assert {p.name for p in d.artifacts} == {"model.ncnn.param", "model.ncnn.bin"}
    assert not list(tmp_path.glob("pnnx-*"))  # the scratch folder is gone
