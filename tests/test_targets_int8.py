"""ONNX Runtime int8 on a model trained in the test: ORT's calibration, and our qparams."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from test_targets_helpers import DigitNet
from torch import nn

from tinytamer.errors import TamerError
from tinytamer.targets import get_target


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


def test_ort_calibrated_int8_keeps_accuracy(trained, tmp_path):
    model, x, y, acc_fp32 = trained
    calib = [x[i : i + 50] for i in range(0, 200, 50)]
    d = get_target("onnxruntime").compile(model, [x[:1]], tmp_path, precision="int8", calib=calib)
    assert d.artifacts[0].name == "model.int8.onnx" and d.info["calib_samples"] == 200
    assert d.parity["outputs"][0]["top1_agree"] >= 0.9 and d.parity["inputs"] == 64
    out = d(x[1400:].numpy())[0]
    acc_int8 = float((out.argmax(1) == y[1400:].numpy()).mean())
    assert abs(acc_int8 - acc_fp32) < 0.03
    # The int8 file is smaller than the float export next to it.
    assert d.artifact_bytes < (tmp_path / "model.onnx").stat().st_size


@pytest.mark.parametrize("weight_bits,exact", [(8, True), (7, False)])
def test_ort_int8_with_our_qparams_matches_the_evaluated_model(trained, tmp_path, weight_bits, exact):
    from tinytamer.compress.int8 import quantize_ptq

    model, x, y, _ = trained
    calib = [x[i : i + 50] for i in range(0, 200, 50)]
    gm = quantize_ptq(model, calib, weight_bits=weight_bits)
    d = get_target("onnxruntime").compile(
        model, [x[:1]], tmp_path, precision="int8", calib=calib, qparams=gm, exact_int8=exact
    )
    assert d.info["int8_params"].startswith("ours")
    proto = onnx.load(str(d.artifacts[0]))
    kinds = [n.op_type for n in proto.graph.node]
    assert kinds.count("QuantizeLinear") >= 5 and kinds.count("DequantizeLinear") >= 8
    # Weights are stored as integers, not floats.
    w = {i.name: i for i in proto.graph.initializer}["conv.w_int"]
    assert w.data_type == (onnx.TensorProto.UINT8 if exact else onnx.TensorProto.INT8)
    test_x = x[1400:]
    out = d(test_x.numpy())[0]
    ref = gm(test_x).detach().numpy()
    agree = float((out.argmax(1) == ref.argmax(1)).mean())
    assert d.parity["outputs"][0]["top1_agree"] >= 0.9 and agree >= 0.95
    # uint8 weights, or 7-bit int8 ones, cannot saturate ORT's 16-bit sums: the outputs
    # equal ours up to rounding at a few points.
    step = float(gm.get_submodule("aq_fc").scale)
    assert np.abs(out - ref).max() <= 4 * step + 1e-6


def test_qparams_need_int8(trained, tmp_path):
    model, x, _, _ = trained
    with pytest.raises(TamerError, match="precision 'int8'"):
        get_target("onnxruntime").compile(model, [x[:1]], tmp_path, qparams=object())


def test_ort_int8_kernels_checked_against_their_qdq_model(trained, tmp_path):
    model, x, _, _ = trained
    calib = [x[i : i + 50] for i in range(0, 200, 50)]
    d = get_target("onnxruntime").compile(model, [x[:1]], tmp_path, precision="int8", calib=calib, reduce_range=True)
    assert d.info["weight_bits"] == 7
    kernels = d.parity["kernels_vs_qdq"]
    assert kernels["ok"] and kernels["outputs"][0]["top1_agree"] >= 0.98


def test_ort_int8_full_range_weights_pass_or_are_refused_with_the_cause(trained, tmp_path):
    """8-bit weights: fine on VNNI / ARM; on x86 without VNNI this model saturates."""
    from tinytamer.targets.base import ParityError

    model, x, _, _ = trained
    calib = [x[i : i + 50] for i in range(0, 200, 50)]
    try:
        d = get_target("onnxruntime").compile(
            model, [x[:1]], tmp_path, precision="int8", calib=calib, reduce_range=False
        )
    except ParityError as exc:
        assert "unoptimised QDQ model" in str(exc) and "reduce_range=True" in str(exc)
    else:
        assert d.info["weight_bits"] == 8 and d.parity["kernels_vs_qdq"]["ok"]


def test_ort_int8_default_reduce_range_follows_the_cpu(monkeypatch):
    from tinytamer.targets import onnxrt

    monkeypatch.setattr("platform.machine", lambda: "x86_64")
    monkeypatch.setattr(onnxrt, "host_has_vnni", lambda: False)
    assert onnxrt.default_reduce_range()
    monkeypatch.setattr(onnxrt, "host_has_vnni", lambda: True)
    assert not onnxrt.default_reduce_range()
    monkeypatch.setattr("platform.machine", lambda: "aarch64")
    assert not onnxrt.default_reduce_range()


def test_saturating_int8_kernels_stop_the_deployment(trained, tmp_path, monkeypatch):
    """Kernels that disagree with the QDQ model (as saturating u8 x s8 ones do) are refused."""
    from tinytamer.targets import onnxrt
    from tinytamer.targets.base import ParityError

    model, x, _, _ = trained
    calib = [x[i : i + 50] for i in range(0, 200, 50)]
    real_run = onnxrt.OrtDeployed.run

    def clipped(self, arrays):  # what saturation does: large logits cut off
        return [np.clip(o, -0.5, 0.5) for o in real_run(self, arrays)]

    monkeypatch.setattr(onnxrt.OrtDeployed, "run", clipped)
    with pytest.raises(ParityError, match="fused int8 kernels disagree.*reduce_range=True"):
        get_target("onnxruntime").compile(
            model, [x[:1]], tmp_path / "8", precision="int8", calib=calib, reduce_range=False
        )
    # 7-bit weights cannot saturate: a large error is named as a kernel problem instead.
    with pytest.raises(ParityError, match=r"7-bit, which rules out saturation.*relative"):
        get_target("onnxruntime").compile(
            model, [x[:1]], tmp_path / "7", precision="int8", calib=calib, reduce_range=True
        )


@pytest.mark.parametrize(
    "bits, rel_err, cause",
    [
        (7, 0.05, r"7-bit, which rules out saturation.*relative 0.05\).*above the 0.02.*kernel problem"),
        (7, 0.6, r"7-bit, which rules out saturation.*relative 0.6.*kernel problem"),
        (8, 1e-3, r"saturate with 8-bit weights.*reduce_range=True"),
    ],
)
def test_int8_kernel_disagreement_names_its_likely_cause(monkeypatch, bits, rel_err, cause):
    """Top-1 flips beyond rounding: a kernel fault (7-bit) or saturation (8-bit); flips that
    rounding explains are accepted (test_kernel_check_counts_near_tie_flips_and_refuses_real_errors)."""
    from tinytamer.targets import onnxrt
    from tinytamer.targets.base import ParityError

    ref = np.tile(np.array([[1.0, 1.0 - 1e-4, 0.0]], dtype=np.float32), (64, 1))
    out = ref.copy()
    out[:, 0], out[:, 1] = 1.0 - rel_err, 1.0  # top-1 flips on every input

    class Session:  # the unoptimised QDQ reference
        def run(self, _names, _feed):
            return [ref]

    class Deployed:
        path, names, info = "model.int8.onnx", ["x"], {"weight_bits": bits}

        def __call__(self, *arrays):
            return [out]

    monkeypatch.setattr(onnxrt, "make_session", lambda *a, **k: Session())
    with pytest.raises(ParityError, match=cause):
        onnxrt.check_int8_kernels(Deployed(), [torch.zeros(64, 3)], "test model")


def test_kernel_check_counts_near_tie_flips_and_refuses_real_errors():
    """7-bit weights with outputs within 2% of the QDQ model's: top-1 flips are rounding
    between near-tied logits (counted); a larger error, or 8-bit weights, is refused."""
    from tinytamer.records import Parity
    from tinytamer.targets.base import ParityError
    from tinytamer.targets.onnxrt import judge_int8_kernels

    rng = np.random.default_rng(0)
    ref = rng.normal(size=(64, 10)).astype(np.float32)
    ref[:, 1] = ref[:, 0] + 0.001  # class 1 always just above class 0 ...
    ref[:, 2:] -= 10.0
    near = ref.copy()
    near[:4, 0] += 0.01  # ... and rounding flips four of them: agreement 0.9375
    rec = judge_int8_kernels([ref], [near], 7, "here")
    assert rec["outputs"][0]["top1_agree"] == 60 / 64 and rec["top1_flips_near_ties"] == 4
    Parity.model_validate(rec)  # a deploy record can hold it
    with pytest.raises(ParityError, match="saturate"):
        judge_int8_kernels([ref], [near], 8, "here")
    far = near.copy()
    far[:4, 0] += 0.5  # 5% of the output range: not rounding
    with pytest.raises(ParityError, match="above the 0.02"):
        judge_int8_kernels([ref], [far], 7, "here")
    same = judge_int8_kernels([ref], [ref], 7, "here")
    assert same["top1_flips_near_ties"] == 0
