"""Dynamic vs static fixed point (Qiu et al. 2016) at 8/6/4 bits: LeNet-5 / MNIST, ResNet-8 / CIFAR-10.

    python benchmarks/fixedpoint_bits.py                       # both models, full test sets
    python benchmarks/fixedpoint_bits.py --baseline resnet8=path/to/resnet8.safetensors
    python benchmarks/fixedpoint_bits.py --quick               # a smoke run (~1 min)

Weights and all data in fixed point, as Qiu et al. do it: BN folded, then the
network input, every conv / linear output (the logits included), every residual
add and the average pool each rounded to a format of its own (dynamic) or all to one
format (static); ``--data-bits`` gives the data a width of its own (default: the
weights' width).  No fine-tuning.

CIFAR-10 here is the JPEG re-encoding in ``../shared/data`` (not directly
comparable to published CIFAR-10 numbers).  The float models are ``--baseline
NAME=PATH`` checkpoints, else the trained baselines of ``benchmarks/baselines.py``
(``benchmarks/work/baselines/``) when they exist; otherwise they are trained
briefly here (budget in the result) and cached in ``benchmarks/work/quant/`` for
the other quantization benchmarks.  Calibration: ``--calib-batches`` training
batches.  Result: ``benchmarks/results/fixedpoint_bits_<models>.json``.
Duration on 2 cores: about 15 minutes for both models on the full test sets.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.data import Subset  # noqa: E402

from benchmarks._common import WORK, save, shared_data  # noqa: E402
from tinytamer.checkpoint import load_checkpoint, load_weights, save_checkpoint  # noqa: E402
from tinytamer.compress import fixedpoint  # noqa: E402
from tinytamer.data import get_dataset, make_loader  # noqa: E402
from tinytamer.train import Solver, SolverConfig, evaluate  # noqa: E402
from tinytamer.zoo import create  # noqa: E402

DATA = {"lenet5": "mnist", "resnet8": "cifar10"}
# Brief training when no baseline exists (the machine is a shared CPU).
BRIEF = {
    "lenet5": {
        "base_lr": 0.01,
        "momentum": 0.9,
        "weight_decay": 0.0005,
        "lr_policy": "inv",
        "gamma": 0.0001,
        "power": 0.75,
        "epochs": 1,
        "display": 0,
    },
    "resnet8": {
        "base_lr": 0.05,
        "momentum": 0.9,
        "weight_decay": 0.0005,
        "lr_policy": "poly",
        "power": 1.0,
        "max_iter": 100,
        "display": 0,
    },
}
BATCH = {"lenet5": 64, "resnet8": 128}


def dataset(name: str) -> Any:
    root = shared_data()
    if DATA[name] == "mnist":
        return get_dataset("mnist", str(root / "mnist"), val_fraction=0.0)
    return get_dataset("cifar10", str(root / "cifar10-jpg.tar.gz"), val_fraction=0.0)


def loaders(name: str, data: Any, test_limit: int | None) -> tuple[Any, Any]:
    test = data.test if test_limit is None else Subset(data.test, range(test_limit))
    return (make_loader(data.train, BATCH[name], shuffle=True, seed=0), make_loader(test, 500, shuffle=False))


def baseline(
    name: str, data: Any, train_loader: Any, weights: str | None = None, checkpoint: str | None = None
) -> tuple[nn.Module, dict[str, Any]]:
    """The trained float model and where it came from (``weights``: a safetensors state_dict;
    ``checkpoint``: a tinytamer checkpoint)."""
    if checkpoint:
        return load_checkpoint(checkpoint).eval(), {"source": checkpoint}
    if weights:
        model = create(name, num_classes=10, in_channels=data.meta.input_shape[0], input_size=data.meta.input_shape[1])
        return load_weights(model, weights).eval(), {"source": weights}
    lead = WORK / "baselines" / f"{name}.safetensors"
    if lead.is_file():
        return load_checkpoint(lead), {"source": str(lead.relative_to(WORK.parents[1]))}
    cached = WORK / "quant" / f"{name}_brief.safetensors"
    info = {"source": f"trained briefly by the quantization benchmarks: {BRIEF[name]}, batch {BATCH[name]}"}
    if cached.is_file():
        return load_checkpoint(cached), info
    torch.manual_seed(0)
    model = create(name, num_classes=10, in_channels=data.meta.input_shape[0], input_size=data.meta.input_shape[1])
    start = time.time()
    Solver(model, SolverConfig(**BRIEF[name]), train_loader, progress=False).solve()
    info["train_seconds"] = round(time.time() - start, 1)
    save_checkpoint(model.eval(), cached)
    return model.eval(), info


def calib_batches(train_loader: Any, n: int) -> list[torch.Tensor]:
    out = []
    for x, _ in train_loader:
        out.append(x)
        if len(out) == n:
            break
    return out


def run_model(name: str, args: argparse.Namespace) -> dict[str, Any]:
    data = dataset(name)
    train_loader, test_loader = loaders(name, data, args.test_limit)
    model, info = baseline(name, data, train_loader, args.weights, args.baseline.get(name))
    calib = calib_batches(train_loader, args.calib_batches)
    rows = [{"bits": 32, "mode": "float", "accuracy": evaluate(model, test_loader)["accuracy"]}]
    print(f"{name} float: {rows[0]['accuracy']:.4f}", flush=True)
    for bits in args.bits:
        data_bits = args.data_bits or bits
        for mode in ("dynamic", "static"):
            start = time.time()
            q = fixedpoint.quantize(model, calib, bits=bits, mode=mode, data_bits=data_bits)
            acc = evaluate(q, test_loader)["accuracy"]
            rows.append(
                {
                    "bits": bits,
                    "data_bits": data_bits,
                    "mode": mode,
                    "accuracy": acc,
                    "formats": fixedpoint.formats(q),
                    "data_formats": fixedpoint.data_formats(q),
                    "seconds": round(time.time() - start, 1),
                }
            )
            print(f"{name} {bits:2d}-bit weights, {data_bits:2d}-bit data, {mode:7s}: {acc:.4f}", flush=True)
    return {
        "model": name,
        "dataset": DATA[name],
        "baseline": info,
        "test_images": len(test_loader.dataset),
        "rows": rows,
    }


def table(results: list[dict[str, Any]]) -> str:
    lines = [
        "| model / data | float | "
        + " | ".join(
            f"{b}-bit dyn / static"
            for b in sorted({r["bits"] for res in results for r in res["rows"] if r["mode"] != "float"}, reverse=True)
        )
        + " |"
    ]
    lines.append("|" + "---|" * (lines[0].count("|") - 1))
    for res in results:
        acc = {(r["bits"], r["mode"]): r["accuracy"] for r in res["rows"]}
        bits = sorted({b for b, m in acc if m != "float"}, reverse=True)
        cells = [f"{acc[(b, 'dynamic')]:.2%} / {acc[(b, 'static')]:.2%}" for b in bits]
        lines.append(f"| {res['model']} / {res['dataset']} | {acc[(32, 'float')]:.2%} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("models", nargs="*", default=["lenet5", "resnet8"], help="lenet5 and / or resnet8")
    parser.add_argument("--bits", type=int, nargs="+", default=[8, 6, 4], help="weight widths")
    parser.add_argument("--data-bits", type=int, default=None, help="data width (default: the weight width)")
    parser.add_argument("--calib-batches", type=int, default=4)
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
    parser.add_argument("--quick", action="store_true", help="smoke run: 500 test images, 1 calibration batch, 8 bits")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    if unknown := sorted(set(args.models) - set(DATA)):  # argparse rejects a list default against choices
        parser.error(f"unknown model(s) {unknown}; choose from {', '.join(sorted(DATA))}")
    args.baseline = dict(b.split("=", 1) for b in args.baseline)
    if args.quick:
        args.test_limit, args.calib_batches, args.bits = args.test_limit or 500, 1, [8]
    torch.set_num_threads(args.threads)
    results = [run_model(name, args) for name in args.models]
    print(table(results))
    save(
        "fixedpoint_bits_" + "_".join(args.models) + ("_quick" if args.quick else ""),
        {
            "results": results,
            "calib_batches": args.calib_batches,
            "quick": args.quick,
            "table": table(results),
            "note": "CIFAR-10 is the JPEG re-encoding (~q75) of the shared data",
        },
        quick=args.quick,
    )


if __name__ == "__main__":
    main()
