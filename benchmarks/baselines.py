"""Baselines the compression work starts from: LeNet-300-100 / LeNet-5 on MNIST, ResNet-8 on CIFAR-10.

    python benchmarks/baselines.py lenet300 lenet5     # full MNIST, Caffe's LeNet solver
    python benchmarks/baselines.py resnet8             # CIFAR-10, JPEG re-encoding

Each model is trained through the recipe runner (the same path as `tamer run`);
the trained checkpoint (architecture + weights, safetensors) is copied to
``benchmarks/work/baselines/<model>.safetensors``, where the compression and
deployment benchmarks look for it.  Results: ``benchmarks/results/baseline_<model>.json``.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import yaml  # noqa: E402

from benchmarks._common import WORK, save, shared_data  # noqa: E402
from tinytamer.recipe import parse_recipe, run  # noqa: E402

# Caffe's examples/mnist/lenet_solver.prototxt (the solver the Deep Compression baselines used).
CAFFE_LENET = {
    "base_lr": 0.01,
    "momentum": 0.9,
    "weight_decay": 0.0005,
    "lr_policy": "inv",
    "gamma": 0.0001,
    "power": 0.75,
    "max_iter": 10000,
    "test_interval": 1000,
    "display": 100,
    "snapshot": 2500,
}

SETUPS = {
    "lenet300": {
        "data": "mnist",
        "batch": 64,
        "solver": CAFFE_LENET,
        "paper_error": 0.0164,
        "reference": "Han et al. 2016 (Deep Compression), Table 1: 1.64% top-1 error",
    },
    "lenet5": {
        "data": "mnist",
        "batch": 64,
        "solver": CAFFE_LENET,
        "paper_error": 0.0080,
        "reference": "Han et al. 2016 (Deep Compression), Table 1: 0.80% top-1 error",
    },
    "resnet8": {
        "data": "cifar10",
        "batch": 128,
        "augment": True,
        "solver": {
            "base_lr": 0.1,
            "momentum": 0.9,
            "weight_decay": 0.0005,
            "lr_policy": "poly",
            "power": 1.0,
            "epochs": 40,
            "test_interval": 1000,
            "display": 100,
            "snapshot": 2000,
        },
        "paper_accuracy": 0.85,
        "reference": "MLPerf Tiny image classification quality target: 85% top-1",
    },
}


def data_root(kind: str) -> str:
    root = shared_data()
    return str(root / "mnist") if kind == "mnist" else str(root / "cifar10-jpg.tar.gz")


def train(
    name: str,
    epochs: float | None,
    weight_decay: float | None = None,
    batch: int | None = None,
    overrides: dict | None = None,
) -> dict:
    setup = SETUPS[name]
    solver = dict(setup["solver"])
    if epochs is not None:
        solver.pop("max_iter", None)
        solver["epochs"] = epochs
    if weight_decay is not None:
        solver["weight_decay"] = weight_decay
    solver.update(overrides or {})
    batch = setup["batch"] if batch is None else batch  # the recipe refuses a bad one by name
    recipe = parse_recipe(
        {
            "name": f"baseline-{name}",
            "seed": 0,
            "data": {
                "name": setup["data"],
                "root": data_root(setup["data"]),
                "batch_size": batch,
                "augment": setup.get("augment", False),
                "val_fraction": 0.0,
            },
            "model": {"name": name},
            "stages": [{"train": solver}, {"evaluate": {}}],
        },
        source=f"baseline {name}",
    )
    start = time.time()
    rundir = run(recipe, WORK / "runs" / recipe.name, overwrite=True)
    seconds = time.time() - start
    final = [r for r in rundir.records() if r.get("kind") == "stage" and r["stage"] == "evaluate"][-1]
    out = WORK / "baselines" / f"{name}.safetensors"
    out.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(rundir.checkpoint_path(len(recipe.stages) - 1, "evaluate"), out)
    result = {
        "model": name,
        "dataset": setup["data"],
        "test_accuracy": final["accuracy"],
        "test_error": 1 - final["accuracy"],
        "params": final["params"],
        "macs": final["macs"],
        "train_seconds": round(seconds, 1),
        "solver": solver,
        "batch_size": batch,
        "weights": str(out.relative_to(WORK.parents[1])),
        "reference": setup["reference"],
        "paper_error": setup.get("paper_error"),
        "paper_accuracy": setup.get("paper_accuracy"),
    }
    if setup["data"] == "cifar10":
        result["note"] = "CIFAR-10 here is a JPEG re-encoding (~q75); not directly comparable to official pixels"
    save(f"baseline_{name}", result)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("models", nargs="+", choices=sorted(SETUPS))
    parser.add_argument("--epochs", type=float, default=None, help="override the training length")
    parser.add_argument("--weight-decay", type=float, default=None, help="override the solver's weight decay")
    parser.add_argument("--batch", type=int, default=None, help="override the mini-batch size")
    parser.add_argument(
        "--solver",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override any solver key (value read as YAML), e.g. --solver swa=true --solver swa_lr=0.01",
    )
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    overrides = {}
    for item in args.solver:
        key, sep, value = item.partition("=")
        if not sep or not key:
            parser.error(f"--solver takes KEY=VALUE, got {item!r}")
        overrides[key] = yaml.safe_load(value)
    torch.set_num_threads(args.threads)
    for name in args.models:
        r = train(name, args.epochs, args.weight_decay, args.batch, overrides)
        print(f"{name}: test error {r['test_error']:.2%} in {r['train_seconds']:.0f} s")


if __name__ == "__main__":
    main()
