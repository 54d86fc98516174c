"""OpenVINO: fp32 and int8 parity, our int8 model as deployed, NNCF's, cost in a child process,
and bench picking among every installed target (skipped when the extra is not installed)."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch
from test_targets_helpers import DigitNet, calib_batches, residual_model
from torch import nn

from tinytamer.errors import ModelError, TamerError
from tinytamer.targets import get_target
from tinytamer.targets.options import compile_options

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("openvino") is None, reason="openvino not installed (pip install 'tinytamer[openvino]')"
)


@pytest.fixture(scope="module")
def trained(digits_data):
    """DigitNet trained on sklearn digits (8x8) for 150 steps; test accuracy > 0.8."""
    x, y = digits_data
    torch.manual_seed(0)
    model = DigitNet()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for step in range(150):
        idx = torch.randint(0, 1400, (64,), generator=torch.Generator().manual_seed(step))
        loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    acc = (model(x[1400:]).argmax(1) == y[1400:]).float().mean().item()
    assert acc > 0.8
    return model, x, y, acc


def _accuracy(deployed, x, y) -> float:
    return float((deployed(x.numpy())[0].argmax(1) == y.numpy()).mean())


def test_fp32_parity_any_batch_and_ir_artifacts(tmp_path):
    model = residual_model()
    d = get_target("openvino").compile(model, [torch.randn(1, 1, 8, 8)], tmp_path, calib=calib_batches())
    assert d.parity["ok"] and d.parity["outputs"][0]["max_rel_err"] < 1e-5 and d.parity["inputs"] == 64
    for batch in (1, 3):
        x = torch.randn(batch, 1, 8, 8)
        np.testing.assert_allclose(d(x.numpy())[0], model(x).detach().numpy(), rtol=1e-4, atol=1e-5)
    assert [p.name for p in d.artifacts] == ["model.xml", "model.bin"]
    # fp32 weights stay fp32 (OpenVINO's save_model would halve them by default): the file
    # holds at least the model's float parameters.
    params = sum(p.numel() for p in model.parameters())
    assert d.artifact_bytes > 4 * params
    assert not list(tmp_path.glob("*.onnx"))  # the ONNX step is not left behind


def test_int8_ours_is_the_model_tinytamer_evaluated(trained, tmp_path):
    from tinytamer.deploy import int8_quantizer

    model, x, y, acc_fp32 = trained
    calib = [x[i : i + 50] for i in range(0, 200, 50)]
    d = get_target("openvino").compile(
        model, [x[:1]], tmp_path, precision="int8", calib=calib, quantize=int8_quantizer, int8_params="ours"
    )
    assert d.info["int8_params"].startswith("ours") and d.parity["ok"]
    assert d.parity["outputs"][0]["top1_agree"] >= 0.95 and d.parity["float_top1_agree"] >= 0.9
    assert abs(_accuracy(d, x[1400:], y[1400:]) - acc_fp32) < 0.03
    # Quantized layers run on int8 kernels, not as float with fake quantization.
    runtime = d.runner.compiled(((1, 1, 8, 8),)).get_runtime_model()
    precisions = {
        op.get_rt_info()["runtimePrecision"].astype(str)
        for op in runtime.get_ordered_ops()
        if op.get_rt_info()["layerType"].astype(str) == "Convolution"
    }
    assert precisions <= {"u8", "i8"}, precisions


def test_int8_of_a_quantized_model_keeps_its_parameters(trained, tmp_path):
    from tinytamer.compress.int8 import quantize_ptq

    model, x, _y, _ = trained
    gm = quantize_ptq(model, [x[:100]])
    d = get_target("openvino").compile(gm, [x[:1]], tmp_path, precision="int8", calib=[x[:64]])
    assert d.info["int8_params"].startswith("ours") and "float_top1_agree" not in d.parity
    with torch.no_grad():
        ref = gm(x[1400:1464]).numpy()
    assert (d(x[1400:1464].numpy())[0].argmax(1) == ref.argmax(1)).mean() >= 0.95


def test_int8_of_a_float_model_needs_a_quantizer_or_nncf(tmp_path):
    with pytest.raises(ModelError, match="quantize=.*int8_params='nncf'"):
        get_target("openvino").compile(
            residual_model(),
            [torch.randn(1, 1, 8, 8)],
            tmp_path,
            precision="int8",
            calib=calib_batches(),
            int8_params="ours",
        )


def test_auto_int8_params_nncf_for_a_float_model_ours_without_it(trained, tmp_path, monkeypatch):
    from tinytamer.deploy import int8_quantizer
    from tinytamer.targets import openvino

    model, x, _y, _ = trained
    calib = [x[i : i + 50] for i in range(0, 100, 50)]
    monkeypatch.setattr(openvino, "NNCF", openvino.Backend("openvino", ("no_such_module_nncf",), "pip install nncf"))
    d = get_target("openvino").compile(model, [x[:1]], tmp_path, precision="int8", calib=calib, quantize=int8_quantizer)
    assert d.info["int8_params"].startswith("ours")


@pytest.mark.skipif(importlib.util.find_spec("nncf") is None, reason="nncf not installed")
def test_int8_by_nncf_keeps_accuracy(trained, tmp_path):
    model, x, y, acc_fp32 = trained
    calib = [x[i : i + 50] for i in range(0, 200, 50)]
    # nncf is the default for a float model when it is installed.
    d = get_target("openvino").compile(model, [x[:1]], tmp_path, precision="int8", calib=calib)
    assert d.info["int8_params"].startswith("nncf") and d.parity["ok"]
    assert abs(_accuracy(d, x[1400:], y[1400:]) - acc_fp32) < 0.03


def test_bad_requests_are_named(tmp_path):
    target = get_target("openvino")
    x = torch.randn(1, 1, 8, 8)
    with pytest.raises(TamerError, match="does not support precision 'fp16'"):
        target.compile(residual_model(), [x], tmp_path, precision="fp16")
    with pytest.raises(TamerError, match="int8_params must be one of auto, ours, nncf"):
        target.compile(residual_model(), [x], tmp_path, precision="int8", int8_params="pot")
    with pytest.raises(TamerError, match="int8_params"):
        compile_options(target, {"int8_params": "pot"})
    with pytest.raises(TamerError, match="has no option 'trials'"):
        compile_options(target, {"trials": 3})
    assert compile_options(target, {})["int8_params"] == "auto"


def test_measured_in_a_pinned_child_that_says_what_made_it(tmp_path):
    d = get_target("openvino").compile(residual_model(), [torch.randn(1, 1, 8, 8)], tmp_path)
    cost = d.measure(batch=2, threads=1, repeats=3, warmup=1)
    assert cost.latency_ms_median > 0 and cost.peak_rss_mb > cost.baseline_rss_mb
    assert cost.extra["measured_in"] == "child process" and cost.cpus_pinned is not None
    assert len(cost.cpus_pinned) == 1
    # The child loads OpenVINO and numpy only: no torch in its memory or its versions.
    assert "openvino" in cost.runtime_versions and "torch" not in cost.runtime_versions
    assert cost.host["cpu"] and cost.host["cores"] >= 1 and cost.statistic
    assert cost.load_avg_before is not None and cost.loaded == (max(cost.load_avg_before, cost.load_avg_after) > 1)


def test_bench_includes_openvino_and_picks_among_every_target(tmp_path):
    from tinytamer.deploy import bench

    report = bench(
        residual_model(),
        tmp_path,
        example_input=torch.randn(1, 1, 8, 8),
        calib=calib_batches(2),
        targets=["openvino"],
        precisions=["fp32"],
        repeats=2,
        warmup=1,
        isolate=False,
    )
    names = {r.target for r in report.rows if r.status == "ok"}
    assert names == {"torch", "openvino"}
    fastest = min((r for r in report.rows if r.status == "ok"), key=lambda r: r.latency_ms)
    assert report.best() is fastest
    assert "Measured on" in (tmp_path / "bench.md").read_text()
