"""Headline: trained ResNet-8 on CIFAR-10, channel-pruned + int8 on the best target, vs dense fp32.

    python benchmarks/baselines.py resnet8 --epochs 30   # first: the trained baseline
    python benchmarks/targets_headline.py             # prune 50 %, fine-tune, int8, compare
    python benchmarks/targets_headline.py --ratio 0.125 --round-to 2 --finetune-epochs 6 \
        --control --result targets_headline_r0.125     # the run in RESULTS.md
    python benchmarks/targets_headline.py --ratio 0.25 --rounding-target openvino \
        --rounding-precision int8 --finetune-epochs 6 --control   # counts measured on the target
    python benchmarks/targets_headline.py --ratio 0.125 --rounding-target onnxruntime \
        --slack 0.34 --headroom 0.34 --whole-model --finetune-epochs 3 --control  # checked on whole models
    python benchmarks/targets_headline.py ... --finetune-epochs 10 --distill --control   # dense model as teacher
    python benchmarks/targets_headline.py --ratio 0.125 --plan-from targets_headline_r0.125_measured \
        --finetune-epochs 10 --distill --control   # the same kept counts as an earlier run
    python benchmarks/targets_headline.py --quick      # a check that it runs (untrained, minutes)

The dense model is the trained baseline (``benchmarks/work/baselines/resnet8.safetensors``).
It is channel-pruned (L1, per-layer ``--ratio``, classifier kept; kept counts multiples of
``--round-to``, or with ``--rounding-target`` chosen per layer by latency measured on that
target, ``tinytamer.compress.channel_rounding``) and fine-tuned with the Solver (SGD,
momentum 0.9, poly lr from 0.01, ``--finetune-epochs`` on the CIFAR-10 training split,
augmented); then deployed, dense and pruned, to every installed host runtime and precision
(int8 calibrated on 256 real training images, each runtime its own way).  Every candidate
and dense PyTorch fp32 eager are timed in fresh child processes pinned to their cores,
``--threads`` threads, ``--rounds`` round-robin, the median of the rounds' medians;
accuracy is measured through each runtime on the whole test set.  Reported first: the
fastest dense int8 runtime (what a runtime alone buys); then what pruning adds on top of
it: the fastest pruned candidate that loses at most ``--max-drop`` top-1 against the dense
model, with its speed-up over dense PyTorch fp32 and over that dense int8 runtime.

``--control`` also fine-tunes the dense model with the same schedule and epochs: when
the baseline is not trained to convergence, extra epochs alone raise accuracy, and the
pruned model is then judged against the better of the two dense models.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from benchmarks._common import RESULTS, WORK, save, shared_data  # noqa: E402
from tinytamer.calib import Calibration  # noqa: E402
from tinytamer.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from tinytamer.compress import channel_rounding  # noqa: E402
from tinytamer.compress.channel import prune_channels  # noqa: E402
from tinytamer.data import get_dataset, make_loader  # noqa: E402
from tinytamer.deploy import int8_quantizer, runtime_accuracy  # noqa: E402
from tinytamer.targets import get_target, list_targets  # noqa: E402
from tinytamer.targets.base import ONE_ROUND, ROUNDS, combine_rounds  # noqa: E402
from tinytamer.train import Solver, SolverConfig  # noqa: E402
from tinytamer.train.distill import Distillation, DistillParams  # noqa: E402
from tinytamer.zoo import count, create  # noqa: E402

BASELINE = WORK / "baselines" / "resnet8.safetensors"
# The CPU runtimes a user would deploy on (the emulated devices are benchmarked elsewhere).
HOST_RUNTIMES = ("torch", "onnxruntime", "openvino", "ncnn")


def measured_plan(
    dense: torch.nn.Module, example: torch.Tensor, calib: Sequence[torch.Tensor], args: argparse.Namespace
) -> Any:
    """Kept counts per layer chosen by timing single layers on ``--rounding-target`` and,
    with ``--whole-model``, then checked on whole pruned models (batch 1)."""
    single, whole, _ = channel_rounding.measure_plans(
        dense,
        example,
        args.rounding_target,
        args.rounding_precision,
        args.threads,
        1,
        ratio=args.ratio,
        repeats=args.repeats,
        slack=args.slack,
        headroom=args.headroom,
        whole_model=args.whole_model,
        calib=calib,  # the trained model is calibrated and checked on real training samples
        progress=True,
    )
    return whole if whole is not None else single


def reused_plan(dense: torch.nn.Module, name: str) -> channel_rounding.ChannelPlan:
    """The kept counts of an earlier run's result ``name`` (its ``rounding_plan``), checked
    against ``dense``: the same layers with the same channels, counts within them."""
    path = RESULTS / f"{name}.json"
    try:
        saved = json.loads(path.read_text())["rounding_plan"]
        layers = {n: channel_rounding.LayerChoice(**c) for n, c in saved["layers"].items()}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        sys.exit(f"--plan-from {name}: {path} holds no rounding plan ({exc})")
    modules = dict(dense.named_modules())
    for n, c in layers.items():
        have = getattr(modules.get(n), "out_channels", None)
        if have != c.channels or not isinstance(c.chosen, int) or not 0 < c.chosen <= c.channels:
            sys.exit(
                f"--plan-from {name}: layer {n!r} keeps {c.chosen!r} of {c.channels!r} channels; the model has {have}"
            )
    steps = [channel_rounding.WholeModelStep(**s) for s in saved.get("whole_model", [])]
    return channel_rounding.ChannelPlan(layers, f"{saved['table']} (plan reused from {name})", 0, steps)


def finetuned(
    path: Path,
    config: SolverConfig,
    loader,
    make: Callable[[], torch.nn.Module],
    distill: Distillation | None = None,
) -> torch.nn.Module:
    """``make()`` fine-tuned with ``config`` on ``loader`` (learning from ``distill``'s
    teacher if given), or the copy saved at ``path``."""
    if path.is_file():
        print(f"reusing {path.name}")
        return load_checkpoint(path).eval()
    model = make()
    Solver(model, config, loader, progress=False, distill=distill).solve()
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
    ap.add_argument("--rounding-target", default=None, help="choose kept counts by timing on this target")
    ap.add_argument("--rounding-precision", default="int8", help="precision the rounding target is timed at")
    ap.add_argument("--slack", type=float, default=0.25, help="measured counts down to (1 - slack) x asked")
    ap.add_argument("--headroom", type=float, default=0.0, help="measured counts also up to (1 + headroom) x asked")
    ap.add_argument(
        "--whole-model", action="store_true", help="check the measured counts on whole pruned models (batch 1)"
    )
    ap.add_argument(
        "--plan-from", default=None, help="reuse the kept counts of an earlier result (its name), no timing"
    )
    ap.add_argument(
        "--seed", type=int, default=0, help="seed of the pruned model's fine-tune (the control keeps seed 0)"
    )
    ap.add_argument("--distill", action="store_true", help="fine-tune with the dense baseline as teacher")
    ap.add_argument("--distill-temperature", type=float, default=4.0, help="softmax temperature of the soft targets")
    ap.add_argument("--distill-alpha", type=float, default=0.9, help="weight of the soft term")
    ap.add_argument("--result", default="targets_headline", help="name of the JSON written under benchmarks/results/")
    ap.add_argument(
        "--quick", action="store_true", help="untrained ResNet-8 on 512 images, batch 1, 1 round; benchmarks/work/quick"
    )
    args = ap.parse_args()
    if args.quick:
        args.finetune_epochs, args.repeats, args.rounds = 0.1, 2, 1
    elif not BASELINE.is_file():
        sys.exit(f"trained baseline not found: {BASELINE} (run: python benchmarks/baselines.py resnet8)")
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    root = shared_data() / "cifar10-jpg.tar.gz"
    data = get_dataset("cifar10", root, augment=True, val_fraction=0.0, limit=512 if args.quick else None)
    train = make_loader(data.train, 128, shuffle=True, seed=0)
    test = make_loader(data.test, 256, shuffle=False)
    dense = load_checkpoint(BASELINE) if BASELINE.is_file() else create("resnet8", num_classes=10, input_size=32)
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
    base_id = hashlib.sha256(BASELINE.read_bytes()).hexdigest()[:10] if not args.quick else "untrained"
    rounding = f"m{args.rounding_target}-{args.rounding_precision}" if args.rounding_target else f"rt{args.round_to}"
    rounding = "plan" if args.plan_from else rounding
    distill = (
        Distillation(dense, DistillParams(temperature=args.distill_temperature, alpha=args.distill_alpha))
        if args.distill
        else None
    )
    taught = f"-kd{args.distill_temperature:g}a{args.distill_alpha:g}" if distill is not None else ""
    tag = f"{base_id}-r{args.ratio:g}-{rounding}-e{args.finetune_epochs:g}{taught}"
    if args.quick:
        work = WORK / "quick" / "headline"
    plan = None
    ratio, round_to = args.ratio, args.round_to
    if args.plan_from:
        plan = reused_plan(dense, args.plan_from)
        ratio, round_to = plan.ratios(), None
        tag += "-" + "_".join(str(c.chosen) for c in plan.layers.values())
    elif args.rounding_target:
        plan = measured_plan(dense, example, list(Calibration(train, limit=2)), args)
        ratio, round_to = plan.ratios(), None
        # Timings can choose other counts on a rerun: the counts name the fine-tuned model.
        tag += "-" + "_".join(str(c.chosen) for c in plan.layers.values())
    t0 = time.time()
    if args.seed:
        tag += f"-s{args.seed}"
    pruned = finetuned(
        work / f"pruned-{tag}.safetensors",
        config.model_copy(update={"seed": args.seed}),
        train,
        lambda: prune_channels(dense, example, ratio=ratio, round_to=round_to),
        distill,
    )
    finetune_s = time.time() - t0
    control_acc = None
    if args.control:
        control = finetuned(
            work / f"control-{base_id}-e{args.finetune_epochs:g}{taught}.safetensors",
            config,
            make_loader(data.train, 128, shuffle=True, seed=0),
            lambda: copy.deepcopy(dense),
            distill,
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
    # The runtimes alone (dense), then each with the pruned model.
    for which, model in (("dense", dense), ("pruned", pruned)):
        for name in [t for t in list_targets(available_only=True) if t in HOST_RUNTIMES]:
            tgt = get_target(name)
            extra = {"quantize": int8_quantizer} if getattr(tgt, "takes_quantizer", False) else {}
            for prec in tgt.precisions:
                if (name, prec, which) in candidates:
                    continue
                try:
                    candidates[(name, prec, which)] = tgt.compile(
                        model,
                        [example],
                        work / f"{which}-{name}-{prec}",
                        precision=prec,
                        calib=calib,
                        threads=args.threads,
                        **extra,
                    )
                except Exception as exc:  # noqa: BLE001 - a failing target is reported, not fatal
                    failures[f"{which}-{name}-{prec}"] = str(exc)
    acc = {
        k: runtime_accuracy(d, dense if k[2] == "dense" else pruned, test)["accuracy"] for k, d in candidates.items()
    }
    rows = []
    for b in (1,) if args.quick else (1, 32):
        rounds: dict[tuple, list] = {k: [] for k in candidates}
        for _ in range(args.rounds):
            for k, d in candidates.items():
                rounds[k].append(d.measure(batch=b, threads=args.threads, repeats=args.repeats, warmup=5))
        cost = {k: combine_rounds(v) for k, v in rounds.items()}
        base = cost[("torch", "fp32", "dense")].latency_ms_median
        for k, c in cost.items():
            rows.append(
                {
                    "target": k[0],
                    "precision": k[1],
                    "model": k[2],
                    "batch": b,
                    "latency_ms": c.latency_ms_median,
                    "latency_ms_p10": c.latency_ms_p10,
                    "latency_ms_p90": c.latency_ms_p90,
                    "loaded": c.loaded,
                    "speedup_vs_dense_torch_fp32": base / c.latency_ms_median,
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
    dense_int8 = [r for r in rows if r["batch"] == 1 and r["model"] == "dense" and r["precision"] == "int8"]
    best_dense_int8 = max(dense_int8, key=lambda r: r["speedup_vs_dense_torch_fp32"], default=None)
    if pick is not None and best_dense_int8 is not None:
        pick["speedup_vs_best_dense_int8"] = best_dense_int8["latency_ms"] / pick["latency_ms"]
    for r in rows:
        print(
            f"{r['model']:6s} {r['target']:12s} {r['precision']:5s} b{r['batch']:<3d} "
            f"{r['latency_ms']:8.3f} ms  x{r['speedup_vs_dense_torch_fp32']:6.2f}  "
            f"acc {r['accuracy']:.4f} ({100 * r['acc_delta']:+.2f})"
        )
    if control_acc is not None:
        print(f"dense fine-tuned the same way (control): acc {control_acc:.4f}")
    print("best dense int8 runtime (batch 1):", best_dense_int8)
    print("pick (batch 1), pruned on top:", pick)
    save(
        args.result,
        {
            "baseline": "untrained (quick check)" if args.quick else str(BASELINE.relative_to(WORK.parents[1])),
            "baseline_sha256_10": base_id,
            "baseline_accuracy": acc[("torch", "fp32", "dense")],
            "ratio": args.ratio,
            "round_to": round_to,
            "rounding_target": args.rounding_target and f"{args.rounding_target} {args.rounding_precision}",
            "plan_from": args.plan_from,
            "seed": args.seed,
            # The table is named within the cache folder: its absolute path is this machine's.
            "rounding_plan": (
                {**plan.to_dict(), "table": f"$TINYTAMER_CACHE/channels/{Path(plan.table).name}"}
                if plan is not None and not args.plan_from
                else plan.to_dict()
                if plan is not None
                else None
            ),
            "slack": args.slack if plan is not None and not args.plan_from else None,
            "headroom": args.headroom if plan is not None and not args.plan_from else None,
            "statistic": ROUNDS if args.rounds > 1 else ONE_ROUND,
            "finetune_epochs": args.finetune_epochs,
            "distill": distill.params.model_dump() if distill is not None else None,
            "finetune_seconds": round(finetune_s, 1),
            "macs_dense": count(dense, (3, 32, 32)).macs,
            "macs_pruned": count(pruned, (3, 32, 32)).macs,
            "threads": args.threads,
            "repeats": args.repeats,
            "rounds": args.rounds,
            "max_drop": args.max_drop,
            "control_accuracy": control_acc,
            "rows": rows,
            "best_dense_int8": best_dense_int8,
            "pick": pick,
            "failures": failures,
        },
        quick=args.quick,
    )


if __name__ == "__main__":
    main()
