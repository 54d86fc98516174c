"""Data-parallel training under ``torchrun``.

When the environment names a world of more than one process (RANK, WORLD_SIZE,
MASTER_ADDR, MASTER_PORT, as torchrun sets them) the Solver calls ``setup`` to join
the process group (gloo on CPU, nccl on CUDA), wraps the model in
DistributedDataParallel, and rebuilds the train loader around a DistributedSampler
so each rank reads its own shard.  Only rank 0 logs and writes snapshots.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler

from tinytamer.errors import TamerError


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in the world (rank 0 of 1 when not distributed)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched() -> bool:
    """True when started by torchrun (or alike) with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ


def setup(device: torch.device) -> DistInfo:
    """Join the process group named by the environment (no-op when not launched)."""
    if not launched():
        return DistInfo()
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        try:
            dist.init_process_group(backend=backend)
        except ValueError as e:  # a missing MASTER_ADDR / MASTER_PORT
            raise TamerError(f"distributed launch: {e} (start with torchrun)") from None
    return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))


def wrap_model(model: nn.Module, info: DistInfo, device: torch.device) -> nn.Module:
    """DistributedDataParallel around ``model`` (already on ``device``)."""
    if device.type != "cuda":
        return DistributedDataParallel(model)
    ids = [device.index if device.index is not None else info.local_rank]
    return DistributedDataParallel(model, device_ids=ids)


def shard_loader(loader: DataLoader, info: DistInfo, seed: int) -> DataLoader:
    """The same loader, reading only this rank's shard (kept as is if already sharded).

    Shuffling is kept if the original sampler was a RandomSampler; the order then
    depends on ``seed`` and the epoch (``set_epoch``), identical on every rank.
    """
    if isinstance(loader.sampler, DistributedSampler):
        return loader
    if loader.batch_size is None:
        raise TamerError("distributed training needs a DataLoader built with batch_size")
    sampler = DistributedSampler(
        loader.dataset,
        num_replicas=info.world_size,
        rank=info.rank,
        shuffle=isinstance(loader.sampler, RandomSampler),
        seed=seed,
        drop_last=loader.drop_last,
    )
    return DataLoader(
        loader.dataset,
        batch_size=loader.batch_size,
        sampler=sampler,
        num_workers=loader.num_workers,
        collate_fn=loader.collate_fn,
        pin_memory=loader.pin_memory,
        drop_last=loader.drop_last,
        worker_init_fn=loader.worker_init_fn,
    )


def average_buffers(model: nn.Module, info: DistInfo) -> None:
    """Average floating buffers (BN statistics) over ranks, e.g. after a per-shard BN update."""
    if not info.enabled:
        return
    for b in model.buffers():
        if b.is_floating_point():
            dist.all_reduce(b, op=dist.ReduceOp.SUM)
            b.div_(info.world_size)
