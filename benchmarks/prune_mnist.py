"""Magnitude pruning of LeNet-300-100 and LeNet-5 on MNIST (Han et al. 2015, Table 1).

    python benchmarks/prune_mnist.py                            # both models
    python benchmarks/prune_mnist.py lenet300 --rounds 6 --retrain-iters 5000   # its default

Han, Pool, Tran & Dally 2015, "Learning both Weights and Connections for
Efficient Neural Networks", NIPS 2015.  Per model:

1. the baseline: ``benchmarks/work/baselines/<model>.safetensors`` from
   ``benchmarks/baselines.py``; if missing, trained here with Caffe's LeNet
   solver for ``--train-iters`` iterations (recorded in the result);
2. sensitivity analysis (Sec. 4, Fig. 6): each layer pruned alone at 10-98 %,
   accuracy on a validation split of the training set (the plot goes next to the
   JSON), and the per-layer sparsities it allows within a 0.5-point drop, applied
   one-shot without retraining;
3. the paper's three-step method (Sec. 3, Fig. 2) at its per-layer rates
   (Table 1: LeNet-300-100 keeps 8/9/26 %, LeNet-5 66/12/8/19 %): ``--rounds``
   times prune each layer a step further by weight magnitude, then retrain the
   surviving weights with the masks held for ``--retrain-iters`` iterations on
   the 60,000 training images (iterative pruning, Sec. 3.3; each round removes the
   same fraction of the weights still alive, the last reaches the paper's rate);
   ``--schedule agp`` ramps the sparsity up during one retraining instead (Zhu &
   Gupta 2017, not the paper's method).  Then test error, non-zero weights and the
   size of the codec file (sparse tensors) against the dense one.  The pruned
   model is kept in ``benchmarks/work/prune_mnist/<model>_pruned.safetensors``
   (``deep_compression.py --pruned`` continues from it).
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from torch import nn  # noqa: E402

from benchmarks._common import REPO, RESULTS, WORK, save, shared_data  # noqa: E402
from benchmarks.baselines import CAFFE_LENET  # noqa: E402
from tinytamer import codec  # noqa: E402
from tinytamer.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from tinytamer.compress import prune, sensitivity  # noqa: E402
from tinytamer.data import get_dataset, make_loader  # noqa: E402
from tinytamer.train import Solver, SolverConfig, evaluate  # noqa: E402
from tinytamer.zoo import count, create  # noqa: E402

# Han et al. 2015, Table 1: fraction of each layer's weights removed.
PAPER = {
    "lenet300": {"1": 0.92, "3": 0.91, "5": 0.74},
    "lenet5": {"features.0": 0.34, "features.2": 0.88, "classifier.1": 0.92, "classifier.3": 0.81},
}
# Retraining per round of the iterative schedule, per model: what reaches the paper's figure
# here (LeNet-5 ended 0.03 points short after 6 x 5,000 in three schedules; 6 x 10,000 reached
# it: see benchmarks/RESULTS.md).
RETRAIN_ITERS = {"lenet300": 5000, "lenet5": 10000}
PAPER_ERROR = {"lenet300": {"dense": 0.0164, "pruned": 0.0159}, "lenet5": {"dense": 0.0080, "pruned": 0.0077}}
SHAPE = (1, 28, 28)
SEEN = (
    "; the baseline checkpoint was trained on all 60,000 training images, so the "
    "curves are optimistic (measured on seen images)"
)


def baseline(name: str, train_loader, train_iters: int) -> tuple[nn.Module, str]:
    path = WORK / "baselines" / f"{name}.safetensors"
    if path.is_file():
        return load_checkpoint(path).train(), str(path.relative_to(REPO))
    model = create(name, num_classes=10, in_channels=1, input_size=28)
    cfg = SolverConfig(**{**CAFFE_LENET, "max_iter": train_iters, "snapshot": 0, "test_interval": 0})
    Solver(model, cfg, train_loader, progress=False).solve()
    return model, f"trained here: Caffe LeNet solver, {train_iters} iterations (no baseline file)"


def nonzero_weights(model: nn.Module, layers: list[str]) -> tuple[int, int]:
    mods = dict(model.named_modules())
    total = sum(mods[n].weight.numel() for n in layers)
    return total, sum(int((mods[n].weight != 0).sum()) for n in layers)


def run(name: str, args: argparse.Namespace) -> dict:
    data = get_dataset("mnist", shared_data() / "mnist", val_fraction=0.1, seed=0)
    train_loader = make_loader(data.train, 64, shuffle=True, seed=0)
    val_loader = make_loader(data.val, 1000, shuffle=False)
    test_loader = make_loader(data.test, 1000, shuffle=False)
    work = WORK / "prune_mnist"
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.time()

    model, source = baseline(name, train_loader, args.train_iters)
    dense_acc = evaluate(model, test_loader)["accuracy"]
    print(f"{name}: baseline ({source}) test error {1 - dense_acc:.2%}", flush=True)
    dense_file = codec.save(model, work / f"{name}_dense.ttm")
    layers = list(PAPER[name])

    def val_acc(m: nn.Module) -> float:
        return evaluate(m, val_loader, max_batches=args.val_batches)["accuracy"]

    t1 = time.time()
    sens = sensitivity.analyze(
        model, val_acc, select={"names": layers}, sparsities=[0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.98]
    )
    sens.save(work / f"{name}_sensitivity.json")
    plot = sensitivity.plot(
        sens,
        RESULTS / f"prune_mnist_{name}_sensitivity.png",
        title=f"{name} on MNIST: pruning one layer at a time (no retraining)",
    )
    chosen = sensitivity.choose_sparsities(sens, max_drop=0.005)
    oneshot = copy.deepcopy(model)
    prune.magnitude(oneshot, {k: v for k, v in chosen.items() if v > 0})
    prune.remove_masks(oneshot)
    oneshot_total, oneshot_nz = nonzero_weights(oneshot, layers)
    oneshot_acc = evaluate(oneshot, test_loader)["accuracy"]

    print(f"{name}: sensitivity done; chosen {chosen}", flush=True)
    t2 = time.time()
    # Retraining sees all 60,000 training images, as the baseline and the paper did; the
    # validation split above only keeps the sensitivity scores off the training loss.
    full = get_dataset("mnist", shared_data() / "mnist", val_fraction=0.0)
    retrain_loader = make_loader(full.train, 64, shuffle=True, seed=0)
    retrain_cfg = {
        "base_lr": args.retrain_lr,
        "momentum": 0.9,
        "weight_decay": 5e-4,
        "lr_policy": "poly",
        "power": 1.0,
        "display": 0,
        "snapshot": 0,
        "test_interval": 0,
    }
    rounds: list[dict] = []
    if args.schedule == "iterative":

        def retrain(m: nn.Module) -> None:
            # Poly decay to zero within each round: every round ends converged at its mask.
            cfg = SolverConfig(**retrain_cfg, max_iter=args.retrain_iters, seed=len(rounds))
            Solver(m, cfg, retrain_loader, progress=False).solve()
            rounds.append(
                {
                    "round": len(rounds) + 1,
                    "test_error": 1 - evaluate(m, test_loader)["accuracy"],
                    "seconds": round(time.time() - t2, 1),
                }
            )
            print(f"{name}: round {len(rounds)} test error {rounds[-1]['test_error']:.2%}", flush=True)

        prune.iterative(model, retrain, PAPER[name], rounds=args.rounds)
        schedule: dict = {"type": "iterative", "rounds": args.rounds, "iters_per_round": args.retrain_iters}
    else:
        end = int(args.agp_fraction * args.retrain_iters)
        agp = prune.AGPSchedule(
            initial=0.0, final=max(PAPER[name].values()), start=0, end=end, frequency=max(1, end // 10)
        )
        hook = prune.GradualPruner(model, agp, PAPER[name])
        cfg = SolverConfig(**retrain_cfg, max_iter=args.retrain_iters)
        Solver(model, cfg, retrain_loader, progress=False, after_step=[hook]).solve()
        schedule = {"type": "agp", **agp.model_dump()}
    per_layer = prune.layer_sparsity(model, {"names": layers}).to_dict()["layers"]
    prune.remove_masks(model)
    pruned_acc = evaluate(model, test_loader)["accuracy"]
    pruned_file = codec.save(model, work / f"{name}_pruned.ttm")
    checkpoint = save_checkpoint(model, work / f"{name}_pruned.safetensors")
    total, nz = nonzero_weights(model, layers)
    counts = count(model, SHAPE)
    t3 = time.time()
    iters = args.retrain_iters * (args.rounds if args.schedule == "iterative" else 1)

    result = {
        "model": name,
        "baseline": source,
        "dense": {
            "test_error": 1 - dense_acc,
            "weights": total,
            "params": counts.params,
            "file_bytes": dense_file.file_bytes,
        },
        "sensitivity": {
            "split": f"validation split of the training set ({len(data.val)} "
            f"images, {args.val_batches} x 1000 used per point)" + (SEEN if source.endswith(".safetensors") else ""),
            "baseline_val_acc": sens.baseline,
            "max_drop": 0.005,
            "chosen": chosen,
            "plot": str(plot.relative_to(REPO)),
            "oneshot_test_error": 1 - oneshot_acc,
            "oneshot_weights_ratio": oneshot_total / max(oneshot_nz, 1),
        },
        "pruned": {
            "test_error": 1 - pruned_acc,
            "nonzero_weights": nz,
            "weights_ratio": total / nz,
            "nonzero_params": counts.nonzero_params,
            "params_ratio": counts.params / counts.nonzero_params,
            "file_bytes": pruned_file.file_bytes,
            "file_ratio": dense_file.file_bytes / pruned_file.file_bytes,
            "layers": {k: v["sparsity"] for k, v in per_layer.items()},
            "targets": PAPER[name],
            "checkpoint": str(checkpoint.relative_to(REPO)),
        },
        "retrain": {
            "iters": iters,
            "epochs": round(iters * 64 / len(full.train), 1),
            "batch": 64,
            "images": len(full.train),
            "base_lr": args.retrain_lr,
            "lr_policy": "poly (to 0 within each round)",
            "momentum": 0.9,
            "weight_decay": 5e-4,
            "schedule": schedule,
            "rounds": rounds,
        },
        "paper": {"source": "Han et al. 2015, Table 1", **PAPER_ERROR[name], "weights_ratio": 12},
        "seconds": {
            "baseline": round(t1 - t0, 1),
            "sensitivity": round(t2 - t1, 1),
            "prune_retrain": round(t3 - t2, 1),
        },
    }
    print(
        f"{name}: dense error {1 - dense_acc:.2%}, pruned error {1 - pruned_acc:.2%}, "
        f"{total / nz:.1f}x fewer weights, file {dense_file.file_bytes} -> "
        f"{pruned_file.file_bytes} bytes; sensitivity one-shot {oneshot_total / oneshot_nz:.1f}x "
        f"at {1 - oneshot_acc:.2%} error"
    )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("models", nargs="*", choices=sorted(PAPER), help="default: lenet300 lenet5")
    parser.add_argument(
        "--schedule",
        choices=["iterative", "agp"],
        default="iterative",
        help="iterative: the paper's prune-retrain rounds; agp: one gradual ramp",
    )
    parser.add_argument("--rounds", type=int, default=6, help="prune-retrain rounds (iterative)")
    parser.add_argument(
        "--retrain-iters",
        type=int,
        default=None,
        help=f"retraining iterations per round (agp: in all); default per model: {RETRAIN_ITERS}",
    )
    parser.add_argument("--retrain-lr", type=float, default=0.01)
    parser.add_argument(
        "--agp-fraction", type=float, default=0.6, help="agp: part of the retraining over which sparsity ramps up"
    )
    parser.add_argument(
        "--train-iters", type=int, default=2000, help="baseline training when no baseline checkpoint exists"
    )
    parser.add_argument("--val-batches", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    args.models = args.models or ["lenet300", "lenet5"]
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    for name in args.models:  # one file per model, so models can be rerun separately
        model_args = copy.copy(args)
        model_args.retrain_iters = args.retrain_iters or RETRAIN_ITERS[name]
        save(f"prune_mnist_{name}", run(name, model_args))


if __name__ == "__main__":
    main()
