"""Low-rank approximation (Zhang et al. 2015): accuracy vs. measured CPU speed-up, ResNet-8 / ResNet-18.

    python benchmarks/lowrank_speedup.py                         # resnet8 resnet18 at 1.5/2/3x
    python benchmarks/lowrank_speedup.py --models resnet8 --finetune-iters 0

For each model and target speed-up (whole-model MACs), the ranks are chosen per layer
by the paper's greedy PCA-energy selection and the layers are solved with the
nonlinear asymmetric method from calibration batches of CIFAR-10 training images
(the JPEG re-encoding of CIFAR-10 in the shared data folder).

* ResNet-8: the trained baseline ``benchmarks/work/baselines/resnet8.safetensors``
  when present, else a copy trained here for ``--train-iters`` iterations (stated
  in the result).  Accuracy on the CIFAR-10 test split (first ``--test-limit`` images)
  before and after a short fine-tune; without fine-tuning the plain weight SVD and
  the linear (PCA) solution at the same ranks are scored too.
* ResNet-18 (CIFAR stem): too slow to train on this machine, so its weights are
  untrained (BN statistics collected on CIFAR-10 images); accuracy is not
  meaningful and is replaced by the relative error of the logits against the
  original network on the test images.

Latency: median of ``--repeats`` forward passes after warm-up, eval mode under
``torch.inference_mode`` with ``--threads`` threads (2 by default), at batch 1 and 32; the
original model is measured in the same run and the variants are timed
round-robin, so load on a shared machine hits all of them alike.
"""

from __future__ import annotations

import argparse
import sys
import time
from itertools import islice
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.data import Subset  # noqa: E402

from benchmarks._common import WORK, save, shared_data, time_round_robin  # noqa: E402
from tinytamer.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from tinytamer.compress import lowrank  # noqa: E402
from tinytamer.data import get_dataset, make_loader  # noqa: E402
from tinytamer.train import Solver, SolverConfig, evaluate  # noqa: E402
from tinytamer.zoo import count, create  # noqa: E402

SHAPE = (3, 32, 32)
BASELINE = WORK / "baselines" / "resnet8.safetensors"
BRIEF = WORK / "lowrank" / "resnet8_brief.safetensors"


def measure(variants: dict[str, nn.Module], batch: int, repeats: int, warmup: int) -> dict:
    """Median and spread (ms) of each variant's forward time, timed round-robin."""
    x = torch.randn(batch, *SHAPE, generator=torch.Generator().manual_seed(0))
    return time_round_robin(variants, x, repeats, warmup)


def resnet8(data, iters: int) -> tuple[nn.Module, str]:
    if BASELINE.is_file():
        return load_checkpoint(BASELINE), "trained baseline benchmarks/work/baselines/resnet8.safetensors"
    brief = f"no baseline checkpoint: trained here for {iters} iterations of batch 128 (SGD, lr 0.05 poly)"
    if BRIEF.is_file():
        return load_checkpoint(BRIEF), brief
    model = create("resnet8")
    config = SolverConfig(
        base_lr=0.05, lr_policy="poly", power=1.0, max_iter=iters, momentum=0.9, weight_decay=5e-4, display=0
    )
    Solver(model, config, make_loader(data.train, 128, shuffle=True), progress=True).solve()
    save_checkpoint(model.eval(), BRIEF)
    return model, brief


def resnet18(calib: list[torch.Tensor]) -> tuple[nn.Module, str]:
    model = create("resnet18", input_size=32)
    model.train()
    with torch.no_grad():  # BN statistics of real images, so that responses look like a network's
        for x in calib:
            model(x)
    return model.eval(), "untrained (kaiming init), BN statistics from CIFAR-10 calibration batches"


def logits_error(model: nn.Module, ref: nn.Module, x: torch.Tensor) -> float:
    with torch.no_grad():
        a, b = model(x), ref(x)
    return float(((a - b) ** 2).sum() / (b**2).sum())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=["resnet8", "resnet18"])
    parser.add_argument("--speedups", nargs="+", type=float, default=[1.5, 2.0, 3.0])
    parser.add_argument("--method", default="nonlinear-asymmetric", choices=lowrank.METHODS)
    parser.add_argument("--calib-batches", type=int, default=8, help="batches of 64 training images")
    parser.add_argument("--calib-batches-resnet18", type=int, default=2)
    parser.add_argument("--samples-per-batch", type=int, default=1024)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--train-iters", type=int, default=250, help="ResNet-8 without a baseline")
    parser.add_argument("--finetune-iters", type=int, default=60, help="ResNet-8, batch 128; 0: none")
    parser.add_argument("--test-limit", type=int, default=2000)
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 32])
    parser.add_argument("--repeats", type=int, default=20, help="timed passes at batch 1")
    parser.add_argument("--repeats-batched", type=int, default=10, help="timed passes at larger batches")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", nargs="+", type=int, default=[2], help="latency measured with each")
    parser.add_argument("--result", default="lowrank_speedup", help="name of the results/<name>.json file")
    args = parser.parse_args()
    # Training and decomposition run on one thread: on a shared machine more threads
    # oversubscribe the cores (LAPACK's eigh slows down by 10x and more).
    torch.set_num_threads(1)
    torch.manual_seed(0)

    data = get_dataset("cifar10", str(shared_data() / "cifar10-jpg.tar.gz"), val_fraction=0.0)
    test = make_loader(Subset(data.test, range(min(args.test_limit, len(data.test)))), 256, shuffle=False)
    calib_all = [x for x, _ in islice(make_loader(data.train, 64, shuffle=True, seed=1), args.calib_batches)]
    test_x = torch.stack([data.test[i][0] for i in range(256)])

    rows, models_info = [], {}
    for name in args.models:
        trained = name == "resnet8"
        calib = calib_all if trained else calib_all[: args.calib_batches_resnet18]
        model, weights = resnet8(data, args.train_iters) if trained else resnet18(calib)
        model.eval()
        models_info[name] = weights
        base_acc = evaluate(model, test)["accuracy"] if trained else None
        variants: dict[str, nn.Module] = {"dense": model}
        info: dict[str, dict] = {"dense": {"speedup_target": 1.0, "accuracy": base_acc}}
        for s in args.speedups:
            start = time.perf_counter()
            result = lowrank.approximate(
                model, calib, speedup=s, method=args.method, samples_per_batch=args.samples_per_batch, iters=args.iters
            )
            row = {"speedup_target": s, "decompose_s": time.perf_counter() - start, "ranks": result.ranks}
            new = result.model.eval()
            if trained:
                row["accuracy_no_finetune"] = evaluate(new, test)["accuracy"]
                for other in ("svd", "linear"):
                    alt = lowrank.decompose(model, calib, ranks=result.ranks, method=other, speedup=None)
                    row[f"accuracy_no_finetune_{other}"] = evaluate(alt.eval(), test)["accuracy"]
                if args.finetune_iters:
                    config = SolverConfig(
                        base_lr=0.01,
                        lr_policy="poly",
                        power=1.0,
                        max_iter=args.finetune_iters,
                        momentum=0.9,
                        weight_decay=5e-4,
                        display=0,
                    )
                    Solver(new, config, make_loader(data.train, 128, shuffle=True, seed=2), progress=False).solve()
                    new.eval()
                row["accuracy"] = evaluate(new, test)["accuracy"]
            else:
                row["logits_rel_error"] = logits_error(new, model, test_x)
                alt = lowrank.decompose(model, calib, ranks=result.ranks, method="svd", speedup=None)
                row["logits_rel_error_svd"] = logits_error(alt.eval(), model, test_x)
            key = f"{s:g}x"
            variants[key], info[key] = new, row
            print(f"{name} {key}: {row}", flush=True)
        counts = {k: count(m, SHAPE) for k, m in variants.items()}
        for threads, batch in [(t, b) for t in args.threads for b in args.batches]:
            torch.set_num_threads(threads)
            lat = measure(variants, batch, args.repeats if batch == 1 else args.repeats_batched, args.warmup)
            torch.set_num_threads(1)
            base = lat["dense"]["median_ms"]
            for k in variants:
                row = {
                    "model": name,
                    "variant": k,
                    "threads": threads,
                    "batch": batch,
                    **info[k],
                    "params": counts[k].params,
                    "macs": counts[k].macs,
                    "macs_ratio": counts["dense"].macs / counts[k].macs,
                    **lat[k],
                    "latency_speedup": base / lat[k]["median_ms"],
                }
                rows.append(row)
                print(
                    f"{name:9s} {k:6s} {threads} thr batch {batch:2d}: MACs {row['macs'] / 1e6:7.1f} M "
                    f"(x{row['macs_ratio']:.2f}) latency {row['median_ms']:8.2f} ms "
                    f"(x{row['latency_speedup']:.2f})",
                    flush=True,
                )
    save(
        args.result,
        {
            "settings": {
                "method": args.method,
                "calib_images": {"resnet8": 64 * args.calib_batches, "resnet18": 64 * args.calib_batches_resnet18},
                "samples_per_batch": args.samples_per_batch,
                "iters": args.iters,
                "finetune_iters": args.finetune_iters,
                "test_images": min(args.test_limit, len(data.test)),
                "threads": args.threads,
                "repeats": [args.repeats, args.repeats_batched],
                "warmup": args.warmup,
                "data": "CIFAR-10, JPEG re-encoding (cifar10-jpg.tar.gz)",
                "weights": models_info,
            },
            "rows": rows,
        },
    )


if __name__ == "__main__":
    main()
