"""HAQ (Wang et al., CVPR 2019) against uniform bit widths, with the Cortex-M4 in the loop.

    python benchmarks/haq_bench.py lenet5                          # all three experiments
    python benchmarks/haq_bench.py resnet8 --baseline path/to/resnet8.safetensors
    python benchmarks/haq_bench.py lenet5 --experiments flash --quick   # a smoke run
    python benchmarks/haq_bench.py resnet8 --experiments flash --policies-from haq_resnet8 \
        --final-iters 2000 --uniform 8     # no search: an earlier run's policies, fine-tuned longer

Experiments (each a budget, a HAQ search per seed, then the chosen policy fine-tuned for
``--final-iters`` steps and scored on the test split; uniform policies get the same
fine-tune):

- ``flash``: HAQ against uniform 8 / 6 / 4-bit weights at equal Cortex-M4 flash.  The budget
  is the smaller of half the int8 program's flash and the uniform 4-bit program's, so one
  search answers both goals: top-1 within 1 point of int8 at <= 0.5x its flash, and >= 1
  point better than uniform 4-bit at equal flash (means of ``--seeds`` seeds).
- ``cycles``: the same at equal estimated cycles; the budget is ``--cycle-ratio`` x the int8
  model's cycles.  The cycles are what the kernels measure: today the packed int4 / int2
  kernels unpack each row before the int8 math and cost *more* cycles than int8, so no
  budget below the int8 figure can be met and fewer bits buy no cycles.
- ``size`` (LeNet-5 in the paper's model-size experiment): HAQ with k-means weight sharing
  against Deep Compression's fixed 8 / 5 bits (conv / fully connected, k-means as Han et
  al., no pruning) at equal compressed-file bytes.

What is measured and what predicted: flash is measured (the linked image of a Cortex-M4
build, one per combination of the layers' weight forms: :func:`tinytamer.search.haq.micro_flash`);
cycles are predicted from per-layer cycles measured on the emulated Cortex-M4 at uniform
2..8 bits with 8-bit activations (estimated under the board's memory profile:
:func:`tinytamer.search.haq.micro_cycles`; narrower activations cost a little more, not
counted); compressed-file bytes are measured (the file :mod:`tinytamer.codec` writes).
Top-1 is that of the quantized PyTorch model (weights and activations fake-quantized as
``compress.int8`` converts them), not run on the device.

The search scores candidates on a validation split the baseline never saw: the first
``--val`` images of the test set, which are then left out of every test figure (those are
taken on the remaining test images: 8,000 for LeNet-5, 9,000 for ResNet-8).  A split
carved from the training set scores 100% on LeNet-5 for nearly every policy, and ties rank
nothing.  ``--policies-from RESULT`` skips the search and scores the policies an earlier
result found (each with its seed), their cost measured again against the budget; with a longer
``--final-iters`` it measures what the final fine-tune, not the search, leaves on the table
(HAQ fine-tunes its chosen policy after the search).  It writes ``haq_<model>_final<N>.json``.
``--uniform`` limits which uniform widths are fine-tuned beside it (the others are only
priced, their goals not judged).  ``--seed-list 2`` runs only the seeds named (one
search per core, say), written to ``haq_<model>_seeds2.json``.  The baseline is ``--baseline PATH``, else
``benchmarks/work/baselines/<model>.safetensors`` (``benchmarks/baselines.py``).
Result: ``benchmarks/results/haq_<model>.json``.  Fine-tunes of the linear path (BN folded)
run on plain training images; k-means sharing keeps BN, and its fine-tunes see the
baseline's augmentation (``setup`` says why).

Defaults (``DEFAULTS``; the paper runs 600 episodes): LeNet-5 50 episodes (20 of them random
warm-up), 50 fine-tune steps per candidate, 400 for each scored policy, learning rate 1e-3;
ResNet-8 30 episodes, 20 and 300 steps at 1e-4 (in a by-hand check, 300 steps at 1e-3 cost
the int8 model itself 1.5 points).  Duration on 2 idle cores, estimated from smoke runs on a loaded machine
(not measured): about 45 min per experiment for LeNet-5 and 55 for ResNet-8; run one
experiment per command (``--experiments flash``) to keep each under an hour.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.data import Subset  # noqa: E402

from benchmarks._common import REPO, RESULTS, WORK, save, shared_data  # noqa: E402
from tinytamer.checkpoint import load_checkpoint  # noqa: E402
from tinytamer.compress.int8 import MAX_BITS, MIN_BITS  # noqa: E402
from tinytamer.data import get_dataset, make_loader  # noqa: E402
from tinytamer.data.arrays import ArrayDataset  # noqa: E402
from tinytamer.errors import CompressError  # noqa: E402
from tinytamer.search import haq  # noqa: E402
from tinytamer.train import evaluate  # noqa: E402

# Per model: dataset, folder, and whether its baseline trained on augmented images
# (benchmarks/baselines.py): the fine-tunes here use the same augmentation.
DATA = {"lenet5": ("mnist", "mnist", False), "resnet8": ("cifar10", "cifar10-jpg.tar.gz", True)}
# Per model: search episodes, fine-tune steps per candidate, final fine-tune, batch.
DEFAULTS = {
    "lenet5": {"episodes": 50, "finetune_iters": 50, "final_iters": 400, "batch": 64, "val": 2000, "finetune_lr": 1e-3},
    # ResNet-8 fine-tunes at 1e-4: at 1e-3 (the library's default) 300 steps take the int8
    # model itself from 82.85% to 81.30% on 2,000 test images; at 1e-4 it holds (83.15%).
    "resnet8": {
        "episodes": 30,
        "finetune_iters": 20,
        "final_iters": 300,
        "batch": 64,
        "val": 1000,
        "finetune_lr": 1e-4,
    },
}


def setup(args: argparse.Namespace) -> dict[str, Any]:
    kind, folder, augment = DATA[args.model]
    data = get_dataset(kind, str(shared_data() / folder), val_fraction=0.0, augment=augment)
    # Validation: the first --val test images, which the baseline never saw; the test figures
    # are taken on the rest.  (Training images score 100% on LeNet-5, so no candidate could be
    # ranked above another.)
    n_test = len(data.test) - args.val
    if n_test <= 0:
        sys.exit(f"--val {args.val} leaves no test images (the test split holds {len(data.test)})")
    if args.test_limit is not None:
        n_test = min(n_test, args.test_limit)
    val, test = Subset(data.test, range(args.val)), Subset(data.test, range(args.val, args.val + n_test))
    train = data.train
    path = Path(args.baseline) if args.baseline else WORK / "baselines" / f"{args.model}.safetensors"
    if not path.is_file():
        sys.exit(f"no baseline at {path}: train it with `python benchmarks/baselines.py {args.model}`")
    model = load_checkpoint(path).eval()
    # A model that keeps its BN (k-means sharing) is fine-tuned on the training augmentation the
    # baseline saw: a fine-tune in train mode re-estimates the BN statistics, and the baseline's
    # were taken on padded crops (black borders); re-estimated on plain images they cost the
    # float ResNet-8 6 points in 50 steps (a by-hand check).  Linear quantization folds BN, so
    # there is no statistic to keep, and plain images do better there (300 steps: int8 83.51%
    # on plain images, 82.97% on augmented ones; `haq_resnet8_flash_augmented.json`).
    # Calibration ranges come from the plain images, as inference sees them.
    plain = ArrayDataset(train.images, train.labels, data.test.transform)
    calib = [x for (x, _), _ in zip(make_loader(plain, args.batch, shuffle=True, seed=0), range(4), strict=False)]
    return {
        "model": model,
        "baseline": _shown(path),
        "train": {
            "linear": make_loader(plain, args.batch, shuffle=True, seed=0),
            "kmeans": make_loader(train, args.batch, shuffle=True, seed=0),
        },
        "val": make_loader(val, 500, shuffle=False),
        "test": make_loader(test, 500, shuffle=False),
        "calib": calib,
        "layers": haq.layer_infos(model, calib[0]),
    }


def _shown(path: Path) -> str:
    """The checkpoint's path as a result records it: relative to the repository when inside it."""
    try:
        return str(path.resolve().relative_to(REPO))
    except ValueError:
        return str(path)


def top1(model: nn.Module, loader: Any) -> float:
    return float(evaluate(model, loader)["accuracy"])


def final(
    s: dict[str, Any], bits: list[haq.LayerBits], quantizer: haq.Quantizer, seed: int, iters: int, lr: float
) -> float:
    """Test top-1 of ``bits`` after the final fine-tune."""
    q = haq.quantize_policy(
        s["model"],
        s["calib"],
        s["layers"],
        bits,
        quantizer=quantizer,
        train_loader=s["train"][quantizer],
        finetune_iters=iters,
        finetune_lr=lr,
        seed=seed,
    )
    return top1(q, s["test"])


def reused_policies(name: str, experiment: str, layers: list[haq.LayerInfo]) -> list[tuple[int, list[haq.LayerBits]]]:
    """The (seed, policy) pairs that an earlier result ``name`` found in ``experiment``, checked
    against ``layers``: the same layer names in the same order, whole bit widths in range."""
    path = RESULTS / f"{name}.json"
    where = f"--policies-from {name}: {path}"
    try:
        found = json.loads(path.read_text())["experiments"][experiment]["haq"]
        pairs = [(int(r["seed"]), r["policy"]) for r in found]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        sys.exit(f"{where} holds no HAQ policies for experiment '{experiment}' ({exc!r})")
    if not pairs:
        sys.exit(f"{where}: experiment '{experiment}' found no policy")
    names = [L.name for L in layers]
    out = []
    for seed, policy in pairs:
        if not isinstance(policy, dict) or list(policy) != names:
            got = list(policy) if isinstance(policy, dict) else type(policy).__name__
            sys.exit(f"{where}: seed {seed}'s policy covers {got}, the model's layers are {names}")
        bits = []
        for layer, b in policy.items():
            w, a = (b.get("w_bits"), b.get("a_bits")) if isinstance(b, dict) else (None, None)
            if not all(isinstance(x, int) and not isinstance(x, bool) and MIN_BITS <= x <= MAX_BITS for x in (w, a)):
                sys.exit(
                    f"{where}: seed {seed}, layer {layer!r}: bits {b!r} are not whole widths in {MIN_BITS}-{MAX_BITS}"
                )
            bits.append(haq.LayerBits(w, a))
        out.append((seed, bits))
    return out


def rescore_haq(
    s: dict[str, Any],
    resource: haq.Resource,
    budget: float,
    quantizer: haq.Quantizer,
    args: argparse.Namespace,
    experiment: str,
) -> list[dict[str, Any]]:
    """No search: the policies of ``--policies-from``, their cost measured again and the
    budget checked, each fine-tuned for ``--final-iters`` steps with its seed and scored."""
    out = []
    for seed, bits in reused_policies(args.policies_from, experiment, s["layers"]):
        if seed not in args.seed_list:
            continue
        cost = resource(bits)
        if cost > budget:
            sys.exit(
                f"--policies-from {args.policies_from}: seed {seed}'s policy costs {cost:.0f} > budget {budget:.0f}"
            )
        acc = final(s, bits, quantizer, seed, args.final_iters, args.finetune_lr)
        policy = {L.name: {"w_bits": b.w, "a_bits": b.a} for L, b in zip(s["layers"], bits, strict=True)}
        out.append({"seed": seed, "policy": policy, "cost": cost, "test_top1": acc, "from": args.policies_from})
        print(f"  haq seed {seed} (reused): cost {cost:.0f} <= {budget:.0f}, test top-1 {acc:.4f}", flush=True)
    return out


def _progress(seed: int, episodes: int, t0: float, every: int = 10) -> Any:
    """A log line every ``every`` episodes (a benchmark's output goes to a file, not a
    terminal): the best validation top-1 so far and the time taken."""
    best = [0.0]

    def tick(e: haq.Episode) -> None:
        best[0] = max(best[0], e.accuracy)
        done = e.episode + 1
        if done % every == 0 or done == episodes:
            print(
                f"    seed {seed}: episode {done}/{episodes}, best val top-1 {best[0]:.4f}, {time.time() - t0:.0f} s",
                flush=True,
            )

    return tick


def run_haq(
    s: dict[str, Any],
    resource: haq.Resource,
    budget: float,
    quantizer: haq.Quantizer,
    args: argparse.Namespace,
    experiment: str,
) -> list[dict[str, Any]]:
    """One search per seed: the chosen policy, its cost, its test top-1 after the final
    fine-tune (with ``--policies-from``, the earlier run's policies instead of a search)."""
    if args.policies_from:
        return rescore_haq(s, resource, budget, quantizer, args, experiment)
    out = []
    for seed in args.seed_list:
        t0 = time.time()
        result = haq.search(
            s["model"],
            s["layers"],
            resource,
            budget,
            evaluate=lambda m: top1(m, s["val"]),
            calib=s["calib"],
            train_loader=s["train"][quantizer],
            episodes=args.episodes,
            warmup=min(args.warmup, args.episodes - 1),
            quantizer=quantizer,
            finetune_iters=args.finetune_iters,
            finetune_lr=args.finetune_lr,
            seed=seed,
            search_acts=args.search_acts or None,
            on_episode=_progress(seed, args.episodes, t0),
        )
        search_s = time.time() - t0
        acc = final(s, result.bits, quantizer, seed, args.final_iters, args.finetune_lr)
        out.append(
            {
                "seed": seed,
                "policy": result.policy(),
                "cost": result.resource,
                "val_top1": result.accuracy,
                "test_top1": acc,
                "search_s": search_s,
                "rewards": [e.reward for e in result.history],
            }
        )
        print(f"  haq seed {seed}: cost {result.resource:.0f} <= {budget:.0f}, test top-1 {acc:.4f}", flush=True)
    return out


def uniform(
    s: dict[str, Any],
    widths: dict[str, list[haq.LayerBits]],
    resource: haq.Resource,
    args: argparse.Namespace,
    quantizer: haq.Quantizer = "linear",
) -> dict[str, Any]:
    """Each fixed policy's cost and its test top-1 (mean over the seeds' final fine-tunes);
    a uniform width left out of ``--uniform`` is priced but not scored (its top-1 None)."""
    out = {}
    for name, bits in widths.items():
        if name.startswith("uniform") and int(name.removeprefix("uniform")) not in args.uniform:
            out[name] = {"cost": resource(bits), "test_top1": None, "mean_test_top1": None}
            print(f"  {name}: cost {out[name]['cost']:.0f} (not scored: --uniform)", flush=True)
            continue
        accs = [final(s, bits, quantizer, seed, args.final_iters, args.finetune_lr) for seed in args.seed_list]
        out[name] = {"cost": resource(bits), "test_top1": accs, "mean_test_top1": statistics.mean(accs)}
        print(f"  {name}: cost {out[name]['cost']:.0f}, test top-1 {out[name]['mean_test_top1']:.4f}", flush=True)
    return out


def summary(fixed: dict[str, Any], found: list[dict[str, Any]], budget: float) -> dict[str, Any]:
    return {
        "budget": budget,
        "haq_mean_test_top1": statistics.mean(r["test_top1"] for r in found),
        "haq_max_cost": max(r["cost"] for r in found),
        **{f"{k}_mean_test_top1": v["mean_test_top1"] for k, v in fixed.items()},
    }


def flash_experiment(s: dict[str, Any], args: argparse.Namespace, work: Path) -> dict[str, Any]:
    n = len(s["layers"])
    res = haq.micro_flash(s["model"], s["calib"], s["layers"], workdir=work)
    widths = {f"uniform{b}": [haq.LayerBits(b, 8)] * n for b in (8, 6, 4)}
    fixed = uniform(s, widths, res, args)
    budget = min(0.5 * fixed["uniform8"]["cost"], fixed["uniform4"]["cost"])
    found = run_haq(s, res, budget, "linear", args, "flash")
    out = summary(fixed, found, budget)
    int8, four = out["uniform8_mean_test_top1"], out["uniform4_mean_test_top1"]
    # A goal whose uniform policy was not scored (--uniform) is not judged: None.
    out["goal_within_1pt_of_int8_at_half_flash"] = None if int8 is None else out["haq_mean_test_top1"] >= int8 - 0.01
    out["goal_1pt_better_than_uniform4_at_equal_flash"] = (
        None
        if four is None
        else out["haq_max_cost"] <= fixed["uniform4"]["cost"] and out["haq_mean_test_top1"] >= four + 0.01
    )
    return {"resource": res.name, "unit": res.unit, "source": res.source, "uniform": fixed, "haq": found, **out}


def cycles_experiment(s: dict[str, Any], args: argparse.Namespace, work: Path) -> dict[str, Any]:
    n = len(s["layers"])
    res = haq.micro_cycles(s["model"], s["calib"], s["layers"], workdir=work)
    widths = {f"uniform{b}": [haq.LayerBits(b, 8)] * n for b in (8, 6, 4)}
    fixed = uniform(s, widths, res, args)
    budget = args.cycle_ratio * fixed["uniform8"]["cost"]
    lowest = res([haq.LayerBits(2, 2)] * n)
    per_width = {b: res([haq.LayerBits(b, 8)] * n) for b in range(2, 9)}
    try:
        found = run_haq(s, res, budget, "linear", args, "cycles")
    except CompressError as exc:  # the kernels' cycles rule the budget out: say so, not crash
        found, out = [], {"budget": budget, "infeasible": str(exc)}
    else:
        out = summary(fixed, found, budget)
    return {
        "resource": res.name,
        "unit": res.unit,
        "source": res.source,
        "cycles_per_width": per_width,
        "cycles_at_2_bits": lowest,
        "uniform": fixed,
        "haq": found,
        **out,
    }


def size_experiment(s: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    layers = s["layers"]
    res = haq.compressed_bytes(s["model"], layers)
    conv = [isinstance(s["model"].get_submodule(L.name), nn.Conv2d) for L in layers]
    dc = [haq.LayerBits(8 if c else 5, 8) for c in conv]
    fixed = uniform(s, {"deep_compression_8_5": dc}, res, args, "kmeans")
    budget = fixed["deep_compression_8_5"]["cost"]
    found = run_haq(s, res, budget, "kmeans", args, "size")
    out = summary(fixed, found, budget)
    out["haq_minus_deep_compression"] = out["haq_mean_test_top1"] - out["deep_compression_8_5_mean_test_top1"]
    return {"resource": res.name, "unit": res.unit, "source": res.source, "uniform": fixed, "haq": found, **out}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model", choices=sorted(DATA))
    ap.add_argument("--baseline", help="trained float checkpoint (default: benchmarks/work/baselines/<model>)")
    ap.add_argument("--experiments", default="flash,cycles,size", help="comma-separated: flash, cycles, size")
    ap.add_argument("--seeds", type=int, default=3, help="run seeds 0..N-1")
    ap.add_argument(
        "--seed-list",
        help="comma-separated seeds to run instead (e.g. '2', to run one seed per core); names the result "
        "haq_<model>_seeds<list>",
    )
    ap.add_argument("--episodes", type=int)
    ap.add_argument("--warmup", type=int, default=20, help="episodes of random actions (the paper's 20)")
    ap.add_argument("--finetune-iters", type=int, help="SGD steps before each candidate's reward")
    ap.add_argument("--final-iters", type=int, help="fine-tune steps of each policy scored on the test split")
    ap.add_argument("--finetune-lr", type=float, help="SGD learning rate of every fine-tune (search and final)")
    ap.add_argument("--batch", type=int)
    ap.add_argument("--val", type=int, help="validation: the first N test images (excluded from the test figures)")
    ap.add_argument("--test-limit", type=int, help="score the first N of the remaining test images only")
    ap.add_argument("--cycle-ratio", type=float, default=1.0, help="cycle budget: this x the int8 model's")
    ap.add_argument(
        "--search-acts",
        action="store_true",
        help="search activation bits too (default: held at 8, as no resource here prices them)",
    )
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="a smoke run: 1 seed, 3 episodes, short fine-tunes")
    ap.add_argument(
        "--uniform",
        default="8,6,4",
        help="uniform weight widths to fine-tune and score beside HAQ (comma-separated; the others are only priced)",
    )
    ap.add_argument(
        "--policies-from",
        metavar="RESULT",
        help="no search: score the policies an earlier result (its name) found, e.g. with a longer --final-iters",
    )
    args = ap.parse_args()
    for key, value in DEFAULTS[args.model].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.quick:
        args.seeds, args.episodes, args.warmup, args.finetune_iters, args.final_iters = 1, 3, 2, 2, 5
        args.val, args.test_limit = 500, args.test_limit or 500
    try:
        args.seed_list = (
            sorted({int(b) for b in args.seed_list.split(",") if b.strip()})
            if args.seed_list is not None
            else list(range(args.seeds))
        )
    except ValueError:
        ap.error(f"--seed-list takes comma-separated whole seeds, not {args.seed_list!r}")
    if not args.seed_list or min(args.seed_list) < 0:
        ap.error(f"--seed-list: {args.seed_list} holds no seed, or a negative one")
    try:
        args.uniform = sorted({int(b) for b in args.uniform.split(",") if b.strip()}, reverse=True)
    except ValueError:
        ap.error(f"--uniform takes comma-separated bit widths, not {args.uniform!r}")
    if not set(args.uniform) <= {8, 6, 4}:
        ap.error(
            f"--uniform: widths {sorted(set(args.uniform) - {8, 6, 4})} are not among the uniform policies 8, 6, 4"
        )
    if args.finetune_lr <= 0:
        ap.error(f"--finetune-lr must be positive, not {args.finetune_lr:g}")
    torch.set_num_threads(args.threads)
    s = setup(args)
    if args.policies_from:  # refuse a file that does not fit before any fine-tune runs
        for name in args.experiments.split(","):
            seeds = [seed for seed, _ in reused_policies(args.policies_from, name, s["layers"])]
            if not set(seeds) & set(args.seed_list):
                sys.exit(
                    f"--policies-from {args.policies_from}: experiment '{name}' holds seeds {seeds}, "
                    f"none of --seed-list {args.seed_list}"
                )
    result: dict[str, Any] = {
        "model": args.model,
        "baseline": s["baseline"],
        "split": {
            "val": f"test images [0, {args.val})",
            "test": f"test images [{args.val}, {args.val + len(s['test'].dataset)})",
        },
        "float_test_top1": top1(s["model"], s["test"]),
        # Which fine-tunes see augmented images, per quantizer (see setup).
        "finetune_augment": {"linear": False, "kmeans": DATA[args.model][2]},
        "layers": [L.name for L in s["layers"]],
        "settings": {k: v for k, v in vars(args).items() if k not in ("model", "baseline")},
        "experiments": {},
    }
    print(f"{args.model}: float test top-1 {result['float_test_top1']:.4f}", flush=True)
    with tempfile.TemporaryDirectory(prefix="haq-bench-") as tmp:
        for name in args.experiments.split(","):
            t0 = time.time()
            print(f"experiment {name}", flush=True)
            if name == "flash":
                r = flash_experiment(s, args, Path(tmp))
            elif name == "cycles":
                r = cycles_experiment(s, args, Path(tmp))
            elif name == "size":
                r = size_experiment(s, args)
            else:
                sys.exit(f"unknown experiment '{name}' (flash, cycles, size)")
            r["seconds"] = time.time() - t0
            result["experiments"][name] = r
    name = f"haq_{args.model}" + (f"_final{args.final_iters}" if args.policies_from else "")
    if args.seed_list != list(range(args.seeds)):
        name += "_seeds" + "-".join(map(str, args.seed_list))
    save(name + ("_quick" if args.quick else ""), result, quick=args.quick)


if __name__ == "__main__":
    main()
