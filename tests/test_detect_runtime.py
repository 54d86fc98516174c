"""A detector through `tamer deploy` / `tamer bench` (scored by mAP through the runtime, the
same decode and NMS as PyTorch), and int8 keeping the anchors that decoding needs."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from test_detect_data import fitted_detector, make_voc

from tinytamer.calib import Calibration
from tinytamer.checkpoint import load_checkpoint, save_checkpoint
from tinytamer.cli import _record_line
from tinytamer.compress.int8 import quantize, quantize_ptq
from tinytamer.data import make_loader
from tinytamer.deploy import BenchReport, BenchRow, bench, deploy, runtime_accuracy, score_line
from tinytamer.detect import evaluate, score
from tinytamer.detect.decode import Head, keep_head
from tinytamer.detect.evaluate import torch_runner
from tinytamer.detect.packed import SingleOutput
from tinytamer.errors import DataError
from tinytamer.qgraph import QuantizedGraph
from tinytamer.records import record_type
from tinytamer.targets import get_target
from tinytamer.zoo import create

SIZE = 64
STEPS = 30


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple:
    return fitted_detector(tmp_path_factory.mktemp("voc") / "v", n=12, size=SIZE, steps=STEPS)


def _needs(target: str) -> None:
    if not get_target(target).available():
        pytest.skip(f"{target} is not installed")


@pytest.mark.slow  # the ONNX export: about 30 s on a loaded 2-core machine
def test_deploy_scores_map_through_the_runtime(setup: tuple, tmp_path: Path) -> None:
    _needs("onnxruntime")
    data, model = setup
    test = make_loader(data.test, 4, shuffle=False)
    dep, rep = deploy(
        model, "onnxruntime", tmp_path, example_input=data.test[0][0][None], test_loader=test, repeats=0, threads=1
    )
    head = Head.of(model)
    # The figure is the shared post-processing of the runtime's own outputs ...
    ours = score(lambda x: dep(x), test, head, SIZE)
    assert rep.map50 == ours["map50"] and rep.map50_95 == ours["map50_95"] and rep.accuracy == rep.map50
    # ... and the PyTorch figure beside it is the model's own evaluation.
    ref = evaluate(model, test)
    assert rep.map50_torch == ref["map50"] and rep.map50_95_torch == ref["map50_95"]
    assert rep.accuracy_torch == ref["map50"] and 0 < ref["map50"] <= 1
    assert rep.eval_samples == len(data.test)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["map50"] == rep.map50
    line = score_line({"map50": 0.5, "map50_95": 0.25, "accuracy": 0.5, "n": 6, "total": 6})
    assert line == "mAP@0.5 0.500, mAP@[.5:.95] 0.250 on 6 test images"


def test_eval_limit_scores_the_first_images(setup: tuple, tmp_path: Path) -> None:
    data, model = setup
    dep = get_target("torch").compile(model, [data.test[0][0][None]], tmp_path, threads=1)
    test = make_loader(data.test, 4, shuffle=False)
    acc = runtime_accuracy(dep, model, test, limit=3)
    first = make_loader(torch.utils.data.Subset(data.test, range(3)), 4, shuffle=False)
    assert acc["n"] == 3 and acc["total"] == len(data.test)
    assert acc["map50"] == score(torch_runner(model), first, Head.of(model), SIZE)["map50"]


def test_packed_single_output_is_unpacked(setup: tuple, tmp_path: Path) -> None:
    data, model = setup
    packed = keep_head(model, SingleOutput(model).eval())
    dep = get_target("torch").compile(packed, [data.test[0][0][None]], tmp_path, threads=1)
    test = make_loader(data.test, 4, shuffle=False)
    assert runtime_accuracy(dep, packed, test)["map50"] == evaluate(model, test)["map50"]


def test_bench_labels_and_compares_map(setup: tuple, tmp_path: Path) -> None:
    data, model = setup
    report = bench(
        model,
        tmp_path,
        example_input=data.test[0][0][None],
        calib=Calibration(make_loader(data.train, 4, shuffle=False), limit=1),
        test_loader=make_loader(data.test, 4, shuffle=False),
        targets=["torch"],
        threads=1,
        repeats=1,
        warmup=0,
        isolate=False,
    )
    assert report.metric == "mAP@0.5"
    ref = evaluate(model, make_loader(data.test, 4, shuffle=False))
    for row in report.rows:
        assert row.status == "ok", row.status
        assert row.accuracy == pytest.approx(ref["map50"], abs=1e-9) and row.map50_95 is not None
        assert row.acc_delta == pytest.approx(0.0, abs=1e-9)  # mAP against mAP, not top-1
    md = (tmp_path / "bench.md").read_text()
    assert "mAP@0.5 (mAP@[.5:.95])" in md and "Δ mAP@0.5 points" in md and "| accuracy |" not in md


def test_best_picks_within_a_map_drop() -> None:
    rows = [
        BenchRow("torch", "fp32", 1, latency_ms=4.0, accuracy=0.60, acc_delta=0.0),
        BenchRow("onnxruntime", "int8", 1, latency_ms=1.0, accuracy=0.55, acc_delta=-0.05),
        BenchRow("onnxruntime", "fp32", 1, latency_ms=2.0, accuracy=0.59, acc_delta=-0.01),
    ]
    report = BenchReport(rows=rows, threads=1, metric="mAP@0.5")
    assert report.best(0.02).precision == "fp32" and report.best(0.1).precision == "int8"
    assert "Δ mAP@0.5 points" in report.table() and "| -1.00 |" in report.table()


def test_int8_keeps_the_anchors(setup: tuple, tmp_path: Path) -> None:
    data, model = setup
    calib = Calibration(make_loader(data.train, 4, shuffle=False), limit=1)
    q = quantize_ptq(model, calib)
    head, qhead = Head.of(model), Head.of(q)
    assert (qhead.anchors == head.anchors).all() and qhead.strides == head.strides
    assert qhead.num_classes == head.num_classes
    test = make_loader(data.test, 4, shuffle=False)
    assert evaluate(q, test)["map50"] == evaluate(q, test, head=head)["map50"]
    # QAT's training step sees the head too (its loss needs the anchors).
    seen: list[Head] = []
    quantize(model, calib, method="qat", train=lambda gm: seen.append(Head.of(gm)))
    assert seen and seen[0].strides == head.strides
    # The saved form of a quantized model keeps them through a checkpoint.
    saved = save_checkpoint(keep_head(model, QuantizedGraph(q)), tmp_path / "q.safetensors")
    loaded = load_checkpoint(saved)
    assert (Head.of(loaded).anchors == head.anchors).all()
    assert evaluate(loaded, test)["map50"] == evaluate(q, test)["map50"]


def test_keep_head_leaves_a_classifier_alone() -> None:
    clf, other = create("lenet5"), torch.nn.Linear(2, 2)
    assert keep_head(clf, other) is other and not hasattr(other, "anchors")


def test_recipe_deploy_and_quantize_report_map(tmp_path: Path, run_stages: Callable[..., Any]) -> None:
    root = make_voc(tmp_path / "voc", n=10)
    records, rundir = run_stages(
        {
            "name": "det",
            "data": {"name": "voc", "root": str(root), "size": SIZE, "batch_size": 4, "options": {"test_percent": 40}},
            "model": {"name": "yolofastest"},
            "stages": [
                {"train": {"max_iter": 1, "optimizer": "adam", "base_lr": 0.001}},
                {"deploy": {"target": "torch", "repeats": 0, "calib_batches": 1}},
                # The quantized graph keeps the anchors: the evaluation after it decodes.
                {"quantize": {"calib_batches": 1}},
                {"evaluate": {}},
            ],
        },
        tmp_path,
    )
    ev, dep = records["evaluate"], records["deploy"]
    assert ev["accuracy"] == ev["map50"] and dep["accuracy"] == dep["map50"]
    assert dep["map50_95"] is not None and dep["accuracy_runtime"] == "torch"
    line = _record_line(record_type("deploy").model_validate(dep))
    assert "mAP@0.5" in line and "accuracy" not in line
    # The evaluation draws the detector's predictions, and the run's report shows them.
    assert (rundir.path / ev["plot"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    from tinytamer.viz.report import write_report

    assert "predictions on the test split" in write_report(rundir).read_text()


def test_a_loader_without_images_is_refused(setup: tuple) -> None:
    from tinytamer.detect.evaluate import PairedScore

    with pytest.raises(DataError, match="no images"):
        PairedScore(Head.of(setup[1])).result()
