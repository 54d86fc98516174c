"""Host cost tables on ONNX Runtime: layer entries net of the layout reorders at their edges,
and the reorders a whole model pays between its layers charged once, in its overhead."""

from __future__ import annotations

import json
import platform

import pytest
import torch
from torch import nn

from tinytamer.search import cost
from tinytamer.search.cost import CostTable, CostTableError

torch.set_num_threads(1)
ort = pytest.importorskip("onnxruntime")
# ONNX Runtime's blocked layout (NCHWc) is an x86 transformation: elsewhere there is none.
x86 = pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"), reason="NCHWc is x86-only")


def _chain() -> nn.Module:
    """A stem (3 input channels: no input reorder), two blocked convolutions (channels a
    multiple of the NCHWc block, 8 or 16), pooling, linear."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.Conv2d(16, 16, 1),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(32, 4),
    ).eval()


def test_boundaries_charge_one_reorder_per_layout_change():
    stem, conv, plain = {"reorder_out_ms": 1.0}, {"reorder_in_ms": 10.0, "reorder_out_ms": 100.0}, {}
    # Plain input -> stem (takes plain) -> conv -> conv -> plain pooling: one output reorder.
    assert cost._boundary_ms([stem, conv, conv, plain, plain]) == 100.0
    # A blocked layer first pays its input reorder; a blocked layer last, its output reorder.
    assert cost._boundary_ms([conv]) == 110.0
    assert cost._boundary_ms([plain, conv, plain, conv]) == 10.0 + 100.0 + 10.0 + 100.0
    assert cost._boundary_ms([plain, plain]) == 0.0 and cost._boundary_ms([]) == 0.0


def _fake(monkeypatch, whole_ms: float) -> None:
    """Single-op models 10 ms, the run's fixed cost 2 ms; blocked convolutions (all but the
    stem, which takes plain input) pay 1 ms to enter the layout and 3 ms to leave it."""

    def time_host(target, module, x, workdir, repeats):
        if workdir.name == "run_overhead":
            return 2.0
        return whole_ms if workdir.name == "model" else 10.0

    def edges(workdir, repeats):
        mod = layers[int(workdir.name.removeprefix("layer"))]
        if not isinstance(mod[0], nn.Conv2d):
            return {}
        return {"reorder_out_ms": 5.0} if mod[0].in_channels == 3 else {"reorder_in_ms": 3.0, "reorder_out_ms": 5.0}

    class Ort:
        name = "onnxruntime"

    layers = [m for _, m, _, _ in cost.host_layers(_chain(), torch.zeros(1, 3, 8, 8))]
    monkeypatch.setattr(cost, "_time_host", time_host)
    monkeypatch.setattr(cost, "_layout_edges", edges)
    monkeypatch.setattr(cost, "_check_target", lambda target: Ort())


def test_entries_are_net_of_their_edges_and_the_model_pays_its_boundaries_once(tmp_path, monkeypatch):
    example = torch.zeros(1, 3, 8, 8)
    _fake(monkeypatch, whole_ms=40.0)
    path = tmp_path / "ort.json"
    table = cost.build([("chain", _chain)], "onnxruntime", path, example=example)
    host = cost.host_layers(_chain(), example)
    entries = [table.entries[k] for *_, k in host]
    assert [sorted(e) for e in entries[:3]] == [
        ["latency_ms", "latency_ms_single", "model", "reorder_out_ms"],
        *[["latency_ms", "latency_ms_single", "model", "reorder_in_ms", "reorder_out_ms"]] * 2,
    ]
    # Edges are net of the run's fixed cost (2 ms), entries net of both.
    assert entries[0]["reorder_out_ms"] == 3.0 and entries[0]["latency_ms"] == 10.0 - 2.0 - 3.0
    assert entries[1]["reorder_in_ms"] == 1.0 and entries[1]["latency_ms"] == 10.0 - 2.0 - 1.0 - 3.0
    assert entries[3]["latency_ms"] == 8.0 and "reorder_in_ms" not in entries[3]
    # The model pays one output reorder (last convolution -> pooling), kept in its overhead record.
    rec = table.overheads[0]
    assert rec["boundary_ms"] == 3.0
    core = 5.0 + 4.0 + 4.0 + 8.0 + 8.0
    assert rec["layers_latency_ms"] == core and rec["latency_ms"] == 40.0 - core
    # Every part is counted once: the layers' entries, the reorders between them, the rest.
    pred = cost.predict(_chain(), "onnxruntime", path, example=example, measure_missing=False)
    assert pred.total["latency_ms"] == pytest.approx(40.0)
    assert pred.overhead["latency_ms"] == pytest.approx(3.0 + (40.0 - core - 3.0))
    assert "layout reorders 3 ms" in pred.overhead_from


def test_host_tables_before_version_4_are_refused(tmp_path):
    data = CostTable("onnxruntime").to_dict()
    path = tmp_path / "old.json"
    for version in (2, 3):
        path.write_text(json.dumps({**data, "version": version}))
        with pytest.raises(CostTableError, match=f"version {version}.*layout reorders.*rebuild it with `tamer lut`"):
            CostTable.load(path, "onnxruntime")
    path.write_text(json.dumps(data))
    assert CostTable.load(path, "onnxruntime").target == "onnxruntime"


@x86
def test_the_reorders_charged_are_those_onnx_runtime_puts_in_the_whole_model(tmp_path):
    """On real optimized graphs: each layer's edges are the reorders of its single-op graph,
    and the boundaries charged to the whole model are exactly the reorder nodes of its own
    optimized graph (counted, not timed)."""
    import onnx

    from tinytamer.targets.base import get_target

    tgt = get_target("onnxruntime")
    example = torch.randn(1, 3, 8, 8)
    m = cost.measure_host(_chain(), example, tgt, tmp_path, repeats=2)
    edges = [sorted(k for k in la.metrics if k.startswith("reorder")) for la in m.layers]
    both = ["reorder_in_ms", "reorder_out_ms"]
    assert edges == [["reorder_out_ms"], both, both, [], []]
    assert all(la.metrics[k] >= 0 for la in m.layers for k in la.metrics)
    # The whole model's optimized graph: one reorder per layout change, each charged once.
    opts = ort.SessionOptions()
    opts.optimized_model_filepath = str(tmp_path / "whole.onnx")
    ort.InferenceSession(str(tmp_path / "model" / "model.onnx"), opts, providers=["CPUExecutionProvider"])
    ops = [n.op_type for n in onnx.load(tmp_path / "whole.onnx").graph.node if n.domain == cost.NCHWC]
    counted = [{k: 1.0 for k in la.metrics if k.startswith("reorder")} for la in m.layers]
    assert ops.count("ReorderInput") + ops.count("ReorderOutput") == cost._boundary_ms(counted) == 1
    assert cost._nchwc_block() in (8, 16)
