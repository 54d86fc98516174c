"""The detector down the path: neck / head channel pruning, int8 PTQ, and host runtimes scored
through the shared post-processing (their mAP equals PyTorch's in fp32)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from test_detect_data import make_voc

from tinytamer.calib import Calibration
from tinytamer.compress.channel import prune_channels
from tinytamer.compress.int8 import quantize_ptq
from tinytamer.data import get_dataset, make_loader
from tinytamer.detect import evaluate, score
from tinytamer.detect.decode import Head
from tinytamer.detect.evaluate import torch_runner
from tinytamer.targets import get_target
from tinytamer.zoo import count, create

SIZE = 64


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple:
    root = make_voc(tmp_path_factory.mktemp("voc") / "v", n=16)
    data = get_dataset("voc", root, size=SIZE, test_percent=50)
    torch.manual_seed(0)
    model = create("yolofastest", num_classes=2, input_size=SIZE, anchors=[list(a) for a in data.meta.anchors])
    model.eval()
    return data, model


def test_neck_and_head_channels_prune_physically(setup: tuple) -> None:
    data, model = setup
    x = torch.stack([data.test[i][0] for i in range(2)])
    pruned = prune_channels(
        model, x, ratio=0.5, select={"regex": ["^lateral", "head"]}, ignore=["out_box", "out_obj", "out_cls"]
    )
    assert pruned.lateral16[0].out_channels < model.lateral16[0].out_channels
    assert count(pruned, (3, SIZE, SIZE)).params < count(model, (3, SIZE, SIZE)).params
    with torch.no_grad():
        assert [o.shape for o in pruned(x)] == [o.shape for o in model(x)]
    assert 0 <= evaluate(pruned, make_loader(data.test, 4, shuffle=False))["map50"] <= 1


def test_int8_ptq_scores_with_the_float_head(setup: tuple) -> None:
    data, model = setup
    q = quantize_ptq(model, Calibration(make_loader(data.train, 4, shuffle=False), limit=2))
    head = Head.of(model)
    test = make_loader(data.test, 4, shuffle=False)
    r = evaluate(q, test, head=head)
    assert r["n"] == len(data.test) and 0 <= r["map50_95"] <= r["map50"] <= 1
    assert score(torch_runner(q), test, head, SIZE)["map50"] == r["map50"]


@pytest.mark.parametrize(
    ("target", "precision"),
    [
        pytest.param("onnxruntime", "fp32", marks=pytest.mark.slow),
        ("ncnn", "fp32"),
        ("ncnn", "fp16"),
        pytest.param("openvino", "fp32", marks=pytest.mark.slow),
        pytest.param("tvm", "fp32", marks=pytest.mark.slow),
    ],
)
def test_runtime_map_through_shared_postprocessing(setup: tuple, tmp_path: Path, target: str, precision: str) -> None:
    tgt = get_target(target)
    if not tgt.available():
        pytest.skip(f"{target} is not installed")
    data, model = setup
    test = make_loader(data.test, 4, shuffle=False)
    # TVM untuned (trials=0): tuning is a minutes-long search, not what this checks.
    opts = {"trials": 0} if target == "tvm" else {}
    dep = tgt.compile(model, [data.test[0][0][None]], tmp_path, precision=precision, threads=1, **opts)
    assert dep.parity["ok"] and len(dep.parity["outputs"]) == 2
    head = Head.of(model)
    ours = score(lambda x: dep(x), test, head, SIZE)
    ref = score(torch_runner(model), test, head, SIZE)
    tol = 1e-9 if precision == "fp32" else 0.02
    assert abs(ours["map50"] - ref["map50"]) <= tol and ours["n"] == ref["n"]
