"""The training loop, with Caffe's semantics.

One *iteration* is one optimizer update.  It consumes ``iter_size`` mini-batches
whose gradients accumulate (summed), so iter_size x B equals one batch of
iter_size*B.  Before the update, in the order of Caffe's ``SGDSolver::ApplyUpdate``,
the summed gradient is clipped to ``clip_gradients`` (global L2 norm,
``ClipGradients``), then divided by iter_size (``Normalize``), then regularised
(``weight_decay``, L2 or L1, ``Regularize``): with iter_size > 1 the clip threshold
therefore bounds the sum, not the mean.  The learning rate of update ``it`` is
``learning_rate(cfg, it)``.  With ``swa`` the last iterations follow SWALR and are
averaged (torch.optim.swa_utils); at the end the model holds the averaged weights
with BN statistics recomputed over the train loader.
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
import re
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from torch import nn
from torch.optim.swa_utils import SWALR, AveragedModel, update_bn

from tinytamer.errors import DataError, ModelError, RecipeError, TrainError
from tinytamer.scoring import top1_hits
from tinytamer.train import distributed, snapshot
from tinytamer.train.config import SolverConfig
from tinytamer.train.distill import Distillation
from tinytamer.train.lr import learning_rate
from tinytamer.train.optim import build_optimizer, regularize
from tinytamer.train.stream import BatchStream, loader_length

logger = logging.getLogger(__name__)

# A training loss this many times the first one means the run is diverging (warned once).
DIVERGENCE_FACTOR = 1000.0


def _split(batch: Any, where: str) -> tuple[Any, Any]:
    if not isinstance(batch, (list, tuple)) or len(batch) != 2:
        raise DataError(f"{where}: a batch must be (inputs, targets), got {type(batch).__name__}")
    return batch[0], batch[1]


def _to(x: Any, device: torch.device) -> Any:
    if isinstance(x, torch.Tensor):
        return x.to(device, non_blocking=True)
    if isinstance(x, (list, tuple)):
        return type(x)(_to(v, device) for v in x)
    return x


def _correct(out: Any, y: Any) -> int | None:
    """Top-1 hits when ``out`` are class scores (N, C) and ``y`` class indices (N,)."""
    if (
        isinstance(out, torch.Tensor)
        and isinstance(y, torch.Tensor)
        and out.dim() == 2
        and y.dim() == 1
        and not y.is_floating_point()
        and len(out) == len(y)
    ):
        return top1_hits(out, y)
    return None


def _count(x: Any) -> int:
    while isinstance(x, (list, tuple)):
        x = x[0]
    return len(x)


def evaluate(
    model: nn.Module, loader: Iterable, loss_fn: Callable | None = None, max_batches: int | None = None
) -> dict:
    """Mean loss and top-1 accuracy over ``loader`` (or its first ``max_batches`` batches).

    Runs in eval mode without gradients and restores every submodule's train/eval
    mode afterwards.  ``accuracy`` is None when outputs are not class scores.
    """
    loss_fn = loss_fn or F.cross_entropy
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    total, hits, n, scored = 0.0, 0, 0, True
    try:
        with torch.no_grad():
            for i, batch in enumerate(loader):
                if max_batches is not None and i >= max_batches:
                    break
                x, y = _split(batch, "evaluate")
                x, y = _to(x, device), _to(y, device)
                out = model(x)
                b = _count(x)
                total += float(loss_fn(out, y)) * b
                c = _correct(out, y)
                scored = scored and c is not None
                hits += c or 0
                n += b
    finally:
        for m, mode in modes:
            m.training = mode
    if n == 0:
        raise DataError("evaluate: the loader gave no batches")
    return {"loss": total / n, "accuracy": hits / n if scored else None, "n": n}


class _Window:
    """Train loss/accuracy and throughput since the last record."""

    def __init__(self) -> None:
        self.loss, self.hits, self.n, self.iters, self.scored = 0.0, 0, 0, 0, True
        self.start = time.perf_counter()

    def add(self, loss: float, hits: int | None, n: int) -> None:
        self.loss += loss
        self.iters += 1
        self.scored = self.scored and hits is not None
        self.hits += hits or 0
        self.n += n

    def summary(self, world: int) -> dict:
        dt = max(time.perf_counter() - self.start, 1e-9)
        return {
            "train_loss": self.loss / self.iters,
            "train_acc": self.hits / self.n if self.scored and self.n else None,
            "images_per_s": self.n * world / dt,
        }


def latest_snapshot(folder: Path) -> Path | None:
    """The newest ``iter_<N>.pt`` snapshot a Solver wrote in ``folder`` (to resume from)."""
    snaps = sorted(folder.glob("iter_*.pt"), key=lambda p: int(re.sub(r"\D", "", p.stem) or 0))
    return snaps[-1] if snaps else None


class TrainHook:
    """A compression method's training-time behaviour, plugged into the Solver.

    The way Distiller's policies and Torch-Pruning's schedulers plug in: the method
    keeps its own state and the Solver calls it at fixed points; override what is
    needed, the defaults do nothing.  What lives inside the modules (pruning masks as
    forward pre-hooks, shared codebooks as parametrizations, TTQ's scales in their
    autograd function) trains in any loop and needs no hook.
    """

    def after_step(self, model: nn.Module, iteration: int) -> None:
        """After every update; ``iteration`` counts the updates done (e.g. a pruning schedule)."""

    def after_train(self, model: nn.Module) -> None:
        """Once, when ``solve`` has reached max_iter (also after a resume), after its last
        record and snapshot (e.g. put weights back on a quantization grid)."""


class Solver:
    """Trains ``model`` with ``config`` on ``train_loader``; see the module doc for semantics.

    Under torchrun (WORLD_SIZE > 1) the model is wrapped in DistributedDataParallel,
    the train loader is sharded with a DistributedSampler, and only rank 0 logs and
    writes snapshots.  ``after_step`` callbacks get (model, iterations done) after
    every update; ``hooks`` are a method's :class:`TrainHook` objects.  With
    ``distill`` the training loss is its objective on top of ``loss_fn`` (the teacher
    sees the same augmented batch); tests still score ``loss_fn`` alone.
    """

    def __init__(
        self,
        model: nn.Module,
        config: SolverConfig,
        train_loader: Iterable,
        test_loader: Iterable | None = None,
        *,
        snapshot_dir: Path | None = None,
        log: Callable[[dict], None] | None = None,
        after_step: Sequence[Callable[[nn.Module, int], None]] = (),
        hooks: Sequence[TrainHook] = (),
        progress: bool = True,
        loss_fn: Callable | None = None,
        distill: Distillation | None = None,
        device: str | torch.device = "cpu",
    ) -> None:
        self.device = torch.device(device)
        self.distill = distill.to(self.device) if distill is not None else None
        self.dist = distributed.setup(self.device)
        if self.dist.enabled:
            train_loader = distributed.shard_loader(train_loader, self.dist, config.seed)
        self.cfg = config.resolved(loader_length(train_loader))
        if self.cfg.swa and self.cfg.swa_start + self.cfg.swa_freq > self.cfg.max_iter:
            raise RecipeError(
                f"solver config: swa_start ({self.cfg.swa_start}) + swa_freq ({self.cfg.swa_freq})"
                f" is beyond max_iter ({self.cfg.max_iter}): nothing would be averaged"
            )
        if not any(p.requires_grad for p in model.parameters()):  # refused before the model is moved
            raise ModelError("the model has no trainable parameters")
        self.model = model.to(self.device)
        self.channels_last = self.cfg.memory_format == "channels_last"
        if self.channels_last:  # before DDP wraps it: its gradient buckets follow the layout
            self.model.to(memory_format=torch.channels_last)
        self.net = distributed.wrap_model(self.model, self.dist, self.device) if self.dist.enabled else self.model
        self.train_loader = train_loader
        self.test_loader = test_loader
        self.snapshot_dir = Path(snapshot_dir) if snapshot_dir is not None else None
        self.log = log
        self.hooks = list(hooks)
        self.after_step = [*after_step, *(h.after_step for h in self.hooks)]
        self.progress = progress
        self.loss_fn = loss_fn or F.cross_entropy
        self.optimizer = build_optimizer([p for p in self.model.parameters() if p.requires_grad], self.cfg)
        self.stream = BatchStream(train_loader, self.cfg.seed)
        self.swa_model = AveragedModel(self.model) if self.cfg.swa else None
        self.swa_scheduler: SWALR | None = None
        self.iter = 0
        self._first_loss: tuple[int, float] | None = None  # (iteration, loss) to compare with
        self._warned_growth = False

    # -- learning rate -------------------------------------------------------------
    def _set_lr(self, it: int) -> None:
        cfg = self.cfg
        if cfg.swa and it >= cfg.swa_start and self.swa_scheduler is None:
            self._set_policy_lr(cfg.swa_start)
            self._start_swalr()
        if self.swa_scheduler is None:
            self._set_policy_lr(it)

    def _set_policy_lr(self, it: int) -> None:
        lr = learning_rate(self.cfg, it)
        for g in self.optimizer.param_groups:
            if self.cfg.optimizer == "yellowfin":  # it tunes lr; the policy scales it
                g["lr_factor"] = lr / self.cfg.base_lr
            else:
                g["lr"] = lr

    def _start_swalr(self) -> None:
        swa_lr = self.cfg.swa_lr or learning_rate(self.cfg, self.cfg.swa_start)
        # anneal from the policy's lr to swa_lr over one averaging period
        self.swa_scheduler = SWALR(self.optimizer, swa_lr=swa_lr, anneal_epochs=self.cfg.swa_freq)

    def current_lr(self) -> float:
        g = self.optimizer.param_groups[0]
        if self.cfg.optimizer == "yellowfin":
            return self.optimizer.tuner["lr"] * g["lr_factor"]
        return float(g["lr"])

    # -- one update ----------------------------------------------------------------
    def _update(self) -> tuple[float, int | None, int]:
        cfg = self.cfg
        self.net.train()
        self.optimizer.zero_grad(set_to_none=True)
        loss_sum, hits, n, scored = 0.0, 0, 0, True
        for i in range(cfg.iter_size):
            x, y = _split(self.stream.next(), "train loader")
            x, y = _to(x, self.device), _to(y, self.device)
            last = i == cfg.iter_size - 1
            # DDP all-reduces on every backward; accumulate locally until the last one
            sync = contextlib.nullcontext() if last or not self.dist.enabled else self.net.no_sync()
            with sync:
                out = self.net(x)
                loss = self.loss_fn(out, y)
                if self.distill is not None:
                    loss = self.distill.loss(x, out, loss)
                loss.backward()  # summed over the iter_size batches; divided after clipping
            loss_sum += float(loss.detach()) / cfg.iter_size
            c = _correct(out.detach() if isinstance(out, torch.Tensor) else out, y)
            scored = scored and c is not None
            hits += c or 0
            n += _count(x)
        if not math.isfinite(loss_sum):
            # Stop before the step writes inf/NaN into the weights (and into a snapshot).
            raise TrainError(
                f"training diverged: the loss is {loss_sum} at iteration {self.iter + 1} "
                f"(learning rate {self.current_lr():.3g}); lower base_lr, or set clip_gradients"
            )
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        # Caffe's order: ClipGradients on the accumulated sum, then Normalize by iter_size
        if cfg.clip_gradients is not None:
            nn.utils.clip_grad_norm_(params, cfg.clip_gradients)
        if cfg.iter_size > 1:
            for p in params:
                if p.grad is not None:
                    p.grad.div_(cfg.iter_size)
        regularize(params, cfg.weight_decay, cfg.regularization_type)
        self.optimizer.step()
        return loss_sum, (hits if scored else None), n

    def _after_update(self, it: int) -> None:
        cfg = self.cfg
        if self.swa_scheduler is not None:
            if (it + 1 - cfg.swa_start) % cfg.swa_freq == 0:
                self.swa_model.update_parameters(self.model)
            self.swa_scheduler.step()

    # -- testing, snapshots, records -------------------------------------------------
    def test(self) -> dict:
        """{"loss", "accuracy"} of the model on ``test_iter`` batches of the test loader."""
        if self.test_loader is None:
            raise DataError("Solver.test: no test loader was given")
        r = evaluate(self.model, self.test_loader, self.loss_fn, self.cfg.test_iter)
        return {"loss": r["loss"], "accuracy": r["accuracy"]}

    def _snapshot(self) -> Path | None:
        if self.snapshot_dir is None or not self.dist.is_main:
            return None
        path = self.snapshot_dir / f"iter_{self.iter}.pt"
        snapshot.save(
            path,
            {
                "iter": self.iter,
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "swa_model": self.swa_model.state_dict() if self.swa_model is not None else None,
                "swa_scheduler": self.swa_scheduler.state_dict() if self.swa_scheduler else None,
                "rng": snapshot.rng_state(),
                "loader": self.stream.state(),
            },
        )
        return path

    def _restore(self, path: Path) -> None:
        state = snapshot.load(path)
        try:
            self.model.load_state_dict(state["model"])
        except RuntimeError as e:
            raise ModelError(f"snapshot {path} does not fit this model: {e}") from None
        self.iter = int(state["iter"])
        if state["swa_scheduler"] is not None:
            self._start_swalr()  # before the optimizer state, which then overwrites its lr
        self.optimizer.load_state_dict(state["optimizer"])
        if state["swa_scheduler"] is not None:
            self.swa_scheduler.load_state_dict(state["swa_scheduler"])
        if self.swa_model is not None and state["swa_model"] is not None:
            self.swa_model.load_state_dict(state["swa_model"])
        self.stream.restore(state["loader"])
        # last: replaying the epoch above may have drawn random numbers
        snapshot.set_rng_state(state["rng"])

    def _emit(self, record: dict) -> None:
        if self.log is not None and self.dist.is_main:
            self.log(record)

    def _finish_swa(self) -> None:
        with torch.no_grad():
            for p, avg in zip(self.model.parameters(), self.swa_model.module.parameters(), strict=True):
                p.copy_(avg)
        update_bn(self.train_loader, self.model, device=self.device)
        distributed.average_buffers(self.model, self.dist)

    def _iterate(self) -> tuple[float, tuple[float, int | None, int]]:
        """One update with its lr, then the after-step callbacks; returns (lr, train stats)."""
        it = self.iter
        self._set_lr(it)
        lr = self.current_lr()
        stats = self._update()
        self._after_update(it)
        self.iter += 1
        for fn in self.after_step:
            fn(self.model, self.iter)
        return lr, stats

    def _watch_growth(self, loss: float, lr: float) -> None:
        """Warn once when the loss has grown by orders of magnitude since the first update."""
        if self._first_loss is None:
            self._first_loss = (self.iter, loss)
            return
        first_iter, first = self._first_loss
        if self._warned_growth or first == 0 or abs(loss) <= DIVERGENCE_FACTOR * abs(first):
            return
        self._warned_growth = True
        warnings.warn(
            f"training loss grew from {first:.3g} (iteration {first_iter}) to {loss:.3g} "
            f"at iteration {self.iter} (learning rate {lr:.3g}): the run is probably "
            "diverging; consider a lower base_lr",
            RuntimeWarning,
            stacklevel=3,
        )

    def _checkpoint(self, lr: float, train: dict) -> bool:
        """Test / display / snapshot as due after an update; True when a record went out."""
        cfg = self.cfg
        base = {"iter": self.iter, "epoch": self.stream.progress(), "lr": lr, **train}
        emitted = False
        if self.test_loader is not None and cfg.test_interval and self.iter % cfg.test_interval == 0:
            t = self.test()
            self._emit({**base, "test_loss": t["loss"], "test_acc": t["accuracy"]})
            emitted = True
        elif cfg.display and self.iter % cfg.display == 0:
            self._emit(base)
            emitted = True
        if cfg.snapshot and self.iter % cfg.snapshot == 0:
            self._snapshot()
        return emitted

    def solve(self, resume: Path | None = None) -> dict:
        """Train to ``max_iter`` (from snapshot ``resume`` if given); return the final record.

        The record holds iter, epoch, lr, train_loss, train_acc, test_loss, test_acc,
        images_per_s, snapshot (path or None) and loss/accuracy: the test metrics when
        a test loader was given, else the last train metrics.  The model is contiguous
        again when this returns or raises, whatever layout it trained in.
        """
        try:
            return self._solve(resume)
        finally:
            if self.channels_last:
                self.model.to(memory_format=torch.contiguous_format)

    def _solve(self, resume: Path | None) -> dict:
        cfg = self.cfg
        if resume is not None:
            self._restore(Path(resume))
        else:
            torch.manual_seed(cfg.seed)
            np.random.seed(cfg.seed % 2**32)
            random.seed(cfg.seed)
        window, train = _Window(), {"train_loss": None, "train_acc": None, "images_per_s": None}
        columns = [
            TextColumn("train"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"),
            TimeRemainingColumn(),
        ]
        bar = Progress(*columns, disable=not (self.progress and self.dist.is_main))
        with bar:
            task = bar.add_task("train", total=cfg.max_iter, completed=self.iter, info="")
            while self.iter < cfg.max_iter:
                lr, (loss, hits, n) = self._iterate()
                self._watch_growth(loss, lr)
                window.add(loss, hits, n)
                train = window.summary(self.dist.world_size)
                acc = "" if train["train_acc"] is None else f" acc {train['train_acc']:.3f}"
                bar.update(
                    task,
                    completed=self.iter,
                    info=f"loss {train['train_loss']:.4f}{acc} lr {lr:.3g} {train['images_per_s']:.0f} img/s",
                )
                if self.iter < cfg.max_iter and self._checkpoint(lr, train):
                    window = _Window()
        if self.swa_model is not None and self.swa_model.n_averaged.item() > 0:
            self._finish_swa()
        t = self.test() if self.test_loader is not None else {"loss": None, "accuracy": None}
        final = {
            "iter": self.iter,
            "epoch": self.stream.progress(),
            "lr": self.current_lr(),
            **train,
            "test_loss": t["loss"],
            "test_acc": t["accuracy"],
        }
        self._emit(final)
        path = self._snapshot()
        for hook in self.hooks:
            hook.after_train(self.model)
        loss, acc = (
            (t["loss"], t["accuracy"]) if self.test_loader is not None else (train["train_loss"], train["train_acc"])
        )
        return {**final, "loss": loss, "accuracy": acc, "snapshot": str(path) if path else None}
