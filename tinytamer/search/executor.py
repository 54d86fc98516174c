"""Executors: run search work (LUT measurements, candidate evaluations, fine-tunes) here or on Ray.

One interface for every kind of search work::

    from tinytamer.search.executor import make_executor

    with make_executor("local", workers=2) as ex:          # or make_executor("ray", address="auto")
        results = ex.map(evaluate, candidates, seed=0, desc="candidates")
    for r in results:                                      # in the order of `candidates`
        r.ok, r.value, r.error, r.seed, r.attempts

``fn(item, seed)`` is called once per item with that item's own seed, ``trial_seed(seed, index)``, and runs
with torch, numpy and ``random`` seeded from it and torch on ``threads`` threads (default 1).  A result
therefore depends on the item and the seed only, never on which worker ran it or in what order: the local
executor in process, a process pool and Ray give identical results.  In process, the caller's random
states and thread count are restored after each trial.

A trial that crashes (it raises, or its worker process is killed) is reported in one line (which item, the
error) and run once more with the same seed; a second failure gives a failed :class:`Result`
(``ok`` False, ``error`` the line), never an exception, so one bad candidate never stops a search.

- ``local``: ``workers=0`` runs the trials in this process; ``workers=N`` in a pool of N worker
  processes (kept for the executor's life, a dead one replaced), so ``fn`` and the items must pickle:
  define ``fn`` at a module's top level.
- ``ray`` (the extra ``pip install "tinytamer[ray]"``): with no address, starts a private Ray instance on
  this machine (``workers`` CPUs, 0 = all) that ``close()`` shuts down; it never joins a cluster found
  through ``RAY_ADDRESS`` or one already running.  ``address="auto"`` joins the cluster running on this
  machine, ``"host:port"`` a given one.  If this process is already connected to Ray, that is used.

Command-line search commands take ``--executor local|ray --address ADDR --workers N`` through the option
types ``ExecutorOpt``, ``AddressOpt`` and ``WorkersOpt`` in ``tinytamer/cli.py`` and pass them to
:func:`make_executor`.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import pickle
import random
import signal
import weakref
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import Any, Generic, TypeVar

import numpy as np
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from tinytamer.errors import BackendBroken, BackendMissing, TamerError

T = TypeVar("T")

EXECUTORS = ("local", "ray")
RAY_INSTALL = 'pip install "tinytamer[ray]"'
ATTEMPTS = 2  # a crashed trial runs once more; a second crash is recorded, not raised

Outcome = tuple[bool, Any]  # (True, value) or (False, the error in one line)


@dataclass(frozen=True)
class Result(Generic[T]):
    """The outcome of one item: its value, or the error of its last attempt."""

    index: int
    seed: int
    value: T | None = None
    error: str | None = None
    attempts: int = 1

    @property
    def ok(self) -> bool:
        return self.error is None


def trial_seed(seed: int, index: int) -> int:
    """The seed of item ``index`` of a map run with ``seed`` (a 32-bit int, so numpy takes it too)."""
    if seed < 0:
        raise TamerError(f"the search seed must be >= 0, got {seed}")
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


def _one_line(exc: BaseException) -> str:
    first = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {first[0]}" if first else type(exc).__name__


def _run_trial(fn: Callable[[Any, int], Any], item: Any, seed: int, threads: int) -> Outcome:
    """Run one trial seeded and on ``threads`` threads, leaving this process's RNGs and threads as they were."""
    import torch

    np_state, py_state, old_threads = np.random.get_state(), random.getstate(), torch.get_num_threads()
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            np.random.seed(seed)
            random.seed(seed)
            torch.set_num_threads(threads)
            return True, fn(item, seed)
    except Exception as exc:
        return False, _one_line(exc)
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)
        torch.set_num_threads(old_threads)


def _short(item: Any, limit: int = 60) -> str:
    text = " ".join(repr(item).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


class _Book:
    """Attempts and results of one map: decides retries, reports failures, advances the bar."""

    def __init__(
        self, items: list[Any], seeds: list[int], echo: Callable[[str], None], advance: Callable[[], None]
    ) -> None:
        self.items, self.seeds, self.echo, self.advance = items, seeds, echo, advance
        self.attempts = [0] * len(items)
        self.results: list[Result | None] = [None] * len(items)

    def start(self, i: int) -> tuple[Any, int]:
        self.attempts[i] += 1
        return self.items[i], self.seeds[i]

    def finish(self, i: int, ok: bool, payload: Any) -> bool:
        """Record item ``i``'s attempt; True when it must run again."""
        if not ok:
            label = f"trial {i} ({_short(self.items[i])}) failed"
            if self.attempts[i] < ATTEMPTS:
                self.echo(f"{label}: {payload}; retrying once")
                return True
            self.echo(f"{label} again: {payload}; recorded as failed, the search goes on")
        self.results[i] = Result(
            i, self.seeds[i], value=payload if ok else None, error=None if ok else payload, attempts=self.attempts[i]
        )
        self.advance()
        return False


class Executor:
    """Runs ``fn(item, seed)`` over items; see the module docstring.  Use as a context manager."""

    def __init__(self, *, threads: int = 1, progress: bool = True, echo: Callable[[str], None] = print) -> None:
        if threads < 1:
            raise TamerError(f"threads per trial must be >= 1, got {threads}")
        self.threads, self.progress, self.echo = threads, progress, echo

    def map(
        self, fn: Callable[[Any, int], T], items: Iterable[Any], *, seed: int = 0, desc: str = "trials"
    ) -> list[Result[T]]:
        """``fn(item, trial_seed(seed, i))`` for every item, with a progress bar; results in item order."""
        items = list(items)
        seeds = [trial_seed(seed, i) for i in range(len(items))]
        columns = [TextColumn(desc, markup=False), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn()]
        with Progress(*columns, disable=not self.progress) as bar:
            task = bar.add_task(desc, total=len(items))
            book = _Book(items, seeds, self.echo, lambda: bar.advance(task))
            if items:
                self._execute(fn, book)
        return [r for r in book.results if r is not None]

    def _execute(self, fn: Callable[[Any, int], Any], book: _Book) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Release workers (a pool's processes, a Ray instance this executor started)."""

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _worker_loop(conn: Connection) -> None:
    """A pool worker: run the pickled trials the parent sends until told to stop."""
    # Ctrl-C reaches the whole process group; the parent handles it and stops the workers.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    while True:
        try:
            task = conn.recv_bytes()
        except EOFError:
            return
        if not task:
            return
        try:
            outcome = _run_trial(*pickle.loads(task))
        except Exception as exc:  # the trial's module cannot be imported here, say
            outcome = (False, f"cannot load the trial in the worker: {_one_line(exc)}")
        try:
            conn.send(outcome)
        except Exception as exc:
            conn.send((False, f"the result cannot be sent back: {_one_line(exc)}"))


class _Worker:
    def __init__(self, ctx: Any) -> None:
        self.conn, child = ctx.Pipe()
        # Not a daemon: a trial may start processes of its own (data loader workers).
        self.process = ctx.Process(target=_worker_loop, args=(child,), name="tinytamer-trial")
        self.process.start()
        child.close()
        self.index: int | None = None

    def outcome(self) -> Outcome | None:
        """The finished trial's outcome, or None if the process died."""
        if self.conn.poll():
            try:
                return self.conn.recv()
            except (EOFError, OSError):
                pass
        return None

    def death(self) -> str:
        self.process.join(timeout=5)
        code = self.process.exitcode
        if code is not None and code < 0:
            return f"worker process died ({signal.Signals(-code).name})"
        return f"worker process died (exit status {code})"

    def stop(self) -> None:
        if self.process.is_alive() and self.index is None:
            try:
                self.conn.send_bytes(b"")
            except OSError:
                pass
            self.process.join(timeout=5)
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(timeout=5)
        self.conn.close()


def _stop_all(workers: list[_Worker]) -> None:
    for w in workers:
        w.stop()
    workers.clear()


def _context() -> Any:
    """Workers forked from a clean server process that has torch imported: a new or replacement worker
    starts in milliseconds, not the seconds of importing torch.  Forking this process instead would copy
    torch's thread pools and locks mid-use; where there is no forkserver, workers are spawned."""
    if "forkserver" not in mp.get_all_start_methods():
        return mp.get_context("spawn")
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["torch", __name__])
    return ctx


class LocalExecutor(Executor):
    """Trials in this process (``processes=0``) or in a pool of worker processes."""

    def __init__(
        self, processes: int = 0, *, threads: int = 1, progress: bool = True, echo: Callable[[str], None] = print
    ) -> None:
        super().__init__(threads=threads, progress=progress, echo=echo)
        if processes < 0:
            raise TamerError(f"local executor: processes must be >= 0, got {processes}")
        self.processes = processes
        self._workers: list[_Worker] = []
        # Stops the pool at exit too: multiprocessing would otherwise wait for idle workers forever.
        self._finalizer = weakref.finalize(self, _stop_all, self._workers)

    def _execute(self, fn: Callable[[Any, int], Any], book: _Book) -> None:
        if self.processes == 0:
            for i in range(len(book.items)):
                while book.finish(i, *_run_trial(fn, *book.start(i), self.threads)):
                    pass
            return
        try:
            self._pool(fn, book)
        except BaseException:
            # Busy workers would hand their stale results to the next map: start afresh.
            _stop_all(self._workers)
            raise

    def _pool(self, fn: Callable[[Any, int], Any], book: _Book) -> None:
        ctx = _context()
        while len(self._workers) < self.processes:
            self._workers.append(_Worker(ctx))
        queue = deque(range(len(book.items)))
        while queue or any(w.index is not None for w in self._workers):
            for n, w in enumerate(self._workers):
                if w.index is None and not w.process.is_alive():  # died idle (between maps, say)
                    w.stop()
                    w = self._workers[n] = _Worker(ctx)
                if w.index is None and queue:
                    i = queue.popleft()
                    item, seed = book.start(i)
                    try:
                        task = pickle.dumps((fn, item, seed, self.threads))
                    except Exception as exc:
                        raise TypeError(
                            f"worker processes need a picklable function and items (define "
                            f"the function at a module's top level): {_one_line(exc)}"
                        ) from exc
                    w.conn.send_bytes(task)
                    w.index = i
            busy = [w for w in self._workers if w.index is not None]
            ready = set(wait([w.conn for w in busy] + [w.process.sentinel for w in busy]))
            for n, w in enumerate(self._workers):
                if w.index is None or not ({w.conn, w.process.sentinel} & ready):
                    continue
                i, w.index = w.index, None
                outcome = w.outcome()
                if outcome is None:
                    outcome = (False, w.death())
                    w.stop()
                    self._workers[n] = _Worker(ctx)
                if book.finish(i, *outcome):
                    queue.appendleft(i)

    def close(self) -> None:
        _stop_all(self._workers)


def _import_ray() -> Any:
    try:
        import ray
    except ModuleNotFoundError as exc:
        if exc.name is not None and exc.name.split(".")[0] == "ray":
            raise BackendMissing("ray", RAY_INSTALL) from None
        raise BackendBroken("ray", RAY_INSTALL, _one_line(exc)) from None
    except Exception as exc:
        raise BackendBroken("ray", RAY_INSTALL, _one_line(exc)) from None
    return ray


class RayExecutor(Executor):
    """Trials as Ray tasks (one CPU each) on a private local instance or a joined cluster."""

    def __init__(
        self,
        address: str | None = None,
        *,
        num_cpus: int | None = None,
        threads: int = 1,
        progress: bool = True,
        echo: Callable[[str], None] = print,
    ) -> None:
        super().__init__(threads=threads, progress=progress, echo=echo)
        ray = self._ray = _import_ray()
        self._owns = False
        if not ray.is_initialized():
            if address is not None and num_cpus is not None:
                raise TamerError(
                    "ray: a cluster joined by address has its own CPUs; the number of CPUs is for a local instance only"
                )
            # "local" starts a new instance whatever RAY_ADDRESS says or is already running here.
            try:
                ray.init(
                    address="local" if address is None else address,
                    num_cpus=num_cpus,
                    include_dashboard=False,
                    log_to_driver=False,
                    logging_level=logging.ERROR,
                )
            except ConnectionError as exc:
                raise TamerError(f"ray: cannot join the cluster at '{address}': {_one_line(exc)}") from None
            self._owns = True
        # Retries are ours (once, reported), so Ray's own are off.
        self._remote = ray.remote(num_cpus=1, max_retries=0)(_run_trial)

    def _execute(self, fn: Callable[[Any, int], Any], book: _Book) -> None:
        ray = self._ray
        fn_ref = ray.put(fn)
        pending: dict[Any, int] = {}

        def submit(i: int) -> None:
            item, seed = book.start(i)
            pending[self._remote.remote(fn_ref, item, seed, self.threads)] = i

        try:
            for i in range(len(book.items)):
                submit(i)
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                for ref in done:
                    i = pending.pop(ref)
                    try:
                        outcome = ray.get(ref)
                    except ray.exceptions.WorkerCrashedError:
                        outcome = (False, "worker process died")
                    except ray.exceptions.RayError as exc:
                        outcome = (False, _one_line(exc))
                    if book.finish(i, *outcome):
                        submit(i)
        finally:
            for ref in pending:
                ray.cancel(ref, force=True)

    def close(self) -> None:
        if self._owns and self._ray.is_initialized():
            self._ray.shutdown()
        self._owns = False


def make_executor(
    name: str = "local",
    *,
    address: str | None = None,
    workers: int = 0,
    threads: int = 1,
    progress: bool = True,
    echo: Callable[[str], None] = print,
) -> Executor:
    """The executor the search options name (``--executor``, ``--address``, ``--workers``).

    ``workers``: local, the worker processes (0 = in this process); ray, the CPUs of the local instance
    it starts (0 = all); it cannot be set when joining a cluster by ``address``.
    """
    if name not in EXECUTORS:
        raise TamerError(f"unknown executor '{name}': choose one of {', '.join(EXECUTORS)}")
    if workers < 0:
        raise TamerError(f"workers must be >= 0, got {workers}")
    if name == "local":
        if address is not None:
            raise TamerError("an address is for the ray executor; the local executor runs on this machine")
        return LocalExecutor(workers, threads=threads, progress=progress, echo=echo)
    if address is not None and workers:
        raise TamerError(
            "workers sets the CPUs of a local Ray instance; a cluster joined by address has its own: leave workers at 0"
        )
    return RayExecutor(address, num_cpus=workers or None, threads=threads, progress=progress, echo=echo)
