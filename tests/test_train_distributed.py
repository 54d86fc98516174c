"""Data-parallel training on two CPU processes (gloo) equals one process with the combined batch."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from tinytamer.train import Solver, SolverConfig

CFG = dict(max_iter=5, base_lr=0.1, momentum=0.9, weight_decay=1e-3, iter_size=2, snapshot=2)


def _dataset() -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(48, 5, generator=g, dtype=torch.float64)
    return TensorDataset(x, (x[:, 0] > x[:, 1]).long())


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 2)).double()


def _worker(rank: int, port: int, out: str) -> None:
    torch.set_num_threads(1)
    os.environ.update(
        RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )
    if rank == 1:
        torch.manual_seed(123)  # DDP must broadcast rank 0's initial weights
    model = _model() if rank == 0 else nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 2)).double()
    # per-rank batch 3, unsharded: the Solver shards it with a DistributedSampler
    solver = Solver(
        model,
        SolverConfig(**CFG),
        DataLoader(_dataset(), batch_size=3),
        snapshot_dir=Path(out) / f"snap{rank}",
        progress=False,
    )
    solver.solve()
    torch.save(model.state_dict(), Path(out) / f"rank{rank}.pt")
    dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow  # two fresh interpreters importing torch
def test_two_ranks_match_one_process_with_the_combined_batch(tmp_path):
    mp.spawn(_worker, args=(_free_port(), str(tmp_path)), nprocs=2, join=True)
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert all(torch.equal(r0[k], r1[k]) for k in r0)
    assert (tmp_path / "snap0" / "iter_5.pt").is_file()
    assert not (tmp_path / "snap1").exists()  # only rank 0 writes snapshots

    single = _model()
    Solver(single, SolverConfig(**CFG), DataLoader(_dataset(), batch_size=6), progress=False).solve()
    for k, v in single.state_dict().items():
        assert torch.allclose(r0[k], v, atol=1e-10, rtol=0), k
    assert not torch.equal(single[0].weight, _model()[0].weight)


def test_not_distributed_without_torchrun_env(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    solver = Solver(_model(), SolverConfig(max_iter=1), DataLoader(_dataset()), progress=False)
    assert not solver.dist.enabled and solver.net is solver.model
