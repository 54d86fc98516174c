"""Hardware-aware search on CIFAR-10 under Cortex-M4 budgets: SPOS and ProxylessNAS against
random search and the hand-made ResNet-8, every network measured on the emulated device.

    python benchmarks/nas_cifar.py              # the full run (see --help for its sizes)
    python benchmarks/nas_cifar.py --quick      # a smoke run (minutes): tiny data and steps

1. ResNet-8 is trained with the retraining recipe (``RETRAIN``, the same for every network)
   and deployed on ``cortex-m4`` (int8): its measured estimated cycles (board memory profile)
   and SRAM set the budgets, at 1x and 0.5x.
2. For every budget and seed, the ``spos`` stage (ShuffleNetV2 choice blocks): supernet
   trained with uniform single paths, evolution (population 50, top-k 10, 25 mutations
   p=0.1, 25 crossovers, ``--generations``), candidates outside the budget predicted from the
   cost table rejected before scoring, BN recomputed per candidate, scored on the validation
   split; beside it the best of as many uniformly drawn in-budget architectures scored alike
   (``random_baseline``).  The best is retrained from scratch and deployed on ``cortex-m4``.
3. For every budget, the ``proxylessnas`` stage (MBConv candidates) with the budget's cycles
   as its latency target (loss ``mul``), derived, retrained and deployed alike.

The spaces are sized by ``SPOS_SPACE`` and ``MBCONV_SPACE`` (``--quick``: tiny ones); every run
prices architectures from one cost table (``lut-cortex-m4.json`` in the work folder), so a
layer is measured on the device once.

Data: CIFAR-10, the JPEG re-encoding (``cifar10-jpg.tar.gz``), its first ``--train-limit``
training images (10% of them held out as the validation split) and the first
``--test-limit`` test images (all when 0).  Writes ``results/nas_cifar.json`` and
``results/nas_cifar.png`` (test accuracy on the device against measured cycles).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from benchmarks._common import RESULTS, WORK, save, shared_data  # noqa: E402
from tinytamer.errors import TamerError  # noqa: E402
from tinytamer.recipe import parse_recipe, run  # noqa: E402
from tinytamer.records import DeployRecord, NasRecord, read_records  # noqa: E402

# The spaces of the full run: narrow stems and a channel search (SPOS), so that the half
# budgets (about 19 KB of SRAM) hold architectures too; sizes chosen, not measured yet.
SPOS_SPACE = {
    "stem": 12,
    "stages": [[32, 3, 2], [64, 3, 2], [128, 2, 2]],
    "feat": 192,
    "width_ratios": [0.5, 1, 1.5, 2],
}
MBCONV_SPACE = {"stem": 8, "stages": [[16, 2, 2], [32, 3, 2], [64, 2, 2]], "feat": 128}


def recipe(name: str, data: dict[str, Any], model: str, stages: list[dict[str, Any]], seed: int) -> Any:
    return parse_recipe({"name": name, "seed": seed, "data": data, "model": {"name": model}, "stages": stages})


def one(rec: Any, folder: Path) -> tuple[NasRecord | None, DeployRecord]:
    path = folder / rec.name
    # A run interrupted before (or finished) is resumed: its finished stages are kept.
    rundir = run(rec, path, progress=False, echo=print, resume=(path / "recipe.yaml").exists())
    nas = read_records(rundir, NasRecord)
    dep = read_records(rundir, DeployRecord)[-1]
    return (nas[-1] if nas else None), dep


def device(dep: DeployRecord) -> dict[str, Any]:
    return {
        "test_accuracy_device": dep.accuracy,
        "test_samples": dep.eval_samples,
        "est_cycles": dep.est_cycles,
        "sram_bytes": dep.sram_bytes,
        "flash_bytes": dep.flash_bytes,
        "memory_profile": dep.memory_profile,
        "macs": dep.macs,
        "params": dep.params,
    }


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for method, marker in (("resnet8", "s"), ("spos", "o"), ("proxylessnas", "^")):
        pts = [r for r in rows if r["method"] == method and "error" not in r]
        if pts:
            ax.scatter(
                [p["est_cycles"] / 1e6 for p in pts],
                [100 * p["test_accuracy_device"] for p in pts],
                marker=marker,
                label=method,
            )
    for b in sorted({r["budget_cycles"] for r in rows if r.get("budget_cycles")}):
        ax.axvline(b / 1e6, color="grey", lw=0.8, ls="--")
    ax.set(xlabel="measured cycles on cortex-m4 (M, estimated, board profile)", ylabel="test top-1 on device (%)")
    ax.set_title("CIFAR-10 under Cortex-M4 budgets (dashed: cycle budgets)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="a smoke run: 600 images, a few steps, one seed")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--train-limit", type=int, default=20000, help="training images used (10%% of them: val)")
    ap.add_argument("--test-limit", type=int, default=2000, help="test images scored on the device (0: all)")
    ap.add_argument("--epochs", type=float, default=15, help="retraining epochs (ResNet-8 and the found networks)")
    ap.add_argument("--supernet-epochs", type=float, default=15)
    ap.add_argument("--generations", type=int, default=10)
    ap.add_argument("--proxyless-iters", type=int, default=3000)
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.quick:
        args.seeds, args.train_limit, args.test_limit = 1, 600, 200
        args.epochs, args.supernet_epochs, args.generations, args.proxyless_iters = 0.5, 0.5, 1, 40
    data = {
        "name": "cifar10",
        "root": str(shared_data() / "cifar10-jpg.tar.gz"),
        "augment": True,
        "val_fraction": 0.1,
        "batch_size": 64,
        "limit": args.train_limit,
        "options": {},
    }
    solver = {"epochs": args.epochs, "base_lr": 0.05, "lr_policy": "poly", "weight_decay": 4e-5, "display": 200}
    supernet = {**solver, "epochs": args.supernet_epochs}
    deploy = {"deploy": {"target": "cortex-m4", "eval_limit": args.test_limit or "all"}}
    folder = WORK / ("quick" if args.quick else "") / "nas_cifar"
    # One cost table for every run: a layer measured once prices every later architecture.
    table = str(folder / "lut-cortex-m4.json")
    # Quick: tiny spaces, so that measuring their covering architectures takes minutes.
    tiny = {"stem": 8, "stages": [[8, 1, 2], [16, 1, 2]], "feat": 16}
    spos_space = tiny if args.quick else SPOS_SPACE
    mbconv_space = tiny if args.quick else MBCONV_SPACE
    evo = (
        {"population": 6, "top_k": 3, "mutations": 3, "crossovers": 3, "bn_batches": 2, "val_batches": 2}
        if args.quick
        else {"bn_batches": 10}
    )
    rows: list[dict[str, Any]] = []

    _, base = one(recipe("resnet8", data, "resnet8", [{"train": solver}, deploy], 0), folder)
    rows.append({"method": "resnet8", "budget": None, "seed": 0, **device(base)})
    print(f"resnet8: {base.est_cycles:,} cycles, {base.sram_bytes:,} B SRAM, device top-1 {base.accuracy:.2%}")
    for frac in (1.0, 0.5):
        budget = {"cycles": frac * base.est_cycles, "sram": frac * base.sram_bytes}
        for seed in range(args.seeds):
            stage = {
                "spos": {
                    "space": "shufflenet",
                    "space_options": spos_space,
                    "cost_table": table,
                    "target": "cortex-m4",
                    "budget": budget,
                    "supernet": supernet,
                    "retrain": solver,
                    "generations": args.generations,
                    "random_baseline": True,
                    **evo,
                }
            }
            try:
                nas, dep = one(recipe(f"spos-{frac:g}x-s{seed}", data, "resnet8", [stage, deploy], seed), folder)
            except TamerError as exc:  # e.g. no architecture of the space within this budget
                rows.append({"method": "spos", "budget": frac, "seed": seed, "error": str(exc)})
                continue
            rows.append(
                {
                    "method": "spos",
                    "budget": frac,
                    "budget_cycles": budget["cycles"],
                    "seed": seed,
                    "val_accuracy_spos": nas.val_accuracy_search,
                    "val_accuracy_random": nas.random_val_accuracy,
                    "evaluated": nas.evaluated,
                    "rejected": nas.rejected,
                    "arch": nas.arch,
                    "predicted": nas.predicted,
                    "measured": nas.measured,
                    "within_budget": nas.within_budget,
                    **device(dep),
                }
            )
        stage = {
            "proxylessnas": {
                "space": "mbconv",
                "space_options": mbconv_space,
                "cost_table": table,
                "target": "cortex-m4",
                "budget": budget,
                "iters": args.proxyless_iters,
                "warmup": args.proxyless_iters // 5,
                "retrain": solver,
            }
        }
        try:
            nas, dep = one(recipe(f"proxyless-{frac:g}x", data, "resnet8", [stage, deploy], 0), folder)
        except TamerError as exc:
            rows.append({"method": "proxylessnas", "budget": frac, "seed": 0, "error": str(exc)})
            continue
        rows.append(
            {
                "method": "proxylessnas",
                "budget": frac,
                "budget_cycles": budget["cycles"],
                "seed": 0,
                "arch": nas.arch,
                "predicted": nas.predicted,
                "measured": nas.measured,
                "within_budget": nas.within_budget,
                "cycles_vs_target": nas.measured["est_cycles"] / budget["cycles"] - 1,
                **device(dep),
            }
        )
    summary = []
    for frac in (1.0, 0.5):
        sp = [r for r in rows if r["method"] == "spos" and r["budget"] == frac and "error" not in r]
        px = [r for r in rows if r["method"] == "proxylessnas" and r["budget"] == frac and "error" not in r]
        summary.append(
            {
                "budget": frac,
                # Goal: 0 violations on the measured target.
                "violations": sum(not r["within_budget"] for r in sp + px),
                # Goal: SPOS >= 1 point above the best of as many random in-budget samples (val, mean of seeds).
                "spos_minus_random_val": (
                    sum(r["val_accuracy_spos"] - r["val_accuracy_random"] for r in sp) / len(sp) if sp else None
                ),
                "spos_test_accuracy_mean": sum(r["test_accuracy_device"] for r in sp) / len(sp) if sp else None,
                "spos_cycles_over_resnet8": [r["est_cycles"] / base.est_cycles for r in sp],
                # Goal: the ProxylessNAS network's measured cycles within 10% of the target.
                "proxyless_cycles_vs_target": [r["cycles_vs_target"] for r in px],
            }
        )
    out = save(
        "nas_cifar",
        {
            "data": f"CIFAR-10 JPEG re-encoding: first {args.train_limit} training images (10% val), "
            f"first {args.test_limit or 'all'} test images",
            "settings": vars(args),
            "retrain_solver": solver,
            "rows": rows,
            "summary": summary,
        },
        threads=1,
        quick=args.quick,
    )
    plot(rows, out.with_suffix(".png") if args.quick else RESULTS / "nas_cifar.png")
    print("| method | budget | seed | device top-1 | cycles (M) | SRAM (B) | in budget | SPOS val / random val |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['method']} | {r['budget']} | {r['seed']} | failed: {r['error']} | | | | |")
            continue
        extra = f"{r['val_accuracy_spos']:.3f} / {r['val_accuracy_random']:.3f}" if r["method"] == "spos" else ""
        print(
            f"| {r['method']} | {r['budget'] or '-'} | {r['seed']} | {r['test_accuracy_device']:.2%} | "
            f"{r['est_cycles'] / 1e6:.2f} | {r['sram_bytes']:,} | {r.get('within_budget', '-')} | {extra} |"
        )


if __name__ == "__main__":
    main()
