"""Child process that loads one deployed model, times it and reports its peak memory.

Run as ``python -m tinytamer.targets._probe job.json``; prints one JSON line.  The job
names a loader ``"module:function"`` that takes ``(threads, **args)`` and returns a
callable ``run(list[np.ndarray]) -> list[np.ndarray]``.  Only that loader's imports are
paid for, so ONNX Runtime's numbers do not include torch.
"""

from __future__ import annotations

import importlib
import json
import os
import resource
import sys
from pathlib import Path

from tinytamer.fileio import read_json


def _peak_rss_mb() -> float:
    """Peak resident memory of this process, in MiB.

    VmHWM is per address space, so it starts afresh at exec; ``ru_maxrss`` would keep
    the parent's RSS, copied at fork, as a floor.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    # Not Linux: ru_maxrss (KiB on Linux, bytes on macOS), possibly inflated as above.
    scale = 1024.0 * 1024.0 if sys.platform == "darwin" else 1024.0
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / scale


def _thread_cpus() -> list[int] | None:
    """Every core any thread of this process may run on (runtimes may re-pin their workers)."""
    if not hasattr(os, "sched_getaffinity"):
        return None
    cores = set(os.sched_getaffinity(0))
    try:
        tids = [int(t) for t in os.listdir("/proc/self/task")]
    except OSError:
        return sorted(cores)
    for tid in tids:
        try:
            cores |= os.sched_getaffinity(tid)
        except OSError:  # the thread ended meanwhile
            continue
    return sorted(cores)


def main(job_file: str) -> None:
    job = read_json(job_file, "probe job")
    pinned = job.get("cpus")
    if pinned and hasattr(os, "sched_setaffinity"):
        # Before any runtime starts its threads: they inherit these cores and no others.
        os.sched_setaffinity(0, pinned)
    module_name, func_name = job["loader"].split(":")
    loader = getattr(importlib.import_module(module_name), func_name)
    from tinytamer.targets.base import available_cpus, random_inputs, runtime_versions, time_calls

    inputs = random_inputs(job["shapes"], job["dtypes"])
    cpus = available_cpus()  # before the backend loads: what this process was given
    baseline = _peak_rss_mb()
    run = loader(job["threads"], **job.get("args", {}))
    times = time_calls(lambda: run(inputs), job["repeats"], job["warmup"])
    result = {
        "times_s": times,
        "peak_rss_mb": _peak_rss_mb(),
        "baseline_rss_mb": baseline,
        "cpus": cpus,
        "cpus_pinned": sorted(pinned) if pinned and hasattr(os, "sched_getaffinity") else None,
        "thread_cpus": _thread_cpus(),
        "versions": runtime_versions(),
    }
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
    # Leave without running exit handlers: at exit TVM's thread-pool destructor joins a
    # worker that, on a loaded machine, can spin in sched_yield for ever (seen: the result
    # printed, then the child hung in ~ThreadGroup until its timeout).  Nothing is left to
    # clean up here; the parent owns the job's folder.
    os._exit(0)
