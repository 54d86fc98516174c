"""Deep Compression (Han et al. 2016) on full MNIST: LeNet-300-100 and LeNet-5.

    python benchmarks/deep_compression.py                 # both models
    python benchmarks/deep_compression.py lenet300 --quick

Pipeline, through the recipe runner (the path of ``tamer run``):

1. start from the trained baseline (``benchmarks/work/baselines/<model>.safetensors``
   from ``benchmarks/baselines.py``; trained here with Caffe's LeNet solver if missing);
2. magnitude pruning to Han's per-layer rates (LeNet-300-100 keeps 8% / 9% / 26%,
   LeNet-5 keeps 66% / 12% / 8% / 19%), iteratively with retraining (Han et al. 2015);
3. k-means weight sharing, 8 bits for conv and 5 bits for fc layers, linear
   centroid initialization, then centroid fine-tuning;
4. Huffman coding of the cluster indices and the sparse relative positions.

Every size is the size on disk of the codec file at that stage: the dense float32
file; the pruned model stored sparse (relative indices + float32 values); + sharing
(codebook + fixed-width indices); + Huffman.  Error is top-1 on the 10,000 MNIST test
images, measured on the model loaded back from the final file.
Results: ``benchmarks/results/deep_compression_<model>.json``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from benchmarks._common import REPO, WORK, save, shared_data  # noqa: E402
from tinytamer import codec  # noqa: E402
from tinytamer.data import get_dataset, make_loader  # noqa: E402
from tinytamer.recipe import parse_recipe, run  # noqa: E402
from tinytamer.train import evaluate  # noqa: E402

CAFFE_LENET = {"base_lr": 0.01, "momentum": 0.9, "weight_decay": 0.0005, "lr_policy": "inv",
               "gamma": 0.0001, "power": 0.75, "max_iter": 10000, "display": 0}

# Han et al. 2016, Tables 2 and 3 (weights kept per layer) and Table 1 (sizes, errors).
SETUPS = {
    "lenet300": {
        "keep": {"1": 0.08, "3": 0.09, "5": 0.26},
        "paper": {"dense_kb": 1070, "compressed_kb": 27, "ratio": 40, "error": 0.0158,
                  "baseline_error": 0.0164},
    },
    "lenet5": {
        "keep": {"features.0": 0.66, "features.2": 0.12, "classifier.1": 0.08, "classifier.3": 0.19},
        "paper": {"dense_kb": 1720, "compressed_kb": 44, "ratio": 39, "error": 0.0074,
                  "baseline_error": 0.0080},
    },
}
STAGE_FILES = {"dense": ["dense"], "pruned": ["dense", "sparse"],
               "shared": ["dense", "sparse", "codebook"], "huffman": None}


def recipe_for(name: str, args: argparse.Namespace) -> dict:
    setup = SETUPS[name]
    baseline = WORK / "baselines" / f"{name}.safetensors"
    model: dict = {"name": name}
    stages: list[dict] = []
    if baseline.is_file():
        model["weights"] = str(baseline)
    else:
        print(f"{name}: no baseline at {baseline}; training one ({args.baseline_iters} iterations)")
        stages.append({"train": {**CAFFE_LENET, "max_iter": args.baseline_iters}})
    retrain = {"base_lr": 0.001, "momentum": 0.9, "weight_decay": 0.0005, "lr_policy": "fixed",
               "max_iter": args.retrain_iters, "display": 0}
    centroids = {"base_lr": 0.001, "momentum": 0.9, "lr_policy": "fixed",
                 "max_iter": args.share_iters, "display": 0}
    stages += [
        {"save_compressed": {"file": "dense.tt", "allow": STAGE_FILES["dense"]}},
        {"prune": {"sparsity": {k: round(1 - v, 4) for k, v in setup["keep"].items()},
                   "schedule": {"type": "iterative", "rounds": args.rounds}, "finetune": retrain}},
        {"save_compressed": {"file": "pruned.tt", "allow": STAGE_FILES["pruned"]}},
        {"kmeans_share": {"conv_bits": 8, "linear_bits": 5, "init": "linear", "finetune": centroids}},
        {"save_compressed": {"file": "shared.tt", "allow": STAGE_FILES["shared"]}},
        {"save_compressed": {"file": "huffman.tt"}},
    ]
    return {"name": f"deep-compression-{name}", "seed": 0,
            "data": {"name": "mnist", "root": str(shared_data() / "mnist"), "batch_size": 64,
                     "val_fraction": 0.0},
            "model": model, "stages": stages}


def per_layer(files: dict[str, Path]) -> list[dict]:
    """Per weight tensor: kept fraction, bytes at each stage, codebook and index bits used."""
    infos = {stage: {t["name"]: t for t in codec.info(path)["tensors"]} for stage, path in files.items()}
    rows = []
    for name, dense in infos["dense"].items():
        if not name.endswith("weight"):
            continue
        final = infos["huffman"][name]
        row = {"tensor": name, "weights": 1, "dense_bytes": dense["bytes"]}
        for d in dense["shape"]:
            row["weights"] *= d
        for stage in ("pruned", "shared", "huffman"):
            row[f"{stage}_bytes"] = infos[stage][name]["bytes"]
            row[f"{stage}_encoding"] = infos[stage][name]["encoding"]
        row["centroids"] = final["params"].get("k")
        row["index_bits"] = final["params"].get("index_bits")
        rows.append(row)
    return rows


def bench(name: str, args: argparse.Namespace) -> dict:
    recipe = parse_recipe(recipe_for(name, args), source=f"deep compression {name}")
    start = time.time()
    rundir = run(recipe, WORK / "runs" / recipe.name, overwrite=True, progress=False)
    seconds = time.time() - start
    records = [r for r in rundir.records() if r.get("kind") == "stage"]
    saved = {Path(r["file"]).stem: r for r in records if r["stage"] == "save_compressed"}
    files = {stage: rundir.path / saved[stage]["file"] for stage in STAGE_FILES}
    # The error we report is that of the model rebuilt from the final file alone.
    data = get_dataset("mnist", shared_data() / "mnist", val_fraction=0.0)
    final = codec.load(files["huffman"])
    metrics = evaluate(final, make_loader(data.test, 1000, shuffle=False))
    dense_bytes = saved["dense"]["bytes"]
    stages = {stage: {"bytes": saved[stage]["bytes"], "ratio": dense_bytes / saved[stage]["bytes"],
                      "error": 1 - saved[stage]["accuracy"],
                      "nonzero_params": saved[stage]["nonzero_params"]} for stage in STAGE_FILES}
    share_rec = next(r for r in records if r["stage"] == "kmeans_share")
    return {"model": name, "params": saved["dense"]["params"], "stages": stages,
            "final_error_from_file": 1 - metrics["accuracy"],
            "ratio": dense_bytes / saved["huffman"]["bytes"],
            "error_before_centroid_finetune": 1 - share_rec["accuracy_before_finetune"],
            "per_layer": per_layer(files), "paper": SETUPS[name]["paper"],
            "settings": {"keep": SETUPS[name]["keep"], "rounds": args.rounds,
                         "retrain_iters_per_round": args.retrain_iters,
                         "centroid_iters": args.share_iters, "conv_bits": 8, "fc_bits": 5,
                         "baseline": (str(Path(recipe.model.weights).relative_to(REPO))
                                      if recipe.model.weights
                                      else f"trained here, {args.baseline_iters} iterations")},
            "seconds": round(seconds, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("models", nargs="*", default=list(SETUPS), choices=sorted(SETUPS))
    parser.add_argument("--rounds", type=int, default=3, help="prune-retrain rounds")
    parser.add_argument("--retrain-iters", type=int, default=1000, help="retraining per round")
    parser.add_argument("--share-iters", type=int, default=1000, help="centroid fine-tuning")
    parser.add_argument("--baseline-iters", type=int, default=10000)
    parser.add_argument("--quick", action="store_true", help="a smoke run with few iterations")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.retrain_iters, args.share_iters, args.baseline_iters = 1, 50, 50, 200
    torch.set_num_threads(args.threads)
    for name in args.models:
        r = bench(name, args)
        s = r["stages"]
        print(f"{name}: {s['dense']['bytes']} B -> pruned {s['pruned']['bytes']} B "
              f"-> shared {s['shared']['bytes']} B -> huffman {s['huffman']['bytes']} B "
              f"({r['ratio']:.1f}x), error {r['final_error_from_file']:.2%} in {r['seconds']:.0f} s")
        save(f"deep_compression_{name}" + ("_quick" if args.quick else ""), r)


if __name__ == "__main__":
    main()
