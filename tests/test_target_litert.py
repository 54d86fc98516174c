"""The int8 .tflite export, the ``litert`` target and the TFLite Micro cross-check."""

from __future__ import annotations

import shutil
from importlib.util import find_spec

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from tinytamer.compress.int8 import quantize_ptq
from tinytamer.deploy import int8_quantizer
from tinytamer.errors import ModelError, TamerError
from tinytamer.export.tflite import export_tflite, tflite_multiplier
from tinytamer.micro.fixedpoint import quantize_multiplier
from tinytamer.targets import get_target

needs_litert = pytest.mark.skipif(
    find_spec("ai_edge_litert") is None, reason="ai-edge-litert not installed: pip install 'tinytamer[litert]'"
)
needs_tflm = pytest.mark.skipif(
    find_spec("tflite_micro") is None or shutil.which("gcc") is None,
    reason="TFLite Micro's host interpreter (pip install tflite-micro) or gcc (micro-host) missing",
)


class _Net(nn.Module):
    """Every exported op but the average pool: a padded stride-2 conv on an even map (a PAD,
    since TFLite's SAME pads differently), depthwise with ReLU6, 1x1, a residual add with
    ReLU, a padded max pool, flatten and a linear layer."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.pw = nn.Conv2d(8, 8, 1)
        self.down = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.pool = nn.MaxPool2d(3, 2, 1)
        self.fc = nn.Linear(16 * 2 * 2, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.stem(x)))
        x = torch.relu(x + self.pw(F.relu6(self.dw(x))))
        return self.fc(torch.flatten(self.pool(self.down(x)), 1))


def _gap_net() -> nn.Module:
    """A depth-multiplier-2 depthwise conv, then a global average pool as the output."""
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(4, 8, 3, padding=1, groups=4),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
    )


def _calib() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return [torch.randn(16, 3, 8, 8, generator=g) for _ in range(2)]


def _quantized(model: nn.Module) -> torch.fx.GraphModule:
    torch.manual_seed(0)
    return quantize_ptq(model.eval(), _calib())


def test_multiplier_rounding_matches_ours_off_ties():
    # TFLite rounds half away from zero, we round half to even: equal except on exact ties.
    rng = np.random.default_rng(0)
    for real in rng.uniform(1e-6, 4.0, 200):
        assert tflite_multiplier(float(real)) == quantize_multiplier(float(real))


def test_export_writes_a_tflite_flatbuffer(tmp_path):
    torch.manual_seed(0)
    gm = _quantized(_Net())
    info = export_tflite(gm, _calib()[0][:1], tmp_path / "m.tflite")
    data = (tmp_path / "m.tflite").read_bytes()
    assert data[4:8] == b"TFL3" and info["bytes"] == len(data)
    assert info["input"]["shape"] == [1, 8, 8, 3] and info["output"]["shape"] == [1, 10]
    assert info["notes"] == []  # no op that rounds differently from ours
    if find_spec("ai_edge_litert") is not None:  # read back with TFLite's own schema code
        from ai_edge_litert import schema_py_generated as schema

        m = schema.Model.GetRootAsModel(data, 0)
        sg = m.Subgraphs(0)
        codes = [m.OperatorCodes(sg.Operators(i).OpcodeIndex()).BuiltinCode() for i in range(sg.OperatorsLength())]
        op = schema.BuiltinOperator
        assert codes == [
            op.CONV_2D,
            op.DEPTHWISE_CONV_2D,
            op.CONV_2D,
            op.ADD,
            op.PAD,
            op.CONV_2D,
            op.PADV2,
            op.MAX_POOL_2D,
            op.RESHAPE,
            op.FULLY_CONNECTED,
        ]
        assert sg.Tensors(sg.Inputs(0)).Type() == schema.TensorType.INT8


@needs_litert
def test_litert_int8_parity_and_cost(tmp_path):
    torch.manual_seed(0)
    calib = _calib()
    dep = get_target("litert").compile(_Net().eval(), [calib[0][:1]], tmp_path, calib=calib, quantize=int8_quantizer)
    assert dep.parity["ok"] and dep.parity["outputs"][0]["top1_agree"] >= 0.9
    ref = dep.info["int8_vs_integer_reference"]
    assert ref["inputs"] == 32 and ref["max_step_diff"] <= 1
    out = dep(calib[1][:3].numpy())[0]
    assert out.shape == (3, 10) and out.dtype == np.float32
    cost = dep.measure(repeats=3, warmup=1, isolate=False)
    assert cost.artifact_bytes == (tmp_path / "model.tflite").stat().st_size > 0
    assert cost.latency_ms_median > 0


@needs_litert
def test_litert_runs_int8_only_and_refuses_a_bad_file(tmp_path):
    from tinytamer.targets.litert import TFLiteRunner

    with pytest.raises(TamerError, match="int8 only"):
        get_target("litert").compile(_Net().eval(), [_calib()[0][:1]], tmp_path, precision="fp32")
    bad = tmp_path / "bad.tflite"
    bad.write_bytes(b"\x00" * 64)
    with pytest.raises(ModelError, match="LiteRT cannot load .*bad.tflite"):
        TFLiteRunner(bad, 1)


def _tflm_outputs(data: bytes, q: np.ndarray) -> np.ndarray:
    from tflite_micro.python.tflite_micro import runtime

    interp = runtime.Interpreter.from_bytes(data)
    outs = []
    for row in q:
        interp.set_input(row[None], 0)
        interp.invoke()
        outs.append(interp.get_output(0).reshape(-1))
    return np.stack(outs)


@needs_tflm
@pytest.mark.parametrize("make", [_Net, _gap_net])
def test_tflite_micro_agrees_with_our_generated_c(tmp_path, make):
    """TFLite Micro's interpreter on our .tflite gives the int8 outputs of our generated C
    (micro-host) on the same int8 inputs, bit for bit; the global average pool is written
    as a depthwise convolution with weights 1 (noted), which rounds once as our kernel does."""
    gm = _quantized(make())
    calib = _calib()
    dep = get_target("micro-host").compile(gm, [calib[0][:1]], tmp_path / "c", calib=calib)
    program = dep.program
    info = export_tflite(gm, calib[0][:1], tmp_path / "m.tflite")
    assert len(info["notes"]) == (make is _gap_net)
    x = torch.cat(calib).numpy()
    q = program.quantize_input(x).reshape(len(x), *program.graph.tensors[program.graph.input].shape)
    ours = program.run_device(q.reshape(len(q), -1)).astype(np.int64)
    tflm = _tflm_outputs((tmp_path / "m.tflite").read_bytes(), q).astype(np.int64)
    assert ours.shape == tflm.shape == (32, info["output"]["shape"][-1])
    np.testing.assert_array_equal(tflm, ours)
