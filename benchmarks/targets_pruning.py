"""Channel pruning: MACs removed vs latency measured on ONNX Runtime (fp32 and int8).

    python benchmarks/targets_pruning.py                          # resnet18, 25/50/75 %
    python benchmarks/targets_pruning.py --model resnet8 --batches 1
    python benchmarks/targets_pruning.py --model resnet8 --ratios 0.125 0.25 --round-to 2 4 16 \
        --result targets_pruning_resnet8_rounding       # which channel counts the runtime likes

The model is channel-pruned (``tinytamer.compress.channel.prune_channels``: L1
importance, per-layer ratio, kept counts rounded to multiples of ``--round-to``
(default 8), classifier kept)
at each ratio; each variant - dense included - is deployed to ONNX Runtime (parity
checked on real CIFAR-10 images; int8 calibrated on 128 real training images) and
timed in a fresh child process with 2 threads, ``--rounds`` times round-robin,
keeping each variant's best-median round and its fastest single run (on a loaded
machine the minimum is the less disturbed estimate).  Reported: the MAC ratio and the measured
latency ratio of each pruned variant to the dense one, per precision and batch.
Weights are untrained (BN statistics set on real images); latency does not depend
on their values.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from benchmarks._common import save  # noqa: E402
from benchmarks.targets_bench import cifar, set_bn_stats  # noqa: E402
from tinytamer.calib import Calibration  # noqa: E402
from tinytamer.compress.channel import prune_channels  # noqa: E402
from tinytamer.data import make_loader  # noqa: E402
from tinytamer.targets import get_target  # noqa: E402
from tinytamer.targets.base import TOLERANCES  # noqa: E402
from tinytamer.zoo import count, create  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="resnet18")
    ap.add_argument("--ratios", nargs="+", type=float, default=[0.25, 0.5, 0.75])
    ap.add_argument("--precisions", nargs="+", default=["fp32", "int8"])
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 32])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument(
        "--round-to",
        nargs="+",
        type=int,
        default=[8],
        help="kept channels are multiples of this; several values: every ratio with each",
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
    TOLERANCES["int8"]["min_top1_agree"] = args.int8_min_top1
    torch.manual_seed(0)
    data = cifar()
    train = make_loader(data.train, 32, shuffle=True, seed=0)
    calib = Calibration(train, limit=4)
    example = data.test[0][0].unsqueeze(0)
    dense = set_bn_stats(create(args.model, num_classes=10, in_channels=3, input_size=32), train)
    # Variants are keyed (ratio, round_to); the dense model is (0.0, 0).
    variants = {(0.0, 0): dense}
    for r in args.ratios:
        for rt in args.round_to:
            variants[(r, rt)] = prune_channels(dense, example, ratio=r, round_to=rt).eval()
    macs = {k: count(m, (3, 32, 32)).macs for k, m in variants.items()}
    channels = {k: [m.out_channels for m in v.modules() if isinstance(m, torch.nn.Conv2d)] for k, v in variants.items()}
    dense_key = (0.0, 0)
    ort = get_target("onnxruntime")
    rows = []
    with tempfile.TemporaryDirectory(prefix="pruning-") as tmp:
        for prec in args.precisions:
            deployed = {
                k: ort.compile(
                    m, [example], Path(tmp) / f"{prec}-{k[0]}-{k[1]}", precision=prec, calib=calib, threads=args.threads
                )
                for k, m in variants.items()
            }
            for b in args.batches:
                best: dict[tuple[float, int], float] = {}
                fastest: dict[tuple[float, int], float] = {}
                for _ in range(args.rounds):
                    for r, d in deployed.items():
                        cost = d.measure(batch=b, threads=args.threads, repeats=args.repeats, warmup=5)
                        best[r] = min(best.get(r, cost.latency_ms_median), cost.latency_ms_median)
                        fastest[r] = min(fastest.get(r, cost.latency_ms_min), cost.latency_ms_min)
                d0 = dense_key
                for k in [k for k in variants if k != d0]:
                    rows.append(
                        {
                            "ratio": k[0],
                            "round_to": k[1],
                            "channels": channels[k],
                            "precision": prec,
                            "batch": b,
                            "macs": macs[k],
                            "mac_ratio": macs[k] / macs[d0],
                            "latency_ms": best[k],
                            "dense_latency_ms": best[d0],
                            "latency_ratio": best[k] / best[d0],
                            "latency_ms_min": fastest[k],
                            "dense_latency_ms_min": fastest[d0],
                            "latency_ratio_min": fastest[k] / fastest[d0],
                            "top1_agree": deployed[k].parity["outputs"][0].get("top1_agree"),
                            "bytes": deployed[k].artifact_bytes,
                            "dense_bytes": deployed[d0].artifact_bytes,
                        }
                    )
                    print(
                        f"{prec} b{b} prune {k[0]:.1%} (multiples of {k[1]}): MACs "
                        f"x{macs[k] / macs[d0]:.3f}, latency x{best[k] / best[d0]:.3f} "
                        f"({best[k]:.3f} ms vs {best[d0]:.3f} ms), "
                        f"min x{fastest[k] / fastest[d0]:.3f}"
                    )
    save(
        args.result or f"targets_pruning_{args.model}",
        {
            "model": args.model,
            "threads": args.threads,
            "repeats": args.repeats,
            "rounds": args.rounds,
            "dense_macs": macs[dense_key],
            "dense_channels": channels[dense_key],
            "int8_min_top1_agree": args.int8_min_top1,
            "load_average_1_5_15": os.getloadavg(),
            "rows": rows,
        },
    )


if __name__ == "__main__":
    main()
