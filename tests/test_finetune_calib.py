"""One calibration object and one fine-tune: ``tinytamer.calib.Calibration``, the Solver's
``TrainHook`` and ``Context.finetune`` (seed, snapshots, resume) in every training stage."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from tinytamer.calib import Calibration, as_calibration
from tinytamer.checkpoint import load_checkpoint
from tinytamer.compress import int8
from tinytamer.errors import DataError
from tinytamer.recipe import parse_recipe, run
from tinytamer.train import Solver, SolverConfig
from tinytamer.train.solver import TrainHook

torch.set_num_threads(1)


def _loader(n: int = 50, batch: int = 8, shuffle: bool = True) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 1, 8, 8, generator=g)
    return DataLoader(
        TensorDataset(x, torch.arange(n) % 3),
        batch_size=batch,
        shuffle=shuffle,
        generator=torch.Generator().manual_seed(1),
    )


# -- Calibration ---------------------------------------------------------------------------------


def test_calibration_keeps_the_first_batches_it_drew() -> None:
    calib = Calibration(_loader(), limit=3)
    first = list(calib.batches())
    assert len(calib) == 3 and calib.samples == 24
    assert [tuple(x.shape) for x in first] == [(8, 1, 8, 8)] * 3  # inputs, not (x, y) pairs
    # A shuffled loader gives another order on each pass; the calibration data stays the same.
    assert all(torch.equal(a, b) for a, b in zip(first, calib, strict=True))
    assert torch.equal(next(calib.batches(1)), first[0]) and len(list(calib.batches(2))) == 2
    assert len(list(calib.batches(10))) == 3  # never past the limit
    assert Calibration(_loader(shuffle=False)).samples == 50  # no limit: every batch


def test_calibration_transform_and_plain_tensors() -> None:
    xs = [torch.ones(2, 3), torch.zeros(4, 3)]
    assert as_calibration(xs).samples == 6
    assert as_calibration(xs, 1).samples == 2
    doubled = Calibration(xs, lambda x: 2 * x)
    assert torch.equal(doubled[0], 2 * xs[0])


@pytest.mark.parametrize("n", [0, -1, 1.5])
def test_calibration_refuses_a_count_below_one(n) -> None:
    with pytest.raises(DataError, match="whole number >= 1"):
        list(Calibration(_loader()).batches(n))
    with pytest.raises(DataError, match="whole number >= 1"):
        Calibration(_loader(), limit=n)


def test_calibration_refuses_empty_data() -> None:
    empty = Calibration(DataLoader(TensorDataset(torch.zeros(0, 3), torch.zeros(0))), what="int8")
    with pytest.raises(DataError, match="int8: no calibration batches"):
        list(empty.batches())
    with pytest.raises(DataError, match="no calibration batches"):
        len(empty)


def test_int8_quantize_takes_a_calibration() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(144, 3)).eval()
    calib = Calibration(_loader(), limit=2)
    q = int8.quantize(model, calib, calibration="percentile", select={"overrides": {"3": {"bits": 4}}})
    old = int8.quantize_ptq(model, list(calib), method="percentile", select={"overrides": {"3": {"bits": 4}}})
    assert int8.quant_params(q) == int8.quant_params(old)
    assert int8.quant_params(q)["_3"]["w_bits"] == 4


# -- TrainHook -------------------------------------------------------------------------------------


class _Recorder(TrainHook):
    def __init__(self) -> None:
        self.steps: list[int] = []
        self.trained = 0

    def after_step(self, model: nn.Module, iteration: int) -> None:
        self.steps.append(iteration)

    def after_train(self, model: nn.Module) -> None:
        self.trained += 1


def test_train_hook_runs_after_each_step_and_once_after_training(tmp_path) -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 3))
    cfg = SolverConfig(max_iter=6, base_lr=0.01, snapshot=3, display=0)
    hook = _Recorder()
    Solver(model, cfg, _loader(), snapshot_dir=tmp_path, hooks=[hook], progress=False).solve()
    assert hook.steps == [1, 2, 3, 4, 5, 6] and hook.trained == 1
    resumed = _Recorder()  # from iteration 3: the steps left, then the end of training
    Solver(model, cfg, _loader(), snapshot_dir=tmp_path, hooks=[resumed], progress=False).solve(
        resume=tmp_path / "iter_3.pt"
    )
    assert resumed.steps == [4, 5, 6] and resumed.trained == 1


# -- every fine-tuning stage resumes ----------------------------------------------------------------

BASE = {
    "name": "ft",
    "seed": 3,
    "data": {"name": "digits", "size": 8, "batch_size": 16, "limit": 200},
    "model": {"name": "democnn"},
}
# Five updates: the interruption below (at update 8) falls in the stage under test.
TRAIN = {"train": {"base_lr": 0.05, "max_iter": 5, "display": 0}}
FINETUNE = {"base_lr": 0.01, "max_iter": 12, "snapshot": 5, "display": 0}


class _Stop(Exception):
    pass


def _counting(updates: list[int], stop_at: int | None = None):
    """``Solver._iterate`` that records each update's number and may stop the run there."""
    iterate = Solver._iterate

    def wrapped(self):
        out = iterate(self)
        updates.append(self.iter)
        if self.iter == stop_at:
            raise _Stop
        return out

    return wrapped


@pytest.mark.parametrize(
    "stage",
    [
        {"quantize": {"method": "qat", "calib_batches": 2, "finetune": {**FINETUNE}}},
        {"ttq": {"finetune": {**FINETUNE, "optimizer": "adam", "base_lr": 0.001}}},
        {"fixed_point": {"calib_batches": 2, "finetune": {**FINETUNE}}},
    ],
    ids=["qat", "ttq", "fixed_point"],
)
def test_interrupted_finetune_resumes_to_the_same_weights(tmp_path, monkeypatch, stage) -> None:
    recipe = parse_recipe({**BASE, "stages": [TRAIN, stage]})
    quiet = {"progress": False, "echo": lambda s: None}
    full = run(recipe, tmp_path / "full", **quiet)

    with monkeypatch.context() as m:
        m.setattr(Solver, "_iterate", _counting([], stop_at=8))
        with pytest.raises(_Stop):
            run(recipe, tmp_path / "cut", **quiet)
    snaps = tmp_path / "cut" / "stages" / f"01_{next(iter(stage))}" / "snapshots"
    assert sorted(p.name for p in snaps.glob("iter_*.pt")) == ["iter_5.pt"]

    updates: list[int] = []
    with monkeypatch.context() as m:
        m.setattr(Solver, "_iterate", _counting(updates))
        resumed = run(recipe, tmp_path / "cut", resume=True, **quiet)
    assert updates == list(range(6, 13))  # from the snapshot on, not from the start

    def final(rundir):
        return load_checkpoint(rundir.path / rundir.completed()[-1]["checkpoint"]).state_dict()

    a, b = final(full), final(resumed)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
