"""The TVM target: parity with PyTorch, the compiled library, tuning and its database, errors."""

from __future__ import annotations

import importlib.util
import json
import os

import numpy as np
import pytest
import torch
from torch import nn

from tinytamer.deploy import bench
from tinytamer.errors import BackendMissing, TamerError
from tinytamer.export.onnx import ExportError
from tinytamer.targets import ParityError, get_target, list_targets
from tinytamer.targets import tvm as tvm_target


def small_cnn() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 8 * 8, 10)
    )
    # Non-trivial BatchNorm statistics, so that folding them in is really checked.
    with torch.no_grad():
        model[1].running_mean.uniform_(-0.5, 0.5)
        model[1].running_var.uniform_(0.5, 2.0)
    return model.eval()


@pytest.fixture
def tvm():
    return pytest.importorskip("tvm")


def test_missing_backend_says_how_to_install(monkeypatch, tmp_path):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name.split(".")[0] == "tvm" else real(name, *a)
    )
    target = get_target("tvm")
    assert "tvm" in list_targets() and "tvm" not in list_targets(available_only=True)
    with pytest.raises(BackendMissing, match=r"tinytamer\[tvm\]"):
        target.compile(small_cnn(), [torch.randn(1, 1, 8, 8)], tmp_path)


def test_untuned_compile_matches_torch_and_measures_the_library(tvm, tmp_path):
    model = small_cnn()
    calib = [torch.randn(5, 1, 8, 8), torch.randn(5, 1, 8, 8)]
    cpus = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    d = get_target("tvm").compile(model, [torch.randn(1, 1, 8, 8)], tmp_path, trials=0, calib=calib)
    # TVM pins the thread that runs it; every child started later would inherit one core.
    assert cpus is None or os.sched_getaffinity(0) == cpus
    assert d.parity["ok"] and d.parity["inputs"] == 10
    assert d.parity["outputs"][0]["max_rel_err"] < 1e-4
    lib = tmp_path / "model.b1.so"
    assert d.artifacts == [lib] and lib.stat().st_size > 10_000
    # A batch with no library of its own runs in chunks of the compiled one.
    x = torch.randn(3, 1, 8, 8)
    with torch.no_grad():
        ref = model(x).numpy()
    np.testing.assert_allclose(d(x.numpy())[0], ref, rtol=1e-4, atol=1e-5)
    assert cpus is None or os.sched_getaffinity(0) == cpus
    cost = d.measure(batch=1, repeats=3, warmup=1)
    assert cost.extra["measured_in"] == "child process" and cost.peak_rss_mb > cost.baseline_rss_mb
    assert cost.latency_ms_median > 0 and cost.artifact_bytes == lib.stat().st_size
    assert cost.extra["tuned"] is False and cost.extra["variant"] == "untuned"
    assert cpus is None or cost.extra["cpus_available"] == len(cpus)
    # Pinned to the last core this process may use, TVM's worker stays there (left to
    # itself TVM binds by the machine's core order and would move it to core 0).
    if cpus is not None:
        os.sched_setaffinity(0, {max(cpus)})
    try:
        one = d.measure(batch=1, threads=1, repeats=2, warmup=1)
    finally:
        if cpus is not None:
            os.sched_setaffinity(0, cpus)
    assert cpus is None or one.extra["thread_cpus"] == one.cpus_pinned == [max(cpus)]
    # Measuring another batch size builds a library for it first.
    cost4 = d.measure(batch=4, repeats=2, warmup=1, isolate=False)
    assert (tmp_path / "model.b4.so").is_file() and cost4.batch == 4
    np.testing.assert_allclose(
        d(torch.zeros(4, 1, 8, 8).numpy())[0], model(torch.zeros(4, 1, 8, 8)).detach().numpy(), rtol=1e-4, atol=1e-5
    )


def test_bench_labels_untuned_tvm(tvm, tmp_path):
    report = bench(
        small_cnn(),
        tmp_path,
        example_input=torch.randn(1, 1, 8, 8),
        targets=["tvm"],
        batches=(1,),
        repeats=2,
        warmup=1,
        isolate=False,
        target_options={"tvm": {"trials": 0}},
    )
    row = next(r for r in report.rows if r.target == "tvm")
    assert row.status == "ok" and row.variant == "untuned"
    assert "| tvm (untuned) | fp32 | 1 |" in report.table()


@pytest.mark.slow
def test_tuning_fills_a_database_that_the_next_compile_reuses(tvm, tmp_path, capfd):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 32)).eval()  # one tuning task: fused matmul + add
    x = torch.randn(1, 64)
    db = tmp_path / "db"
    first = get_target("tvm").compile(model, [x], tmp_path / "a", trials=4, database=db, seed=0)
    info = first.tuning[1]
    assert info["tuned"] and info["tasks"] >= 1 and info["tasks_tuned_now"] == info["tasks"]
    assert info["trials_measured_now"] >= 1 and info["tuning_s"] > 0
    # The library really runs the tuned schedules (every fused function came from the database).
    assert info["functions_scheduled_from_database"] == info["tasks"]
    assert (db / "database_tuning_record.json").stat().st_size > 0
    assert "tvm tuning: task 1/" in capfd.readouterr().err
    assert first.parity["ok"]

    second = get_target("tvm").compile(model, [x], tmp_path / "b", trials=4, database=db)
    again = second.tuning[1]
    assert again["tasks_tuned_now"] == 0 and again["tasks_from_database"] == info["tasks"]
    assert again["trials_measured_now"] == 0 and again["tuned"]
    assert again["tuning_s"] < info["tuning_s"] / 5
    assert second.parity["ok"]
    cost = second.measure(batch=1, repeats=2, warmup=1, isolate=False)
    assert cost.extra["variant"] == "tuned, 4 trials/task" and cost.extra["trials_per_task"] == 4

    # A larger budget tunes the recorded tasks further instead of reusing them as they are.
    third = get_target("tvm").compile(model, [x], tmp_path / "c", trials=8, database=db, progress=False)
    more = third.tuning[1]
    assert more["tasks_tuned_now"] == more["tasks_tuned_further"] == info["tasks"]
    assert more["trials_measured_now"] >= 1 and more["variant"] == "tuned, 8 trials/task"
    budgets = json.loads((db / "budgets.json").read_text())
    assert len(budgets) == info["tasks"] and set(budgets.values()) == {8}
    assert third.parity["ok"]
    (db / "budgets.json").write_text("[1, 2]")
    with pytest.raises(TamerError, match="budgets.json is not a JSON object"):
        get_target("tvm").compile(model, [x], tmp_path / "d", trials=8, database=db)


def test_bad_requests_are_named(tvm, tmp_path):
    target = get_target("tvm")
    x = torch.randn(1, 1, 8, 8)
    with pytest.raises(TamerError, match="does not support precision 'int8'"):
        target.compile(small_cnn(), [x], tmp_path, precision="int8")
    with pytest.raises(TamerError, match="trials must be a whole number"):
        target.compile(small_cnn(), [x], tmp_path, trials=-1)
    with pytest.raises(TamerError, match="qparams"):
        target.compile(small_cnn(), [x], tmp_path, qparams=small_cnn())


def test_unconvertible_models_name_the_op_and_the_alternatives(tvm, tmp_path):
    class Fft(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.fft.fft(x).real

    with pytest.raises(TamerError, match=r"_fft_r2c.*onnxruntime"):
        get_target("tvm").compile(Fft(), [torch.randn(1, 8)], tmp_path, trials=0)

    class Branchy(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * 2 if x.sum() > 0 else x  # data-dependent control flow

    with pytest.raises(ExportError, match="Targets that can still run it"):
        get_target("tvm").compile(Branchy(), [torch.randn(1, 8)], tmp_path, trials=0)


def test_a_wrong_library_is_not_accepted(tvm, tmp_path, monkeypatch):
    monkeypatch.setattr(tvm_target.TvmDeployed, "run", lambda self, a: [np.zeros((a[0].shape[0], 10), np.float32)])
    with pytest.raises(ParityError, match="target 'tvm'"):
        get_target("tvm").compile(small_cnn(), [torch.randn(2, 1, 8, 8)], tmp_path, trials=0)


def test_host_target_and_database_location(tvm, monkeypatch, tmp_path):
    target = tvm_target.host_target(3)
    assert target["kind"] == "llvm" and target["num-cores"] == 3
    assert tvm.target.Target(target).kind.name == "llvm"
    monkeypatch.setenv("TINYTAMER_CACHE", str(tmp_path))
    assert tvm_target.cache_root() == tmp_path / "tvm"
    assert tvm_target.target_key(target).endswith("-3cores")


def test_deploy_stage_passes_the_trial_budget_and_records_it(tvm, tmp_path):
    from tinytamer.recipe import parse_recipe, run

    recipe = parse_recipe(
        {
            "name": "tvm-stage",
            "seed": 0,
            "data": {"name": "digits", "size": 8, "batch_size": 32, "limit": 120},
            "model": {"name": "democnn"},
            "stages": [
                {
                    "deploy": {
                        "target": "tvm",
                        "trials": 0,
                        "repeats": 2,
                        "calib_batches": 1,
                        "isolate": False,
                        "eval_limit": 32,
                    }
                }
            ],
        }
    )
    rundir = run(recipe, tmp_path / "run", progress=False, echo=lambda s: None)
    dep = next(r for r in rundir.records() if r.get("stage") == "deploy")
    assert dep["target"] == "tvm" and dep["parity"]["ok"] and dep["eval_samples"] == 32
    assert dep["cost"]["extra"]["tuned"] is False and dep["cost"]["extra"]["variant"] == "untuned"
    assert dep["accuracy"] == pytest.approx(dep["accuracy_torch"])


@pytest.mark.parametrize("text", ["[1, 2]", '{"a": null}', '{"a": "many"}', "{not json"])
def test_a_damaged_budget_ledger_is_named(tmp_path, text):
    (tmp_path / "budgets.json").write_text(text)
    with pytest.raises(TamerError, match=r"budgets.json is not a JSON object of trial counts"):
        tvm_target._budgets(tmp_path)
    (tmp_path / "budgets.json").write_text('{"123": 8}')
    assert tvm_target._budgets(tmp_path) == {"123": 8}
