"""Channel pruning: MACs removed vs latency measured on the deployment runtimes, with kept
channel counts rounded by a rule (multiples of N) or chosen by measurement on the target.

    python benchmarks/targets_pruning.py                          # resnet18, 25/50/75 %, ORT + OpenVINO
    python benchmarks/targets_pruning.py --model resnet8 --ratios 0.125 0.25 --round-to 2 8 16 --measured
    python benchmarks/targets_pruning.py --quick                  # a check that it runs

The model is channel-pruned (``tinytamer.compress.channel.prune_channels``: L1 importance,
per-layer ratio, classifier kept) at each ratio, its kept counts rounded down to multiples
of each ``--round-to`` value and, with ``--measured``, chosen per layer by latency measured
on each target and precision (``tinytamer.compress.channel_rounding``: single-layer models
timed on the target, the fastest count at or below the ratio's; with ``--whole-model`` also
those counts checked on whole pruned models, one layer or coupled group at a time).  Each
variant - dense included - is deployed to each target (parity checked on real CIFAR-10 images; int8
calibrated on 128 real training images) and timed in a fresh child process pinned to its
cores, ``--rounds`` times round-robin: the median of the rounds' medians, with the spread
(each timing waits, ``--settle`` seconds at most, for the load average to fall below the
threads).
Reported per variant: the MAC ratio, the latency ratio to the dense model on the same
runtime, and ``efficiency`` = measured speed-up / MAC speed-up (1.0: latency falls as fast
as the MACs; Torch-Pruning reports 0.57 on ResNet-50).  Weights are untrained (BN
statistics set on real images); latency does not depend on their values.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from benchmarks._common import save  # noqa: E402
from benchmarks.targets_bench import cifar, set_bn_stats  # noqa: E402
from tinytamer.calib import Calibration  # noqa: E402
from tinytamer.compress import channel_rounding  # noqa: E402
from tinytamer.compress.channel import prune_channels  # noqa: E402
from tinytamer.data import make_loader  # noqa: E402
from tinytamer.deploy import int8_quantizer  # noqa: E402
from tinytamer.targets import get_target, list_targets, onnxrt  # noqa: E402
from tinytamer.targets.base import (  # noqa: E402
    ONE_ROUND,
    ROUNDS,
    TOLERANCES,
    combine_rounds,
    wait_for_quiet,
)
from tinytamer.zoo import count, create  # noqa: E402


def measured_variants(
    dense: torch.nn.Module,
    example: torch.Tensor,
    calib: Sequence[torch.Tensor],
    ratio: float,
    target: str,
    precision: str,
    args: argparse.Namespace,
) -> dict[str, tuple[torch.nn.Module, dict[str, Any]]]:
    """The model pruned at ``ratio`` with kept counts chosen by timing single layers on
    ``target`` ("measured") and, with ``--whole-model``, those counts then checked on whole
    pruned models ("measured, whole models"), each with its plan."""
    single, whole, path = channel_rounding.measure_plans(
        dense,
        example,
        target,
        precision,
        args.threads,
        args.batches[0],
        ratio=ratio,
        repeats=args.repeats,
        slack=args.slack,
        headroom=args.headroom,
        whole_model=args.whole_model,
        calib=calib,  # whole (possibly trained) models: calibrated and checked on real samples
        progress=True,
    )
    plans = {"measured": single} if whole is None else {"measured": single, "measured, whole models": whole}
    # The table is named within the cache folder: its absolute path is this machine's.
    return {
        name: (
            prune_channels(dense, example, ratio=p.ratios(), round_to=None).eval(),
            {**p.to_dict(), "table": f"$TINYTAMER_CACHE/channels/{path.name}"},
        )
        for name, p in plans.items()
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="resnet18")
    ap.add_argument("--ratios", nargs="+", type=float, default=[0.25, 0.5, 0.75])
    ap.add_argument("--targets", nargs="+", default=None, help="default: onnxruntime and openvino, where installed")
    ap.add_argument("--precisions", nargs="+", default=["fp32", "int8"])
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 32])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument(
        "--settle", type=float, default=120, help="seconds to wait at most, before each timing, for a quiet machine"
    )
    ap.add_argument(
        "--round-to",
        nargs="+",
        type=int,
        default=[8],
        help="kept channels are multiples of this; several values: every ratio with each",
    )
    ap.add_argument("--measured", action="store_true", help="also: counts chosen by timing on each target")
    ap.add_argument("--slack", type=float, default=0.25, help="--measured: candidates down to (1 - slack) x asked")
    ap.add_argument(
        "--headroom", type=float, default=0.0, help="--measured: candidates also up to (1 + headroom) x asked"
    )
    ap.add_argument(
        "--whole-model",
        action="store_true",
        help="--measured: also the counts checked on whole pruned models (channel_rounding.refine_whole_model)",
    )
    ap.add_argument(
        "--quick", action="store_true", help="resnet8, 25 %%, int8, batch 1, 2 repeats, 1 round; benchmarks/work/quick"
    )
    ap.add_argument("--result", default=None, help="JSON name (default targets_pruning_<model>)")
    ap.add_argument(
        "--int8-min-top1",
        type=float,
        default=0.5,
        help="int8 parity gate: top-1 agreement with fp32 (untrained weights have "
        "near-tied logits; the measured agreement is saved)",
    )
    args = ap.parse_args()
    if args.quick:
        args.model, args.ratios, args.precisions, args.batches = "resnet8", [0.25], ["int8"], [1]
        args.repeats, args.rounds, args.measured, args.whole_model = 2, 1, True, True
    targets = args.targets or [t for t in ("onnxruntime", "openvino") if t in list_targets(available_only=True)]
    TOLERANCES["int8"]["min_top1_agree"] = args.int8_min_top1
    onnxrt.MIN_KERNEL_TOP1_AGREE = args.int8_min_top1
    torch.set_num_threads(1)  # this process prepares; the timing children use --threads
    torch.manual_seed(0)
    data = cifar()
    train = make_loader(data.train, 32, shuffle=True, seed=0)
    calib = Calibration(train, limit=4)
    example = data.test[0][0].unsqueeze(0)
    dense = set_bn_stats(create(args.model, num_classes=10, in_channels=3, input_size=32), train)
    # Variants are keyed (ratio, rounding): the dense model is (0.0, "dense").
    ruled = {(0.0, "dense"): dense}
    for r in args.ratios:
        for rt in args.round_to:
            ruled[(r, f"multiples of {rt}")] = prune_channels(dense, example, ratio=r, round_to=rt).eval()
    rows, plans = [], {}
    with tempfile.TemporaryDirectory(prefix="pruning-") as tmp:
        for target in targets:
            tgt = get_target(target)
            for prec in [p for p in args.precisions if p in tgt.precisions]:
                variants = dict(ruled)
                if args.measured:
                    for r in args.ratios:
                        for name, (model, plan) in measured_variants(
                            dense, example, calib, r, target, prec, args
                        ).items():
                            variants[(r, name)] = model
                            plans[f"{target} {prec} {r} {name}"] = plan
                extra = {"quantize": int8_quantizer} if getattr(tgt, "takes_quantizer", False) else {}
                deployed = {
                    k: tgt.compile(
                        m,
                        [example],
                        Path(tmp) / f"{target}-{prec}-{k[0]}-{k[1].replace(' ', '')}",
                        precision=prec,
                        calib=calib,
                        threads=args.threads,
                        **extra,
                    )
                    for k, m in variants.items()
                }
                macs = {k: count(m, (3, 32, 32)).macs for k, m in variants.items()}
                channels = {
                    k: [m.out_channels for m in v.modules() if isinstance(m, torch.nn.Conv2d)]
                    for k, v in variants.items()
                }
                d0 = (0.0, "dense")
                for b in args.batches:
                    measured: dict[tuple[float, str], list] = {k: [] for k in deployed}
                    for _ in range(args.rounds):
                        for k, d in deployed.items():
                            wait_for_quiet(args.threads, args.settle, print)
                            measured[k].append(d.measure(batch=b, threads=args.threads, repeats=args.repeats, warmup=5))
                    cost = {k: combine_rounds(v) for k, v in measured.items()}
                    base = cost[d0].latency_ms_median
                    for k in [k for k in variants if k != d0]:
                        lat = cost[k].latency_ms_median
                        row = {
                            "target": target,
                            "precision": prec,
                            "ratio": k[0],
                            "rounding": k[1],
                            "channels": channels[k],
                            "batch": b,
                            "macs": macs[k],
                            "mac_ratio": macs[k] / macs[d0],
                            "latency_ms": lat,
                            "latency_ms_p10": cost[k].latency_ms_p10,
                            "latency_ms_p90": cost[k].latency_ms_p90,
                            "dense_latency_ms": base,
                            "latency_ratio": lat / base,
                            "efficiency": (base / lat) / (macs[d0] / macs[k]),
                            "loaded": cost[k].loaded or cost[d0].loaded,
                            "top1_agree": deployed[k].parity["outputs"][0].get("top1_agree"),
                            "bytes": deployed[k].artifact_bytes,
                            "dense_bytes": deployed[d0].artifact_bytes,
                        }
                        rows.append(row)
                        print(
                            f"{target} {prec} b{b} prune {k[0]:.1%} ({k[1]}): MACs x{row['mac_ratio']:.3f}, "
                            f"latency x{row['latency_ratio']:.3f} ({lat:.3f} ms vs {base:.3f} ms), "
                            f"efficiency {row['efficiency']:.2f}{' (loaded)' if row['loaded'] else ''}"
                        )
    dense_counts = [m.out_channels for m in dense.modules() if isinstance(m, torch.nn.Conv2d)]
    save(
        args.result or f"targets_pruning_{args.model}",
        {
            "model": args.model,
            "threads": args.threads,
            "repeats": args.repeats,
            "rounds": args.rounds,
            "settle_s": args.settle,
            "slack": args.slack,
            "headroom": args.headroom,
            "whole_model": args.whole_model,
            "statistic": ROUNDS if args.rounds > 1 else ONE_ROUND,
            "dense_macs": count(dense, (3, 32, 32)).macs,
            "dense_channels": dense_counts,
            "int8_min_top1_agree": args.int8_min_top1,
            "rows": rows,
            "measured_plans": plans,
        },
        quick=args.quick,
    )


if __name__ == "__main__":
    main()
