"""A quantized detector down the deploy path: its two output maps through ONNX Runtime int8
with parity, and a float detector to a micro target packed into one output, scored by mAP
through the device."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from test_detect_data import fitted_detector

from tinytamer.calib import Calibration
from tinytamer.compress.int8 import quantize_ptq
from tinytamer.data import make_loader
from tinytamer.deploy import deploy, for_target
from tinytamer.detect import evaluate
from tinytamer.detect.decode import Head, keep_head
from tinytamer.detect.packed import SingleOutput
from tinytamer.errors import ModelError
from tinytamer.qgraph import QuantizedGraph
from tinytamer.targets import get_target
from tinytamer.zoo import create

SIZE = 64
STEPS = 30


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple:
    return fitted_detector(tmp_path_factory.mktemp("voc") / "v", n=8, size=SIZE, steps=STEPS)


def _calib(data) -> Calibration:
    return Calibration(make_loader(data.train, 4, shuffle=False), limit=1)


def _needs(target: str) -> None:
    if not get_target(target).available():
        pytest.skip(f"{target} is not installed")


@pytest.mark.slow  # the QDQ export: about 30 s on a loaded 2-core machine
def test_quantized_detector_deploys_to_ort_int8_with_parity(setup: tuple, tmp_path: Path) -> None:
    _needs("onnxruntime")
    data, model = setup
    calib = _calib(data)
    q = keep_head(model, QuantizedGraph(quantize_ptq(model, calib)))  # what the quantize stage leaves
    test = make_loader(data.test, 4, shuffle=False)
    dep, rep = deploy(
        q,
        "onnxruntime",
        tmp_path,
        example_input=data.test[0][0][None],
        precision="int8",
        calib=calib,
        test_loader=test,
        repeats=0,
        threads=1,
    )
    assert rep.info["int8_params"].startswith("ours")
    assert dep.parity["ok"] and len(dep.parity["outputs"]) == 2  # both maps checked
    # What ORT scores is what the quantized graph scores in PyTorch.
    assert rep.map50_torch == evaluate(q, test)["map50"]
    assert abs(rep.map50 - rep.map50_torch) <= 0.05


def test_float_detector_packs_for_a_micro_target_only(setup: tuple) -> None:
    _, model = setup
    packed = for_target(model, get_target("micro-host"))
    assert isinstance(packed, SingleOutput) and packed is not model
    assert Head.of(packed).strides == Head.of(model).strides  # scoring still decodes it
    assert for_target(model, get_target("onnxruntime")) is model
    clf = create("lenet5")
    assert for_target(clf, get_target("micro-host")) is clf


def test_quantized_detector_to_micro_is_refused_by_name(setup: tuple) -> None:
    data, model = setup
    q = keep_head(model, QuantizedGraph(quantize_ptq(model, _calib(data))))
    with pytest.raises(ModelError, match=r"target 'cortex-m4' runs one output, and this quantized detector has 2"):
        for_target(q, get_target("cortex-m4"))


def _deploy_micro(setup: tuple, target: str, tmp_path: Path) -> None:
    data, model = setup
    test = make_loader(torch.utils.data.Subset(data.test, range(2)), 2, shuffle=False)
    dep, rep = deploy(
        model,
        target,
        tmp_path,
        example_input=data.test[0][0][None],
        precision="int8",
        calib=_calib(data),
        test_loader=test,
        repeats=0,
        threads=1,
    )
    assert dep.parity["ok"]
    # mAP through the device, beside the float detector's on the same images.
    assert rep.map50 is not None and rep.map50_95 is not None and rep.accuracy == rep.map50
    assert rep.map50_torch == evaluate(model, test)["map50"] and rep.eval_samples == 2
    assert json.loads((tmp_path / "summary.json").read_text())["map50"] == rep.map50


@pytest.mark.skipif(shutil.which("gcc") is None, reason="host gcc is not installed")
def test_detector_deploys_to_the_micro_host_scored_by_map(setup: tuple, tmp_path: Path) -> None:
    _deploy_micro(setup, "micro-host", tmp_path)


@pytest.mark.slow  # the emulated Cortex-M4: builds with arm-none-eabi-gcc, runs in unicorn and QEMU
def test_detector_deploys_to_cortex_m4_scored_by_map(setup: tuple, tmp_path: Path) -> None:
    _needs("cortex-m4")
    _deploy_micro(setup, "cortex-m4", tmp_path)
