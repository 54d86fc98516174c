"""TVM (MetaSchedule-tuned) against PyTorch fp32 eager and ONNX Runtime fp32, CIFAR-sized models.

    python benchmarks/targets_tvm.py --phase tune     # fill the tuning database (CPU-heavy)
    python benchmarks/targets_tvm.py --phase time     # reuse it; time every runtime
    python benchmarks/targets_tvm.py --models resnet8 --trials 16

Tuning: for each model and batch size, every MetaSchedule task (fused operator at one
shape) gets ``--trials`` measured candidates (evolutionary search, XGBoost cost model),
recorded in a JSON database (``benchmarks/work/tvm-db`` unless ``--database``); the
tuning time per model and batch is saved.  Timing: the same model is deployed to
PyTorch fp32 eager, ONNX Runtime fp32, TVM tuned (compiled from the database, no new
trials) and TVM untuned (TVM's default schedules, labelled as such); each compile
checks parity with PyTorch on real CIFAR-10 test images.  Each deployed model is timed
in its own fresh child process at each batch size with ``--threads`` threads: the
median of ``--repeats`` runs after warm-up; every model is measured ``--rounds`` times
round-robin, so load from other processes hits all runtimes alike, and the median of the
rounds' medians is reported with the spread (``tinytamer.targets.base.combine_rounds``).
The result file holds this run only, with the machine that made it.  Ratios are
PyTorch's latency over each runtime's, measured in the same run.  Weights are untrained
(latency does not depend on their values); BatchNorm statistics are set on real images first.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from benchmarks._common import WORK, save  # noqa: E402
from benchmarks.targets_bench import cifar, set_bn_stats  # noqa: E402
from tinytamer.calib import Calibration  # noqa: E402
from tinytamer.data import make_loader  # noqa: E402
from tinytamer.deploy import write_json  # noqa: E402
from tinytamer.targets import Cost, get_target  # noqa: E402
from tinytamer.targets.base import ROUNDS, combine_rounds  # noqa: E402
from tinytamer.zoo import count, create  # noqa: E402

TUNING_LOG = WORK / "tvm" / "tuning.json"


def _model(name: str, train: Any) -> torch.nn.Module:
    torch.manual_seed(0)
    return set_bn_stats(create(name, num_classes=10, in_channels=3, input_size=32), train)


def tune_phase(args: argparse.Namespace, data: Any, train: Any) -> None:
    """Tune every model at every batch size; keep what the tuning cost."""
    log = json.loads(TUNING_LOG.read_text()) if TUNING_LOG.is_file() else {}
    calib = Calibration(train, limit=2)
    for name in args.models:
        model = _model(name, train)
        for b in args.batches:
            x = torch.stack([data.test[i][0] for i in range(b)])
            t0 = time.time()
            d = get_target("tvm").compile(
                model,
                [x],
                WORK / "tvm" / name / f"tune-b{b}",
                threads=args.threads,
                trials=args.trials,
                database=args.database,
                calib=calib,
            )
            info = dict(d.tuning[b], wall_s=round(time.time() - t0, 1))
            info.pop("database")  # a path on this machine; the folder is the --database option
            print(
                f"{name} batch {b}: {info['tasks']} tasks, {info['tasks_tuned_now']} tuned now, "
                f"{info['trials_measured_now']} trials, {info['tuning_s']:.0f} s tuning"
            )
            entry = log.setdefault(name, {}).get(str(b))
            # Keep the run that tuned (a re-run finds everything in the database).
            if entry is None or info["tasks_tuned_now"] > 0 or entry.get("trials_per_task") != args.trials:
                log[name][str(b)] = info
            TUNING_LOG.parent.mkdir(parents=True, exist_ok=True)
            write_json(TUNING_LOG, log)


def _measure_round_robin(deployed: dict[str, Any], batch: int, args: argparse.Namespace) -> dict[str, Cost]:
    rounds: dict[str, list[Cost]] = {}
    for _ in range(args.rounds):
        for key, d in deployed.items():
            if key == "tvm fp32 untuned" and batch not in args.untuned_batches:
                continue
            rounds.setdefault(key, []).append(
                d.measure(batch=batch, threads=args.threads, repeats=args.repeats, warmup=5)
            )
    return {key: combine_rounds(costs) for key, costs in rounds.items()}


def time_phase(args: argparse.Namespace, data: Any, train: Any) -> None:
    tuning = json.loads(TUNING_LOG.read_text()) if TUNING_LOG.is_file() else {}
    calib = Calibration(train, limit=2)
    example = torch.stack([data.test[0][0]])
    results: dict[str, Any] = {}
    for name in args.models:
        model = _model(name, train)
        counts = count(model, (3, 32, 32))
        work = WORK / "tvm" / name
        deployed = {
            "torch fp32": get_target("torch").compile(
                model, [example], work / "torch", threads=args.threads, calib=calib
            ),
            "onnxruntime fp32": get_target("onnxruntime").compile(
                model, [example], work / "onnxruntime", threads=args.threads, calib=calib
            ),
            "tvm fp32 tuned": get_target("tvm").compile(
                model,
                [example],
                work / "tvm-tuned",
                threads=args.threads,
                calib=calib,
                trials=args.trials,
                database=args.database,
                progress=False,
            ),
            "tvm fp32 untuned": get_target("tvm").compile(
                model, [example], work / "tvm-untuned", threads=args.threads, calib=calib, trials=0
            ),
        }
        rows = []
        for b in args.batches:
            costs = _measure_round_robin(deployed, b, args)
            base = costs["torch fp32"]
            for key, c in costs.items():
                tvm_info = {
                    k: c.extra.get(k)
                    for k in (
                        "tuned",
                        "tasks",
                        "tasks_from_database",
                        "tasks_tuned_now",
                        "tasks_untuned",
                        "functions_scheduled_from_database",
                    )
                    if k in c.extra
                }
                rows.append(
                    {
                        "runtime": key,
                        "batch": b,
                        "latency_ms_median": c.latency_ms_median,
                        "latency_ms_p10": c.latency_ms_p10,
                        "latency_ms_p90": c.latency_ms_p90,
                        "latency_ms_min": c.latency_ms_min,
                        "speedup_vs_torch": base.latency_ms_median / c.latency_ms_median,
                        "speedup_min_vs_torch": base.latency_ms_min / c.latency_ms_min,
                        "peak_rss_mb": c.peak_rss_mb,
                        "artifact_bytes": c.artifact_bytes,
                        "cpus_available": c.extra.get("cpus_available"),
                        "cpus_pinned": c.cpus_pinned,
                        "round_medians_ms": c.round_medians_ms,
                        "loaded": c.loaded,
                        "runtime_versions": c.runtime_versions,
                        "max_rel_err": deployed[key].parity["outputs"][0]["max_rel_err"],
                        **({"tvm": tvm_info} if tvm_info else {}),
                    }
                )
                print(
                    f"{name} b{b} {key:18s} {c.latency_ms_median:9.3f} ms  x{rows[-1]['speedup_vs_torch']:.2f} vs torch"
                )
        results[name] = {
            "macs": counts.macs,
            "params": counts.params,
            "trials_per_task": args.trials,
            "tuning": {b: {k: v for k, v in t.items() if k != "database"} for b, t in tuning.get(name, {}).items()},
            "rows": rows,
        }
        save(
            "targets_tvm",
            {
                "threads": args.threads,
                "statistic": ROUNDS,
                "untuned_batches": args.untuned_batches,
                "repeats": args.repeats,
                "rounds": args.rounds,
                "batches": args.batches,
                "models": results,
            },
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--phase", choices=["tune", "time", "all"], default="all")
    ap.add_argument("--models", nargs="+", default=["resnet8", "resnet18"])
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 32])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--trials", type=int, default=32, help="measured candidates per task")
    ap.add_argument("--database", type=Path, default=WORK / "tvm-db", help="MetaSchedule tuning database folder")
    ap.add_argument(
        "--untuned-batches",
        nargs="*",
        type=int,
        default=[1],
        help="batch sizes to time untuned TVM at (it is slow: seconds per call at 32)",
    )
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    data = cifar()
    train = make_loader(data.train, 32, shuffle=True, seed=0)
    if args.phase in ("tune", "all"):
        tune_phase(args, data, train)
    if args.phase in ("time", "all"):
        time_phase(args, data, train)


if __name__ == "__main__":
    main()
