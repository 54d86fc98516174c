"""Target assignment, the loss, and training a detector through the recipe and the CLI."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from test_detect_data import make_voc

from tinytamer.detect.assign import assign, flatten_targets
from tinytamer.detect.decode import Head
from tinytamer.detect.loss import DetectionLoss, ciou
from tinytamer.zoo import create


def _targets(rows: list[list[float]], k: int = 3) -> torch.Tensor:
    t = torch.full((1, k, 5), -1.0)
    if rows:
        t[0, : len(rows)] = torch.tensor(rows)
    return t


def test_flatten_drops_padding() -> None:
    gt = flatten_targets(_targets([[10, 20, 30, 60, 1]]))
    assert gt.tolist() == [[0, 1, 20, 40, 20, 40]]


def test_assignment_picks_matching_anchors_and_neighbour_cells() -> None:
    anchors = torch.tensor([[16.0, 16.0], [40.0, 40.0], [200.0, 200.0]])
    # A 32 x 32 box centred at (36, 20) px on stride 16: grid centre (2.25, 1.25), size 2 x 2.
    gt = flatten_targets(_targets([[20, 4, 52, 36, 0]]))
    cells = assign(gt, anchors, 16, grid_h=4, grid_w=4)
    # Anchors 16 (ratio 2: not < 2) and 200 are out; 40 (ratio 1.25) matches.
    assert set(cells.anchor.tolist()) == {1}
    # Centre cell (col 2, row 1) plus the left neighbour (x in the cell's left half, x > 1)
    # and the one above (y in the upper half, y > 1).
    assert sorted(zip(cells.col.tolist(), cells.row.tolist(), strict=True)) == [(1, 1), (2, 0), (2, 1)]
    box = cells.box[(cells.col == 2) & (cells.row == 1)][0]
    np.testing.assert_allclose(box.tolist(), [0.25, 0.25, 2, 2])
    assert torch.equal(assign(flatten_targets(_targets([])), anchors, 16, 4, 4).image, torch.zeros(0, dtype=torch.long))


def test_ciou_is_one_for_identical_boxes_and_lower_apart() -> None:
    a = torch.tensor([[5.0, 5.0, 4.0, 2.0]])
    assert float(ciou(a, a)) == 1.0 or abs(float(ciou(a, a)) - 1) < 1e-5
    assert float(ciou(a, torch.tensor([[9.0, 5.0, 4.0, 2.0]]))) < 0


def test_loss_falls_when_fitting_one_batch() -> None:
    torch.manual_seed(0)
    model = create(
        "yolofastest", num_classes=2, input_size=64, anchors=[[8, 8], [16, 16], [24, 24], [24, 24], [40, 40], [56, 56]]
    )
    loss_fn = DetectionLoss(Head.of(model))
    x = torch.rand(2, 3, 64, 64)
    y = torch.tensor(
        [[[4, 4, 28, 28, 0], [30, 30, 60, 60, 1]], [[10, 20, 50, 40, 1], [-1, -1, -1, -1, -1]]], dtype=torch.float32
    )
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    first = None
    for _ in range(15):
        opt.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        first = first if first is not None else float(loss.detach())
    assert float(loss) < 0.5 * first
    assert set(loss_fn.parts) == {"box", "obj", "cls"} and loss_fn.parts["cls"] > 0


def test_recipe_trains_and_records_map(tmp_path: Path, run_stages: Callable[..., Any]) -> None:
    root = make_voc(tmp_path / "voc", n=10)
    records, rundir = run_stages(
        {
            "name": "det",
            "data": {"name": "voc", "root": str(root), "size": 64, "batch_size": 4, "options": {"test_percent": 40}},
            "model": {"name": "yolofastest"},
            "stages": [{"train": {"max_iter": 2, "optimizer": "adam", "base_lr": 0.001}}, {"evaluate": {}}],
        },
        tmp_path,
    )
    ev = records["evaluate"]
    assert ev["accuracy"] == ev["map50"] and 0 <= ev["map50_95"] <= ev["map50"] <= 1
    lines = [json.loads(s) for s in (rundir.path / "metrics.jsonl").read_text().splitlines()]
    assert any(r["kind"] == "train" and r["train_loss"] > 0 for r in lines)


def test_tamer_train_on_a_voc_folder(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from tinytamer.cli import app

    root = make_voc(tmp_path / "voc", n=10)
    args = ["train", "--model", "yolofastest", "--data", "voc", "--root", str(root), "--size", "64"]
    args += [
        "--max-iter",
        "2",
        "--batch-size",
        "4",
        "--set",
        "data.augment=true",
        "--set",
        "data.options.test_percent=40",
    ]
    out = CliRunner().invoke(app, [*args, "--runs", str(tmp_path / "runs"), "--name", "t", "--quiet"])
    assert out.exit_code == 0, out.output
    lines = [json.loads(s) for s in (tmp_path / "runs" / "t" / "metrics.jsonl").read_text().splitlines()]
    stages = [r for r in lines if r["kind"] == "stage"]
    assert [r["stage"] for r in stages] == ["train", "evaluate"] and all("map50_95" in r for r in stages)
    bad = CliRunner().invoke(app, ["train", "--model", "yolofastest", "--data", "voc", "--runs", str(tmp_path / "r2")])
    assert bad.exit_code == 2 and "needs a root" in bad.output
