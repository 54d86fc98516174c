"""Deep Compression (Han et al. 2016) on full MNIST: LeNet-300-100 and LeNet-5.

    python benchmarks/deep_compression.py                 # both models
    python benchmarks/deep_compression.py lenet300 --quick
    python benchmarks/deep_compression.py lenet5 --pruned benchmarks/work/prune_mnist/lenet5_pruned.safetensors

Han, Mao & Dally 2016, "Deep Compression: Compressing Deep Neural Networks with
Pruning, Trained Quantization and Huffman Coding", ICLR 2016.  The three-stage
pipeline, through the recipe runner (the path of ``tamer run``):

1. start from the trained baseline (``benchmarks/work/baselines/<model>.safetensors``
   from ``benchmarks/baselines.py``; trained here with Caffe's LeNet solver if missing);
2. pruning (Sec. 2; Han et al. 2015): magnitude pruning to the paper's per-layer
   rates (Tables 2 and 3: LeNet-300-100 keeps 8% / 9% / 26%, LeNet-5 keeps
   66% / 12% / 8% / 19%), iteratively: ``--rounds`` x (prune a step further,
   retrain ``--retrain-iters`` iterations with the masks held, learning rate
   decaying to zero in each round; by default 5,000 for LeNet-300-100 and 10,000 for
   LeNet-5, what reached the paper's figures here: ``prune_mnist.RETRAIN_ITERS``).
   ``--pruned`` starts from a model pruned this way by ``benchmarks/prune_mnist.py``
   instead (the same schedule, run once for both benchmarks);
3. trained quantization (Sec. 3): k-means weight sharing with the paper's bits
   per layer (Table 2: 6 bits for LeNet-300-100's fc layers; Table 3: 8 bits conv,
   5 bits fc for LeNet-5), zero being one of the ``2**bits`` values of a pruned
   layer, linear centroid initialization, then centroid fine-tuning;
4. Huffman coding (Sec. 4) of the cluster indices and the sparse relative positions.

Every size is the size on disk of the codec file at that stage: the dense float32
file; the pruned model stored sparse (relative indices + float32 values); + sharing
(codebook + fixed-width indices); + Huffman.  The paper's ratios count the weight
tensors alone (``weights_only_ratio`` here); ``ratio`` is the whole file's, float32
biases and header included.  The relative-index width of each
layer is the one that minimizes its size (the paper fixes it: 5 bits in both
LeNets' tables); the result lists the widths chosen.  Error is top-1 on the 10,000
MNIST test images, measured on the model loaded back from the final file.
Results: ``benchmarks/results/deep_compression_<model>.json``.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from benchmarks._common import REPO, WORK, save, shared_data  # noqa: E402
from benchmarks.prune_mnist import RETRAIN_ITERS  # noqa: E402
from tinytamer import codec  # noqa: E402
from tinytamer.checkpoint import load_checkpoint  # noqa: E402
from tinytamer.data import get_dataset, make_loader  # noqa: E402
from tinytamer.recipe import parse_recipe, run  # noqa: E402
from tinytamer.train import evaluate  # noqa: E402

CAFFE_LENET = {
    "base_lr": 0.01,
    "momentum": 0.9,
    "weight_decay": 0.0005,
    "lr_policy": "inv",
    "gamma": 0.0001,
    "power": 0.75,
    "max_iter": 10000,
    "display": 0,
}

# Han et al. 2016, Tables 2 and 3 (weights kept, weight and index bits per layer) and
# Table 1 (sizes, errors).  Index bits are the relative sparse index before Huffman coding.
SETUPS = {
    "lenet300": {
        "keep": {"1": 0.08, "3": 0.09, "5": 0.26},
        "bits": {"conv": 8, "fc": 6},
        "paper": {
            "dense_kb": 1070,
            "compressed_kb": 27,
            "ratio": 40,
            "error": 0.0158,
            "baseline_error": 0.0164,
            "pruned_ratio": 12,
            "pq_ratio": 32,
            "layers": {
                "1": {"weight_bits": 6, "index_bits": 5, "huffman_weight_bits": 4.4, "huffman_index_bits": 3.7},
                "3": {"weight_bits": 6, "index_bits": 5, "huffman_weight_bits": 4.4, "huffman_index_bits": 4.3},
                "5": {"weight_bits": 6, "index_bits": 5, "huffman_weight_bits": 4.3, "huffman_index_bits": 3.2},
            },
        },
    },
    "lenet5": {
        "keep": {"features.0": 0.66, "features.2": 0.12, "classifier.1": 0.08, "classifier.3": 0.19},
        "bits": {"conv": 8, "fc": 5},
        "paper": {
            "dense_kb": 1720,
            "compressed_kb": 44,
            "ratio": 39,
            "error": 0.0074,
            "baseline_error": 0.0080,
            "pruned_ratio": 12,
            "pq_ratio": 33,
            "layers": {
                "features.0": {
                    "weight_bits": 8,
                    "index_bits": 5,
                    "huffman_weight_bits": 7.2,
                    "huffman_index_bits": 1.5,
                },
                "features.2": {
                    "weight_bits": 8,
                    "index_bits": 5,
                    "huffman_weight_bits": 7.2,
                    "huffman_index_bits": 3.9,
                },
                "classifier.1": {
                    "weight_bits": 5,
                    "index_bits": 5,
                    "huffman_weight_bits": 4.5,
                    "huffman_index_bits": 4.5,
                },
                "classifier.3": {
                    "weight_bits": 5,
                    "index_bits": 5,
                    "huffman_weight_bits": 5.2,
                    "huffman_index_bits": 3.7,
                },
            },
        },
    },
}
STAGE_FILES = {
    "dense": ["dense"],
    "pruned": ["dense", "sparse"],
    "shared": ["dense", "sparse", "codebook"],
    "huffman": None,
}


def retrain_config(args: argparse.Namespace) -> dict:
    """One prune-retrain round: SGD, the learning rate decaying linearly to zero."""
    return {
        "base_lr": args.retrain_lr,
        "momentum": 0.9,
        "weight_decay": 0.0005,
        "lr_policy": "poly",
        "power": 1.0,
        "max_iter": args.retrain_iters,
        "display": 0,
    }


def centroid_config(args: argparse.Namespace) -> dict:
    return {
        "base_lr": args.share_lr,
        "momentum": 0.9,
        "lr_policy": "poly",
        "power": 1.0,
        "max_iter": args.share_iters,
        "display": 0,
    }


def recipe_for(name: str, args: argparse.Namespace) -> dict:
    setup = SETUPS[name]
    baseline = WORK / "baselines" / f"{name}.safetensors"
    model: dict = {"name": name}
    stages: list[dict] = []
    if args.pruned:
        model["weights"] = str(args.pruned)
    elif baseline.is_file():
        model["weights"] = str(baseline)
    else:
        print(f"{name}: no baseline at {baseline}; training one ({args.baseline_iters} iterations)")
        stages.append({"train": {**CAFFE_LENET, "max_iter": args.baseline_iters}})
    if not args.pruned:
        stages += [
            {"save_compressed": {"file": "dense.tt", "allow": STAGE_FILES["dense"]}},
            {
                "prune": {
                    "sparsity": {k: round(1 - v, 4) for k, v in setup["keep"].items()},
                    "schedule": {"type": "iterative", "rounds": args.rounds},
                    "finetune": retrain_config(args),
                }
            },
        ]
    stages += [
        {"save_compressed": {"file": "pruned.tt", "allow": STAGE_FILES["pruned"]}},
        {
            "kmeans_share": {
                "conv_bits": setup["bits"]["conv"],
                "linear_bits": setup["bits"]["fc"],
                "init": "linear",
                "finetune": centroid_config(args),
            }
        },
        {"save_compressed": {"file": "shared.tt", "allow": STAGE_FILES["shared"]}},
        {"save_compressed": {"file": "huffman.tt"}},
    ]
    return {
        "name": f"deep-compression-{name}",
        "seed": 0,
        "data": {"name": "mnist", "root": str(shared_data() / "mnist"), "batch_size": 64, "val_fraction": 0.0},
        "model": model,
        "stages": stages,
    }


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
        shared = infos["shared"][name]["params"]
        # Fixed-width stage: codebook entries (zero included) and the width of each
        # entry's cluster index; relative-index width as chosen per stage (0: stored dense).
        row["codebook_values"] = shared.get("k")
        row["weight_bits"] = shared.get("bits")
        row["pruned_index_bits"] = infos["pruned"][name]["params"].get("index_bits")
        row["shared_index_bits"] = shared.get("index_bits")
        row["huffman_index_bits"] = final["params"].get("index_bits")
        rows.append(row)
    return rows


def bench(name: str, args: argparse.Namespace) -> dict:
    recipe = parse_recipe(recipe_for(name, args), source=f"deep compression {name}")
    start = time.time()
    rundir = run(recipe, WORK / "runs" / recipe.name, overwrite=True, progress=False)
    seconds = time.time() - start
    records = [r for r in rundir.records() if r.get("kind") == "stage"]
    saved = {Path(r["file"]).stem: r for r in records if r["stage"] == "save_compressed"}
    data = get_dataset("mnist", shared_data() / "mnist", val_fraction=0.0)
    test = make_loader(data.test, 1000, shuffle=False)
    if args.pruned:
        # The dense stage is the baseline the pruned model came from.
        baseline = load_checkpoint(WORK / "baselines" / f"{name}.safetensors")
        dense = codec.save(baseline, rundir.path / "dense.tt", allow=STAGE_FILES["dense"])
        saved["dense"] = {
            "file": str(dense.path),
            "bytes": dense.file_bytes,
            "accuracy": evaluate(baseline, test)["accuracy"],
            "nonzero_params": sum(int((p != 0).sum()) for p in baseline.parameters()),
            "params": sum(p.numel() for p in baseline.parameters()),
        }
    files = {stage: rundir.path / saved[stage]["file"] for stage in STAGE_FILES}
    # The error we report is that of the model rebuilt from the final file alone.
    final = codec.load(files["huffman"])
    metrics = evaluate(final, test)
    dense_bytes = saved["dense"]["bytes"]
    stages = {
        stage: {
            "bytes": saved[stage]["bytes"],
            "ratio": dense_bytes / saved[stage]["bytes"],
            "error": 1 - saved[stage]["accuracy"],
            "nonzero_params": saved[stage]["nonzero_params"],
        }
        for stage in STAGE_FILES
    }
    share_rec = next(r for r in records if r["stage"] == "kmeans_share")
    setup = SETUPS[name]
    if args.pruned:
        pruning = {
            "from": str(Path(args.pruned).resolve().relative_to(REPO)),
            "note": "pruned by benchmarks/prune_mnist.py (see its result for the schedule)",
        }
    else:
        pruning = {
            "rounds": args.rounds,
            "retrain_iters_per_round": args.retrain_iters,
            "retrain": retrain_config(args),
        }
    # Wall time of each stage: from the previous stage's record (or the start) to its own.
    times = [start] + [r["time"] for r in records]
    stage_seconds = {
        f"{r['index']}:{r['stage']}": round(t1 - t0, 1) for r, t0, t1 in zip(records, times, times[1:], strict=False)
    }
    layers = per_layer(files)
    # The paper's ratios count the weight tensors only (codebooks and indices included;
    # biases and file header not): the same sum over our per-layer bytes.
    weight_ratio = {
        stage: sum(r["dense_bytes"] for r in layers) / sum(r[f"{stage}_bytes"] for r in layers)
        for stage in ("pruned", "shared", "huffman")
    }
    return {
        "model": name,
        "params": saved["dense"]["params"],
        "stages": stages,
        "final_error_from_file": 1 - metrics["accuracy"],
        "ratio": dense_bytes / saved["huffman"]["bytes"],
        "weights_only_ratio": weight_ratio,
        "error_before_centroid_finetune": 1 - share_rec["accuracy_before_finetune"],
        "centroids_used": share_rec["centroids_used"],
        "per_layer": layers,
        "paper": setup["paper"],
        "settings": {
            "keep": setup["keep"],
            "pruning": pruning,
            "centroid_finetune": centroid_config(args),
            "conv_bits": setup["bits"]["conv"],
            "fc_bits": setup["bits"]["fc"],
            "baseline": (
                str((WORK / "baselines" / f"{name}.safetensors").relative_to(REPO))
                if recipe.model.weights
                else f"trained here, {args.baseline_iters} iterations"
            ),
        },
        "seconds": round(seconds, 1),
        "stage_seconds": stage_seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("models", nargs="*", choices=sorted(SETUPS), help="default: all")
    parser.add_argument("--rounds", type=int, default=6, help="prune-retrain rounds")
    parser.add_argument(
        "--retrain-iters", type=int, default=None, help=f"retraining per round; default per model: {RETRAIN_ITERS}"
    )
    parser.add_argument("--retrain-lr", type=float, default=0.01)
    parser.add_argument("--share-iters", type=int, default=10000, help="centroid fine-tuning")
    parser.add_argument("--share-lr", type=float, default=0.001)
    parser.add_argument(
        "--pruned",
        type=Path,
        default=None,
        help="start from this pruned checkpoint (prune_mnist.py's) instead of pruning",
    )
    parser.add_argument("--baseline-iters", type=int, default=10000)
    parser.add_argument("--quick", action="store_true", help="a smoke run with few iterations")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    args.models = args.models or list(SETUPS)
    if args.quick:
        args.rounds, args.retrain_iters, args.share_iters, args.baseline_iters = 1, 50, 50, 200
    torch.set_num_threads(args.threads)
    for name in args.models:
        model_args = copy.copy(args)
        model_args.retrain_iters = args.retrain_iters or RETRAIN_ITERS[name]
        r = bench(name, model_args)
        s = r["stages"]
        print(
            f"{name}: {s['dense']['bytes']} B -> pruned {s['pruned']['bytes']} B "
            f"-> shared {s['shared']['bytes']} B -> huffman {s['huffman']['bytes']} B "
            f"({r['ratio']:.1f}x), error {r['final_error_from_file']:.2%} in {r['seconds']:.0f} s"
        )
        save(f"deep_compression_{name}" + ("_quick" if args.quick else ""), r, quick=args.quick)


if __name__ == "__main__":
    main()
