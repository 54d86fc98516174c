"""Headline: trained ResNet-8 on CIFAR-10, channel-pruned + int8 on the best target, vs dense fp32.

    python benchmarks/baselines.py resnet8 --epochs 30   # first: the trained baseline
    python benchmarks/targets_headline.py             # prune 50 %, fine-tune, int8, compare
    python benchmarks/targets_headline.py --ratio 0.125 --round-to 2 --finetune-epochs 6 \
        --control --result targets_headline_r0.125     # the run in RESULTS.md

The dense model is the trained baseline (``benchmarks/work/baselines/resnet8.safetensors``).
It is channel-pruned (L1, per-layer ``--ratio``, multiples of ``--round-to``, classifier kept) and
fine-tuned with the Solver (SGD, momentum 0.9, poly lr from 0.01, ``--finetune-epochs``
on the CIFAR-10 training split, augmented); then deployed to every installed target and
precision (int8: ONNX Runtime static QDQ calibrated on 256 real training images).  Every
candidate and dense PyTorch fp32 eager are timed in fresh child processes, 2 threads,
``--rounds`` round-robin; accuracy is measured through each runtime on the whole test
set.  Reported: the fastest candidate that loses at most ``--max-drop`` top-1 against
the dense model, with its speed-up over dense PyTorch fp32 at batch 1 and 32.

``--control`` also fine-tunes the dense model with the same schedule and epochs: when
the baseline is not trained to convergence, extra epochs alone raise accuracy, and the
pruned model is then judged against the better of the two dense models.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from benchmarks._common import WORK, save, shared_data  # noqa: E402
from tinytamer.calib import Calibration  # noqa: E402
from tinytamer.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from tinytamer.compress.channel import prune_channels  # noqa: E402
from tinytamer.data import get_dataset, make_loader  # noqa: E402
from tinytamer.deploy import runtime_accuracy  # noqa: E402
from tinytamer.targets import get_target, list_targets  # noqa: E402
from tinytamer.train import Solver, SolverConfig  # noqa: E402
from tinytamer.zoo import count  # noqa: E402

BASELINE = WORK / "baselines" / "resnet8.safetensors"


def finetuned(path: Path, config: SolverConfig, loader, make: Callable[[], torch.nn.Module]) -> torch.nn.Module:
    """``make()`` fine-tuned with ``config`` on ``loader``, or the copy saved at ``path``."""
    if path.is_file():
        print(f"reusing {path.name}")
        return load_checkpoint(path).eval()
    model = make()
    Solver(model, config, loader, progress=False).solve()
    save_checkpoint(model.eval(), path)
    return model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ratio", type=float, default=0.5)
    ap.add_argument(
        "--round-to",
        type=int,
        default=8,
        help="kept channels are a multiple of this (8 halves ResNet-8's 16-channel layers at 25%%)",
    )
    ap.add_argument("--finetune-epochs", type=float, default=2.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--max-drop", type=float, default=0.01)
    ap.add_argument(
        "--control", action="store_true", help="fine-tune the dense model the same way and judge against the better"
    )
    ap.add_argument("--result", default="targets_headline", help="name of the JSON written under benchmarks/results/")
    args = ap.parse_args()
    if not BASELINE.is_file():
        sys.exit(f"trained baseline not found: {BASELINE} (run: python benchmarks/baselines.py resnet8)")
    torch.manual_seed(0)
    root = shared_data() / "cifar10-jpg.tar.gz"
    data = get_dataset("cifar10", root, augment=True, val_fraction=0.0)
    train = make_loader(data.train, 128, shuffle=True, seed=0)
    test = make_loader(data.test, 256, shuffle=False)
    dense = load_checkpoint(BASELINE)
    example = data.test[0][0].unsqueeze(0)
    work = WORK / "targets" / "headline"
    config = SolverConfig(
        base_lr=0.01,
        momentum=0.9,
        weight_decay=5e-4,
        lr_policy="poly",
        power=1.0,
        epochs=args.finetune_epochs,
        display=100,
    )
    # Fine-tuned models are kept (gitignored) so a rerun of the timing needs no retraining;
    # the baseline's digest is in the name so a retrained baseline is never paired with them.
    base_id = hashlib.sha256(BASELINE.read_bytes()).hexdigest()[:10]
    tag = f"{base_id}-r{args.ratio:g}-rt{args.round_to}-e{args.finetune_epochs:g}"
    t0 = time.time()
    pruned = finetuned(
        work / f"pruned-{tag}.safetensors",
        config,
        train,
        lambda: prune_channels(dense, example, ratio=args.ratio, round_to=args.round_to),
    )
    finetune_s = time.time() - t0
    control_acc = None
    if args.control:
        control = finetuned(
            work / f"control-{base_id}-e{args.finetune_epochs:g}.safetensors",
            config,
            make_loader(data.train, 128, shuffle=True, seed=0),
            lambda: copy.deepcopy(dense),
        )
        control_acc = runtime_accuracy(
            get_target("torch").compile(control, [example], work / "control-torch"), control, test
        )["accuracy"]
    calib = Calibration(make_loader(data.train, 64, shuffle=True, seed=1), limit=4)
    candidates = {
        ("torch", "fp32", "dense"): get_target("torch").compile(
            dense, [example], work / "dense-torch", calib=calib, threads=args.threads
        )
    }
    failures = {}
    # The runtime alone, for reference: the dense model on ONNX Runtime.
    for prec in ("fp32", "int8"):
        try:
            candidates[("onnxruntime", prec, "dense")] = get_target("onnxruntime").compile(
                dense, [example], work / f"dense-onnxruntime-{prec}", precision=prec, calib=calib, threads=args.threads
            )
        except Exception as exc:  # noqa: BLE001 - a failing target is reported, not fatal
            failures[f"dense-onnxruntime-{prec}"] = str(exc)
    for name in [t for t in list_targets(available_only=True) if t in ("torch", "onnxruntime", "ncnn")]:
        tgt = get_target(name)
        for prec in tgt.precisions:
            try:
                candidates[(name, prec, "pruned")] = tgt.compile(
                    pruned, [example], work / f"pruned-{name}-{prec}", precision=prec, calib=calib, threads=args.threads
                )
            except Exception as exc:  # noqa: BLE001 - a failing target is reported, not fatal
                failures[f"{name}-{prec}"] = str(exc)
    acc = {
        k: runtime_accuracy(d, dense if k[2] == "dense" else pruned, test)["accuracy"] for k, d in candidates.items()
    }
    rows = []
    for b in (1, 32):
        best: dict[tuple, float] = {}
        for _ in range(args.rounds):
            for k, d in candidates.items():
                ms = d.measure(batch=b, threads=args.threads, repeats=args.repeats, warmup=5).latency_ms_median
                best[k] = min(best.get(k, ms), ms)
        base = best[("torch", "fp32", "dense")]
        for k, ms in best.items():
            rows.append(
                {
                    "target": k[0],
                    "precision": k[1],
                    "model": k[2],
                    "batch": b,
                    "latency_ms": ms,
                    "speedup_vs_dense_torch_fp32": base / ms,
                    "accuracy": acc[k],
                    "acc_delta": acc[k] - acc[("torch", "fp32", "dense")],
                    "artifact_bytes": candidates[k].artifact_bytes,
                }
            )
    reference = max(acc[("torch", "fp32", "dense")], control_acc or 0.0)
    for r in rows:
        r["acc_delta_vs_best_dense"] = r["accuracy"] - reference
    ok = [
        r for r in rows if r["batch"] == 1 and r["model"] == "pruned" and -r["acc_delta_vs_best_dense"] <= args.max_drop
    ]
    pick = max(ok, key=lambda r: r["speedup_vs_dense_torch_fp32"], default=None)
    for r in rows:
        print(
            f"{r['model']:6s} {r['target']:12s} {r['precision']:5s} b{r['batch']:<3d} "
            f"{r['latency_ms']:8.3f} ms  x{r['speedup_vs_dense_torch_fp32']:6.2f}  "
            f"acc {r['accuracy']:.4f} ({100 * r['acc_delta']:+.2f})"
        )
    if control_acc is not None:
        print(f"dense fine-tuned the same way (control): acc {control_acc:.4f}")
    print("pick (batch 1):", pick)
    save(
        args.result,
        {
            "baseline": str(BASELINE.relative_to(WORK.parents[1])),
            "baseline_sha256_10": base_id,
            "baseline_accuracy": acc[("torch", "fp32", "dense")],
            "ratio": args.ratio,
            "round_to": args.round_to,
            "finetune_epochs": args.finetune_epochs,
            "finetune_seconds": round(finetune_s, 1),
            "macs_dense": count(dense, (3, 32, 32)).macs,
            "macs_pruned": count(pruned, (3, 32, 32)).macs,
            "threads": args.threads,
            "repeats": args.repeats,
            "rounds": args.rounds,
            "max_drop": args.max_drop,
            "control_accuracy": control_acc,
            "load_average_1_5_15": os.getloadavg(),
            "rows": rows,
            "pick": pick,
            "failures": failures,
        },
    )


if __name__ == "__main__":
    main()
