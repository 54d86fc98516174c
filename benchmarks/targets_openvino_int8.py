"""OpenVINO int8: tinytamer's own int8 model (QDQ) against NNCF's post-training quantization.

    python benchmarks/targets_openvino_int8.py                    # lenet5 (trained) resnet8 resnet18
    python benchmarks/targets_openvino_int8.py --quick            # a check that it runs (seconds)

Both quantizers calibrate on the same real training images.  ``ours`` is
``tinytamer.compress.int8`` (per-channel symmetric int8 weights, min/max activation
ranges) written as QDQ ONNX; ``nncf`` is ``nncf.quantize`` with its defaults.  For each
model: top-1 agreement of each int8 model with the fp32 model on real test images and, for
the trained LeNet-5 (``benchmarks/work/baselines/lenet5.safetensors``), MNIST test
accuracy; latency of fp32 and both int8 models in fresh pinned child processes, round-robin
``--rounds`` times, the median of the rounds' medians with the spread.  ResNet weights are
untrained (BN statistics set on real images): their latency and agreement are meaningful,
not their accuracy.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from benchmarks._common import WORK, save, shared_data  # noqa: E402
from benchmarks.targets_bench import cifar, set_bn_stats  # noqa: E402
from tinytamer.calib import Calibration  # noqa: E402
from tinytamer.checkpoint import load_checkpoint  # noqa: E402
from tinytamer.data import get_dataset, make_loader  # noqa: E402
from tinytamer.deploy import int8_quantizer, runtime_accuracy  # noqa: E402
from tinytamer.scoring import top1_agreement  # noqa: E402
from tinytamer.targets import get_target  # noqa: E402
from tinytamer.targets.base import ONE_ROUND, ROUNDS, TOLERANCES, combine_rounds  # noqa: E402
from tinytamer.zoo import create  # noqa: E402


def model_and_data(name: str, limit: int):
    """(model, train loader, test loader, trained?) for one benchmark model."""
    if name == "lenet5":
        data = get_dataset("mnist", shared_data() / "mnist", limit=limit)
        model = load_checkpoint(WORK / "baselines" / "lenet5.safetensors").eval()
        return (
            model,
            make_loader(data.train, 64, shuffle=True, seed=0),
            make_loader(data.test, 256, shuffle=False),
            True,
        )
    data = cifar(limit)
    train = make_loader(data.train, 32, shuffle=True, seed=0)
    torch.manual_seed(0)
    model = set_bn_stats(create(name, num_classes=10, in_channels=3, input_size=32), train)
    return model, train, make_loader(data.test, 256, shuffle=False), False


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["lenet5", "resnet8", "resnet18"])
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 32])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--limit", type=int, default=1024, help="test (and train) samples per dataset")
    ap.add_argument(
        "--quick",
        action="store_true",
        help="resnet8, 2 repeats, 1 round, 128 samples; saved under benchmarks/work/quick",
    )
    ap.add_argument("--result", default="targets_openvino_int8")
    args = ap.parse_args()
    if args.quick:
        args.models, args.batches, args.repeats, args.rounds, args.limit = ["resnet8"], [1], 2, 1, 128
    TOLERANCES["int8"]["min_top1_agree"] = 0.5  # untrained ResNets have near-tied logits
    torch.set_num_threads(args.threads)
    ov = get_target("openvino")
    results = {}
    with tempfile.TemporaryDirectory(prefix="ov-int8-") as tmp:
        for name in args.models:
            model, train, test, trained = model_and_data(name, args.limit)
            calib = Calibration(train, limit=4)
            example = next(iter(test))[0][:1]
            variants = {
                "fp32": ov.compile(model, [example], Path(tmp) / name / "fp32", calib=calib, threads=args.threads),
                "int8 ours": ov.compile(
                    model,
                    [example],
                    Path(tmp) / name / "ours",
                    precision="int8",
                    calib=calib,
                    threads=args.threads,
                    quantize=int8_quantizer,
                ),
                "int8 nncf": ov.compile(
                    model,
                    [example],
                    Path(tmp) / name / "nncf",
                    precision="int8",
                    calib=calib,
                    threads=args.threads,
                    int8_params="nncf",
                ),
            }
            x = torch.cat([b[0] for b in test])
            ref = variants["fp32"](x.numpy())[0]
            rows = {}
            for label, d in variants.items():
                rows[label] = {"top1_agree_with_fp32": top1_agreement(ref, d(x.numpy())[0])}
                if trained:
                    rows[label]["accuracy"] = runtime_accuracy(d, model, test)["accuracy"]
            for b in args.batches:
                rounds: dict[str, list] = {k: [] for k in variants}
                for _ in range(args.rounds):
                    for label, d in variants.items():
                        rounds[label].append(d.measure(batch=b, threads=args.threads, repeats=args.repeats, warmup=5))
                for label, costs in rounds.items():
                    rows[label][f"b{b}"] = combine_rounds(costs).to_dict()
            for label, row in rows.items():
                lat = ", ".join(f"b{b} {row[f'b{b}']['latency_ms_median']:.3f} ms" for b in args.batches)
                acc = f", accuracy {row['accuracy']:.4f}" if "accuracy" in row else ""
                print(f"{name} {label}: agreement {row['top1_agree_with_fp32']:.3f}{acc}; {lat}")
            results[name] = {"trained": trained, "test_samples": len(x), "variants": rows}
    save(
        args.result,
        {
            "threads": args.threads,
            "repeats": args.repeats,
            "rounds": args.rounds,
            "statistic": ROUNDS if args.rounds > 1 else ONE_ROUND,
            "models": results,
        },
        quick=args.quick,
    )


if __name__ == "__main__":
    main()
