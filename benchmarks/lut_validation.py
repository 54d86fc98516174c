"""Cost-table validation (nn-Meter's metric): predicted vs measured.

Builds a cortex-m4 cost table over the weight-bit space of a model (weights at 2-8 bits:
seven builds), then draws N random mixed-precision configurations (weight and activation
bits per layer, uniform in 2-8), predicts each one's cycles and instructions from the
table and measures it on the emulated core under the board's memory profile.  Reports
the share predicted within +-2% and +-10% of the measured whole-model figure and
Spearman's rank correlation.

    .venv/bin/python -m benchmarks.lut_validation --n 40
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from pathlib import Path

import torch
from scipy.stats import spearmanr
from torch import nn

from benchmarks._common import WORK, save
from tinytamer.compress.int8 import quantize_ptq
from tinytamer.search import cost


def small_cnn() -> nn.Module:
    """A small CNN: conv-BN-ReLU, max-pool, depthwise-style grouped conv, avg-pool, dense.

    LeNet-5 was the plan; its 6-bit build faults on the emulated core (tt_model_run writes
    outside memory), a micro-path bug reported, not worked around here.
    """
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1, groups=4),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 10),
    ).eval()


LAYERS = ("0", "4", "8")  # the conv / linear layers, by module name


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=200, help="random configurations")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    g = torch.Generator().manual_seed(1)
    calib = [torch.randn(16, 1, 12, 12, generator=g) for _ in range(2)]
    example = calib[0][:1]
    WORK.mkdir(parents=True, exist_ok=True)
    path = WORK / "lut_validation_cortex-m4.json"
    t0 = time.time()
    table = cost.build(
        cost.space_configs(small_cnn(), "bits", example, calib), "cortex-m4", path, example=example, calib=calib
    )
    build_s = time.time() - t0
    rng = random.Random(args.seed)
    rows = []
    for j in range(args.n):
        over = {name: {"bits": rng.randint(2, 8), "act_bits": rng.randint(2, 8)} for name in LAYERS}
        gm = quantize_ptq(small_cnn(), calib, select={"overrides": over})
        pred = cost.predict(gm, "cortex-m4", table, example=example, measure_missing=False)
        with tempfile.TemporaryDirectory() as tmp:
            got = cost.measure_micro(gm, example, "cortex-m4", Path(tmp), table.memory_profile)
        rows.append({"bits": {k: v["bits"] for k, v in over.items()}, "predicted": pred.total, "measured": got.total})
        print(
            f"{j + 1}/{args.n} cycles predicted {pred.total['est_cycles']:.0f} measured {got.total['est_cycles']}",
            flush=True,
        )
    summary = {}
    for metric in ("est_cycles", "instructions", "flash_bytes", "sram_bytes"):
        p = [r["predicted"][metric] for r in rows]
        m = [r["measured"][metric] for r in rows]
        err = [abs(a - b) / b for a, b in zip(p, m, strict=True)]
        summary[metric] = {
            "within_2pct": sum(e <= 0.02 for e in err) / len(err),
            "within_10pct": sum(e <= 0.10 for e in err) / len(err),
            "max_rel_err": max(err),
            "spearman": float(spearmanr(p, m).statistic),
        }
    print(summary)
    save(
        "lut_validation",
        {
            "target": "cortex-m4",
            "memory_profile": table.memory_profile,
            "model": "small CNN (1x12x12, random weights)",
            "n": args.n,
            "table_layers": len(table.entries),
            "build_s": build_s,
            "summary": summary,
            "configs": rows,
        },
    )


if __name__ == "__main__":
    main()
