"""The ``tvm`` target: Apache TVM (Relax), compiled for the host CPU and tuned with MetaSchedule.

The model is captured with ``torch.export`` at a static batch size, imported with
Relax's ``from_exported_program``, its BatchNorms decomposed into the arithmetic
inference needs (``DecomposeOpsForInference``), and compiled for an LLVM target
describing this CPU (``-mcpu`` as LLVM detects it, ``num-cores`` = threads).  The
weights are bound as constants, so the artifact is one self-contained shared library
per batch size (``model.b<N>.so``) that the Relax VM loads and runs, here or in the
measuring child process.

Untuned, TVM schedules every fused operator with its default (naive) loops, which is
many times slower than PyTorch; its rows are therefore labelled "untuned" and never
reported as TVM's speed.  Tuning is MetaSchedule (Shao et al., "Tensor Program
Optimization with Probabilistic Programs", NeurIPS 2022): per extracted task (one fused
operator at one shape), ``trials`` candidate schedules drawn by evolutionary search
guided by an XGBoost cost model, each built and timed on this machine.  The best
records go to a JSON database on disk (one per LLVM target, under
``$TINYTAMER_CACHE/tvm`` or ``~/.cache/tinytamer/tvm``); a later compile of any model
whose tasks are already in the database reuses them instead of tuning again, so the
second compile of a model takes seconds.

Pitfalls of ``apache-tvm`` 0.27 worked around here: ``apache-tvm-ffi`` 0.1.15 crashes
MetaSchedule (pinned to 0.1.14.post1 by the ``tvm`` extra); targets are given as dicts;
and ``tvm.s_tir.tensor_intrin``, imported by MetaSchedule's builder workers and tuning
contexts, parses thousands of lines of TVMScript (about a minute per process) to
register tensor intrinsics that fp32 schedules on an x86 CPU without AVX-512 never use,
so the builder uses its own build function and tuning skips that import there.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import platform
import re
import sys
import time
import types
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tinytamer.errors import CorruptFileError, TamerError
from tinytamer.fileio import atomic_path, read_json, write_atomic
from tinytamer.targets.base import Backend, Cost, Deployed, register_target, time_calls

if TYPE_CHECKING:
    import torch
    from torch import nn

    from tinytamer.targets.options import TvmOptions

INSTALL = "pip install 'tinytamer[tvm]'"
BACKEND = Backend("tvm", ("tvm", "tvm_ffi"), INSTALL)
# Candidate schedules measured per tuning task; 0 compiles untuned.  32 per task tunes a
# CIFAR ResNet-8 (12 tasks) in about 12 minutes on a busy 2-core machine.
DEFAULT_TRIALS = 32


def cache_root() -> Path:
    """Where tuning databases live: ``$TINYTAMER_CACHE/tvm`` or ``~/.cache/tinytamer/tvm``."""
    root = os.environ.get("TINYTAMER_CACHE") or Path.home() / ".cache" / "tinytamer"
    return Path(root) / "tvm"


def host_target(threads: int) -> dict[str, Any]:
    """The LLVM target for this CPU as a dict (the form TVM 0.27 accepts), ``threads`` cores."""
    from tvm.target import codegen

    target: dict[str, Any] = {"kind": "llvm", "num-cores": int(threads)}
    cpu = codegen.llvm_get_system_cpu()
    # LLVM answers "generic" when it does not know the CPU; -mcpu=generic adds nothing.
    if cpu and cpu != "generic":
        target["mcpu"] = cpu
    return target


def target_key(target: dict[str, Any]) -> str:
    """A folder name for one target's tuning database, e.g. ``llvm-znver3-2cores``."""
    key = f"{target['kind']}-{target.get('mcpu', 'generic')}-{target['num-cores']}cores"
    return re.sub(r"[^A-Za-z0-9_.-]", "_", key)


def set_threads(threads: int, pin: bool = False) -> None:
    """Size TVM's (process-wide) worker pool to ``threads`` workers.

    TVM pins its workers, the calling thread included, to one core each.  Processes
    started later from a pinned thread inherit its single core: measured, every child
    that timed a model after a TVM compile in this process ran on one core.  So the
    calling thread's affinity is given back unless ``pin`` (the measuring child, which
    runs TVM as it ships).  TVM picks its workers' cores from all the machine's cores,
    not from the process's affinity mask: measured, a child pinned to core 1 had its
    one worker moved to core 0.  So a child pinned to fewer cores than the machine has
    turns that binding off, and its workers stay on (and share) the cores it was given.
    """
    import tvm

    if pin and hasattr(os, "sched_getaffinity") and len(os.sched_getaffinity(0)) < (os.cpu_count() or 0):
        os.environ["TVM_BIND_THREADS"] = "0"
    with contextlib.nullcontext() if pin else keeping_cpus():
        tvm.get_global_func("runtime.config_threadpool")(0, int(threads))


@contextlib.contextmanager
def keeping_cpus() -> Iterator[None]:
    """Give the calling thread back the CPUs it had, whatever TVM pinned it to meanwhile."""
    keep = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    try:
        yield
    finally:
        if keep is not None:
            os.sched_setaffinity(0, keep)


def load_runtime(threads: int, path: str, pin: bool = False) -> Callable[[list[np.ndarray]], list[np.ndarray]]:
    """Load a compiled library into a Relax VM; return ``run(arrays) -> arrays``.

    Used by the measuring child process (``tinytamer.targets._probe``, ``pin=True``) and
    by this one.
    """
    import tvm
    from tvm import relax

    set_threads(threads, pin=pin)
    vm = relax.VirtualMachine(tvm.runtime.load_module(path), tvm.cpu())
    main = vm["main"]

    def run(arrays: list[np.ndarray]) -> list[np.ndarray]:
        out = main(*[tvm.runtime.tensor(a) for a in arrays])
        # One output comes back as a tensor, several as an array of tensors.
        return [out.numpy()] if hasattr(out, "numpy") else [o.numpy() for o in out]

    return run


def build_in_worker(mod: Any, target: Any, _params: Any) -> Any:
    """MetaSchedule's default build without ``import tvm.s_tir.tensor_intrin``.

    Runs in each builder worker process.  The default imports the tensor intrinsics
    first, which takes about a minute per fresh worker and makes every build time out;
    fp32 CPU candidates contain no tensorized blocks, so nothing needs them.
    """
    from tvm.driver import build as tvm_build
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

    mod = RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod)
    return tvm_build(mod, target=target)


def _needs_tensor_intrin(target: dict[str, Any]) -> bool:
    """Whether MetaSchedule's rules for this target tensorize (and so need the intrinsics).

    On x86 they do with AVX-512 (VNNI / AMX rules) and on ARM with dot-product rules.
    """
    from tvm.target import Target, codegen

    if platform.machine().lower() not in ("x86_64", "amd64"):
        return True
    return bool(codegen.llvm_cpu_has_features(["avx512f"], Target(target)))


@contextlib.contextmanager
def _without_tensor_intrin(target: dict[str, Any]) -> Iterator[None]:
    """Let ``import tvm.s_tir.tensor_intrin`` return an empty package while tuning.

    ``TuneContext`` imports it on construction (once per process, about a minute); for
    targets whose rules never tensorize nothing from it is used.  The real package stays
    importable afterwards: the placeholder is removed on exit.
    """
    name = "tvm.s_tir.tensor_intrin"
    if name in sys.modules or _needs_tensor_intrin(target):
        yield
        return
    import tvm.s_tir

    stub = types.ModuleType(name)
    stub.__path__ = [str(Path(tvm.s_tir.__file__).parent / "tensor_intrin")]
    sys.modules[name] = stub
    try:
        yield
    finally:
        if sys.modules.get(name) is stub:
            del sys.modules[name]
        if getattr(tvm.s_tir, "tensor_intrin", None) is stub:
            delattr(tvm.s_tir, "tensor_intrin")


def _progress_callback(total_tasks: int, names: list[str], echo: Callable[[str], None]) -> Any:
    """A MetaSchedule measure callback that prints one line per measured batch of candidates."""
    from tvm.ir.utils import derived_object
    from tvm.s_tir.meta_schedule.measure_callback import PyMeasureCallback

    start = time.perf_counter()
    best: dict[int, float] = {}
    measured: dict[int, int] = {}

    @derived_object
    class _Progress(PyMeasureCallback):
        def apply(
            self, task_scheduler: Any, task_id: int, measure_candidates: Any, builder_results: Any, runner_results: Any
        ) -> None:
            if not runner_results:  # a task whose whole space is measured is offered again
                return
            secs = [
                float(np.mean([float(s) for s in r.run_secs]))
                for r in runner_results
                if r.error_msg is None and r.run_secs
            ]
            measured[task_id] = measured.get(task_id, 0) + len(runner_results)
            if secs:
                best[task_id] = min(best.get(task_id, math.inf), min(secs))
            shown = f"{1e6 * best[task_id]:.1f} us" if task_id in best else "no valid candidate"
            echo(
                f"tvm tuning: task {task_id + 1}/{total_tasks} {names[task_id]}: "
                f"{measured[task_id]} trials, best {shown} "
                f"({time.perf_counter() - start:.0f} s)"
            )

    return _Progress()


def _echo_builder(inner: Any, total_tasks: int, echo: Callable[[str], None]) -> Any:
    """Wrap a MetaSchedule builder to print a line per batch of candidates it builds.

    Measured results reach measure callbacks only when the task scheduler joins a task,
    which for the first round is after every task was sent; this line shows progress
    while that round runs (MetaSchedule visits tasks in order in its first round).
    """
    from tvm.ir.utils import derived_object
    from tvm.s_tir.meta_schedule.builder import PyBuilder

    start = time.perf_counter()
    batches = [0]

    @derived_object
    class _EchoBuilder(PyBuilder):
        def build(self, build_inputs: Any) -> Any:
            results = inner.build(build_inputs)
            if not results:  # a task whose whole space is measured is offered again
                return results
            batches[0] += 1
            ok = sum(r.error_msg is None for r in results)
            where = f"task {batches[0]}/{total_tasks}" if batches[0] <= total_tasks else f"round {batches[0]}"
            echo(
                f"tvm tuning: {where}: built {ok}/{len(results)} candidates, timing them "
                f"({time.perf_counter() - start:.0f} s)"
            )
            return results

    return _EchoBuilder()


def _database(folder: Path) -> Any:
    from tvm.s_tir import meta_schedule as ms

    folder.mkdir(parents=True, exist_ok=True)
    return ms.database.JSONDatabase(
        path_workload=str(folder / "database_workload.json"),
        path_tuning_record=str(folder / "database_tuning_record.json"),
        allow_missing=True,
    )


def _records(db: Any, mod: Any) -> int:
    """How many measured candidates ``db`` holds for one task."""
    if not db.has_workload(mod):
        return 0
    return len(db.get_top_k(db.commit_workload(mod), 1 << 20))


BUDGETS = "budgets.json"  # per task (structural hash): the trials it has been tuned with


def _budgets(database: Path) -> dict[str, int]:
    path = database / BUDGETS
    if not path.is_file():
        return {}
    try:
        return {str(k): int(v) for k, v in read_json(path, "tvm tuning budgets").items()}
    except (CorruptFileError, ValueError, AttributeError, TypeError) as exc:
        raise TamerError(
            f"tvm tuning database {database}: {BUDGETS} is not a JSON object of "
            f"trial counts ({exc}); delete it to count budgets from the records"
        ) from exc


def tune(
    mod: Any,
    target: dict[str, Any],
    database: Path,
    trials: int,
    logs: Path,
    *,
    seed: int = 0,
    echo: Callable[[str], None] | None = None,
) -> tuple[Any, dict[str, Any]]:
    """Tune the tasks of a Relax module up to ``trials`` each; return the database and what was done.

    The database remembers each task's (fused operator at one shape) budget so far, for any
    model that had it.  A task tuned with at least ``trials`` is reused as it is; one tuned
    with fewer gets the difference, searched from its best records so far; a new task gets
    ``trials``.  A task recorded without a budget (older databases) counts its records.
    MetaSchedule's gradient task scheduler first gives every task one round, so with
    ``trials`` per round every task is tuned once.
    """
    import tvm_ffi
    from tvm.s_tir import meta_schedule as ms
    from tvm.target import Target

    tvm_target = Target(target)
    db = _database(database)
    budgets = _budgets(database)
    tasks = ms.relax_integration.extract_tasks(mod, tvm_target)
    keys = [str(tvm_ffi.structural_hash(t.dispatched[0])) for t in tasks]
    have = [budgets.get(k, _records(db, t.dispatched[0])) for k, t in zip(keys, tasks, strict=True)]
    todo = [i for i, h in enumerate(have) if h < trials]
    info: dict[str, Any] = {
        "tasks": len(tasks),
        "tasks_from_database": len(tasks) - len(todo),
        "tasks_tuned_now": len(todo),
        "tasks_tuned_further": sum(1 for i in todo if have[i] > 0),
        "trials_per_task": trials,
        "trials_measured_now": 0,
        "database": str(database),
    }
    t0 = time.perf_counter()
    before = {i: _records(db, tasks[i].dispatched[0]) for i in todo}
    if todo:
        if echo:
            echo(
                f"tvm tuning: {len(todo)} of {len(tasks)} tasks up to {trials} trials each "
                f"({len(tasks) - len(todo)} reused from {database})"
            )
        # Tasks short by the same number of trials are tuned together.
        groups: dict[int, list[int]] = {}
        for i in todo:
            groups.setdefault(trials - have[i], []).append(i)
        for more, ids in sorted(groups.items()):
            _tune_tasks([tasks[i] for i in ids], target, db, more, logs, seed, echo)
            for i in ids:
                budgets[keys[i]] = trials
            write_atomic(database / BUDGETS, json.dumps(budgets, indent=1, sort_keys=True))
        info["trials_measured_now"] = sum(_records(db, tasks[i].dispatched[0]) - before[i] for i in todo)
    info["tuning_s"] = round(time.perf_counter() - t0, 2)
    missing = [t.task_name for t in tasks if not _records(db, t.dispatched[0])]
    # A task whose every candidate failed keeps TVM's default schedule: say so.
    info["tasks_untuned"] = missing
    info["tuned"] = not missing
    return db, info


def tuned_in_database(
    model: nn.Module,
    example_inputs: Sequence[torch.Tensor],
    batches: Sequence[int],
    threads: int,
    trials: int = DEFAULT_TRIALS,
    database: str | Path | None = None,
) -> bool:
    """Whether the tuning database holds every task of ``model`` at each of ``batches``
    tuned with at least ``trials``: a compile with ``trials`` then tunes nothing."""
    import tvm_ffi
    from tvm.s_tir import meta_schedule as ms
    from tvm.target import Target

    BACKEND.require()
    target = host_target(threads)
    folder = Path(database) if database is not None else cache_root() / target_key(target)
    if not (folder / "database_tuning_record.json").is_file():
        return False
    db, budgets = _database(folder), _budgets(folder)
    shapes = [tuple(x.shape[1:]) for x in example_inputs]
    dtypes = [str(x.detach().numpy().dtype) for x in example_inputs]
    for batch in batches:
        for task in ms.relax_integration.extract_tasks(relax_module(model, batch, shapes, dtypes), Target(target)):
            key = str(tvm_ffi.structural_hash(task.dispatched[0]))
            if budgets.get(key, _records(db, task.dispatched[0])) < trials:
                return False
    return True


def _tune_tasks(
    tasks: list[Any],
    target: dict[str, Any],
    db: Any,
    trials: int,
    logs: Path,
    seed: int,
    echo: Callable[[str], None] | None,
) -> None:
    """``trials`` more measured candidates for each of ``tasks``, recorded in ``db``."""
    from tvm.s_tir import meta_schedule as ms

    per_iter = min(trials, 32)
    strategy = ms.search_strategy.EvolutionarySearch(population_size=256, init_min_unmeasured=min(50, trials))
    with _without_tensor_intrin(target), _quiet_meta_schedule_console():
        contexts, weights = ms.relax_integration.extracted_tasks_to_tune_contexts(
            tasks,
            work_dir=str(logs),
            space="post-order-apply",
            strategy=strategy,
            num_threads=int(target["num-cores"]),
            seed=seed,
        )
        callbacks = [*ms.measure_callback.MeasureCallback.create("default")]
        builder = ms.builder.LocalBuilder(f_build=build_in_worker, timeout_sec=120.0)
        if echo:
            callbacks.append(_progress_callback(len(contexts), [c.task_name for c in contexts], echo))
            builder = _echo_builder(builder, len(contexts), echo)
        ms.tune.tune_tasks(
            tasks=contexts,
            task_weights=weights,
            work_dir=str(logs),
            max_trials_global=trials * len(contexts),
            max_trials_per_task=trials,
            num_trials_per_iter=per_iter,
            builder=builder,
            runner=ms.runner.LocalRunner(timeout_sec=60.0),
            database=db,
            cost_model="xgb",
            measure_callbacks=callbacks,
            task_scheduler="gradient",
        )


@contextlib.contextmanager
def _quiet_meta_schedule_console() -> Iterator[None]:
    import logging

    logger = logging.getLogger("tvm.s_tir.meta_schedule")
    old = logger.level
    # MetaSchedule prints its task tables and XGBoost iterations to stdout at the
    # logger's level; keep WARNING there (the full log still goes to the log folder).
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(old)


def relax_module(
    model: nn.Module, batch: int, input_shapes: Sequence[tuple[int, ...]], input_dtypes: Sequence[str]
) -> Any:
    """``torch.export`` at a static ``batch``, import into Relax, fuse into TIR functions."""
    import torch
    import tvm
    from tvm import relax
    from tvm.relax.frontend.torch import from_exported_program

    from tinytamer.export.onnx import capture

    examples = [
        torch.zeros((batch, *s), dtype=getattr(torch, d)) for s, d in zip(input_shapes, input_dtypes, strict=True)
    ]
    ep, _ = capture(model, examples, dynamic_batch=False)
    try:
        with warnings.catch_warnings():
            # The importer calls a pytree API that torch 2.13 deprecates; nothing to act on.
            warnings.simplefilter("ignore", FutureWarning)
            mod = from_exported_program(ep)
    except Exception as exc:  # noqa: BLE001 - the frontend's message names the op
        raise TamerError(
            f"target 'tvm': the Relax importer cannot convert the exported model: "
            f"{type(exc).__name__}: {str(exc).strip()[:500]}. Targets that can "
            "still run it: onnxruntime, ncnn, torch"
        ) from exc
    return tvm.transform.Sequential(
        [
            # BatchNorm -> (x - mean) / std * gamma + beta, which fuses into the conv before it;
            # folding the literal (y, mean, var) tuple it returns lets the ReLU after it fuse too.
            relax.transform.DecomposeOpsForInference(),
            relax.transform.CanonicalizeBindings(),
            relax.transform.DeadCodeElimination(),
            # Legalize to TIR and fuse: the fused functions are MetaSchedule's tuning tasks.
            relax.get_pipeline("zero"),
        ]
    )(mod)


def _export(executable: Any, path: Path) -> Path:
    # export_library links a shared library for any name but *.tar / *.wasm, so the
    # temporary name (no .so) makes the same file.
    with atomic_path(path) as tmp:
        try:
            executable.export_library(str(tmp))
        except Exception as exc:  # noqa: BLE001 - linking needs a host C++ compiler
            raise TamerError(
                f"target 'tvm': linking {path.name} failed (TVM links the compiled "
                f"model with the system C++ compiler, g++): "
                f"{str(exc).strip()[-500:]}"
            ) from exc
    return path


class TvmDeployed(Deployed):
    """One shared library per batch size; other batch sizes run in chunks of the first.

    ``measure(batch=N)`` compiles (and, with a trial budget, tunes) a library for batch
    N first when there is none, so latency is always that of a model built for N.
    """

    def __init__(self, build: Callable[[int], tuple[Path, dict[str, Any]]], batch: int, **kw: Any) -> None:
        super().__init__(artifacts=[], **kw)
        self._build = build
        self.libs: dict[int, Path] = {}
        self.tuning: dict[int, dict[str, Any]] = {}
        self._runs: dict[int, Callable[[list[np.ndarray]], list[np.ndarray]]] = {}
        self._measure_batch = batch
        self.base_batch = batch
        self.ensure_batch(batch)

    def ensure_batch(self, batch: int) -> Path:
        """The library for ``batch``, compiled (and tuned) on first use."""
        if batch not in self.libs:
            path, info = self._build(batch)
            self.libs[batch] = path
            self.tuning[batch] = info
            self.artifacts.append(path)
            self._runs[batch] = load_runtime(self.threads, str(path))
            self.info.setdefault("batches", {})[str(batch)] = info
        return self.libs[batch]

    def run(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        n = arrays[0].shape[0]
        if n in self._runs:
            return self._runs[n](arrays)
        b = self.base_batch
        parts: list[list[np.ndarray]] = []
        for i in range(0, n, b):
            chunk = [a[i : i + b] for a in arrays]
            short = b - chunk[0].shape[0]
            if short:  # the last chunk, padded to the compiled batch size
                chunk = [np.concatenate([c, np.zeros((short, *c.shape[1:]), c.dtype)]) for c in chunk]
            parts.append([o[: b - short] for o in self._runs[b](chunk)])
        return [np.concatenate(cols) for cols in zip(*parts, strict=True)]

    def probe_spec(self) -> dict[str, Any]:
        return {
            "loader": "tinytamer.targets.tvm:load_runtime",
            "args": {"path": str(self.libs[self._measure_batch]), "pin": True},
        }

    def measure(
        self,
        batch: int = 1,
        threads: int | None = None,
        repeats: int = 30,
        warmup: int = 5,
        isolate: bool = True,
        timeout_s: float = 600.0,
    ) -> Cost:
        """Latency and memory of the library built for ``batch``, with how it was tuned."""
        path = self.ensure_batch(batch)
        self._measure_batch = batch
        cost = super().measure(
            batch=batch, threads=threads, repeats=repeats, warmup=warmup, isolate=isolate, timeout_s=timeout_s
        )
        cost.artifact_bytes = path.stat().st_size
        cost.extra.update(self.tuning[batch])
        return cost

    def _timed_here(self, inputs: list[np.ndarray], threads: int, repeats: int, warmup: int) -> list[float]:
        run = self._runs[inputs[0].shape[0]]
        set_threads(threads)
        try:
            return time_calls(lambda: run(inputs), repeats, warmup)
        finally:
            set_threads(self.threads)


class TvmTarget:
    name = "tvm"
    precisions = ("fp32",)
    install_hint = INSTALL

    def available(self) -> bool:
        return BACKEND.problem() is None

    def problem(self) -> TamerError | None:
        return BACKEND.problem()

    @property
    def Options(self) -> type[TvmOptions]:
        # Imported here: the memory probe child imports this module and must not pay for pydantic.
        from tinytamer.targets.options import TvmOptions

        return TvmOptions

    def compile(
        self,
        model: nn.Module,
        example_inputs: Sequence[torch.Tensor],
        workdir: str | Path,
        *,
        precision: str = "fp32",
        calib: Sequence[Any] | None = None,
        qparams: Any = None,
        threads: int = 2,
        trials: int = DEFAULT_TRIALS,
        database: str | Path | None = None,
        seed: int = 0,
        progress: bool = True,
    ) -> TvmDeployed:
        """Compile for this CPU; tune each task ``trials`` times (0: untuned).

        ``database``: the tuning database folder (default: one per LLVM target under
        :func:`cache_root`).  ``progress`` prints one line per measured batch of candidates.
        """
        from tinytamer.targets._torchutil import parity_inputs, verify

        BACKEND.require()
        if precision not in self.precisions:
            raise TamerError(
                f"target 'tvm' does not support precision '{precision}' (supported: {', '.join(self.precisions)})"
            )
        if qparams is not None:
            raise TamerError(
                "target 'tvm' compiles float models only; int8 parameters (qparams) deploy on target 'onnxruntime'"
            )
        if isinstance(trials, bool) or not isinstance(trials, int) or trials < 0:
            raise TamerError(f"target 'tvm': trials must be a whole number >= 0 (0 = untuned), got {trials!r}")
        # Absolute: the libraries are loaded by path here and in the timing child.
        workdir = Path(workdir).resolve()
        workdir.mkdir(parents=True, exist_ok=True)
        model = copy.deepcopy(model).eval()
        target = host_target(threads)
        db_dir = (Path(database) if database is not None else cache_root() / target_key(target)).resolve()
        input_shapes = [tuple(x.shape[1:]) for x in example_inputs]
        input_dtypes = [str(x.detach().numpy().dtype) for x in example_inputs]
        echo = _echo if progress else None

        def build(batch: int) -> tuple[Path, dict[str, Any]]:
            # Tuning and compiling may run TVM code here (constant folding, cost model).
            with keeping_cpus():
                return _build_library(
                    model, batch, input_shapes, input_dtypes, target, trials, db_dir, workdir, seed, echo
                )

        deployed = TvmDeployed(
            build,
            int(example_inputs[0].shape[0]),
            target=self.name,
            precision=precision,
            input_shapes=input_shapes,
            input_dtypes=input_dtypes,
            threads=threads,
        )
        deployed.info["llvm_target"] = target
        verify(
            deployed,
            model,
            parity_inputs(example_inputs, calib),
            f"target 'tvm' ({precision}, {deployed.libs[deployed.base_batch].name})",
        )
        return deployed


def _echo(line: str) -> None:
    from rich.console import Console

    Console(stderr=True, highlight=False, soft_wrap=True).print(line)


def _compile_with_database(mod: Any, target: dict[str, Any], db: Any) -> tuple[Any, int]:
    """Put the database's best schedules into the fused functions, then compile the rest as usual.

    Returns the executable and how many functions got a tuned schedule.  Not
    ``relax_integration.compile_relax``: on a module that is already fused, as here, its
    own re-fusion leaves the tuned schedules unused (measured: ResNet-8 ran at its untuned
    speed).
    """
    import tvm
    from tvm.relax.transform import MetaScheduleApplyDatabase

    tvm_target = tvm.target.Target(target)
    with tvm_target, db, tvm.transform.PassContext(opt_level=3):
        mod = MetaScheduleApplyDatabase()(mod)
    # How many fused functions really got a tuned schedule (reported, and tested).
    applied = sum(
        1
        for f in mod.functions.values()
        if isinstance(f, tvm.tirx.PrimFunc) and f.attrs is not None and bool(f.attrs.get("tirx.is_scheduled", False))
    )
    return tvm.compile(mod, target=tvm_target), applied


def _build_library(
    model: nn.Module,
    batch: int,
    input_shapes: Sequence[tuple[int, ...]],
    input_dtypes: Sequence[str],
    target: dict[str, Any],
    trials: int,
    db_dir: Path,
    workdir: Path,
    seed: int,
    echo: Callable[[str], None] | None,
) -> tuple[Path, dict[str, Any]]:
    """Compile ``model`` at ``batch`` (tuned when ``trials`` > 0) to ``model.b<batch>.so``."""
    import tvm

    t0 = time.perf_counter()
    mod = relax_module(model, batch, input_shapes, input_dtypes)
    path = workdir / f"model.b{batch}.so"
    if trials == 0:
        info: dict[str, Any] = {"tuned": False, "trials_per_task": 0, "tuning_s": 0.0, "variant": "untuned"}
        executable = tvm.compile(mod, target=tvm.target.Target(target))
    else:
        db, info = tune(mod, target, db_dir, trials, workdir / "tuning-logs" / f"b{batch}", seed=seed, echo=echo)
        info["variant"] = (
            f"tuned, {trials} trials/task"
            if info["tuned"]
            else f"partly tuned ({len(info['tasks_untuned'])} tasks untuned)"
        )
        executable, info["functions_scheduled_from_database"] = _compile_with_database(mod, target, db)
    _export(executable, path)
    info["compile_s"] = round(time.perf_counter() - t0, 2)
    return path, info


register_target(TvmTarget())
