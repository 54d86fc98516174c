"""Target protocol, registry, Cost, parity, export errors; PyTorch and ONNX Runtime fp32."""

from __future__ import annotations

import importlib.util
import os

import numpy as np
import pytest
import torch
from test_targets_helpers import Branchy, calib_batches, residual_model
from torch import nn

from tinytamer.errors import BackendMissing, TamerError
from tinytamer.export.onnx import ExportError
from tinytamer.targets import Cost, ParityError, get_target, list_targets
from tinytamer.targets.base import available_cpus, check_parity


@pytest.fixture(scope="module")
def ort_fp32(tmp_path_factory):
    return get_target("onnxruntime").compile(
        residual_model(), [torch.randn(1, 1, 8, 8)], tmp_path_factory.mktemp("ort"), calib=calib_batches()
    )


def test_registry_lists_builtins_and_rejects_unknown():
    assert {"torch", "onnxruntime", "ncnn"} <= set(list_targets())
    assert "torch" in list_targets(available_only=True)
    with pytest.raises(TamerError, match="unknown target 'tpu'.*onnxruntime.*torch"):
        get_target("tpu")


def test_torch_target_parity_and_cost(tmp_path):
    d = get_target("torch").compile(residual_model(), [torch.randn(1, 1, 8, 8)], tmp_path, calib=calib_batches())
    assert d.parity["ok"] and d.parity["outputs"][0]["max_abs_err"] == 0.0
    cost = d.measure(batch=2, repeats=3, warmup=1, isolate=False)
    assert isinstance(cost, Cost) and cost.latency_ms_median > 0
    assert cost.artifact_bytes == (tmp_path / "model.safetensors").stat().st_size
    assert cost.peak_rss_mb is None  # measured in this process: not isolated
    assert not (tmp_path / "model.pt2").exists()  # only isolated measurement needs it


def test_onnxruntime_fp32_parity_dynamic_batch(ort_fp32):
    model = residual_model()
    assert ort_fp32.parity["ok"] and ort_fp32.parity["outputs"][0]["max_rel_err"] < 1e-4
    for batch in (1, 3):
        x = torch.randn(batch, 1, 8, 8)
        out = ort_fp32(x.numpy())[0]
        assert out.shape == (batch, 10)
        np.testing.assert_allclose(out, model(x).detach().numpy(), rtol=1e-4, atol=1e-5)


def test_cost_fields_and_child_process_memory(ort_fp32):
    cost = ort_fp32.measure(batch=3, threads=1, repeats=5, warmup=1)
    assert cost.latency_ms_median > 0
    assert cost.latency_ms_p10 <= cost.latency_ms_median <= cost.latency_ms_p90
    assert cost.artifact_bytes == ort_fp32.artifacts[0].stat().st_size > 0
    assert cost.batch == 3 and cost.threads == 1 and cost.repeats == 5
    # The child imports onnxruntime and numpy only: its peak is well above zero and
    # above its own baseline (the model and its buffers were loaded after it).
    assert cost.peak_rss_mb > cost.baseline_rss_mb > 1.0
    d = cost.to_dict()
    assert d["target"] == "onnxruntime" and d["extra"]["measured_in"] == "child process"


def test_narrow_pruned_like_model_exports(tmp_path):
    # Odd, narrow channel counts, as channel pruning leaves behind.
    model = nn.Sequential(
        nn.Conv2d(1, 3, 3), nn.ReLU(), nn.Conv2d(3, 5, 1), nn.ReLU(), nn.Flatten(), nn.Linear(5 * 6 * 6, 7)
    ).eval()
    d = get_target("onnxruntime").compile(model, [torch.randn(1, 1, 8, 8)], tmp_path)
    assert d.parity["ok"] and d(np.zeros((2, 1, 8, 8), np.float32))[0].shape == (2, 7)


def test_int8_without_calibration_is_refused(tmp_path):
    with pytest.raises(TamerError, match="calib"):
        get_target("onnxruntime").compile(residual_model(), [torch.randn(1, 1, 8, 8)], tmp_path, precision="int8")


def test_unsupported_precision_is_refused(tmp_path):
    with pytest.raises(TamerError, match="precision 'int8'.*fp32"):
        get_target("torch").compile(residual_model(), [torch.randn(1, 1, 8, 8)], tmp_path, precision="int8")


def test_export_error_names_the_control_flow_and_module(tmp_path):
    with pytest.raises(ExportError) as info:
        get_target("onnxruntime").compile(Branchy().eval(), [torch.randn(2, 4)], tmp_path)
    msg = str(info.value)
    assert "data-dependent control flow" in msg
    assert "module 'gate'" in msg and "test_targets_helpers.py" in msg and "x.sum() > 0" in msg
    assert "torch" in msg.split("still run it:")[1]
    # ... and the eager target still deploys it, and rebuilds it eagerly in the child.
    d = get_target("torch").compile(Branchy().eval(), [torch.randn(2, 4)], tmp_path / "t")
    assert d.parity["ok"] and d.probe_spec()["loader"].endswith(":load_runtime")


def test_parity_failure_stops_the_deployment(tmp_path, monkeypatch):
    from tinytamer.targets import onnxrt

    real_run = onnxrt.OrtDeployed.run
    monkeypatch.setattr(onnxrt.OrtDeployed, "run", lambda self, arrays: [o + 0.5 for o in real_run(self, arrays)])
    with pytest.raises(ParityError, match=r"max relative error .* > 0\.001"):
        get_target("onnxruntime").compile(residual_model(), [torch.randn(1, 1, 8, 8)], tmp_path)


def test_check_parity_reports_top1_and_shape_mismatch():
    ref = [np.eye(4, dtype=np.float32)]
    res = check_parity(ref, [np.eye(4) * 1.01], precision="int8", where="here")
    assert res["ok"] and res["outputs"][0]["top1_agree"] == 1.0
    with pytest.raises(ParityError, match="top-1 agreement 0.000"):
        check_parity(ref, [np.roll(np.eye(4), 1, axis=1)], precision="int8", where="here")
    with pytest.raises(ParityError, match="shape"):
        check_parity(ref, [np.eye(3)], precision="fp32", where="here")


def test_missing_backend_says_how_to_install(tmp_path, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name in ("ncnn", "pnnx") else real(name, *a)
    )
    target = get_target("ncnn")
    assert not target.available() and "ncnn" not in list_targets(available_only=True)
    with pytest.raises(BackendMissing, match=r"pip install 'tinytamer\[ncnn\]'"):
        target.compile(residual_model(), [torch.randn(1, 1, 8, 8)], tmp_path)


def test_torch_child_rebuilds_the_eager_model_from_its_checkpoint(tmp_path):
    d = get_target("torch").compile(residual_model(), [torch.randn(1, 1, 8, 8)], tmp_path)
    spec = d.probe_spec()
    # The test's own model class is allowed (and importable) in the child.
    assert spec["loader"].endswith(":load_runtime") and "test_targets_helpers." in spec["args"]["allow"]
    cost = d.measure(batch=2, repeats=3, warmup=1)
    assert cost.peak_rss_mb > cost.baseline_rss_mb > 1.0 and cost.latency_ms_median > 0
    assert not (tmp_path / "model.pt2").exists()


def test_runtime_loaders_do_not_import_torch():
    # The memory probe's ORT / ncnn / tvm numbers must not include torch's footprint, nor
    # pydantic's (the targets' Options models are imported only when asked for).
    import subprocess
    import sys

    code = (
        "import sys, tinytamer.targets._probe, tinytamer.targets.onnxrt, "
        "tinytamer.targets.ncnn, tinytamer.targets.tvm; "
        "print('torch' in sys.modules, 'pydantic' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False False"


@pytest.mark.skipif(
    not hasattr(os, "sched_setaffinity") or available_cpus() < 2, reason="needs CPU affinity control and two CPUs"
)
def test_measure_says_when_the_process_has_fewer_cpus_than_threads(ort_fp32):
    keep = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(keep)})
    try:
        with pytest.warns(UserWarning, match=r"2 threads but this process may run on 1 CPU"):
            cost = ort_fp32.measure(batch=1, threads=2, repeats=2, warmup=1)
    finally:
        os.sched_setaffinity(0, keep)
    assert cost.extra["cpus_available"] == 1
    assert ort_fp32.measure(batch=1, threads=2, repeats=2, warmup=1).extra["cpus_available"] >= 2
