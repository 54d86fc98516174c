"""Helpers shared by the benchmark scripts: where the data is, what machine ran, saving JSON."""

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


def shared_data() -> Path:
    """The project's real datasets (``../shared/data`` beside the repo, or $TINYTAMER_DATA)."""
    root = Path(os.environ.get("TINYTAMER_DATA", REPO.parent / "shared" / "data"))
    if not root.is_dir():
        sys.exit(f"benchmark data folder not found: {root} (set TINYTAMER_DATA)")
    return root


def machine() -> dict[str, Any]:
    """Describe the machine a result was measured on."""
    import torch

    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
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
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": mem_gib,
        "os": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "git": git or None,
        "git_dirty": bool(changed) if git else None,
        "git_changed": changed[:20],
        "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
    }


def save(name: str, result: dict[str, Any]) -> Path:
    """Write ``benchmarks/results/<name>.json`` atomically, with the machine described."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"{name}.json"
    payload = {"benchmark": name, "machine": machine(), "command": " ".join(sys.argv), **result}
    write_atomic(out, json.dumps(payload, indent=2, default=float) + "\n")
    print(f"wrote {out.relative_to(REPO)}")
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
