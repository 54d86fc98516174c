"""Hardware-aware search on CIFAR-10 under Cortex-M4 budgets: SPOS and ProxylessNAS against
random search and the hand-made ResNet-8, every network measured on the emulated device.

    python benchmarks/nas_cifar.py --experiment baseline       # first: it sets the budgets
    python benchmarks/nas_cifar.py --experiment spos-1x        # then any of the others
    python benchmarks/nas_cifar.py --experiment spos-1x --quick   # a smoke run (tiny data, steps)
    python benchmarks/nas_cifar.py --experiment probe          # CPU seconds per step / candidate

Experiments (each adds its rows to ``results/nas_cifar.json``, replacing its own earlier
rows; the file is reread, merged and written atomically, and the plot redrawn):

- ``baseline``: ResNet-8 trained with the retraining recipe (the same for every network)
  and deployed on ``cortex-m4`` (int8); its measured estimated cycles (board memory profile)
  and SRAM set the budgets, at 1x and 0.5x.
- ``spos-1x``, ``spos-0.5x``: for each of ``--seeds`` seeds (or of ``--seed-list``, so that
  seeds run at once on separate cores: each run replaces only its own seeds' rows), the ``spos`` stage (ShuffleNetV2
  choice blocks): supernet trained with uniform single paths, evolution (population 50, top-k
  10, 25 mutations p=0.1, 25 crossovers, ``--generations``), candidates outside the budget
  predicted from the cost table rejected before scoring, BN recomputed per candidate on 10
  training batches, scored on ``--val-batches`` validation batches; beside it the best of as
  many uniformly drawn in-budget architectures scored alike (``random_baseline``).  The best
  is retrained from scratch and deployed on ``cortex-m4``.
- ``random-1x``, ``random-0.5x`` (after the spos experiment of that budget): for each seed
  (``--seeds`` / ``--seed-list``), the random search's best architecture of that SPOS seed
  retrained from scratch with the same recipe and seed and deployed alike: its point on the
  plot beside SPOS, and the summary's ``spos_minus_random_test`` (SPOS's retrained network
  against its seed's random best, device top-1, mean over seeds).
- ``proxyless-1x``, ``proxyless-0.5x``: the ``proxylessnas`` stage (MBConv candidates) with
  the budget's cycles as its latency target (loss ``mul``; ``--proxyless-loss add`` or
  ``hinge`` for the others, ``--proxyless-lam`` their lambda), derived within the whole budget,
  retrained and deployed alike. Seed 0 unless ``--seed-list`` names others (each seed: its
  own search and retraining, its own row).
- ``proxyless-1x-cycles``: the same at 1x with the cycle target alone in the budget (SRAM
  left out): at 1x the SRAM budget, not the cycles, decides which path is derived, so this
  shows where the latency loss itself lands against its target.

``--tag NAME`` runs a variant (e.g. ``--arch-every 5 --arch-lr 1e-3``, the ProxylessNAS
released code's architecture schedule) whose rows are kept as ``<experiment>@NAME`` beside the
untagged ones, with their own run folders and their own summary entries.

The spaces are sized by ``SPOS_SPACE`` and ``MBCONV_SPACE`` (``--quick``: tiny ones), with a
stride-2 stem at 0.5x (``HALF_BUDGET_SPACE``); every run
prices architectures from one cost table (``lut-cortex-m4.json`` in the work folder), so a
layer is measured on the device once.

Data: CIFAR-10, the JPEG re-encoding (``cifar10-jpg.tar.gz``), its first ``--train-limit``
training images (10% of them held out as the validation split) and the first
``--test-limit`` test images (all when 0).  Writes ``results/nas_cifar.json`` and
``results/nas_cifar.png`` (test accuracy on the device against measured cycles).

Sizes (defaults: 10,000 training images = 9,000 train + 1,000 val, 141 steps of 64 per epoch;
6 retraining epochs, 6 supernet epochs, 2 generations, 8 validation batches per candidate,
1,500 ProxylessNAS iterations, 1,000 test images on the device), so that each experiment
runs in under an hour on 2 cores at 1 thread.  Figures, measured on this project's 2-core
machine while it was heavily loaded by other runs (``--experiment probe``'s code under
``nice -n 19 taskset -c 1``, 1 thread; CPU seconds of the process, so waiting for the CPU is
not counted):

- a ResNet-8 training step at batch 64: 0.19 s (probe);
- a SPOS supernet step (a random path of ``SPOS_SPACE``) at batch 64: 0.37 s (probe);
- a SPOS candidate evaluation (10 BN batches + 16 validation batches of 64): 1.4 s (probe;
  the default 8 validation batches cost less: 1.4 s is used);
- a retraining step of a derived SPOS network: 0.21 s (probe);
- a deployment on ``cortex-m4``: about 30 s to build and profile, 83 s per 1,000 test images
  (``micro_mlperf_resnet8.json``, ResNet-8).

Assumed, not measured (the probe did not get that far on the loaded machine; rerun it and
rescale): a ProxylessNAS weight step 0.35 s and architecture step 0.6 s, a retraining step of
a found MBConv network 0.3 s.  Estimates (not timings): ``baseline`` 846 steps x 0.19 s =
2.7 min + 2.5 min deployment = 5 min; ``spos-*`` per seed 846 supernet steps x 0.37 s =
5.2 min, 2 x 50 evolution + 100 random candidates x 1.4 s = 4.7 min, retraining 846 x 0.21 s =
3 min, deployment 2.5 min: 15.4 min, 3 seeds 46 min, plus the cost table's 4 covering
architectures (about 2 min, once) = 48 min; ``random-*`` retraining + deployment 6 min;
``proxyless-*`` 300 warm-up steps x 0.35 s + 1,200 x 0.95 s = 21 min, retraining +
deployment 7 min, 7 covering architectures about 4 min = 32 min.
Measured (wall clock, one core shared with a second benchmark, 1 thread): ``baseline`` 5 min,
``spos-1x`` 80 min for 3 seeds (about 27 min a seed), ``random-1x`` 12 min; ``proxyless-1x``
took over 45 min.  So ``spos-*`` takes longer than an hour on a busy core.
"""

from __future__ import annotations

import argparse
import fcntl
import itertools
import json
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from torch import nn  # noqa: E402

from benchmarks._common import RESULTS, WORK, machine, save, shared_data  # noqa: E402
from tinytamer.errors import TamerError  # noqa: E402
from tinytamer.recipe import parse_recipe, run  # noqa: E402
from tinytamer.records import DeployRecord, NasRecord, read_records  # noqa: E402
from tinytamer.search.spaces import make_space  # noqa: E402

# The spaces of the full run: narrow stems and a channel search (SPOS), so that the half
# budgets (about 19 KB of SRAM) hold architectures too; sizes chosen, not measured yet.
SPOS_SPACE = {
    "stem": 12,
    "stages": [[32, 3, 2], [64, 3, 2], [128, 2, 2]],
    "feat": 192,
    "width_ratios": [0.5, 1, 1.5, 2],
}
MBCONV_SPACE = {"stem": 8, "stages": [[16, 2, 2], [32, 3, 2], [64, 2, 2]], "feat": 128}
# At half ResNet-8's SRAM no architecture of either space fits with a stride-1 stem (every one
# holds its first blocks' full-resolution tensors: the proxylessnas stage now refuses the MBConv
# space's, 30.7 KB + stack against 18.7 KB, before it trains), so the 0.5x experiments halve
# the map in the stem; the 1x experiments keep the stride-1 stem.
HALF_BUDGET_SPACE = {"stem_stride": 2}


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
    for method, marker in (("resnet8", "s"), ("spos", "o"), ("random", "x"), ("proxylessnas", "^")):
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


# The defaults, sized so that each experiment runs in under an hour on 2 cores at 1 thread
# (the docstring gives the figures and the arithmetic).
TRAIN_LIMIT = 10000
TEST_LIMIT = 1000
EPOCHS = 6
SUPERNET_EPOCHS = 6
GENERATIONS = 2
VAL_BATCHES = 8
PROXYLESS_ITERS = 1500
BATCH = 64


def probe() -> dict[str, float]:
    """CPU seconds (this process's, so a loaded machine's waiting is not counted) of one
    training step of each kind at batch 64 on 32x32 inputs, and of one SPOS candidate
    evaluation (10 BN batches + ``VAL_BATCHES`` validation batches); random data."""
    import random
    import time

    import torch.nn.functional as F

    from tinytamer.search import proxyless, spos
    from tinytamer.zoo import create

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(BATCH, 3, 32, 32, generator=g), torch.randint(0, 10, (BATCH,), generator=g)

    def step_s(model: nn.Module, n: int = 3, before: Any = None) -> float:
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        model.train()
        took = []
        for i in range(n + 1):  # the first step warms up
            if before is not None:
                before(i)
            start = time.process_time()
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            took.append(time.process_time() - start)
        return sorted(took[1:])[len(took[1:]) // 2]

    out = {"resnet8_step_s": step_s(create("resnet8", num_classes=10, in_channels=3, input_size=32))}
    net = make_space("shufflenet", (3, 32, 32), 10, **SPOS_SPACE)
    rng = random.Random(0)
    out["spos_supernet_step_s"] = step_s(net, before=lambda _i: net.activate(net.sample(rng)))
    scorer = spos.Scorer(net, [x] * 10, [(x, y)] * VAL_BATCHES)
    start = time.process_time()
    for seed in (1, 2):
        scorer(net.sample(random.Random(seed)))
    out["spos_candidate_s"] = (time.process_time() - start) / 2
    out["spos_retrain_step_s"] = step_s(net.derive(net.sample(random.Random(3))))
    mb = make_space("mbconv", (3, 32, 32), 10, **MBCONV_SPACE)
    state = proxyless.Proxyless(mb, [[1.0] * len(c.options) for _, c in mb.choices()], 10.0, 20.0)
    weight, arch = [], []
    for _ in range(3):
        start = time.process_time()
        state.weight_step(x, y)
        weight.append(time.process_time() - start)
        start = time.process_time()
        state.arch_step(x, y)
        arch.append(time.process_time() - start)
    out["proxyless_weight_step_s"], out["proxyless_arch_step_s"] = sorted(weight)[1], sorted(arch)[1]
    out["proxyless_retrain_step_s"] = step_s(mb.derive(state.derive()))
    return out


EXPERIMENTS = (
    "baseline",
    "spos-1x",
    "spos-0.5x",
    "random-1x",
    "random-0.5x",
    "proxyless-1x",
    "proxyless-0.5x",
    "proxyless-1x-cycles",
)


def derived(
    num_classes: int = 10, in_channels: int = 3, input_size: int = 32, *, space: str, options: dict, arch: list[int]
) -> nn.Module:
    """A recipe model factory: the network ``arch`` of a ready space, freshly initialized
    (how the random-search baseline's best architecture is retrained like the others)."""
    net = make_space(space, (in_channels, input_size, input_size), num_classes, **options)
    return net.derive(tuple(arch))


def results_path(quick: bool) -> Path:
    return (WORK / "quick" if quick else RESULTS) / "nas_cifar.json"


def previous(quick: bool) -> dict[str, Any]:
    """The results written by earlier experiments (empty if none)."""
    path = results_path(quick)
    return json.loads(path.read_text()) if path.exists() else {}


@contextmanager
def merge_lock(quick: bool) -> Iterator[None]:
    """Hold an exclusive lock (a file in the work folder) while the results file is reread and
    rewritten, so that two runs finishing at once do not drop each other's rows."""
    path = (WORK / "quick" if quick else WORK) / "nas_cifar.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def baseline_row(rows: list[dict[str, Any]]) -> dict[str, Any]:
    base = next((r for r in rows if r["experiment"] == "baseline"), None)
    if base is None:
        sys.exit("nas_cifar: no ResNet-8 row in the results yet: run --experiment baseline first (it sets the budgets)")
    return base


def budget_of(base: dict[str, Any], frac: float) -> dict[str, float]:
    return {"cycles": frac * base["est_cycles"], "sram": frac * base["sram_bytes"]}


def paired_gap(spos: list[dict[str, Any]], random: list[dict[str, Any]]) -> float | None:
    """Mean over seeds of SPOS's device top-1 minus the same seed's random-search best's."""
    by_seed = {r["seed"]: r["test_accuracy_device"] for r in random}
    gaps = [r["test_accuracy_device"] - by_seed[r["seed"]] for r in spos if r["seed"] in by_seed]
    return sum(gaps) / len(gaps) if gaps else None


def summarize(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The goals per budget, for the untagged rows and for each tagged variant apart."""
    base = next((r for r in rows if r["experiment"] == "baseline"), None)
    summary = []
    for tag, frac in itertools.product(sorted({r["experiment"].partition("@")[2] for r in rows}), (1.0, 0.5)):
        mine = [
            r for r in rows if r["experiment"].partition("@")[2] == tag and r["budget"] == frac and "error" not in r
        ]
        sp = [r for r in mine if r["method"] == "spos"]
        px = [r for r in mine if r["method"] == "proxylessnas"]
        rn = [r for r in mine if r["method"] == "random"]
        if not mine:
            continue
        summary.append(
            {
                "tag": tag or None,
                "budget": frac,
                # Goal: 0 violations on the measured target.
                "violations": sum(not r["within_budget"] for r in sp + px + rn),
                # Goal: SPOS >= 1 point above the best of as many random in-budget samples (val, mean of seeds).
                "spos_minus_random_val": (
                    sum(r["val_accuracy_spos"] - r["val_accuracy_random"] for r in sp) / len(sp) if sp else None
                ),
                "spos_test_accuracy_mean": sum(r["test_accuracy_device"] for r in sp) / len(sp) if sp else None,
                "random_test_accuracy": [r["test_accuracy_device"] for r in rn],
                # The same goal on the retrained networks: SPOS's against its seed's random best
                # (device top-1, mean over the seeds that have both).
                "spos_minus_random_test": paired_gap(sp, rn),
                "spos_cycles_over_resnet8": [r["est_cycles"] / base["est_cycles"] for r in sp] if base else None,
                # Goal: the ProxylessNAS network's measured cycles within 10% of the target.
                "proxyless_cycles_vs_target": [r["cycles_vs_target"] for r in px],
            }
        )
    return summary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--experiment",
        choices=(*EXPERIMENTS, "probe"),
        required=True,
        help="which part to run (see the docstring); probe: CPU seconds per step and per candidate",
    )
    ap.add_argument("--quick", action="store_true", help="a smoke run: 600 images, a few steps, one seed")
    ap.add_argument("--seeds", type=int, default=3, help="spos-*, random-*: seeds 0..N-1, run one after the other")
    ap.add_argument(
        "--seed-list",
        help="spos-*, random-*, proxyless-* (seed 0 unless given): comma-separated seeds to run instead "
        "(e.g. '0' on one core and '1,2' on the other); only their rows are replaced",
    )
    ap.add_argument("--train-limit", type=int, default=TRAIN_LIMIT, help="training images used (10%% of them: val)")
    ap.add_argument("--test-limit", type=int, default=TEST_LIMIT, help="test images scored on the device (0: all)")
    ap.add_argument("--epochs", type=float, default=EPOCHS, help="retraining epochs (every network, one recipe)")
    ap.add_argument("--supernet-epochs", type=float, default=SUPERNET_EPOCHS)
    ap.add_argument("--generations", type=int, default=GENERATIONS)
    ap.add_argument("--val-batches", type=int, default=VAL_BATCHES, help="spos: validation batches per candidate")
    ap.add_argument("--proxyless-iters", type=int, default=PROXYLESS_ITERS)
    ap.add_argument(
        "--arch-every",
        type=int,
        default=1,
        help="proxyless-*: an architecture step after every N weight steps (the released code: 5)",
    )
    ap.add_argument(
        "--arch-lr", type=float, default=6e-3, help="proxyless-*: Adam's architecture learning rate (released: 1e-3)"
    )
    ap.add_argument(
        "--proxyless-loss",
        choices=("mul", "add", "hinge"),
        default="mul",
        help="proxyless-*: the latency loss (hinge: not the paper's, charges only latency above the target)",
    )
    ap.add_argument("--proxyless-lam", type=float, default=0.1, help="proxyless-*: lambda of the add and hinge losses")
    ap.add_argument(
        "--tag",
        help="a variant's name (e.g. other settings): its rows are recorded as experiment '<experiment>@<tag>', "
        "its runs in their own folders, beside the untagged rows",
    )
    args = ap.parse_args()
    try:
        seeds = (
            sorted({int(b) for b in args.seed_list.split(",") if b.strip()})
            if args.seed_list is not None
            else list(range(args.seeds))
        )
    except ValueError:
        ap.error(f"--seed-list takes comma-separated whole seeds, not {args.seed_list!r}")
    if not seeds or min(seeds) < 0:
        ap.error("--seed-list/--seeds: give at least one seed, none negative")
    # The tag names run folders: letters, digits, '_' and '-' only (no path separators).
    if args.tag is not None and not re.fullmatch(r"[A-Za-z0-9_-]+", args.tag):
        ap.error(f"--tag takes letters, digits, '_' and '-' only, not {args.tag!r}")
    torch.set_num_threads(1)
    if args.experiment == "probe":
        for key, value in probe().items():
            print(f"{key}: {value:.3f}")
        return
    if args.quick:
        seeds, args.train_limit, args.test_limit = seeds[:1], 600, 200
        args.epochs, args.supernet_epochs, args.generations, args.proxyless_iters = 0.5, 0.5, 1, 40
        args.val_batches = 2
    data = {
        "name": "cifar10",
        "root": str(shared_data() / "cifar10-jpg.tar.gz"),
        "augment": True,
        "val_fraction": 0.1,
        "batch_size": BATCH,
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
        {"population": 6, "top_k": 3, "mutations": 3, "crossovers": 3, "bn_batches": 2}
        if args.quick
        else {"bn_batches": 10}
    )
    if args.experiment.endswith("-0.5x") and not args.quick:
        spos_space, mbconv_space = {**spos_space, **HALF_BUDGET_SPACE}, {**mbconv_space, **HALF_BUDGET_SPACE}
    rows = previous(args.quick).get("rows", [])
    exp = args.experiment
    # A tagged variant keeps its own rows and run folders.
    label, suffix = (f"{exp}@{args.tag}", f"-{args.tag}") if args.tag else (exp, "")
    new: list[dict[str, Any]] = []

    if exp == "baseline":
        _, base = one(recipe("resnet8" + suffix, data, "resnet8", [{"train": solver}, deploy], 0), folder)
        new.append({"method": "resnet8", "budget": None, "seed": 0, **device(base)})
        print(f"resnet8: {base.est_cycles:,} cycles, {base.sram_bytes:,} B SRAM, device top-1 {base.accuracy:.2%}")
    frac = {"1x": 1.0, "0.5x": 0.5}.get(exp.split("-")[1]) if "-" in exp else None
    if exp.startswith("spos-"):
        budget = budget_of(baseline_row(rows), frac)
        for seed in seeds:
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
                    "val_batches": args.val_batches,
                    "random_baseline": True,
                    **evo,
                }
            }
            try:
                nas, dep = one(
                    recipe(f"spos-{frac:g}x-s{seed}{suffix}", data, "resnet8", [stage, deploy], seed), folder
                )
            except TamerError as exc:  # e.g. no architecture of the space within this budget
                new.append({"method": "spos", "budget": frac, "seed": seed, "error": str(exc)})
                continue
            new.append(
                {
                    "method": "spos",
                    "budget": frac,
                    "budget_cycles": budget["cycles"],
                    "seed": seed,
                    "val_accuracy_spos": nas.val_accuracy_search,
                    "val_accuracy_random": nas.random_val_accuracy,
                    "random_arch_indices": nas.random_arch_indices,
                    "evaluated": nas.evaluated,
                    "rejected": nas.rejected,
                    "arch": nas.arch,
                    "arch_indices": nas.arch_indices,
                    "predicted": nas.predicted,
                    "measured": nas.measured,
                    "within_budget": nas.within_budget,
                    **device(dep),
                }
            )
    if exp.startswith("random-"):
        # Each SPOS seed's random-search best in-budget architecture (scored with that seed's
        # supernet), retrained from scratch with the same recipe and seed and deployed alike:
        # the retrained networks compare like for like.
        budget = budget_of(baseline_row(rows), frac)
        spos_label = f"spos-{frac:g}x" + (f"@{args.tag}" if args.tag else "")
        for seed in seeds:
            src = next((r for r in rows if r["experiment"] == spos_label and r["seed"] == seed), None)
            if src is None or not src.get("random_arch_indices"):
                sys.exit(
                    f"nas_cifar: no {spos_label} seed-{seed} row with a random-search result: run that experiment first"
                )
            model = {"space": "shufflenet", "options": spos_space, "arch": src["random_arch_indices"]}
            rec = parse_recipe(
                {
                    "name": f"random-{frac:g}x-s{seed}{suffix}",
                    "seed": seed,
                    "data": data,
                    "model": {"name": "benchmarks.nas_cifar:derived", "kwargs": model},
                    "stages": [{"train": solver}, deploy],
                }
            )
            _, dep = one(rec, folder)
            measured = {"est_cycles": dep.est_cycles, "sram_bytes": dep.sram_bytes}
            over = [
                f"{m} {measured[m]:g} > {v:g}"
                for m, v in (("est_cycles", budget["cycles"]), ("sram_bytes", budget["sram"]))
                if measured[m] > v
            ]
            new.append(
                {
                    "method": "random",
                    "budget": frac,
                    "budget_cycles": budget["cycles"],
                    "seed": seed,
                    "val_accuracy_random": src["val_accuracy_random"],
                    "arch_indices": src["random_arch_indices"],
                    "within_budget": not over,
                    "violations": over,
                    **device(dep),
                }
            )
    if exp.startswith("proxyless-"):
        budget = budget_of(baseline_row(rows), frac)
        if exp.endswith("-cycles"):  # the cycle target alone: SRAM left out of the budget
            budget = {"cycles": budget["cycles"]}
        stage = {
            "proxylessnas": {
                "space": "mbconv",
                "space_options": mbconv_space,
                "cost_table": table,
                "target": "cortex-m4",
                "budget": budget,
                "iters": args.proxyless_iters,
                "warmup": args.proxyless_iters // 5,
                "arch_every": args.arch_every,
                "arch_lr": args.arch_lr,
                "loss": args.proxyless_loss,
                "lam": args.proxyless_lam,
                "retrain": solver,
            }
        }
        # Seed 0 alone unless --seed-list names others (each seed: its own search and retraining).
        for seed in seeds if args.seed_list is not None else [0]:
            try:
                nas, dep = one(
                    recipe(exp + (f"-s{seed}" if seed else "") + suffix, data, "resnet8", [stage, deploy], seed), folder
                )
            except TamerError as exc:
                new.append({"method": "proxylessnas", "budget": frac, "seed": seed, "error": str(exc)})
            else:
                new.append(
                    {
                        "method": "proxylessnas",
                        "budget": frac,
                        "budget_cycles": budget["cycles"],
                        "budget_entries": sorted(budget),
                        "seed": seed,
                        "arch": nas.arch,
                        "arch_indices": nas.arch_indices,
                        "argmax_violations": nas.argmax_violations,
                        "predicted": nas.predicted,
                        "measured": nas.measured,
                        "within_budget": nas.within_budget,
                        "cycles_vs_target": nas.measured["est_cycles"] / budget["cycles"] - 1,
                        **device(dep),
                    }
                )
    m = machine()
    made = {"git": m["git"], "git_dirty": m["git_dirty"], "date": m["date"]}
    # Experiments (and spos seeds) run at different times, or at once on different cores, merge
    # into one file: it is reread under a lock, and only this run's rows are replaced.
    with merge_lock(args.quick):
        old = previous(args.quick)
        mine = set(seeds) if exp.startswith(("spos-", "random-")) or args.seed_list is not None else None
        rows = [
            r
            for r in old.get("rows", [])
            if r.get("experiment") != label or (mine is not None and r.get("seed") not in mine)
        ]
        # Each row keeps the commit and the settings that made it.
        rows += [{"experiment": label, **r, "made": made} for r in new]
        order = {m: i for i, m in enumerate(("resnet8", "spos", "random", "proxylessnas"))}
        rows.sort(key=lambda r: (order[r["method"]], -(r["budget"] or 2), r["seed"]))
        run_settings = {**vars(args), "seed_list": seeds, "machine": made}
        settings = {**old.get("settings", {}), label: run_settings}
        out = save(
            "nas_cifar",
            {
                "data": f"CIFAR-10 JPEG re-encoding: first {args.train_limit} training images (10% val), "
                f"first {args.test_limit or 'all'} test images",
                "settings": settings,
                "retrain_solver": solver,
                "rows": rows,
                "summary": summarize(rows),
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
