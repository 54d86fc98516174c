"""Helpers shared by the benchmark scripts: where the data is, what machine ran, saving JSON.

Every result file holds one run and says what made it (:func:`machine`): the CPU model
and its vector / int8 extensions, core count, the threads and cores the run could use,
torch's and every installed runtime's version, and the load average when the script
started and when it saved.  A run whose load average exceeded the threads it timed with
was sharing its cores: it is saved with ``"clean": false`` and said to be no clean figure.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tinytamer.fileio import write_atomic

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
WORK = REPO / "benchmarks" / "work"
# When the benchmark started (this module is imported before any work): "load before".
LOAD_AT_START = os.getloadavg() if hasattr(os, "getloadavg") else None


def shared_data() -> Path:
    """The project's real datasets (``../shared/data`` beside the repo, or $TINYTAMER_DATA)."""
    root = Path(os.environ.get("TINYTAMER_DATA", REPO.parent / "shared" / "data"))
    if not root.is_dir():
        sys.exit(f"benchmark data folder not found: {root} (set TINYTAMER_DATA)")
    return root


def runtimes() -> dict[str, str | None]:
    """Versions of torch and of every runtime a target can use (None: not installed)."""
    from importlib import metadata

    from tinytamer.targets.base import RUNTIME_MODULES

    out: dict[str, str | None] = {}
    for module, dist in RUNTIME_MODULES.items():
        try:
            out[module] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[module] = None
    for dist in ("nncf", "pnnx", "onnxslim"):  # converters / quantizers that shape the artifacts
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    return out


def machine() -> dict[str, Any]:
    """Describe the machine a result was measured on and the state of the repository."""
    import torch

    from tinytamer.targets.base import host_description

    host = host_description()
    mem_gib = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem_gib = round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    git = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
    ).stdout.strip()
    # Any change but the benchmarks' own outputs (results/, RESULTS.md) makes the tree dirty.
    status = subprocess.run(["git", "status", "--porcelain"], cwd=REPO, capture_output=True, text=True).stdout
    changed = [
        ln[3:] for ln in status.splitlines() if not ln[3:].startswith(("benchmarks/results/", "benchmarks/RESULTS.md"))
    ]
    return {
        "cpu": host["cpu"],
        "arch": host["arch"],
        "isa": host["isa"],
        "cores": host["cores"],
        "cpus_available": sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "memory_gib": mem_gib,
        "os": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "runtimes": runtimes(),
        "git": git or None,
        "git_dirty": bool(changed) if git else None,
        "git_changed": changed[:20],
        "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
    }


def load_record(threads: int | list[int] | None) -> dict[str, Any]:
    """The load average (1, 5, 15 min) at the start and now, and whether the run was loaded:
    a 1-minute load above the (largest) thread count timed with means other work shared
    the cores."""
    after = os.getloadavg() if hasattr(os, "getloadavg") else None
    most = max(threads) if isinstance(threads, list) and threads else threads
    peak = max((x[0] for x in (LOAD_AT_START, after) if x is not None), default=None)
    loaded = None if peak is None or not isinstance(most, int) else peak > most
    return {
        "load_average_before": LOAD_AT_START,
        "load_average_after": after,
        "threads_timed": threads,
        "loaded": loaded,
        "clean": None if loaded is None else not loaded,
    }


def _command() -> str:
    """The command line, its script named relative to the repository (``python -m`` gives an absolute path)."""
    script = Path(sys.argv[0])
    if script.is_absolute() and script.resolve().is_relative_to(REPO):
        script = script.resolve().relative_to(REPO)
    return " ".join([str(script), *sys.argv[1:]])


def save(name: str, result: dict[str, Any], threads: int | list[int] | None = None, quick: bool = False) -> Path:
    """Write ``benchmarks/results/<name>.json`` atomically (one run: it replaces the file),
    with the machine and the load described.  ``threads``: what the run timed with (default:
    the result's ``threads``); a loaded run is saved marked and said to be no clean figure.
    ``quick``: a check that the script runs, written under ``benchmarks/work/quick`` instead."""
    folder = WORK / "quick" if quick else RESULTS
    folder.mkdir(parents=True, exist_ok=True)
    out = folder / f"{name}.json"
    load = load_record(threads if threads is not None else result.get("threads"))
    payload = {"benchmark": name, "machine": machine(), "command": _command(), **load, **result}
    write_atomic(out, json.dumps(payload, indent=2, default=float) + "\n")
    print(f"wrote {out.relative_to(REPO)}")
    if load["loaded"]:
        print(
            f"NOT a clean figure: the load average ({load['load_average_before']} at the start, "
            f"{load['load_average_after']} now) exceeded the {load['threads_timed']} thread(s) timed; "
            "saved with clean=false. Rerun on a quiet machine before reporting it.",
            file=sys.stderr,
        )
    return out


def time_round_robin(variants: dict[str, Any], x: Any, repeats: int, warmup: int) -> dict[str, dict[str, float]]:
    """Median, spread and minimum (ms) of each model's forward time on ``x``, timed round-robin.

    Round-robin (every variant once per round) so that load from other processes hits all
    variants alike; the ratios between them are the figures to report.
    """
    import statistics

    import torch

    times: dict[str, list[float]] = {k: [] for k in variants}
    with torch.inference_mode():
        for _ in range(warmup):
            for m in variants.values():
                m(x)
        for _ in range(repeats):
            for k, m in variants.items():
                start = time.perf_counter()
                m(x)
                times[k].append(time.perf_counter() - start)
    out = {}
    for k, v in times.items():
        s = sorted(v)
        out[k] = {
            "median_ms": 1e3 * statistics.median(s),
            "min_ms": 1e3 * s[0],
            "p10_ms": 1e3 * s[len(s) // 10],
            "p90_ms": 1e3 * s[(9 * len(s)) // 10],
        }
    return out
