"""Channel pruning: MACs saved vs. PyTorch CPU latency saved, on ResNet-8 and ResNet-18 (32x32).

    python benchmarks/channel_latency.py                       # resnet8 resnet18, 25/50/75%
    python benchmarks/channel_latency.py --models resnet8 --repeats 30

For each model, channels are removed (L1 importance, per-layer ratio, kept
counts rounded to a multiple of 8, classifier kept) at each ratio; the pruned
models are physically smaller ``nn.Module``s.  Latency is the median of
``--repeats`` timed forward passes after warm-up, in eval mode under
``torch.inference_mode`` with 2 threads, at batch 1 and 32; the minimum is
kept too, the better estimate of the unloaded cost on a busy machine.  The dense model
is measured in the same run, and the variants are timed round-robin (one pass
of each per round) so that load on a shared machine hits all of them alike.
Weights are untrained: latency does not depend on their values.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from torch import nn  # noqa: E402

from benchmarks._common import save, time_round_robin  # noqa: E402
from tinytamer.compress.channel import prune_channels  # noqa: E402
from tinytamer.zoo import count, create  # noqa: E402

SHAPE = (3, 32, 32)


def measure(variants: dict[str, nn.Module], batch: int, repeats: int, warmup: int) -> dict:
    """Median and spread (ms) of each variant's forward time, timed round-robin."""
    x = torch.randn(batch, *SHAPE, generator=torch.Generator().manual_seed(0))
    return time_round_robin(variants, x, repeats, warmup)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=["resnet8", "resnet18"])
    parser.add_argument("--ratios", nargs="+", type=float, default=[0.25, 0.5, 0.75])
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 32])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--round-to", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--name", default="channel_latency", help="results/<name>.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    rows = []
    for name in args.models:
        dense = create(name, num_classes=10, in_channels=3, input_size=32).eval()
        example = torch.randn(1, *SHAPE)
        variants = {"dense": dense}
        for r in args.ratios:
            variants[f"{r:.2f}"] = prune_channels(dense, example, ratio=r, round_to=args.round_to).eval()
        counts = {k: count(m, SHAPE) for k, m in variants.items()}
        for batch in args.batches:
            lat = measure(variants, batch, args.repeats, args.warmup)
            base, base_min = lat["dense"]["median_ms"], lat["dense"]["min_ms"]
            for k in variants:
                row = {
                    "model": name,
                    "ratio": 0.0 if k == "dense" else float(k),
                    "batch": batch,
                    "params": counts[k].params,
                    "macs": counts[k].macs,
                    "macs_ratio": counts["dense"].macs / counts[k].macs,
                    "params_ratio": counts["dense"].params / counts[k].params,
                    **lat[k],
                    "speedup": base / lat[k]["median_ms"],
                    "speedup_min": base_min / lat[k]["min_ms"],
                }
                rows.append(row)
                print(
                    f"{name:9s} ratio {row['ratio']:.2f} batch {batch:2d}: "
                    f"MACs {row['macs'] / 1e6:7.1f} M (x{row['macs_ratio']:.2f}) "
                    f"latency median {row['median_ms']:8.2f} ms (x{row['speedup']:.2f}) "
                    f"min {row['min_ms']:8.2f} ms (x{row['speedup_min']:.2f})"
                )
    save(
        args.name,
        {
            "settings": {
                "importance": "l1",
                "round_to": args.round_to,
                "threads": args.threads,
                "repeats": args.repeats,
                "warmup": args.warmup,
                "input": list(SHAPE),
                "weights": "untrained (latency only)",
            },
            "statistic": "median over rounds (one forward pass of every variant per round); "
            "spread: 10th-90th percentiles of the rounds",
            "rows": rows,
        },
        threads=args.threads,
    )


if __name__ == "__main__":
    main()
