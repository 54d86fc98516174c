"""Cost-table validation (nn-Meter's metric): whole-model figures predicted from a lookup table
against the same figures measured, on random configurations never measured whole before.

    .venv/bin/python -m benchmarks.lut_validation                    # both parts, 200 configs each
    .venv/bin/python -m benchmarks.lut_validation --quick            # a smoke run (10 configs each)
    .venv/bin/python -m benchmarks.lut_validation --part onnxruntime

**cortex-m4** (the emulated core is deterministic: anything short of the goal is a bug).  A
table over the bit space of a small CNN (``cost.space_configs(..., "bits")``: weights at
2-8 bits, activations at 8 and 4 bits: fourteen builds, plus the mixed builds that hold the
keys those miss: a layer's requantization paths move with its input's activation bits),
then N random mixed-precision configurations (weight and activation bits per layer, uniform
in 2-8), each predicted from the table and measured on the emulated core under the board's
memory profile.  Goal: estimated cycles 100% within +-2%; instructions and flash are
expected exact (``exact``: the share predicted to the instruction / byte), SRAM is reported
beside them.

**onnxruntime** (fp32, one thread).  Bit widths do not move ONNX Runtime's latency (it runs
every layer at one precision), so its configurations are architectures: a stem and three
conv-BN-ReLU blocks, each with its own kernel size and width, then pooling and a classifier.
The table is built from a separate set of *cover* configurations (chosen greedily so that
every layer of the space appears in one of them), so the per-model overhead it adds comes
from models other than those validated.  Each configuration's latency is the fastest of
``--rounds`` rounds of 50 runs: the statistic the table's entries are (each the fastest run of
its single-op model), so that prediction and measurement discard the same interference (on a
shared machine whole rounds can run 20-50% slow); the median of the rounds' fastest runs is
scored beside it (``latency_median_of_rounds``).  Goal: >= 95% within +-10%, Spearman's
rank correlation >= 0.95.  The machine's noise is reported beside it: one configuration
measured ``--noise`` times (the share of those measurements within +-10% of their median),
and every configuration's spread across its rounds.  Two predictions are reported for
comparison: without the per-run overhead correction (the sum of the single-op models'
times), and with the ONNX Runtime layout reorders left in each entry
(``latency_edges_kept``: single-op times net of the run's fixed cost, whole = a + b x their
sum fitted on the cover models: the table's model before the reorders were separated).
``--space mbconv`` draws the configurations from the ProxylessNAS MBConv space of
:mod:`tinytamer.search.spaces` instead (derived subnets: depthwise convolutions, ReLU6,
residual adds).

Duration on 2 idle cores (estimated from runs on a loaded machine): cortex-m4 about 25 min
(fourteen builds and the mixed ones, their keys found by about 300 quantizations, then about
5 s a configuration); onnxruntime about 15 min (about 70
single-op models and 27 cover models, then about 3 s a configuration); ``--quick`` about 5
min.  Timings on a loaded machine are flagged by ``save`` (clean=false): rerun them.
"""

from __future__ import annotations

import argparse
import itertools
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.progress import track
from scipy.stats import spearmanr
from torch import nn

from benchmarks._common import WORK, save
from tinytamer.compress.int8 import quantize_ptq
from tinytamer.micro.lower import lower
from tinytamer.search import cost


def score(pred: list[float], meas: list[float]) -> dict[str, float]:
    """Share exact / within +-2% / +-10%, the largest relative error, Spearman's rank correlation."""
    err = [abs(p - m) / m for p, m in zip(pred, meas, strict=True)]
    rho = spearmanr(pred, meas).statistic if len(set(meas)) > 1 else float("nan")
    return {
        "exact": sum(p == m for p, m in zip(pred, meas, strict=True)) / len(err),
        "within_2pct": sum(e <= 0.02 for e in err) / len(err),
        "within_10pct": sum(e <= 0.10 for e in err) / len(err),
        "max_rel_err": max(err),
        "median_rel_err": statistics.median(err),
        "spearman": float(rho),
    }


# ----------------------------------------------------------------------------- cortex-m4


def small_cnn() -> nn.Module:
    """A small CNN: conv-BN-ReLU, max-pool, grouped conv, avg-pool, dense (random weights)."""
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


MICRO_LAYERS = ("0", "4", "8")  # the conv / linear layers, by module name


def micro_part(n: int, seed: int, work: Path) -> dict[str, Any]:
    g = torch.Generator().manual_seed(1)
    calib = [torch.randn(16, 1, 12, 12, generator=g) for _ in range(2)]
    example = calib[0][:1]
    path = work / "lut_validation_cortex-m4.json"
    path.unlink(missing_ok=True)  # the table must come from the kernels being validated
    t0 = time.time()
    table = cost.build(
        cost.space_configs(small_cnn(), "bits", example, calib), "cortex-m4", path, example=example, calib=calib
    )
    build_s = time.time() - t0
    rng = random.Random(seed)
    rows = []
    for _ in track(range(n), description="cortex-m4 configurations"):
        over = {name: {"bits": rng.randint(2, 8), "act_bits": rng.randint(2, 8)} for name in MICRO_LAYERS}
        gm = quantize_ptq(small_cnn(), calib, select={"overrides": over})
        # A layer whose constants select a path the table never saw (a key it lacks) is measured
        # fresh, as predict() does for a user; such a configuration is no test of the table, so
        # it is scored apart.
        missing = sorted({k for _, _, k in cost.micro_layers(lower(gm, example), dsp=True)} - set(table.entries))
        pred = cost.predict(gm, "cortex-m4", table, example=example, measure_missing=bool(missing), save=False)
        with tempfile.TemporaryDirectory() as tmp:
            got = cost.measure_micro(gm, example, "cortex-m4", Path(tmp), table.memory_profile)
        rows.append({"bits": over, "predicted": pred.total, "measured": got.total, "fresh_keys": missing})
    metrics = ("est_cycles", "instructions", "flash_bytes", "sram_bytes")
    covered = [r for r in rows if not r["fresh_keys"]]
    summary = {
        m: score([r["predicted"][m] for r in covered], [float(r["measured"][m]) for r in covered]) for m in metrics
    }
    summary["configs_from_the_table_alone"] = len(covered)
    summary["configs_with_fresh_layers"] = len(rows) - len(covered)
    return {
        "target": "cortex-m4",
        "memory_profile": table.memory_profile,
        "model": "small CNN (1x12x12, random weights), weight and activation bits per layer in 2-8",
        "n": n,
        "table_layers": len(table.entries),
        "table_builds": len(table.done),
        "build_s": build_s,
        "summary": summary,
        "goal": "est_cycles: 100% within +-2%",
        "configs": rows,
    }


# ----------------------------------------------------------------------------- onnxruntime


def arch_net(stem: int, blocks: tuple[tuple[int, int], ...]) -> nn.Module:
    """A stem conv, then one conv-BN-ReLU per ``(kernel, width)`` block (stride 2 after the
    first), global average pooling and a linear classifier: 3x32x32 inputs, 10 classes."""
    torch.manual_seed(0)
    layers: list[nn.Module] = [nn.Conv2d(3, stem, 3, padding=1), nn.BatchNorm2d(stem), nn.ReLU()]
    c = stem
    for i, (k, w) in enumerate(blocks):
        layers += [nn.Conv2d(c, w, k, stride=1 if i == 0 else 2, padding=k // 2), nn.BatchNorm2d(w), nn.ReLU()]
        c = w
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, 10)]
    return nn.Sequential(*layers).eval()


def keys_of(model: nn.Module, example: torch.Tensor) -> set[str]:
    return {k for *_, k in cost.host_layers(model, example)}


def cover(need: set[str], candidates: list[Any], make: Any, example: torch.Tensor) -> list[Any]:
    """Candidates that hold every key of ``need`` between them (greedy set cover)."""
    keys = {c: keys_of(make(c), example) for c in candidates}
    left, chosen = set(need), []
    while left:
        best = max(candidates, key=lambda c: len(keys[c] & left))
        if not keys[best] & left:
            raise SystemExit(f"{len(left)} layer(s) of the validation configurations are in no candidate")
        chosen.append(best)
        left -= keys[best]
    return chosen


def ort_space(name: str, quick: bool, rng: random.Random) -> tuple[list[Any], Any, str]:
    """All configurations (or a large sample) of the ONNX Runtime space, a builder, a label."""
    if name == "blocks":
        widths, kernels = ((8, 24), (1, 3)) if quick else ((8, 16, 32), (1, 3, 5))
        space = list(itertools.product(*[list(itertools.product(kernels, widths))] * 3))
        label = f"stem conv 3->16, 3 conv-BN-ReLU blocks (kernel in {kernels}, width in {widths}), pool, linear"
        return space, lambda c: arch_net(16, c), label
    from tinytamer.search.spaces import mbconv_space

    stages = ((16, 2, 2), (24, 2, 2)) if quick else ((24, 2, 2), (40, 2, 2), (80, 2, 2))
    net = mbconv_space((3, 32, 32), 10, stages=stages, feat=64)
    space = sorted({net.sample(rng) for _ in range(500)})
    return space, lambda a: net.derive(a).eval(), f"ProxylessNAS MBConv subnets, stages {stages}"


def time_rounds(tgt: Any, model: nn.Module, example: torch.Tensor, work: Path, rounds: int) -> list[float]:
    """``rounds`` latencies (ms) of one compiled model, each the fastest of 50 runs."""
    dep = tgt.compile(model, [example], work, precision="fp32", calib=[example], threads=1)
    return [
        float(dep.measure(batch=1, threads=1, repeats=50, warmup=5, isolate=False).latency_ms_min)
        for _ in range(rounds)
    ]


def edges_kept(table: cost.CostTable, keys: list[str]) -> float:
    """The sum of these layers' entries with the layout reorders at their edges left in
    (their single-op times net of the run's fixed cost only: the table before reorders)."""
    return sum(sum(v for k, v in table.entries[key].items() if k.endswith("_ms")) for key in keys)


def ort_part(n: int, seed: int, work: Path, quick: bool, rounds: int, noise_n: int, space_name: str) -> dict[str, Any]:
    from tinytamer.targets.base import get_target

    tgt = get_target("onnxruntime")
    rng = random.Random(seed)
    example = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    space, make, label = ort_space(space_name, quick, rng)
    picked = [rng.choice(space) for _ in range(n)]
    need = set().union(*(keys_of(make(c), example) for c in set(picked)))
    covering = cover(need, [c for c in space if c not in set(picked)], make, example)
    path = work / f"lut_validation_onnxruntime_{space_name}{'_quick' if quick else ''}.json"
    path.unlink(missing_ok=True)  # host latencies are this run's machine state: build afresh
    t0 = time.time()
    table = cost.build(
        [(f"cover{i}", lambda c=c: make(c)) for i, c in enumerate(covering)], "onnxruntime", path, example=example
    )
    build_s = time.time() - t0
    # For comparison, the table before layout reorders were separated: entries with their
    # edges left in, whole = a + b x their sum fitted over the same cover models.
    xs = [edges_kept(table, [k for *_, k in cost.host_layers(make(c), example)]) for c in covering]
    whole = {r["model"]: r["latency_ms"] + r["layers_latency_ms"] for r in table.overheads}
    b, a = np.polyfit(xs, [whole[f"cover{i}"] for i in range(len(covering))], 1)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for j, c in enumerate(track(picked, description="onnxruntime configurations")):
            model = make(c)
            pred = cost.predict(model, "onnxruntime", table, example=example, measure_missing=False)
            got = time_rounds(tgt, model, example, Path(tmp) / f"c{j}", rounds)
            raw = sum(table.entries[la.key]["latency_ms_single"] for la in pred.layers)
            rows.append(
                {
                    "config": c,
                    "predicted_ms": pred.total["latency_ms"],
                    "uncorrected_sum_ms": raw,
                    "edges_kept_ms": a + b * edges_kept(table, [la.key for la in pred.layers]),
                    "measured_ms": min(got),
                    "median_of_rounds_ms": statistics.median(got),
                    "rounds_ms": got,
                }
            )
        noise = time_rounds(tgt, make(picked[0]), example, Path(tmp) / "noise", noise_n)
    meas = [r["measured_ms"] for r in rows]
    mid = statistics.median(noise)
    spread = [(max(r["rounds_ms"]) - min(r["rounds_ms"])) / r["measured_ms"] for r in rows]
    return {
        "target": "onnxruntime",
        "precision": "fp32",
        "threads": 1,
        "space": space_name,
        "model": f"{label}; 3x32x32 input",
        "n": n,
        "rounds": rounds,
        "cover_configs": len(covering),
        "table_layers": len(table.entries),
        "per_run_overhead_ms": table.per_run_overhead["latency_ms"],
        "per_model_overhead_ms": [r["latency_ms"] for r in table.overheads],
        "per_model_reorders_ms": [r["boundary_ms"] for r in table.overheads],
        "edges_kept_line": {"a_ms": float(a), "b": float(b)},
        "build_s": build_s,
        "summary": {
            "latency": score([r["predicted_ms"] for r in rows], meas),
            "latency_without_correction": score([r["uncorrected_sum_ms"] for r in rows], meas),
            "latency_edges_kept": score([r["edges_kept_ms"] for r in rows], meas),
            "latency_median_of_rounds": score(
                [r["predicted_ms"] for r in rows], [r["median_of_rounds_ms"] for r in rows]
            ),
        },
        "statistic": "measured: the fastest of the rounds (each the fastest of 50 runs), as the table's entries",
        "noise": {
            "config": picked[0],
            "measurements_ms": noise,
            "within_10pct_of_median": sum(abs(x - mid) <= 0.1 * mid for x in noise) / len(noise),
            "max_rel_dev": max(abs(x - mid) / mid for x in noise),
            "median_round_spread": statistics.median(spread),
        },
        "goal": "latency: >= 95% within +-10%, Spearman >= 0.95",
        "configs": rows,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--part", choices=("all", "cortex-m4", "onnxruntime"), default="all")
    ap.add_argument("--n", type=int, default=200, help="random configurations per part")
    ap.add_argument("--rounds", type=int, default=3, help="onnxruntime: timing rounds per configuration")
    ap.add_argument("--noise", type=int, default=20, help="onnxruntime: measurements of one configuration")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--space", choices=("blocks", "mbconv"), default="blocks", help="onnxruntime: the architectures drawn"
    )
    ap.add_argument("--quick", action="store_true", help="a smoke run: 10 configurations, a smaller space")
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.quick:
        args.n, args.noise = 10, 5
    work = WORK / "lut_validation"
    work.mkdir(parents=True, exist_ok=True)
    suffix = "_quick" if args.quick else ""
    if args.part in ("all", "cortex-m4"):
        t0 = time.time()
        r = micro_part(args.n, args.seed, work)
        r["seconds"] = time.time() - t0
        print(
            "cortex-m4:",
            {m: {k: round(v, 4) for k, v in s.items()} if isinstance(s, dict) else s for m, s in r["summary"].items()},
        )
        save("lut_validation_cortex-m4" + suffix, r, quick=args.quick)
    if args.part in ("all", "onnxruntime"):
        t0 = time.time()
        r = ort_part(args.n, args.seed, work, args.quick, args.rounds, args.noise, args.space)
        r["seconds"] = time.time() - t0
        print("onnxruntime:", r["summary"], "noise:", {k: v for k, v in r["noise"].items() if k != "measurements_ms"})
        save(f"lut_validation_onnxruntime_{args.space}" + suffix, r, quick=args.quick)


if __name__ == "__main__":
    main()
