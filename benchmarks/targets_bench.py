"""Every deployment target and precision against PyTorch fp32, on CIFAR-sized models.

    python benchmarks/targets_bench.py                                # resnet8 mobilenetv2 resnet18
    python benchmarks/targets_bench.py --models resnet8 --batches 1 --repeats 20
    python benchmarks/targets_bench.py --threads 1      # on an oversubscribed machine

For each model: deploy to every installed target and precision through
``tinytamer.deploy.bench`` (each compile checks parity with PyTorch on real CIFAR-10
test images; int8 is ONNX Runtime static QDQ quantization calibrated on 128 real
training images), then time each deployed model in its own fresh child process at
batch 1 and 32 with 2 threads: the median of ``--repeats`` runs after warm-up, and
the child's peak RSS.  Every model is measured ``--rounds`` times round-robin and its
round with the lowest median is kept (load on a shared machine then hits every target
alike; the load average is saved); the fastest single run is kept too.  Speed-ups are
against PyTorch fp32 eager measured in the same run.  On a machine with more runnable
processes than cores, 2-thread runtimes that synchronise threads at every op (PyTorch's
OpenMP) are slowed by scheduling far more than the others, so their ratios say more
about the load than the runtime: compare at ``--threads 1`` there.  Weights are
untrained (latency does not depend on their values); BatchNorm statistics are first
set on real images so that activations, and thus int8 ranges,
are realistic.  ncnn runs one image per extractor, so its batch 32 is 32 calls.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from torch import nn  # noqa: E402

from benchmarks._common import RESULTS, WORK, save, shared_data  # noqa: E402
from tinytamer.calib import Calibration  # noqa: E402
from tinytamer.data import get_dataset, make_loader  # noqa: E402
from tinytamer.deploy import bench  # noqa: E402
from tinytamer.targets import onnxrt  # noqa: E402
from tinytamer.targets.base import TOLERANCES  # noqa: E402
from tinytamer.zoo import count, create  # noqa: E402


def cifar(limit: int = 512):
    return get_dataset("cifar10", shared_data() / "cifar10-jpg.tar.gz", limit=limit)


def set_bn_stats(model: nn.Module, loader, batches: int = 8) -> nn.Module:
    """Running BN statistics from real images (forward passes in train mode, no grad)."""
    model.train()
    with torch.no_grad():
        for i, (x, _y) in enumerate(loader):
            if i >= batches:
                break
            model(x)
    return model.eval()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["resnet8", "mobilenetv2", "resnet18"])
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 32])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--targets", nargs="+", default=["onnxruntime", "ncnn"])
    ap.add_argument(
        "--int8-min-top1",
        type=float,
        default=0.5,
        help="int8 parity gates (against fp32, and ORT's fused kernels against their "
        "QDQ model): top-1 agreement (untrained weights have near-tied logits; the "
        "measured agreement is saved)",
    )
    args = ap.parse_args()
    TOLERANCES["int8"]["min_top1_agree"] = args.int8_min_top1
    # The same for the fused-kernels-vs-QDQ check: near ties flip under rounding alone; its
    # relative-error gate, which catches saturation, is unchanged.
    onnxrt.MIN_KERNEL_TOP1_AGREE = args.int8_min_top1
    torch.manual_seed(0)
    data = cifar()
    train = make_loader(data.train, 32, shuffle=True, seed=0)
    calib = Calibration(train, limit=4)
    example = torch.stack([data.test[i][0] for i in range(1)])
    # Models measured by earlier runs with the same thread count are kept beside new ones.
    previous = RESULTS / f"targets_bench_t{args.threads}.json"
    results = json.loads(previous.read_text())["models"] if previous.is_file() else {}
    for name in args.models:
        torch.manual_seed(0)  # a model's weights do not depend on which others run before it
        model = set_bn_stats(create(name, num_classes=10, in_channels=3, input_size=32), train)
        counts = count(model, (3, 32, 32))
        t0 = time.time()
        report = bench(
            model,
            WORK / "targets" / name,
            example_input=example,
            calib=calib,
            targets=args.targets,
            batches=args.batches,
            threads=args.threads,
            repeats=args.repeats,
            warmup=5,
            rounds=args.rounds,
        )
        print(f"\n{name}: {counts.macs / 1e6:.1f} MMACs, {counts.params / 1e6:.2f} M params")
        print(report.table())
        results[name] = {
            "macs": counts.macs,
            "params": counts.params,
            "seconds": round(time.time() - t0, 1),
            "load_average_1_5_15": os.getloadavg(),
            **report.to_dict(),
        }
        # Saved after every model, so that a long run keeps what it measured.
        save(
            f"targets_bench_t{args.threads}",
            {
                "threads": args.threads,
                "repeats": args.repeats,
                "rounds": args.rounds,
                "int8_min_top1_agree": args.int8_min_top1,
                "batches": args.batches,
                "models": results,
            },
        )


if __name__ == "__main__":
    main()
