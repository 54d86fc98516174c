"""An endless, restorable stream of training batches.

Resuming bit-exactly needs the loader to give the same batches in the same order
after a restart.  The stream arranges that for any ``DataLoader`` whose order
depends only on the epoch:

- a sampler or loader with ``set_epoch`` (DistributedSampler, tinytamer's loaders)
  is told the epoch before each pass;
- every torch.Generator the loader uses (``loader.generator``, ``sampler.generator``)
  is re-seeded with its initial seed + epoch before each pass; a RandomSampler
  without one gets one seeded with the solver's seed;
- on resume the current epoch is started again and the batches already consumed
  are read and dropped.

Loaders whose order depends on anything else (an IterableDataset with its own
randomness) still train, but resume exactly only if that randomness is
re-created too.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch.utils.data import RandomSampler

from tinytamer.errors import DataError


def loader_length(loader: Iterable) -> int | None:
    """Batches per epoch, or None when the loader cannot say."""
    try:
        return len(loader)  # type: ignore[arg-type]
    except TypeError:
        return None


class BatchStream:
    """Batches from ``loader`` epoch after epoch; ``state()``/``restore()`` give the position."""

    def __init__(self, loader: Iterable, seed: int) -> None:
        self.loader = loader
        self.epoch = 0
        self.pos = 0  # batches consumed in the current epoch
        self._it: Iterator | None = None
        sampler = getattr(loader, "sampler", None)
        if isinstance(sampler, RandomSampler) and sampler.generator is None:
            sampler.generator = torch.Generator().manual_seed(seed)
        gens: dict[int, torch.Generator] = {}
        batch_sampler = getattr(loader, "batch_sampler", None)
        for owner in (loader, sampler, getattr(batch_sampler, "sampler", None)):
            g = getattr(owner, "generator", None)
            if isinstance(g, torch.Generator):
                gens[id(g)] = g
        self._gens = [(g, g.initial_seed()) for g in gens.values()]

    def _start_epoch(self) -> None:
        for owner in (self.loader, getattr(self.loader, "sampler", None), getattr(self.loader, "batch_sampler", None)):
            if hasattr(owner, "set_epoch"):
                owner.set_epoch(self.epoch)
        for g, base in self._gens:
            g.manual_seed(base + self.epoch)
        self._it = iter(self.loader)

    def next(self) -> Any:
        """The next batch, starting a new epoch when the current one is exhausted."""
        if self._it is None:
            self._start_epoch()
        try:
            batch = next(self._it)
        except StopIteration:
            self.epoch, self.pos = self.epoch + 1, 0
            self._start_epoch()
            try:
                batch = next(self._it)
            except StopIteration:
                raise DataError("the train loader gave no batches") from None
        self.pos += 1
        return batch

    def state(self) -> dict[str, int]:
        return {"epoch": self.epoch, "pos": self.pos}

    def restore(self, state: dict[str, int]) -> None:
        """Go back to a position from ``state()`` by replaying the epoch up to it."""
        self.epoch, self.pos = int(state["epoch"]), 0
        self._start_epoch()
        for _ in range(int(state["pos"])):
            try:
                next(self._it)
            except StopIteration:
                raise DataError(
                    f"the train loader has fewer than {state['pos']} batches in epoch "
                    f"{self.epoch}; it is not the loader the snapshot was taken with"
                ) from None
            self.pos += 1

    def progress(self) -> float:
        """Epochs done, fractional."""
        n = loader_length(self.loader)
        return self.epoch + (self.pos / n if n else 0.0)
