"""SGD + momentum vs SWA, Ranger and YellowFin at the same budget: ResNet-8 on CIFAR-10.

    python benchmarks/optimizers.py                   # 4 runs x 10 epochs (~50 min on 2 quiet cores, estimated)
    python benchmarks/optimizers.py sgd swa --epochs 30 --swa-start 0.75   # a longer budget
    python benchmarks/optimizers.py --quick           # smoke run (~4 min on a loaded machine)

Every run trains the MLPerf Tiny ResNet-8 from the same initial weights for ``--epochs``
epochs (batch 128, random crop + flip, L2 weight decay 5e-4 added to the gradient as
Caffe does, test accuracy on the full CIFAR-10 test split after every epoch):

* ``sgd``: Caffe momentum SGD (0.9), lr 0.1 decayed linearly to 0 (``poly``, power 1);
* ``swa``: the same run, but from ``--swa-start`` (a fraction of the budget, 0.6) SWALR
  anneals the lr to ``--swa-lr`` (0.01) over one epoch and holds it, and the weights are
  averaged at the end of every epoch; at the end the model holds the average with its
  BatchNorm statistics recomputed over the training set (Izmailov et al. 2018, Alg. 1);
  its per-epoch curve is the SGD iterate, its last point (a star) the average;
* ``ranger``: RAdam + Lookahead (k = 6, alpha = 0.5), lr ``--ranger-lr`` (3e-3), same decay;
* ``yellowfin``: YellowFin tunes lr and momentum itself (starting from lr 0.1, momentum 0);
  the same linear decay multiplies its tuned lr.

Izmailov et al. 2018 (Table 1) report SWA ahead of conventional SGD training at the same
number of epochs on CIFAR-10 and CIFAR-100; the result states our difference at this budget.
CIFAR-10 is the JPEG re-encoding in the shared data folder.  Results:
``benchmarks/results/optimizers_resnet8.json`` and the plot ``optimizers_resnet8.png``
(test accuracy per epoch); a budget other than 10 epochs, a subset of the runs and the
channels_last layout are named in the file (``optimizers_resnet8_e30_sgd-swa_channels_last``).
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from torch.utils.data import Subset  # noqa: E402

from benchmarks._common import REPO, RESULTS, WORK, save, shared_data  # noqa: E402
from tinytamer.data import get_dataset, make_loader  # noqa: E402
from tinytamer.train import Solver, SolverConfig  # noqa: E402
from tinytamer.zoo import create  # noqa: E402

BATCH = 128
RUNS = ("sgd", "swa", "ranger", "yellowfin")


def config(run: str, epochs: float, per_epoch: int, args: argparse.Namespace) -> SolverConfig:
    common: dict[str, Any] = dict(
        epochs=epochs,
        lr_policy="poly",
        power=1.0,
        weight_decay=5e-4,
        momentum=0.9,
        test_interval=per_epoch,
        display=0,
        memory_format=args.memory_format,
    )
    if run == "swa":
        start = int(args.swa_start * epochs) * per_epoch
        return SolverConfig(base_lr=0.1, swa=True, swa_start=start, swa_freq=per_epoch, swa_lr=args.swa_lr, **common)
    if run == "ranger":
        return SolverConfig(base_lr=args.ranger_lr, optimizer="ranger", lookahead_k=6, lookahead_alpha=0.5, **common)
    if run == "yellowfin":
        return SolverConfig(base_lr=0.1, optimizer="yellowfin", **common)
    return SolverConfig(base_lr=0.1, **common)


def plot(curves: dict[str, dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for run, c in curves.items():
        ax.plot(c["epochs"], [100 * a for a in c["test_acc"]], marker="o", markersize=3, label=run)
        if run == "swa":
            ax.plot([c["epochs"][-1]], [100 * c["final"]], marker="*", markersize=12, linestyle="none", color="black")
            ax.annotate("SWA average", (c["epochs"][-1], 100 * c["final"]), textcoords="offset points", xytext=(-60, 8))
    ax.set_xlabel("epoch")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("ResNet-8, CIFAR-10 (JPEG copy): optimizers at the same budget")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="*", default=list(RUNS), help=f"any of {', '.join(RUNS)} (default: all)")
    parser.add_argument("--epochs", type=float, default=10.0)
    parser.add_argument("--swa-start", type=float, default=0.6, help="fraction of the budget before averaging")
    parser.add_argument("--swa-lr", type=float, default=0.01)
    parser.add_argument("--ranger-lr", type=float, default=3e-3)
    parser.add_argument("--test-limit", type=int, default=None, help="first N test images (default: all)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--memory-format",
        choices=("contiguous", "channels_last"),
        default="contiguous",
        help="the Solver's layout of 4-d weights (channels_last: named in the result file)",
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: 2 short epochs of 20 batches, 500 test images")
    args = parser.parse_args()
    unknown = sorted(set(args.runs) - set(RUNS))
    if unknown:  # checked here: argparse rejects a list default against nargs="*" choices
        parser.error(f"unknown run(s) {unknown}; choose from {', '.join(RUNS)}")
    torch.set_num_threads(args.threads)

    data = get_dataset("cifar10", str(shared_data() / "cifar10-jpg.tar.gz"), val_fraction=0.0, augment=True)
    train_set = Subset(data.train, range(20 * BATCH)) if args.quick else data.train
    if args.quick:
        args.epochs, args.test_limit = 2.0, args.test_limit or 500
    n_test = min(args.test_limit or len(data.test), len(data.test))
    test = make_loader(Subset(data.test, range(n_test)), 500, shuffle=False)
    torch.manual_seed(0)
    init = create("resnet8")

    curves: dict[str, dict[str, Any]] = {}
    for run in args.runs:
        loader = make_loader(train_set, BATCH, shuffle=True, seed=0)  # the same batches for every run
        per_epoch = len(loader)
        cfg = config(run, args.epochs, per_epoch, args)
        records: list[dict] = []
        model = copy.deepcopy(init)
        start = time.time()
        out = Solver(model, cfg, loader, test, log=records.append, progress=True).solve()
        tests = [r for r in records if r.get("test_acc") is not None]
        # One record per epoch; the last is the end of training (for SWA: the averaged model).
        curves[run] = {
            "epochs": [round(r["epoch"], 3) for r in tests],
            "test_acc": [r["test_acc"] for r in tests],
            "final": out["test_acc"],
            "train_seconds": round(time.time() - start, 1),
            "config": cfg.model_dump(exclude_none=True),
        }
        print(f"{run}: final test accuracy {out['test_acc']:.4f} ({curves[run]['train_seconds']:.0f} s)", flush=True)

    # A budget other than the default keeps its own file, so the 10-epoch record stays.
    budget = "" if args.quick or args.epochs == 10.0 else f"_e{args.epochs:g}"
    layout = "" if args.memory_format == "contiguous" else f"_{args.memory_format}"
    subset = "" if sorted(args.runs) == sorted(RUNS) else "_" + "-".join(args.runs)
    name = "optimizers_resnet8" + ("_quick" if args.quick else "") + budget + subset + layout
    folder = WORK / "quick" if args.quick else RESULTS  # where save() puts the JSON
    folder.mkdir(parents=True, exist_ok=True)
    plot(curves, folder / f"{name}.png")
    summary = {run: c["final"] for run, c in curves.items()}
    if "sgd" in summary and "swa" in summary:
        summary["swa_minus_sgd_pt"] = 100 * (summary["swa"] - summary["sgd"])
    save(
        name,
        {
            "model": "resnet8",
            "dataset": "cifar10 (JPEG re-encoding)",
            "budget": {"epochs": args.epochs, "batch": BATCH, "train_images": len(train_set)},
            "test_images": n_test,
            "final_test_accuracy": summary,
            "curves": curves,
            "plot": str((folder / f"{name}.png").relative_to(REPO)),
            "paper": "Izmailov et al. 2018 (SWA), Table 1: SWA ahead of SGD at an equal number of epochs on CIFAR",
            "quick": args.quick,
        },
        threads=args.threads,
        quick=args.quick,
    )


if __name__ == "__main__":
    main()
