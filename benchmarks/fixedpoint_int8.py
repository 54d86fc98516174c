"""int8 (and 4-bit weight) affine quantization vs float: PTQ (min/max, percentile, MSE) and QAT.

    python benchmarks/fixedpoint_int8.py                       # LeNet-5 / MNIST, ResNet-8 / CIFAR-10
    python benchmarks/fixedpoint_int8.py resnet8 --test-limit 2000 --qat-iters 20

The companion of ``fixedpoint_bits.py`` (same float baselines, same data; CIFAR-10
is the JPEG re-encoding in ``../shared/data``).  PTQ calibrates on
``--calib-batches`` training batches; QAT starts from the min/max-calibrated
model and trains ``--qat-iters`` SGD iterations (lr 1e-3, momentum 0.9), the
budget stated in the result.  Result: ``benchmarks/results/fixedpoint_int8_<models>.json``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from benchmarks._common import save  # noqa: E402
from benchmarks.fixedpoint_bits import DATA, baseline, calib_batches, dataset, loaders  # noqa: E402
from tinytamer.compress import int8  # noqa: E402
from tinytamer.train import Solver, SolverConfig, evaluate  # noqa: E402

QAT_ITERS = {"lenet5": 300, "resnet8": 20}


def run_model(name: str, args: argparse.Namespace) -> dict[str, Any]:
    data = dataset(name)
    train_loader, test_loader = loaders(name, data, args.test_limit)
    model, info = baseline(name, data, train_loader, args.weights, args.baseline.get(name))
    calib = calib_batches(train_loader, args.calib_batches)
    rows = [{"method": "float", "w_bits": 32, "a_bits": 32, "accuracy": evaluate(model, test_loader)["accuracy"]}]
    print(f"{name} float: {rows[0]['accuracy']:.4f}", flush=True)

    def add(method: str, w_bits: int, q: torch.nn.Module, seconds: float) -> None:
        acc = evaluate(q, test_loader)["accuracy"]
        rows.append({"method": method, "w_bits": w_bits, "a_bits": 8, "accuracy": acc, "seconds": round(seconds, 1)})
        print(f"{name} {method:16s} w{w_bits}a8: {acc:.4f}", flush=True)

    for w_bits in args.w_bits:
        for method in ("minmax", "percentile", "mse"):
            start = time.time()
            q = int8.quantize_ptq(model, calib, method=method, weight_bits=w_bits)
            add(f"ptq-{method}", w_bits, q, time.time() - start)
        start = time.time()
        iters = args.qat_iters or QAT_ITERS[name]
        gm = int8.prepare_qat(model.eval(), calib[0][:1], weight_bits=w_bits)
        int8.calibrate(gm, calib, "minmax")
        torch.manual_seed(0)
        cfg = SolverConfig(base_lr=1e-3, momentum=0.9, max_iter=iters, display=0)
        Solver(gm.train(), cfg, train_loader, progress=False).solve()
        add(f"qat-{iters}it", w_bits, int8.convert(gm), time.time() - start)
    return {
        "model": name,
        "dataset": DATA[name],
        "baseline": info,
        "test_images": len(test_loader.dataset),
        "rows": rows,
    }


def table(results: list[dict[str, Any]]) -> str:
    lines = ["| model / data | weights / acts | method | top-1 |", "|---|---|---|---|"]
    for res in results:
        for r in res["rows"]:
            bits = "float" if r["method"] == "float" else f"w{r['w_bits']} / a{r['a_bits']}"
            lines.append(f"| {res['model']} / {res['dataset']} | {bits} | {r['method']} | {r['accuracy']:.2%} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("models", nargs="*", default=["lenet5", "resnet8"], help="lenet5 and / or resnet8")
    parser.add_argument("--w-bits", type=int, nargs="+", default=[8, 4])
    parser.add_argument("--calib-batches", type=int, default=4)
    parser.add_argument("--qat-iters", type=int, default=None, help=f"QAT iterations (default {QAT_ITERS})")
    parser.add_argument("--test-limit", type=int, default=None, help="first N test images")
    parser.add_argument(
        "--weights", default=None, help="float weights to start from (safetensors state_dict of the zoo model)"
    )
    parser.add_argument(
        "--baseline",
        nargs="+",
        default=[],
        metavar="NAME=PATH",
        help="float checkpoints, e.g. resnet8=resnet8.safetensors",
    )
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    args.baseline = dict(b.split("=", 1) for b in args.baseline)
    if unknown := sorted(set(args.models) - set(DATA)):  # argparse rejects a list default against choices
        parser.error(f"unknown model(s) {unknown}; choose from {', '.join(sorted(DATA))}")
    torch.set_num_threads(args.threads)
    results = [run_model(name, args) for name in args.models]
    print(table(results))
    save(
        "fixedpoint_int8_" + "_".join(args.models),
        {
            "results": results,
            "calib_batches": args.calib_batches,
            "table": table(results),
            "note": "CIFAR-10 is the JPEG re-encoding (~q75) of the shared data",
        },
    )


if __name__ == "__main__":
    main()
