"""Training throughput of the Solver: 4-d weights channels_last against contiguous, on this CPU.

    python benchmarks/train_speed.py                      # all models, 2 threads (~6 min)
    python benchmarks/train_speed.py resnet8 --threads 1
    python benchmarks/train_speed.py --quick              # smoke run

The Solver's ``memory_format: channels_last`` trains a model's 4-d weights (and so its
activations) in the layout oneDNN's CPU convolutions run fastest, and hands the model back
contiguous.  This measures what that buys, per model, with the whole training step (data
loader and its augmentation, forward, backward, SGD update) timed by wall clock over
``--iters`` updates.  The layouts alternate round by round from the same initial weights
(the median of ``--rounds`` rounds is reported, with the spread), each after a short
warm-up solve.

Agreement: the layouts compute the same function.  On one training batch the loss
gradient of every parameter is computed in float32 in each layout and in float64
(contiguous) as the reference; the largest error of each layout, relative to the largest
reference gradient, is recorded, and channels_last must stay within 5e-2 of it or the run
fails (a layout that computed something else is off by order 1).  The two layouts are not
equally exact: PyTorch's channels_last BatchNorm on CPU gathers its batch statistics less
precisely (ResNet-8 at initialization, 2 threads: 2.7e-3 against 2.4e-4 contiguous), and BatchNorm's
backward, which subtracts nearly equal sums, carries that to the early layers' gradients.
What that costs a trained model is measured by training it both ways
(``optimizers.py sgd --memory-format ...``, RESULTS.md).  Dropout is off for this check:
in channels_last the same random stream falls on other elements, an equally random mask.
Whole training runs are not compared weight for weight: float32 training is chaotic, so two
summation orders drift apart over the steps whichever is more exact.

Data: ResNet-8 / ResNet-20 on CIFAR-10 (JPEG copy, crop + flip), LeNet-5 on MNIST, and
DS-CNN on random 1 x 49 x 10 inputs (no keyword audio is needed to time it; the values do
not change the work).  Results: ``benchmarks/results/train_speed.json``.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.utils.data import Subset, TensorDataset  # noqa: E402

from benchmarks._common import save, shared_data  # noqa: E402
from tinytamer.data import get_dataset, make_loader  # noqa: E402
from tinytamer.train import Solver, SolverConfig  # noqa: E402
from tinytamer.zoo import create  # noqa: E402

BATCH = 128
LAYOUTS = ("contiguous", "channels_last")
# Largest gradient error (relative to the largest reference gradient) a layout may show:
# far above float32 rounding and BatchNorm's amplification of it, far below a wrong result.
AGREEMENT = 5e-2


def setups() -> dict[str, dict[str, Any]]:
    cifar = str(shared_data() / "cifar10-jpg.tar.gz")
    return {
        "resnet8": {"make": lambda: create("resnet8"), "data": ("cifar10", cifar), "input": "3x32x32"},
        "resnet20": {"make": lambda: create("resnet20"), "data": ("cifar10", cifar), "input": "3x32x32"},
        "lenet5": {
            "make": lambda: create("lenet5", in_channels=1, input_size=28),
            "data": ("mnist", str(shared_data() / "mnist")),
            "input": "1x28x28",
        },
        "dscnn": {
            "make": lambda: create("dscnn", num_classes=12, in_channels=1),
            "data": None,
            "input": "1x49x10 (random)",
        },
    }


def train_set(setup: dict[str, Any], n: int) -> Any:
    if setup["data"] is None:
        g = torch.Generator().manual_seed(0)
        return TensorDataset(torch.randn(n, 1, 49, 10, generator=g), torch.randint(0, 12, (n,), generator=g))
    name, root = setup["data"]
    data = get_dataset(name, root, val_fraction=0.0, augment=True)
    return Subset(data.train, range(min(n, len(data.train))))


def solve(model: torch.nn.Module, data: Any, iters: int, layout: str) -> float:
    """Seconds for ``iters`` updates of the Solver (loader included) in ``layout``."""
    cfg = SolverConfig(max_iter=iters, base_lr=0.01, momentum=0.9, weight_decay=1e-4, display=0, memory_format=layout)
    loader = make_loader(data, BATCH, shuffle=True, seed=0)
    start = time.perf_counter()
    Solver(model, cfg, loader, progress=False).solve()
    return time.perf_counter() - start


def gradient_errors(init: torch.nn.Module, data: Any) -> dict[str, float]:
    """Each layout's float32 gradient error on one batch against float64 (see the module doc)."""
    x, y = next(iter(make_loader(data, BATCH, shuffle=False)))

    def grads(model: torch.nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
        model.train()
        for m in model.modules():
            if isinstance(m, torch.nn.Dropout):
                m.eval()
        F.cross_entropy(model(x), y).backward()
        return [p.grad.double() for p in model.parameters()]

    ref = grads(copy.deepcopy(init).double(), x.double())
    scale = max(g.abs().max().item() for g in ref)
    out = {}
    for layout in LAYOUTS:
        model = copy.deepcopy(init)
        if layout == "channels_last":
            model.to(memory_format=torch.channels_last)
        out[layout] = max((g - r).abs().max().item() for g, r in zip(grads(model, x), ref, strict=True)) / scale
    return out


def measure(name: str, setup: dict[str, Any], iters: int, rounds: int) -> dict[str, Any]:
    torch.manual_seed(0)
    init = setup["make"]()
    data = train_set(setup, iters * BATCH)
    errors = gradient_errors(init, data)
    if errors["channels_last"] > AGREEMENT:
        raise SystemExit(f"{name}: channels_last gradients are off by {errors['channels_last']:.2e} of their scale")
    for layout in LAYOUTS:  # warm-up: oneDNN builds its kernels on first use
        solve(copy.deepcopy(init), data, 3, layout)
    seconds: dict[str, list[float]] = {layout: [] for layout in LAYOUTS}
    for r in range(rounds):
        for layout in LAYOUTS if r % 2 == 0 else LAYOUTS[::-1]:
            seconds[layout].append(solve(copy.deepcopy(init), data, iters, layout))
    per_layout = {}
    for layout, s in seconds.items():
        med = statistics.median(s)
        per_layout[layout] = {
            "seconds": [round(x, 3) for x in s],
            "median_s": round(med, 3),
            "images_per_s": round(iters * BATCH / med, 1),
            "spread": round((max(s) - min(s)) / med, 4),
            "gradient_error_vs_float64": errors[layout],
        }
    speedup = per_layout["contiguous"]["median_s"] / per_layout["channels_last"]["median_s"]
    print(
        f"{name}: contiguous {per_layout['contiguous']['images_per_s']:.0f} img/s, channels_last "
        f"{per_layout['channels_last']['images_per_s']:.0f} img/s ({speedup:.2f}x); gradient error vs "
        f"float64 {errors['contiguous']:.1e} / {errors['channels_last']:.1e}",
        flush=True,
    )
    return {
        "input": setup["input"],
        "data": setup["data"][0] if setup["data"] else "random",
        "layouts": per_layout,
        "speedup_channels_last": round(speedup, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("models", nargs="*", help="any of resnet8, resnet20, lenet5, dscnn (default: all)")
    parser.add_argument("--iters", type=int, default=40, help="updates timed per round (batch 128)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="smoke run: 3 updates, 1 round")
    args = parser.parse_args()
    all_setups = setups()
    models = args.models or list(all_setups)
    unknown = sorted(set(models) - set(all_setups))
    if unknown:
        parser.error(f"unknown model(s) {unknown}; choose from {', '.join(all_setups)}")
    if args.quick:
        args.iters, args.rounds = 3, 1
    torch.set_num_threads(args.threads)
    results = {name: measure(name, all_setups[name], args.iters, args.rounds) for name in models}
    save(
        "train_speed",
        {
            "threads": args.threads,
            "batch": BATCH,
            "iters_per_round": args.iters,
            "rounds": args.rounds,
            "statistic": "median of rounds (spread = (max - min) / median)",
            "models": results,
        },
        threads=args.threads,
        quick=args.quick,
    )


if __name__ == "__main__":
    main()
