"""Figures that say what made them: the CPU, pinned cores, runtime versions, load; rounds
combined by their median; bench with untimed (micro-like) targets; TVM not tuned unless asked."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from test_targets_helpers import calib_batches, residual_model

from tinytamer.errors import TamerError
from tinytamer.targets import base
from tinytamer.targets.base import Cost, Deployed, combine_rounds, parse_cpuinfo


def test_cpuinfo_names_x86_and_arm_extensions(monkeypatch):
    x86 = "processor\t: 0\nmodel name\t: Intel Xeon\nflags\t\t: fpu sse avx2 fma avx512f avx512_vnni amx_int8\n"
    assert parse_cpuinfo(x86) == ("Intel Xeon", {"fpu", "sse", "avx2", "fma", "avx512f", "avx512_vnni", "amx_int8"})
    arm = "processor\t: 0\nFeatures\t: fp asimd asimddp i8mm\nCPU part\t: 0xd0c\n"
    cpu, flags = parse_cpuinfo(arm)
    assert cpu is None and flags == {"fp", "asimd", "asimddp", "i8mm"}
    base.host_description.cache_clear()
    monkeypatch.setitem(sys.modules, "cpuinfo", None)  # py-cpuinfo absent: /proc/cpuinfo is read
    real = Path.read_text
    monkeypatch.setattr(Path, "read_text", lambda p, *a, **k: arm if str(p) == "/proc/cpuinfo" else real(p, *a, **k))
    try:
        host = base.host_description()
    finally:
        base.host_description.cache_clear()
    assert host["isa"] == ["neon", "dotprod", "i8mm"] and host["cpu"] and host["cores"] >= 1


def _cost(median: float | None, lo: float = 0.0, hi: float = 0.0, loaded: bool = False) -> Cost:
    c = Cost("t", "fp32", 1, 1, repeats=5, peak_rss_mb=10.0)
    if median is not None:
        c.latency_ms_median, c.latency_ms_p10, c.latency_ms_p90, c.latency_ms_min = median, lo, hi, lo
        c.load_avg_before = c.load_avg_after = 3.0 if loaded else 0.5
        c.loaded = loaded
    return c


def test_rounds_combine_by_their_median_with_the_widest_spread():
    rounds = [_cost(2.0, 1.8, 2.4), _cost(1.0, 0.9, 1.3), _cost(5.0, 1.5, 9.0, loaded=True)]
    out = combine_rounds(rounds)
    assert out.latency_ms_median == 2.0 and out.round_medians_ms == [2.0, 1.0, 5.0] and out.rounds == 3
    assert (out.latency_ms_p10, out.latency_ms_p90, out.latency_ms_min) == (0.9, 9.0, 0.9)
    assert out.loaded is True and "median over rounds" in out.statistic
    assert rounds[0].latency_ms_median == 2.0 and rounds[0].rounds == 1  # the inputs are not changed
    # An estimate (micro targets: no latency) is the same every round: returned as it is.
    estimate = _cost(None)
    assert combine_rounds([estimate, _cost(None)]) is estimate
    with pytest.raises(TamerError, match="no rounds"):
        combine_rounds([])


class _EstimateDeployed(Deployed):
    """Like the micro targets: an estimate, no latency."""

    def run(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        return [np.zeros((arrays[0].shape[0], 10), np.float32)]

    def measure(self, batch: int = 1, **_: Any) -> Cost:
        return Cost(self.target, "int8", 1, 1, est_time_ms=3.0, memory_profile="board")


class _EstimateTarget:
    name = "fake-device"
    precisions = ("int8",)
    install_hint = "-"

    def available(self) -> bool:
        return True

    def compile(self, model, example_inputs, workdir, *, precision="int8", calib=None, qparams=None, threads=2):
        d = _EstimateDeployed(self.name, "int8", [], [(1, 8, 8)], ["float32"], 1)
        d.parity = {"ok": True}
        return d


def test_bench_rounds_with_an_untimed_target_does_not_crash(tmp_path, monkeypatch):
    from tinytamer.deploy import bench

    monkeypatch.setitem(base._REGISTRY, "fake-device", _EstimateTarget())
    report = bench(
        residual_model(),
        tmp_path,
        example_input=torch.randn(1, 1, 8, 8),
        targets=["fake-device"],
        repeats=2,
        warmup=0,
        isolate=False,
        rounds=3,
    )
    device = next(r for r in report.rows if r.target == "fake-device")
    assert device.status == "ok" and device.latency_ms is None and device.est_time_ms == 3.0
    torch_row = next(r for r in report.rows if r.target == "torch")
    assert len(torch_row.round_medians_ms) == 3 and torch_row.latency_ms == np.median(torch_row.round_medians_ms)
    assert "median over rounds" in report.statistic and "median over rounds" in (tmp_path / "bench.md").read_text()


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="needs CPU affinity")
def test_the_timing_child_is_pinned_and_reports_its_runtime(tmp_path, monkeypatch):
    d = base.get_target("onnxruntime").compile(residual_model(), [torch.randn(1, 1, 8, 8)], tmp_path)
    cost = d.measure(batch=1, threads=1, repeats=2, warmup=1)
    assert cost.cpus_pinned == [min(os.sched_getaffinity(0))] and cost.extra["cpus_available"] == 1
    assert "onnxruntime" in cost.runtime_versions and "torch" not in cost.runtime_versions
    assert cost.host == base.host_description() and cost.statistic == base.ONE_ROUND
    # Load above the thread count marks the figure, in the Cost and in the bench table.
    monkeypatch.setattr(base, "load_average", lambda: 7.5)
    loaded = d.measure(batch=1, threads=1, repeats=2, warmup=1, isolate=False)
    assert loaded.loaded and loaded.load_avg_before == loaded.load_avg_after == 7.5
    assert "torch" in loaded.runtime_versions  # measured in this process, which has torch
    monkeypatch.setattr(base, "load_average", lambda: 0.2)
    assert d.measure(batch=1, threads=1, repeats=2, warmup=1, isolate=False).loaded is False


def test_bench_marks_loaded_rows(tmp_path, monkeypatch):
    from tinytamer.deploy import bench

    monkeypatch.setattr(base, "load_average", lambda: 9.0)
    report = bench(
        residual_model(),
        tmp_path,
        example_input=torch.randn(1, 1, 8, 8),
        targets=["torch"],
        repeats=2,
        warmup=0,
        isolate=False,
    )
    assert all(r.loaded for r in report.rows)
    text = (tmp_path / "bench.md").read_text()
    assert "(loaded)" in text and "not clean figures" in text and report.host["cpu"] in text


def test_a_bench_waits_for_the_load_left_by_the_compiles(tmp_path, monkeypatch):
    """settle_s: before a timing the bench waits (saying so) until the load average falls
    below the threads, at most settle_s; the timing is then clean.  A load that stays up is
    waited out only that long, and the row is still marked."""
    from tinytamer.deploy import bench

    clock = {"t": 0.0}
    monkeypatch.setattr(base.time, "monotonic", lambda: clock["t"])
    monkeypatch.setattr(base.time, "sleep", lambda s: clock.__setitem__("t", clock["t"] + s))
    # The load falls by 0.1 a second from 2.0; the timing itself reads it twice more.
    monkeypatch.setattr(base, "load_average", lambda: max(0.2, 2.0 - 0.1 * clock["t"]))
    said: list[str] = []
    report = bench(
        residual_model(),
        tmp_path / "a",
        example_input=torch.randn(1, 1, 8, 8),
        targets=["torch"],
        repeats=2,
        warmup=0,
        isolate=False,
        threads=1,
        settle_s=60,
        echo=said.append,
    )
    assert any("waiting up to 60 s for the load average (2.00) to fall below 1" in s for s in said)
    assert 10 <= clock["t"] <= 14 and not report.rows[0].loaded
    assert base.wait_for_quiet(1, 60) < 1  # already quiet: no wait
    clock["t"] = 0.0
    monkeypatch.setattr(base, "load_average", lambda: 3.0)
    assert base.wait_for_quiet(2, 30) == 3.0 and clock["t"] == pytest.approx(30)
    assert base.wait_for_quiet(2, 0) == 3.0 and clock["t"] == pytest.approx(30)  # 0: never waits


def test_bench_does_not_tune_tvm_unless_asked(monkeypatch):
    pytest.importorskip("tvm")
    from tinytamer import deploy
    from tinytamer.targets import tvm

    asked = []
    monkeypatch.setattr(tvm, "tuned_in_database", lambda *a, **k: asked.append(a) or False)
    options = {"trials": 32, "seed": 0}
    note = deploy._tvm_bench_trials(residual_model(), torch.randn(1, 1, 8, 8), [1], 2, options)
    assert options["trials"] == 0 and "tamer bench --set trials=32" in note and asked
    monkeypatch.setattr(tvm, "tuned_in_database", lambda *a, **k: True)
    options = {"trials": 32, "seed": 0}
    assert deploy._tvm_bench_trials(residual_model(), torch.randn(1, 1, 8, 8), [1], 2, options) is None
    assert options["trials"] == 32  # the database holds the model: compiled from it, nothing tuned


def test_bench_leaves_tvm_untuned_and_says_how_to_tune(tmp_path, monkeypatch):
    pytest.importorskip("tvm")
    from tinytamer.deploy import bench
    from tinytamer.targets import tvm

    monkeypatch.setattr(tvm, "cache_root", lambda: tmp_path / "empty-cache")
    report = bench(
        residual_model(),
        tmp_path / "bench",
        example_input=torch.randn(1, 1, 8, 8),
        calib=calib_batches(1),
        targets=["tvm"],
        repeats=2,
        warmup=0,
        isolate=False,
    )
    row = next(r for r in report.rows if r.target == "tvm")
    assert row.status == "ok" and row.variant == "untuned"
    assert any("tamer bench --set trials=" in n for n in report.notes)
    assert "tamer bench --set trials=" in (tmp_path / "bench" / "bench.md").read_text()
    assert not (tmp_path / "empty-cache").exists()  # nothing tuned, no database written


def test_openvino_loader_does_not_import_torch():
    pytest.importorskip("openvino")
    code = "import sys, tinytamer.targets.openvino; print('torch' in sys.modules, 'pydantic' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False False"


def test_a_measuring_child_that_hangs_is_stopped_with_a_named_error():
    # The loader is called as loader(threads, **args): time.sleep(30) outlives the timeout.
    spec = {"loader": "time:sleep", "args": {}}
    with pytest.raises(TamerError, match=r"'time:sleep' .* did not finish within 1 s"):
        base.run_probe(spec, [(1, 2)], ["float32"], 30, 1, 0, timeout_s=1.0)
