"""Trained ternary quantization (Zhu et al. 2017) vs float at the same training budget.

    python benchmarks/ttq_float.py                             # LeNet-5 / MNIST, ResNet-8 / CIFAR-10
    python benchmarks/ttq_float.py resnet8 --iters 40 --test-limit 1000

Both arms start from the same trained float baseline (see
``fixedpoint_bits.py``) and get the same budget: ``--iters`` Adam iterations
(lr ``--lr``, poly decay). Adam, because plain SGD at lr 0.01 diverged on
LeNet-5: the scale gradients of eq. 7 are sums over a whole layer (400k weights
in LeNet-5's fc1). The float arm fine-tunes the float model; the TTQ arm
ternarizes every conv / linear except the first and last (t = 0.05), trains the
latent weights and the per-layer scales, then bakes the ternary weights. Storage
is measured: each arm is written with ``tinytamer.codec`` (ternary layers forced to
the ``ternary`` encoding, 2-bit codes + two scales; every other tensor its smallest
exact encoding) and the file size on disk is reported (``file_bytes``); beside it,
``weight_bits`` is the estimate of the conv / linear weights alone (2 bits per
ternary weight plus two float scales per layer, 32 bits per float weight).
CIFAR-10 is the JPEG re-encoding in ``../shared/data``. Result:
``benchmarks/results/ttq_float_<models>.json``.
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from torch import nn  # noqa: E402

from benchmarks._common import save  # noqa: E402
from benchmarks.fixedpoint_bits import DATA, baseline, dataset, loaders  # noqa: E402
from tinytamer import codec  # noqa: E402
from tinytamer.compress import ttq  # noqa: E402
from tinytamer.train import Solver, SolverConfig, evaluate  # noqa: E402

ITERS = {"lenet5": 600, "resnet8": 40}
LR = {"lenet5": 1e-4, "resnet8": 1e-3}


def weight_bits(model: nn.Module, ternary: set[str]) -> int:
    """Storage of conv / linear weights: 2 bits per ternary weight (+2 scales), else 32 bits."""
    total = 0
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d | nn.Linear):
            total += m.weight.numel() * 2 + 64 if name in ternary else m.weight.numel() * 32
    return total


def run_model(name: str, args: argparse.Namespace) -> dict[str, Any]:
    data = dataset(name)
    train_loader, test_loader = loaders(name, data, args.test_limit)
    model, info = baseline(name, data, train_loader, args.weights, args.baseline.get(name))
    iters = args.iters or ITERS[name]
    lr = args.lr or LR[name]
    cfg = SolverConfig(base_lr=lr, optimizer="adam", lr_policy="poly", power=1.0, max_iter=iters, display=0)
    start_acc = evaluate(model, test_loader)["accuracy"]
    print(f"{name} baseline: {start_acc:.4f}", flush=True)

    arms: dict[str, dict[str, Any]] = {}
    for arm in ("float", "ttq"):
        torch.manual_seed(0)
        m = copy.deepcopy(model)
        if arm == "ttq":
            ttq.ternarize(m, t=args.t)
            m.eval()
            after_ternarize = evaluate(m, test_loader)["accuracy"]
        start = time.time()
        Solver(m.train(), cfg, train_loader, progress=False).solve()
        seconds = time.time() - start
        record: dict[str, Any] = {"train_seconds": round(seconds, 1)}
        if arm == "ttq":
            record["accuracy_before_training"] = after_ternarize
            record["layers"] = ttq.ternary_layers(m)
            ttq.finalize(m)
            ternary = set(record["layers"])
        else:
            ternary = set()
        record["accuracy"] = evaluate(m.eval(), test_loader)["accuracy"]
        record["weight_bits"] = weight_bits(m, ternary)
        with tempfile.TemporaryDirectory() as tmp:
            forced = {f"^{layer}\\.weight$": "ternary" for layer in ternary}
            record["file_bytes"] = codec.save(m, Path(tmp) / f"{arm}.tt", encodings=forced).file_bytes
        arms[arm] = record
        print(f"{name} {arm}: {record['accuracy']:.4f} ({seconds:.0f} s)", flush=True)
    ratio = arms["float"]["weight_bits"] / arms["ttq"]["weight_bits"]
    file_ratio = arms["float"]["file_bytes"] / arms["ttq"]["file_bytes"]
    return {
        "model": name,
        "dataset": DATA[name],
        "baseline": info,
        "baseline_accuracy": start_acc,
        "budget": {"iters": iters, "batch": train_loader.batch_size, "lr": lr, "optimizer": "adam, poly"},
        "t": args.t,
        "test_images": len(test_loader.dataset),
        "arms": arms,
        "weight_storage_ratio": ratio,
        "file_ratio": file_ratio,
    }


def table(results: list[dict[str, Any]]) -> str:
    lines = [
        "| model / data | budget | float top-1 | TTQ top-1 | TTQ before training "
        "| codec file float / TTQ (measured) | weight bits float / TTQ (estimate) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        a = r["arms"]
        lines.append(
            f"| {r['model']} / {r['dataset']} | {r['budget']['iters']} it x {r['budget']['batch']} "
            f"| {a['float']['accuracy']:.2%} | {a['ttq']['accuracy']:.2%} | "
            f"{a['ttq']['accuracy_before_training']:.2%} | {a['float']['file_bytes']:,} / "
            f"{a['ttq']['file_bytes']:,} B ({r['file_ratio']:.1f}x) | {r['weight_storage_ratio']:.1f}x |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("models", nargs="*", default=["lenet5", "resnet8"], help="lenet5 and / or resnet8")
    parser.add_argument("--iters", type=int, default=None, help=f"budget (default {ITERS})")
    parser.add_argument("--lr", type=float, default=None, help=f"base lr (default {LR})")
    parser.add_argument("--t", type=float, default=0.05)
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
        "ttq_float_" + "_".join(args.models),
        {
            "results": results,
            "table": table(results),
            "note": "CIFAR-10 is the JPEG re-encoding (~q75) of the shared data",
        },
    )


if __name__ == "__main__":
    main()
