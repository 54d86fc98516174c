"""Cost lookup tables (tinytamer.search.cost): keys, the JSON file, resume, predict."""

from __future__ import annotations

import json

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


def _model():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(4, 8, 3, padding=1, groups=4),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 5),
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
