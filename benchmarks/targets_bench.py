"""Every deployment target and precision against PyTorch fp32 on CIFAR-sized models: one run, one machine.

    python benchmarks/targets_bench.py              # resnet8 mobilenetv2 resnet18, batch 1 and 32, 1 and 2 threads
    python benchmarks/targets_bench.py --quick      # a check that it runs (resnet8, batch 1, 1 thread; seconds)
    python benchmarks/targets_bench.py --models resnet8 --threads 1 --targets onnxruntime openvino

For each model and thread count: deploy to every installed host target and precision
through ``tinytamer.deploy.bench`` (each compile checks parity with PyTorch on real
CIFAR-10 test images; int8 is calibrated on 128 real training images, each runtime its own
way: ONNX Runtime static QDQ, OpenVINO through NNCF, ncnn / LiteRT from tinytamer's int8
model), then time each deployed model in its own fresh child process pinned to its cores,
at batch 1 and 32: every model ``--rounds`` times round-robin (load on a shared machine then
hits every target alike), each round the median of ``--repeats`` runs after warm-up; the
figure is the median of the rounds' medians, with the spread.  Before each timing the run
waits (``--settle`` seconds at most) for the 1-minute load average, raised by the compiles
and quantizations that prepared the model, to fall below the thread count; a timing taken
above it is still marked loaded.  Speed-ups are against
PyTorch fp32 eager measured in the same run and thread count.  TVM is left out by default
(``benchmarks/targets_tvm.py`` tunes and times it; untuned it takes seconds a call at batch
32); named in ``--targets`` it is built from its tuning database, else untuned and labelled.

Weights: a trained checkpoint ``benchmarks/work/baselines/<model>.safetensors`` when there is
one (accuracy is then scored through each runtime on ``--eval`` test images), else untrained
with BatchNorm statistics set on real images (latency does not depend on the values; top-1
agreement with fp32 is reported, accuracy is not).  On a machine with more runnable
processes than cores, 2-thread runtimes that synchronise threads at every op are slowed by
scheduling far more than others: every figure records the load, and a loaded run is saved
marked as no clean figure.

Writes ``results/<name>.json`` (this run only; default name ``targets_bench_<cpu>``) and
``results/<name>.md``, the table for RESULTS.md with the machine in its caption.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from torch import nn  # noqa: E402

from benchmarks._common import RESULTS, WORK, load_record, machine, save, shared_data  # noqa: E402
from tinytamer.calib import Calibration  # noqa: E402
from tinytamer.checkpoint import load_checkpoint  # noqa: E402
from tinytamer.data import get_dataset, make_loader  # noqa: E402
from tinytamer.deploy import bench  # noqa: E402
from tinytamer.fileio import write_atomic  # noqa: E402
from tinytamer.targets import list_targets, onnxrt  # noqa: E402
from tinytamer.targets.base import ONE_ROUND, ROUNDS, TOLERANCES  # noqa: E402
from tinytamer.zoo import count, create  # noqa: E402

# Emulated devices are benchmarked elsewhere (micro_*.py): they are not this CPU's runtimes;
# TVM has its own benchmark (targets_tvm.py), which tunes it.
NOT_DEFAULT = ("cortex-m4", "cortex-m7", "micro-host", "tvm")


def cifar(limit: int = 512):
    return get_dataset("cifar10", shared_data() / "cifar10-jpg.tar.gz", limit=limit)


def set_bn_stats(model: nn.Module, loader, batches: int = 8) -> nn.Module:
    """Running BN statistics from real images (forward passes in train mode, no grad)."""
    model.train()
    with torch.no_grad():
        for i, (x, _y) in enumerate(loader):
            if i >= batches:
                break
            model(x)
    return model.eval()


def bench_model(name: str, train) -> tuple[nn.Module, bool]:
    """The trained baseline when there is one, else untrained weights with real BN statistics."""
    trained = WORK / "baselines" / f"{name}.safetensors"
    if trained.is_file():
        return load_checkpoint(trained).eval(), True
    torch.manual_seed(0)  # a model's weights do not depend on which others run before it
    return set_bn_stats(create(name, num_classes=10, in_channels=3, input_size=32), train), False


def markdown(result: dict[str, Any]) -> str:
    """The run as RESULTS.md tables: the machine in the caption, one table per model."""
    m, run = result["machine"], result
    versions = ", ".join(f"{k} {v}" for k, v in m["runtimes"].items() if v)
    load = (
        f"load average {run['load_average_before'][0]:.2f} at the start, {run['load_average_after'][0]:.2f} at the end"
    )
    lines = [
        f"Machine: {m['cpu']} ({m['arch']}; {', '.join(m['isa']) or 'no listed vector extensions'}; "
        f"{m['cores']} cores); {versions}. Commit {m['git']}{' (dirty)' if m['git_dirty'] else ''}, {m['date']}; "
        f"{load}{'' if run['clean'] else ' - NOT a clean run (load above the threads timed)'}. "
        f"Latency: {run['statistic']}; speed-up: PyTorch fp32 eager's latency over the runtime's, same run, "
        "same threads and batch.",
        "",
    ]
    for name, entry in result["models"].items():
        trained = "trained" if entry["trained"] else "untrained weights, real BN statistics"
        lines += [
            f"**{name}** ({entry['macs'] / 1e6:.1f} MMACs, {entry['params'] / 1e6:.2f} M parameters; {trained})",
            "",
            "| target | precision | threads | batch | latency ms (p10-p90) | x torch fp32 | top-1 agree | Δ acc (pt) "
            "| peak RSS MB |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for threads, report in entry["runs"].items():
            for r in report["rows"]:
                target = f"{r['target']} ({r['variant']})" if r["variant"] else r["target"]
                if r["status"] != "ok":
                    lines.append(f"| {target} | {r['precision']} | {threads} | {r['batch']} | {r['status'][:80]} |||||")
                    continue
                agree = r["parity"]["outputs"][0].get("top1_agree") if r["parity"].get("outputs") else None
                delta = None if r["acc_delta"] is None or not entry["trained"] else 100 * r["acc_delta"]
                rss = "-" if r["peak_rss_mb"] is None else f"{r['peak_rss_mb']:.0f}"
                lines.append(
                    f"| {target} | {r['precision']} | {threads} | {r['batch']} "
                    f"| {r['latency_ms']:.3f} ({r['latency_ms_p10']:.3f}-{r['latency_ms_p90']:.3f})"
                    f"{' loaded' if r['loaded'] else ''} | {r['speedup']:.2f}x "
                    f"| {'-' if agree is None else f'{agree:.3f}'} | {'-' if delta is None else f'{delta:+.2f}'} "
                    f"| {rss} |"
                )
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["resnet8", "mobilenetv2", "resnet18"])
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 32])
    ap.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument(
        "--settle",
        type=float,
        default=120,
        help="seconds to wait at most, before each timing, for the load average to fall below the threads",
    )
    ap.add_argument("--eval", type=int, default=1000, help="test images scored through each runtime (trained models)")
    ap.add_argument(
        "--targets",
        nargs="+",
        default=None,
        help="default: every installed host target but tvm (not the emulated devices)",
    )
    ap.add_argument(
        "--quick",
        action="store_true",
        help="resnet8, batch 1, 1 thread, 2 repeats, 1 round; under benchmarks/work/quick",
    )
    ap.add_argument("--result", default=None, help="JSON / markdown name (default targets_bench_<cpu>)")
    ap.add_argument(
        "--int8-min-top1",
        type=float,
        default=0.5,
        help="int8 parity gates (against fp32, and ORT's fused kernels against their "
        "QDQ model): top-1 agreement (untrained weights have near-tied logits; the "
        "measured agreement is saved)",
    )
    args = ap.parse_args()
    if args.quick:
        args.models, args.batches, args.threads, args.repeats, args.rounds, args.eval = ["resnet8"], [1], [1], 2, 1, 64
    targets = args.targets or [t for t in list_targets(available_only=True) if t not in (*NOT_DEFAULT, "torch")]
    TOLERANCES["int8"]["min_top1_agree"] = args.int8_min_top1
    # The same for the fused-kernels-vs-QDQ check: near ties flip under rounding alone; its
    # relative-error gate, which catches saturation, is unchanged.
    onnxrt.MIN_KERNEL_TOP1_AGREE = args.int8_min_top1
    torch.set_num_threads(1)  # this process only prepares; the timing children set their own
    data = cifar(max(512, args.eval))
    train = make_loader(data.train, 32, shuffle=True, seed=0)
    test = make_loader(data.test, 64, shuffle=False)
    calib = Calibration(train, limit=4)
    example = torch.stack([data.test[i][0] for i in range(1)])
    name = args.result or "targets_bench_" + re.sub(r"[^A-Za-z0-9]+", "_", machine()["cpu"]).strip("_").lower()
    results: dict[str, Any] = {}
    for model_name in args.models:
        model, trained = bench_model(model_name, train)
        counts = count(model, (3, 32, 32))
        entry: dict[str, Any] = {"macs": counts.macs, "params": counts.params, "trained": trained, "runs": {}}
        for threads in args.threads:
            t0 = time.time()
            report = bench(
                model,
                WORK / "targets" / model_name / f"t{threads}",
                example_input=example,
                calib=calib,
                test_loader=test if trained else None,
                eval_limit=args.eval,
                targets=targets,
                batches=args.batches,
                threads=threads,
                repeats=args.repeats,
                warmup=5,
                rounds=args.rounds,
                settle_s=args.settle,
                echo=print,
            )
            print(f"\n{model_name}, {threads} thread(s): {counts.macs / 1e6:.1f} MMACs")
            print(report.caption() + report.table())
            entry["runs"][threads] = {"seconds": round(time.time() - t0, 1), **report.to_dict()}
        results[model_name] = entry
        # Saved after every model, so that a long run keeps what it measured (this run only).
        payload = {
            "threads": args.threads,
            "repeats": args.repeats,
            "rounds": args.rounds,
            "settle_s": args.settle,
            "statistic": ROUNDS if args.rounds > 1 else ONE_ROUND,
            "int8_min_top1_agree": args.int8_min_top1,
            "batches": args.batches,
            "targets": targets,
            "models": results,
        }
        out = save(name, payload, threads=args.threads, quick=args.quick)
    text = markdown({"machine": machine(), **load_record(args.threads), **payload})
    write_atomic(out.with_suffix(".md"), text)
    print(f"wrote {out.with_suffix('.md').relative_to(RESULTS.parent.parent)}")


if __name__ == "__main__":
    main()
