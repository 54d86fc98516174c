"""Cost lookup tables (tinytamer.search.cost): keys, the JSON file, resume, predict."""

from __future__ import annotations

import json
import statistics

import pytest
import torch
from torch import nn

from tinytamer.errors import CorruptFileError, TamerError
from tinytamer.micro import toolchain
from tinytamer.search import cost
from tinytamer.search.cost import CostTable, CostTableError, Layer, Measured

torch.set_num_threads(1)
needs_arm = pytest.mark.skipif(
    not (toolchain.arm_available() and toolchain.qemu_available()),
    reason="ARM toolchain or QEMU missing: run scripts/install-micro-toolchain.sh",
)


def _model(c: int = 4):
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, c, 3, padding=1),
        nn.BatchNorm2d(c),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(c, 2 * c, 3, padding=1, groups=4),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(2 * c, 5),
    ).eval()


def _calib():
    g = torch.Generator().manual_seed(1)
    return [torch.randn(16, 1, 8, 8, generator=g) for _ in range(2)]


def test_key_format_round_trips():
    key = cost.make_key(
        "conv2d+add",
        (16, 16, 8),
        (8, 8, 16),
        kernel=(3, 3),
        stride=(2, 2),
        padding=(1, 1),
        groups=1,
        bits="int4",
        schedule={"kernel": "mm", "pack": "flat"},
    )
    assert key == ("conv2d+add|in=16x16x8|out=8x8x16|k=3x3|s=2x2|p=1x1|g=1|bits=int4|sched=kernel:mm,pack:flat")
    fields = cost.parse_key(key)
    assert fields["op"] == "conv2d+add" and fields["bits"] == "int4" and fields["g"] == "1"
    assert cost.parse_key(cost.make_key("dense", (8,), (5,)))["k"] == "-"
    for bad in ("conv2d", "conv2d|in=1|out=1|k=-|s=-|p=-|g=-|bits=-|kernel=-", ""):
        with pytest.raises(CostTableError):
            cost.parse_key(bad)


def _table() -> CostTable:
    t = CostTable("cortex-m4", "stm32l4r5")
    key = cost.make_key("dense", (8,), (5,), bits="int8", schedule={"kernel": "simd"})
    m = Measured(
        {"instructions": 500, "est_cycles": 700, "flash_bytes": 1200, "sram_bytes": 300},
        [Layer("fc", key, {"instructions": 420, "est_cycles": 596, "flash_bytes": 188, "sram_bytes": 29})],
        ["dense:kernel:simd"],
        {"tt_dense_s8_dsp": 900},
        40,
    )
    t.add(m, "w8")
    t.done.append("w8")
    return t


def test_json_round_trip_and_bad_files(tmp_path):
    path = _table().save(tmp_path / "lut.json")
    back = CostTable.load(path, "cortex-m4")
    assert back.to_dict() == _table().to_dict()
    assert back.overheads[0]["est_cycles"] == 104 and back.overheads[0]["sram_bytes"] == 40
    with pytest.raises(CostTableError, match="measured on 'cortex-m4', not 'cortex-m7'"):
        CostTable.load(path, "cortex-m7")
    data = json.loads(path.read_text())
    cases = {
        "not valid JSON": "{",
        "not a tinytamer cost table": json.dumps({"format": "x"}),
        "version": json.dumps({**data, "version": 99}),
        "unknown target": json.dumps({**data, "target": "toaster"}),
        "lacks": json.dumps({**data, "entries": {next(iter(data["entries"])): {"x": 1}}}),
        "damaged overhead": json.dumps({**data, "overheads": [{"layers": "x"}]}),
    }
    for match, text in cases.items():
        bad = tmp_path / "bad.json"
        bad.write_text(text)
        with pytest.raises((CorruptFileError, CostTableError), match=match):
            CostTable.load(bad)
    with pytest.raises(CorruptFileError, match="does not exist"):
        CostTable.load(tmp_path / "missing.json")


def test_unknown_target_is_refused(tmp_path):
    with pytest.raises(TamerError, match="no cost table for target 'toaster'"):
        cost.build([("model", _model)], "toaster", tmp_path / "t.json", example=torch.zeros(1, 1, 8, 8))
    with pytest.raises(TamerError, match="no cost table for target 'ncnn'"):
        cost.predict(_model(), "ncnn", CostTable("ncnn"), example=torch.zeros(1, 1, 8, 8))


def test_build_resumes_after_an_interruption(tmp_path, monkeypatch):
    measured = []

    def fake(gm, example, device, workdir, profile):
        measured.append(gm)
        n = len(measured)
        key = cost.make_key("dense", (8,), (n,), bits="int8")
        return Measured(
            {"instructions": 10 + n, "est_cycles": 20, "flash_bytes": 30, "sram_bytes": 40},
            [Layer("fc", key, {"instructions": 10, "est_cycles": 15, "flash_bytes": 5, "sram_bytes": 9})],
            [],
            {},
            8,
        )

    monkeypatch.setattr(cost, "measure_micro", fake)
    monkeypatch.setattr(cost, "_quantized", lambda model, example, calib: model)
    monkeypatch.setattr(cost, "_check_target", lambda target: None)
    made = []
    configs = [(name, lambda name=name: made.append(name) or name) for name in "abc"]
    path = tmp_path / "lut.json"

    def stop_after_b(name, i, n):
        if name == "b":
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        cost.build(configs, "cortex-m4", path, example=torch.zeros(1, 8), progress=stop_after_b)
    assert CostTable.load(path).done == ["a", "b"]
    table = cost.build(configs, "cortex-m4", path, example=torch.zeros(1, 8))
    assert made == ["a", "b", "c"] and table.done == ["a", "b", "c"]
    assert len(table.entries) == 3 and table.memory_profile == "stm32l4r5"


@needs_arm
def test_predict_matches_the_measured_cortex_m4_counts(tmp_path):
    from tinytamer.compress.int8 import quantize_ptq

    calib, model = _calib(), _model()
    example = calib[0][:1]
    configs = [(f"w{b}", lambda b=b: quantize_ptq(_model(), calib, weight_bits=b)) for b in (8, 4)]
    path = tmp_path / "lut.json"
    table = cost.build(configs, "cortex-m4", path, example=example)
    assert table.memory_profile == "stm32l4r5" and len(table.overheads) == 2
    # A mixed configuration: its layers are in the table, the model was never measured.
    mixed = quantize_ptq(model, calib, select={"overrides": {"4": {"bits": 4}, "8": {"bits": 4}}})
    pred = cost.predict(mixed, "cortex-m4", path, example=example, measure_missing=False)
    assert pred.fresh == [] and pred.memory_profile == "stm32l4r5"
    got = cost.measure_micro(mixed, example, "cortex-m4", tmp_path / "m", "stm32l4r5").total
    assert abs(pred.total["est_cycles"] - got["est_cycles"]) <= 0.02 * got["est_cycles"]
    assert abs(pred.total["instructions"] - got["instructions"]) <= 0.001 * got["instructions"]
    assert pred.total["sram_bytes"] >= got["sram_bytes"] - 64
    # A layer the table lacks (another width) is measured fresh and kept.
    wide = nn.Sequential(nn.Conv2d(1, 6, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(6 * 64, 5)).eval()
    with pytest.raises(CostTableError, match="lacks"):
        cost.predict(wide, "cortex-m4", path, example=example, measure_missing=False)
    pred = cost.predict(wide, "cortex-m4", path, example=example, name="wide")
    assert len(pred.fresh) == 2
    assert cost.predict(wide, "cortex-m4", path, example=example).fresh == []


def test_a_codebook_layer_is_measured_in_the_form_predict_keys(tmp_path):
    """A 5-bit grouped convolution (8 -> 16 channels) lowers to a codebook form whose kernels
    a deploy of this small model would not link (``build_program`` puts it back to int8);
    the table measures it as lowered, so the layer predict keys is the one measured, not a
    KeyError."""
    from tinytamer.compress.int8 import quantize_ptq

    calib = _calib()
    example = calib[0][:1]
    path = tmp_path / "lut.json"
    cost.build([("w8", lambda: quantize_ptq(_model(8), calib))], "cortex-m4", path, example=example)
    five = quantize_ptq(_model(8), calib, select={"overrides": {"4": {"bits": 5}}})
    pred = cost.predict(five, "cortex-m4", path, example=example, name="five")
    assert "4" in pred.fresh and "bits=shared5" in next(la.key for la in pred.layers if la.name == "4")
    got = cost.measure_micro(five, example, "cortex-m4", tmp_path / "m", "stm32l4r5")
    assert [la.key for la in got.layers] == [la.key for la in pred.layers]


def _fake_host_timer(monkeypatch, whole_ms: float, layer_ms: float, run_ms: float) -> None:
    """Single-op models cost ``layer_ms``, the one-element model ``run_ms``, a whole model ``whole_ms``."""

    def fake(target, module, x, workdir, repeats):
        if workdir.name == "run_overhead":
            return run_ms
        return whole_ms if workdir.name == "model" else layer_ms

    monkeypatch.setattr(cost, "_time_host", fake)
    monkeypatch.setattr(cost, "_check_target", lambda target: object())


def test_host_entries_are_net_of_the_run_overhead_and_it_is_added_once(tmp_path, monkeypatch):
    # Five layers each timed alone at 4 ms, of which 3 ms is the run's fixed cost, and a
    # whole model at 10 ms: raw, the sum would say 20 ms.
    _fake_host_timer(monkeypatch, whole_ms=10.0, layer_ms=4.0, run_ms=3.0)
    example = torch.zeros(1, 1, 8, 8)
    path = tmp_path / "ort.json"
    table = cost.build([("model", _model)], "onnxruntime", path, example=example)
    assert table.per_run_overhead == {"latency_ms": 3.0}
    assert {e["latency_ms"] for e in table.entries.values()} == {1.0}
    assert {e["latency_ms_single"] for e in table.entries.values()} == {4.0}
    n = len(cost.host_layers(_model(), example))
    assert n == 5 and table.overheads[0]["latency_ms"] == 10.0 - n * 1.0
    pred = cost.predict(_model(), "onnxruntime", path, example=example, measure_missing=False)
    assert pred.total["latency_ms"] == pytest.approx(10.0)
    # A deeper model of the same layers pays the per-model overhead once, not per layer.
    deeper = nn.Sequential(*_model()[:4], nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(), *_model()[4:]).eval()
    _fake_host_timer(monkeypatch, whole_ms=11.0, layer_ms=4.0, run_ms=3.0)
    pred = cost.predict(deeper, "onnxruntime", path, example=example, name="deeper")
    assert len(pred.fresh) == 1 and pred.total["latency_ms"] == pytest.approx(6 * 1.0 + 5.0)
    back = CostTable.load(path, "onnxruntime")
    assert back.per_run_overhead == {"latency_ms": 3.0} and len(back.overheads) == 2
    # A layer that runs faster than the run's fixed cost is 0, never negative.
    _fake_host_timer(monkeypatch, whole_ms=5.0, layer_ms=2.0, run_ms=3.0)
    m = cost.measure_host(_model(), example, None, tmp_path / "m", per_run=3.0)
    assert {la.metrics["latency_ms"] for la in m.layers} == {0.0}


def test_host_overhead_line_is_fitted_once_three_models_are_measured():
    t = CostTable("onnxruntime")
    # Whole = 1 + 0.5 x layers, on three models.
    t.overheads = [{"layers": 3, "layers_latency_ms": x, "latency_ms": 1 + 0.5 * x - x} for x in (2.0, 4.0, 8.0)]
    over, how = cost._overhead(t, 3, [], layers_sum=6.0)
    assert over["latency_ms"] + 6.0 == pytest.approx(4.0) and "fitted on 3" in how
    t.overheads = t.overheads[:2]
    over, how = cost._overhead(t, 3, [], layers_sum=6.0)
    assert "median" in how and over["latency_ms"] == pytest.approx(statistics.median([0.0, -1.0]))


def test_older_tables_are_refused_where_they_are_wrong(tmp_path):
    data = _table().to_dict()
    path = tmp_path / "old.json"
    for version in (1, 2):  # micro keys without requantization paths, entries without their code
        path.write_text(json.dumps({**data, "version": version}))
        with pytest.raises(CostTableError, match=f"version {version}.*rebuild it with `tamer lut`"):
            CostTable.load(path, "cortex-m4")
    host = {**data, "target": "onnxruntime", "entries": {}, "overheads": [], "memory_profile": None}
    path.write_text(json.dumps({**host, "version": cost.VERSION}))
    assert CostTable.load(path).target == "onnxruntime"  # older host tables: tests/test_cost_host.py
    del host["per_run_overhead"]
    path.write_text(json.dumps({**host, "version": 1}))
    with pytest.raises(CostTableError, match="rebuild it with `tamer lut`"):
        CostTable.load(path)
    path.write_text(json.dumps({**_table().to_dict(), "per_run_overhead": {"latency_ms": -1}}))
    with pytest.raises(CorruptFileError, match="per_run_overhead"):
        CostTable.load(path)


def test_a_narrow_activation_clamp_keys_the_convolutions():
    from tinytamer.compress.int8 import quantize_ptq
    from tinytamer.micro.lower import lower

    calib = _calib()
    keys = {}
    for act_bits in (8, 4):
        gm = quantize_ptq(_model(), calib, act_bits=act_bits)
        keys[act_bits] = [k for _, _, k in cost.micro_layers(lower(gm, calib[0][:1]), dsp=True)]
    convs = [i for i, k in enumerate(keys[8]) if k.startswith("conv2d")]
    assert convs and all("clamp:narrow" in keys[4][i] for i in convs)
    assert not any("clamp" in k for k in keys[8])
    assert all(a == b for i, (a, b) in enumerate(zip(keys[8], keys[4], strict=True)) if i not in convs)


def test_bits_space_builds_every_weight_width_at_8_and_4_bit_activations():
    names = [name for name, _ in cost.space_configs(_model(), "bits", torch.zeros(1, 1, 8, 8), _calib())]
    uniform = [f"w{b}" for b in range(8, 1, -1)] + [f"w{b}a4" for b in range(8, 1, -1)]
    assert names[: len(uniform)] == uniform and all(n.startswith("mix") for n in names[len(uniform) :])
    with pytest.raises(CostTableError, match="unknown space 'toaster'"):
        cost.space_configs(_model(), "toaster", torch.zeros(1, 1, 8, 8))
