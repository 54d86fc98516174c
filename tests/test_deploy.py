"""deploy() / bench(): artifacts, summary, accuracy through the runtime, the best pick."""

from __future__ import annotations

import json

import pytest
import torch
from test_targets_helpers import calib_batches, residual_model
from torch.utils.data import DataLoader, TensorDataset

from tinytamer.calib import Calibration
from tinytamer.deploy import BenchReport, BenchRow, bench, deploy


def _loader(n: int = 40) -> DataLoader:
    g = torch.Generator().manual_seed(3)
    x = torch.randn(n, 1, 8, 8, generator=g)
    # Labels = the model's own predictions, so the float accuracy is exactly 1.
    with torch.no_grad():
        y = residual_model()(x).argmax(1)
    return DataLoader(TensorDataset(x, y), batch_size=16)


def test_deploy_writes_summary_and_scores_through_the_runtime(tmp_path):
    loader = _loader()
    deployed, rep = deploy(
        residual_model(),
        "onnxruntime",
        tmp_path,
        example_input=torch.randn(1, 1, 8, 8),
        calib=Calibration(loader, limit=2),
        test_loader=loader,
        eval_limit=35,
        repeats=3,
        warmup=1,
        isolate=False,
    )
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["target"] == "onnxruntime" and summary["artifacts"] == ["model.onnx"]
    assert summary["artifact_bytes"] == (tmp_path / "model.onnx").stat().st_size
    assert summary["accuracy"] == summary["accuracy_torch"] == 1.0
    assert summary["eval_samples"] == 35
    assert summary["cost"]["latency_ms_median"] > 0 and summary["parity"]["ok"]
    assert not list(tmp_path.glob("*.tmp"))


def test_bench_compares_against_torch_in_the_same_run(tmp_path):
    loader = _loader()
    report = bench(
        residual_model(),
        tmp_path,
        example_input=torch.randn(1, 1, 8, 8),
        calib=calib_batches(2),
        test_loader=loader,
        targets=["onnxruntime"],
        precisions=["fp32", "int8"],
        batches=(1, 2),
        repeats=3,
        warmup=1,
        isolate=False,
    )
    keys = {(r.target, r.precision, r.batch) for r in report.rows}
    assert keys == {
        (t, p, b) for t, p in [("torch", "fp32"), ("onnxruntime", "fp32"), ("onnxruntime", "int8")] for b in (1, 2)
    }
    base = [r for r in report.rows if r.target == "torch"]
    assert all(r.speedup == pytest.approx(1.0) and r.acc_delta == 0.0 for r in base)
    for r in report.rows:
        assert r.status == "ok" and r.latency_ms > 0 and r.accuracy is not None
        assert r.cpus_available is not None and r.cpus_available >= 1
    assert (tmp_path / "bench.png").stat().st_size > 0
    saved = json.loads((tmp_path / "bench.json").read_text())
    assert len(saved["rows"]) == 6 and "| onnxruntime | int8 |" in (tmp_path / "bench.md").read_text()


def test_bench_keeps_a_failing_target_as_a_row(tmp_path, monkeypatch):
    from tinytamer.targets import onnxrt

    monkeypatch.setattr(onnxrt.OrtDeployed, "run", lambda self, a: [a[0][:, :1, 0, 0] * 0])
    report = bench(
        residual_model(),
        tmp_path,
        example_input=torch.randn(1, 1, 8, 8),
        targets=["onnxruntime"],
        precisions=["fp32"],
        repeats=2,
        warmup=0,
        isolate=False,
    )
    failed = [r for r in report.rows if r.target == "onnxruntime"]
    assert failed[0].status.startswith("failed:") and "shape" in failed[0].status
    assert report.best().target == "torch"


def test_best_respects_the_accuracy_constraint():
    rows = [
        BenchRow("torch", "fp32", 1, latency_ms=10.0, speedup=1.0, acc_delta=0.0),
        BenchRow("onnxruntime", "fp32", 1, latency_ms=6.0, speedup=1.7, acc_delta=0.0),
        BenchRow("onnxruntime", "int8", 1, latency_ms=2.0, speedup=5.0, acc_delta=-0.03),
        BenchRow("ncnn", "fp32", 32, latency_ms=1.0, speedup=9.0, acc_delta=0.0),
    ]
    report = BenchReport(rows=rows, threads=2)
    assert report.best(batch=1).precision == "int8"
    assert report.best(0.01, batch=1).target == "onnxruntime"
    assert report.best(0.01, batch=1).precision == "fp32"
    assert report.best(0.05).target == "ncnn"
    assert "| onnxruntime | int8 | 1 |" in report.table() and "-3.00" in report.table()
