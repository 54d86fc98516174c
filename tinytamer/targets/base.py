"""The Target protocol: compile a model for a backend, run it, measure what it costs.

A ``Target`` turns an ``nn.Module`` into a ``Deployed`` model (files on disk plus a
loaded runtime).  ``Deployed(*arrays)`` runs it on numpy arrays; ``Deployed.measure()``
returns a ``Cost`` holding only what the backend really measured.  Search methods ask
any target for cost this way, so none of them hard-codes hardware numbers.

This module imports only the standard library and numpy: the memory probe child
process (``tinytamer.targets._probe``) imports it, and a child that runs ONNX Runtime
must not pay for importing torch.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

from tinytamer.errors import BackendBroken, BackendMissing, TamerError
from tinytamer.scoring import top1_agreement

if TYPE_CHECKING:
    import torch
    from torch import nn

PRECISIONS = ("fp32", "fp16", "int8")


class ParityError(TamerError):
    """The deployed model's outputs disagree with PyTorch beyond the stated tolerance."""


@dataclass
class Cost:
    """What one target measured for one deployed model.

    Latency is wall-clock per call at ``batch`` over ``repeats`` timed runs after
    warm-up: the median and spread, and the minimum (the run least disturbed by other
    processes, the better estimate on a loaded machine).  ``peak_rss_mb`` is the peak
    resident memory of a fresh child process that imported the runtime, loaded the model
    and ran it (interpreter + runtime library + model + inference buffers);
    ``baseline_rss_mb`` is that child's peak
    before it loaded the model, so the difference is what the model itself added.
    The micro fields are filled by targets that count them (bare-metal C): ``est_cycles``
    is an estimate under ``memory_profile`` (tinytamer.micro.profiles) and ``est_time_ms``
    those cycles at the profile's clock, an estimate, never a timing.

    A timed Cost also says what made it: ``host`` (the CPU model, its vector and int8
    extensions, its core count: :func:`host_description`), ``cpus_pinned`` (the cores the
    timing process was pinned to; ``extra["thread_cpus"]``: those any of its threads could
    use after the timing, which a runtime that re-pins its workers widens),
    ``runtime_versions`` (torch and every runtime that process had loaded), the 1-minute
    load average before and after the timing, and ``loaded``: true when either exceeded
    ``threads``, so other work competed for the cores and the figure is not a clean one.
    ``statistic`` says how the latency figures were formed (one round, or several
    combined by :func:`combine_rounds`).
    """

    target: str
    precision: str
    batch: int
    threads: int
    latency_ms_median: float | None = None
    latency_ms_p10: float | None = None
    latency_ms_p90: float | None = None
    latency_ms_min: float | None = None
    repeats: int = 0
    peak_rss_mb: float | None = None
    baseline_rss_mb: float | None = None
    artifact_bytes: int | None = None
    instructions: int | None = None
    est_cycles: int | None = None
    memory_profile: str | None = None
    est_time_ms: float | None = None
    flash_bytes: int | None = None
    sram_bytes: int | None = None
    statistic: str | None = None
    rounds: int = 1
    round_medians_ms: list[float] = field(default_factory=list)
    host: dict[str, Any] = field(default_factory=dict)
    cpus_pinned: list[int] | None = None
    runtime_versions: dict[str, str] = field(default_factory=dict)
    load_avg_before: float | None = None
    load_avg_after: float | None = None
    loaded: bool | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


ONE_ROUND = "median of the timed runs after warm-up; spread: their 10th-90th percentiles"
ROUNDS = (
    "median over rounds of each round's median; spread: the widest 10th-90th percentiles "
    "of any round; each round's median in round_medians_ms"
)


def combine_rounds(costs: Sequence[Cost]) -> Cost:
    """Several rounds of one measurement as one Cost: the median of the rounds' medians.

    Round-robin rounds on a shared machine let load hit every model alike; the median
    of them is the figure, and the spread the widest any round saw.  The load figures
    span all rounds (``loaded`` if any round was).  A Cost with no latency (the micro
    targets' estimates, identical every round) is returned as it is.
    """
    if not costs:
        raise TamerError("combine_rounds: no rounds to combine")
    timed = [c for c in costs if c.latency_ms_median is not None]
    if not timed:
        return costs[0]
    first = timed[0]
    medians = [c.latency_ms_median for c in timed]
    out = Cost(**{**asdict(first), "extra": dict(first.extra)})
    out.latency_ms_median = float(statistics.median(medians))
    out.latency_ms_p10 = min(c.latency_ms_p10 for c in timed if c.latency_ms_p10 is not None)
    out.latency_ms_p90 = max(c.latency_ms_p90 for c in timed if c.latency_ms_p90 is not None)
    out.latency_ms_min = min(c.latency_ms_min for c in timed if c.latency_ms_min is not None)
    out.rounds, out.round_medians_ms, out.statistic = len(timed), medians, ROUNDS
    peaks = [c.peak_rss_mb for c in timed if c.peak_rss_mb is not None]
    out.peak_rss_mb = max(peaks) if peaks else None
    loads = [v for c in timed for v in (c.load_avg_before, c.load_avg_after) if v is not None]
    out.load_avg_before, out.load_avg_after = timed[0].load_avg_before, timed[-1].load_avg_after
    out.loaded = any(bool(c.loaded) for c in timed) if loads else None
    return out


# Extensions that decide which kernels a runtime can use: x86 vector widths and int8 dot
# products (VNNI) and matrix tiles (AMX); Arm's SIMD, int8 dot product and matmul.
ISA_FLAGS = (
    "avx2",
    "fma",
    "avx512f",
    "avx512_vnni",
    "avx_vnni",
    "avx512_bf16",
    "amx_tile",
    "amx_int8",
    "amx_bf16",
    "asimd",
    "asimddp",
    "i8mm",
    "sve",
)
# Arm's names in /proc/cpuinfo, as the extensions are usually called.
_ISA_NAMES = {"asimd": "neon", "asimddp": "dotprod"}


def parse_cpuinfo(text: str) -> tuple[str | None, set[str]]:
    """The CPU model and the feature flags in the text of /proc/cpuinfo (x86 or Arm)."""
    cpu, flags = None, set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key in ("model name", "Model", "cpu model") and cpu is None:
            cpu = value.strip() or None
        elif key in ("flags", "Features") and not flags:
            flags = set(value.split())
    return cpu, flags


@functools.cache
def host_description() -> dict[str, Any]:
    """The CPU this process runs on: model, the extensions of :data:`ISA_FLAGS` it has,
    core count, architecture.  From py-cpuinfo when it is installed, else /proc/cpuinfo."""
    import platform

    try:
        import cpuinfo  # py-cpuinfo: also reads macOS and Windows

        info = cpuinfo.get_cpu_info()
        cpu, flags = info.get("brand_raw"), set(info.get("flags", []))
    except ImportError:
        try:
            cpu, flags = parse_cpuinfo(Path("/proc/cpuinfo").read_text())
        except OSError:
            cpu, flags = None, set()
    return {
        "cpu": cpu or platform.processor() or platform.machine(),
        "arch": platform.machine(),
        "isa": [_ISA_NAMES.get(f, f) for f in ISA_FLAGS if f in flags],
        "cores": os.cpu_count(),
    }


# Distributions whose version is recorded when the timing process has imported them.
RUNTIME_MODULES = {
    "torch": "torch",
    "onnxruntime": "onnxruntime",
    "openvino": "openvino",
    "ncnn": "ncnn",
    "tvm": "apache-tvm",
    "ai_edge_litert": "ai-edge-litert",
    "numpy": "numpy",
}


def runtime_versions() -> dict[str, str]:
    """Versions of torch and the runtimes this process has imported (the ones that timed)."""
    from importlib import metadata

    out = {}
    for module, dist in RUNTIME_MODULES.items():
        if module in sys.modules:
            try:
                out[module] = metadata.version(dist)
            except metadata.PackageNotFoundError:
                out[module] = str(getattr(sys.modules[module], "__version__", "unknown"))
    return out


def load_average() -> float | None:
    """The 1-minute load average (None where the system has none)."""
    try:
        return float(os.getloadavg()[0])
    except (AttributeError, OSError):
        return None


def wait_for_quiet(threads: int, limit_s: float, say: Callable[[str], None] | None = None) -> float | None:
    """Wait, at most ``limit_s`` seconds, until the 1-minute load average is below
    ``threads``: it lags a minute behind, so right after a compile or a quantization on every
    core a timing would be marked loaded by the work that prepared it.  Returns the load
    average it ended at (None where the system has none); ``say`` hears of any wait."""
    load = load_average()
    if load is None or load < threads or limit_s <= 0:
        return load
    if say is not None:
        say(f"waiting up to {limit_s:.0f} s for the load average ({load:.2f}) to fall below {threads}")
    end = time.monotonic() + limit_s
    while load is not None and load >= threads and time.monotonic() < end:
        time.sleep(min(2.0, max(0.0, end - time.monotonic())))
        load = load_average()
    return load


def pin_cpus(threads: int) -> list[int] | None:
    """The cores a timing process with ``threads`` threads is pinned to: the first
    ``threads`` of those this process may use (all of them when it may use fewer)."""
    if not hasattr(os, "sched_getaffinity"):
        return None
    allowed = sorted(os.sched_getaffinity(0))
    return allowed[: max(1, threads)]


def latency_stats(times_s: Sequence[float]) -> dict[str, float]:
    """Median, 10th/90th percentiles and minimum, in ms, of per-call times in seconds."""
    ms = np.asarray(times_s, dtype=np.float64) * 1e3
    return {
        "latency_ms_median": float(statistics.median(ms.tolist())),
        "latency_ms_p10": float(np.percentile(ms, 10)),
        "latency_ms_p90": float(np.percentile(ms, 90)),
        "latency_ms_min": float(ms.min()),
    }


def time_calls(fn: Callable[[], Any], repeats: int, warmup: int) -> list[float]:
    """Run ``fn`` ``warmup`` times untimed, then return ``repeats`` per-call times (s)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def random_inputs(shapes: Sequence[Sequence[int]], dtypes: Sequence[str], seed: int = 0) -> list[np.ndarray]:
    """Seeded standard-normal inputs (latency does not depend on the values for these ops)."""
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(tuple(s)).astype(d) for s, d in zip(shapes, dtypes, strict=True)]


class Deployed(ABC):
    """A model compiled for one target: its files, a loaded runtime, and its parity check.

    Subclasses implement ``run`` and, when a fresh process can reload the model from
    its files, ``probe_spec`` (used to measure memory and latency in isolation).
    """

    def __init__(
        self,
        target: str,
        precision: str,
        artifacts: list[Path],
        input_shapes: list[tuple[int, ...]],
        input_dtypes: list[str],
        threads: int,
    ) -> None:
        self.target = target
        self.precision = precision
        self.artifacts = artifacts
        # Shapes of one sample (no batch dimension); the batch is chosen per call.
        self.input_shapes = input_shapes
        self.input_dtypes = input_dtypes
        self.threads = threads
        self.parity: dict[str, Any] = {}
        self.info: dict[str, Any] = {}

    @abstractmethod
    def run(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        """Run the deployed model in this process."""

    def probe_spec(self) -> dict[str, Any] | None:
        """``{"loader": "module:function", "args": {...}}`` for the child process, or None."""
        return None

    def __call__(self, *arrays: np.ndarray) -> list[np.ndarray]:
        return self.run([np.ascontiguousarray(a, dtype=d) for a, d in zip(arrays, self.input_dtypes, strict=True)])

    @property
    def artifact_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.artifacts if p.exists())

    def measure(
        self,
        batch: int = 1,
        threads: int | None = None,
        repeats: int = 30,
        warmup: int = 5,
        isolate: bool = True,
        timeout_s: float = 600.0,
    ) -> Cost:
        """Measure latency (and, isolated, peak memory) at ``batch`` and ``threads``.

        ``isolate=True`` runs a fresh child process that loads the artifact, so one
        backend's memory and thread pools do not pollute another's; when the model
        cannot be reloaded from files, or ``isolate=False``, latency is measured here
        and ``peak_rss_mb`` stays None.
        """
        threads = self.threads if threads is None else threads
        shapes = [(batch, *s) for s in self.input_shapes]
        cost = Cost(
            target=self.target,
            precision=self.precision,
            batch=batch,
            threads=threads,
            repeats=repeats,
            artifact_bytes=self.artifact_bytes,
        )
        spec = self.probe_spec() if isolate else None
        cost.host, cost.statistic = host_description(), ONE_ROUND
        cost.load_avg_before = load_average()
        if spec is not None:
            pinned = pin_cpus(threads)
            result = run_probe(
                spec, shapes, self.input_dtypes, threads, repeats, warmup, timeout_s=timeout_s, cpus=pinned
            )
            cost.peak_rss_mb = result["peak_rss_mb"]
            cost.baseline_rss_mb = result["baseline_rss_mb"]
            cost.extra["measured_in"] = "child process"
            cost.cpus_pinned, cost.runtime_versions = result.get("cpus_pinned"), result.get("versions", {})
            thread_cpus = cost.extra["thread_cpus"] = result.get("thread_cpus")
            if thread_cpus and cost.cpus_pinned and not set(thread_cpus) <= set(cost.cpus_pinned):
                warnings.warn(
                    f"{self.target} {self.precision}: the runtime let threads run on cores {thread_cpus}, "
                    f"beyond the cores {cost.cpus_pinned} the timing child was pinned to",
                    stacklevel=2,
                )
            cpus = result["cpus"]
            times = result["times_s"]
        else:
            inputs = random_inputs(shapes, self.input_dtypes)
            cpus = available_cpus()
            times = self._timed_here(inputs, threads, repeats, warmup)
            cost.extra["measured_in"] = "this process (peak memory not isolated, cores not pinned)"
            cost.runtime_versions = runtime_versions()
        cost.load_avg_after = load_average()
        loads = [v for v in (cost.load_avg_before, cost.load_avg_after) if v is not None]
        cost.loaded = max(loads) > threads if loads else None
        cost.extra["cpus_available"] = cpus
        if threads > cpus:
            # Still a true measurement, but not of ``threads`` cores: say so where it is read.
            warnings.warn(
                f"{self.target} {self.precision}: timed with {threads} threads but "
                f"this process may run on {cpus} CPU(s) only (its CPU affinity); "
                "the latency is that of the smaller machine",
                stacklevel=2,
            )
        for key, value in latency_stats(times).items():
            setattr(cost, key, value)
        return cost

    def _timed_here(self, inputs: list[np.ndarray], threads: int, repeats: int, warmup: int) -> list[float]:
        """Time in this process; targets whose thread count is per process override it."""
        return time_calls(lambda: self.run(inputs), repeats, warmup)


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask), not just how many the machine has."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def run_probe(
    spec: dict[str, Any],
    shapes: list[tuple[int, ...]],
    dtypes: list[str],
    threads: int,
    repeats: int,
    warmup: int,
    timeout_s: float = 600.0,
    cpus: Sequence[int] | None = None,
) -> dict[str, Any]:
    """Run ``python -m tinytamer.targets._probe`` on ``spec``; return its JSON result.

    ``cpus``: the cores the child pins itself to before it loads the runtime (its
    thread pool then starts on them and nothing else).
    """
    job = {
        **spec,
        "shapes": [list(s) for s in shapes],
        "dtypes": list(dtypes),
        "threads": threads,
        "repeats": repeats,
        "warmup": warmup,
        "cpus": None if cpus is None else [int(c) for c in cpus],
    }
    with tempfile.TemporaryDirectory(prefix="tamer-probe-") as tmp:
        job_file = Path(tmp) / "job.json"
        job_file.write_text(json.dumps(job))
        env = dict(os.environ)
        # The child must find this package even when it is not installed (tests, checkouts),
        # and whatever modules this process can import (a user's model classes).
        root = str(Path(__file__).resolve().parents[2])
        # The interpreter's own paths (stdlib, site-packages) come by themselves.
        own = (sys.prefix, sys.base_prefix, sys.exec_prefix)
        paths = [root, *(p for p in sys.path if p and Path(p).is_dir() and not p.startswith(own))]
        env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            env[var] = str(threads)
        try:
            proc = subprocess.run(
                [sys.executable, "-m", "tinytamer.targets._probe", str(job_file)],
                capture_output=True,
                text=True,
                env=env,
                timeout=timeout_s,
            )
        except subprocess.TimeoutExpired:
            # Seen with TVM on a saturated machine, before the child left without exit handlers.
            raise TamerError(
                f"measuring '{spec['loader']}' in a child process did not finish within {timeout_s:g} s "
                f"(pinned to cores {job['cpus']}); the child was stopped. Rerun on a less loaded machine, "
                "or measure in process (isolate=False)"
            ) from None
    if proc.returncode != 0:
        raise TamerError(
            f"measuring '{spec['loader']}' in a child process failed "
            f"(exit {proc.returncode}): {proc.stderr.strip()[-2000:]}"
        )
    return json.loads(proc.stdout.strip().splitlines()[-1])


# Parity tolerances.  Float: max |deployed - torch| relative to max |torch|.  Reduced
# precision: top-1 agreement on real inputs (for [N, classes] outputs) and the error
# stated; fp16 must also keep the relative error small.
TOLERANCES: dict[str, dict[str, float]] = {
    "fp32": {"max_rel_err": 1e-3},
    "fp16": {"max_rel_err": 5e-2, "min_top1_agree": 0.95},
    "int8": {"min_top1_agree": 0.9, "max_rel_err": 0.5},
}


def check_parity(
    reference: Sequence[np.ndarray],
    outputs: Sequence[np.ndarray],
    *,
    precision: str,
    where: str,
    tolerances: dict[str, float] | None = None,
    against: str = "PyTorch",
) -> dict[str, Any]:
    """Compare deployed outputs with PyTorch's; raise ParityError if beyond tolerance.

    Returns the measured numbers (kept in ``Deployed.parity`` and reports).
    """
    tol = dict(TOLERANCES[precision], **(tolerances or {}))
    if len(reference) != len(outputs):
        raise ParityError(
            f"{where}: the deployed model returns {len(outputs)} outputs, PyTorch returns {len(reference)}"
        )
    result: dict[str, Any] = {"precision": precision, "tolerance": tol, "outputs": []}
    failures = []
    for i, (ref, out) in enumerate(zip(reference, outputs, strict=True)):
        ref = np.asarray(ref, dtype=np.float64)
        out = np.asarray(out, dtype=np.float64)
        if ref.shape != out.shape:
            raise ParityError(f"{where}: output {i} has shape {out.shape}, PyTorch gives {ref.shape}")
        scale = max(float(np.abs(ref).max(initial=0.0)), 1e-12)
        abs_err = float(np.abs(out - ref).max(initial=0.0))
        rec: dict[str, Any] = {
            "max_abs_err": abs_err,
            "max_rel_err": abs_err / scale,
            "mean_abs_err": float(np.abs(out - ref).mean()) if ref.size else 0.0,
            "n": int(ref.shape[0]) if ref.ndim else 1,
        }
        if ref.ndim == 2 and ref.shape[1] > 1:
            rec["top1_agree"] = top1_agreement(ref, out)
        if not np.isfinite(out).all():
            failures.append(f"output {i} has non-finite values")
        if rec["max_rel_err"] > tol["max_rel_err"]:
            failures.append(
                f"output {i} max relative error {rec['max_rel_err']:.3g} "
                f"> {tol['max_rel_err']:.3g} (max abs error {abs_err:.3g})"
            )
        if "min_top1_agree" in tol and "top1_agree" in rec and rec["top1_agree"] < tol["min_top1_agree"]:
            failures.append(
                f"output {i} top-1 agreement {rec['top1_agree']:.3f} "
                f"< {tol['min_top1_agree']:.3f} over {rec['n']} inputs"
            )
        result["outputs"].append(rec)
    result["ok"] = not failures
    if failures:
        raise ParityError(
            f"{where}: parity with {against} failed: " + "; ".join(failures) + ". The artifact was not accepted."
        )
    return result


# ``quantize(model, input_batches, method) -> converted int8 graph``: how an int8-only target
# turns a float model into integers.  Such a target takes one (``quantize=``) instead of
# importing ``compress``: targets sit below compress, and the caller that knows both
# (``tinytamer.deploy``) supplies ``tinytamer.deploy.int8_quantizer``.  (Not typed with torch
# here: this module is imported by the measuring child, which must not import torch.)
Quantizer = Callable[..., Any]


@runtime_checkable
class Target(Protocol):
    """A deployment backend.  ``compile`` checks parity with PyTorch before returning.

    ``calib`` holds batches of real inputs (a Tensor, or a tuple of Tensors for a model
    with several inputs): int8 targets calibrate on them and every target checks parity
    on them.  ``qparams`` is a converted ``tinytamer.compress.int8`` model whose
    quantization parameters an int8 target uses instead of its own calibration.

    A target that takes more keywords declares them as ``Options``, a pydantic model
    (:class:`tinytamer.targets.options.TargetOptions`) whose fields name further keywords of
    ``compile`` with their defaults and meaning; ``deploy`` / ``bench`` validate a user's
    options against it (:func:`tinytamer.targets.options.validate_options`) and ``tamer list
    targets NAME`` prints it.  ``default_eval_limit`` (test samples scored through the
    runtime when the user does not say; None: all) is likewise optional.  Both are read with
    defaults (no options; None), so neither is a member here: a target without them is a
    Target.
    """

    name: str
    precisions: tuple[str, ...]
    install_hint: str

    def available(self) -> bool: ...

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
    ) -> Deployed: ...


@functools.cache
def import_failure(module: str) -> str | None:
    """Why importing ``module`` fails, in one line, or None when it imports (cached).

    A package can be installed and still not import (a missing shared library, a
    mismatched dependency); that must read as one line naming the backend, not a
    traceback from deep inside the first compile.
    """
    try:
        importlib.import_module(module)
    except Exception as exc:  # noqa: BLE001 - a broken install raises any type (OSError, ...)
        text = " ".join(str(exc).split())
        return f"{module}: {type(exc).__name__}: {text[:300]}"
    return None


@dataclass(frozen=True)
class Backend:
    """The Python modules an optional target needs, and the command that installs them."""

    target: str
    modules: tuple[str, ...]
    install: str

    def problem(self) -> TamerError | None:
        """BackendMissing if a module is not installed, BackendBroken if one fails to import."""
        for module in self.modules:
            try:
                found = importlib.util.find_spec(module) is not None
            except (ImportError, ValueError):  # a half-imported module left behind
                found = True  # importing it says what is wrong
            if not found:
                return BackendMissing(self.target, self.install)
        for module in self.modules:
            failure = import_failure(module)
            if failure is not None:
                return BackendBroken(self.target, self.install, failure)
        return None

    def require(self) -> None:
        problem = self.problem()
        if problem is not None:
            raise problem


_REGISTRY: dict[str, Target] = {}


def register_target(target: Target) -> Target:
    """Add a target to the registry (replacing one of the same name)."""
    _REGISTRY[target.name] = target
    return target


def _load_builtins() -> None:
    # Imported on first use so that ``import tinytamer.targets`` stays light.
    import importlib

    for module in ("pytorch", "onnxrt", "openvino", "ncnn", "tvm", "micro", "litert"):
        try:
            importlib.import_module(f"tinytamer.targets.{module}")
        except ModuleNotFoundError as exc:
            # The bare-metal target lives in its own module, which may not be present.
            if exc.name != f"tinytamer.targets.{module}":
                raise


def get_target(name: str) -> Target:
    """The registered target called ``name``; an unknown name lists the known ones."""
    _load_builtins()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise TamerError(f"unknown target '{name}'; known targets: {', '.join(sorted(_REGISTRY))}") from None


def unavailable_reason(target: Target) -> str | None:
    """Why ``target`` cannot run here, in one line, or None when it can."""
    if target.available():
        return None
    problem = getattr(target, "problem", None)  # optional: targets with a Backend have it
    found = problem() if callable(problem) else None
    return str(found) if found is not None else f"not installed: {target.install_hint}"


def list_targets(available_only: bool = False) -> list[str]:
    """Names of registered targets (only those whose backend is installed, if asked)."""
    _load_builtins()
    return sorted(n for n, t in _REGISTRY.items() if not available_only or t.available())
