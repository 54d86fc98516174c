"""Low-rank approximation (Zhang et al. 2015; Jaderberg et al. 2014): accuracy vs. MACs and measured latency.

    python benchmarks/lowrank_speedup.py --baseline path/to/resnet8.safetensors   # ~45 min on 2 cores
    python benchmarks/lowrank_speedup.py --quick                                  # smoke run, ~3 min

For a converged ResNet-8 (``--baseline``, else ``benchmarks/work/baselines/resnet8.safetensors``,
else a copy trained here for ``--train-iters`` iterations, stated in the result) and each
target speed-up (whole-model MACs) and decomposition scheme:

* ``channel``: Zhang et al.'s channel decomposition (k x k conv with d' filters, then 1x1),
  ranks by the paper's greedy PCA-energy selection, layers solved with ``--method``
  (nonlinear asymmetric by default) from calibration batches of CIFAR-10 training images;
* ``spatial``: Jaderberg et al.'s scheme 2 (k x 1 then 1 x k), fitted to the weights,
  ranks by the same greedy selection on the singular values.

Each decomposed model is scored on the CIFAR-10 test split (all 10,000 images unless
``--test-limit``) before and after ``--finetune-iters`` iterations of SGD (batch 128);
the dense model is fine-tuned for the same iterations with the same settings, the
control that says what the fine-tuning alone buys.  Without fine-tuning the weight SVD
and the linear (PCA) solution at the channel ranks are scored too.  CIFAR-10 is the
JPEG re-encoding in the shared data folder.

Latency: median of ``--repeats`` forward passes after warm-up, eval mode, with
``--threads`` threads, at batch 1 and 32, in PyTorch (``torch.inference_mode``) and in
ONNX Runtime (the model exported to ONNX, CPU execution provider, intra-op threads =
``--threads``); the dense model is measured in the same run and the variants are timed
round-robin, so load on a shared machine hits all of them alike.  ``--models resnet18``
adds an untrained ResNet-18 (CIFAR stem) scored by the relative error of its logits.
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
import time
from itertools import islice
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.data import Subset  # noqa: E402

from benchmarks._common import WORK, save, shared_data, time_round_robin  # noqa: E402
from tinytamer.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from tinytamer.compress import lowrank  # noqa: E402
from tinytamer.data import get_dataset, make_loader  # noqa: E402
from tinytamer.export.onnx import export_onnx  # noqa: E402
from tinytamer.train import Solver, SolverConfig, evaluate  # noqa: E402
from tinytamer.zoo import count, create  # noqa: E402

SHAPE = (3, 32, 32)
BASELINE = WORK / "baselines" / "resnet8.safetensors"


def resnet8(data: Any, iters: int, path: str | None) -> tuple[nn.Module, str]:
    if path:
        return load_checkpoint(path), f"trained baseline {path}"
    if BASELINE.is_file():
        return load_checkpoint(BASELINE), "trained baseline benchmarks/work/baselines/resnet8.safetensors"
    brief = f"no baseline checkpoint: trained here for {iters} iterations of batch 128 (SGD, lr 0.05 poly)"
    cached = WORK / "lowrank" / f"resnet8_brief_{iters}.safetensors"
    if cached.is_file():
        return load_checkpoint(cached), brief
    model = create("resnet8")
    config = SolverConfig(
        base_lr=0.05, lr_policy="poly", power=1.0, max_iter=iters, momentum=0.9, weight_decay=5e-4, display=0
    )
    Solver(model, config, make_loader(data.train, 128, shuffle=True), progress=True).solve()
    save_checkpoint(model.eval(), cached)
    return model, brief


def resnet18(calib: list[torch.Tensor]) -> tuple[nn.Module, str]:
    model = create("resnet18", input_size=32)
    model.train()
    with torch.no_grad():  # BN statistics of real images, so that responses look like a network's
        for x in calib:
            model(x)
    return model.eval(), "untrained (kaiming init), BN statistics from CIFAR-10 calibration batches"


def logits_error(model: nn.Module, ref: nn.Module, x: torch.Tensor) -> float:
    with torch.no_grad():
        a, b = model(x), ref(x)
    return float(((a - b) ** 2).sum() / (b**2).sum())


def finetune(model: nn.Module, data: Any, iters: int) -> None:
    """The same fine-tuning for every variant and for the dense control (same data order)."""
    config = SolverConfig(
        base_lr=0.01, lr_policy="poly", power=1.0, max_iter=iters, momentum=0.9, weight_decay=5e-4, display=0
    )
    Solver(model, config, make_loader(data.train, 128, shuffle=True, seed=2), progress=False).solve()
    model.eval()


class _Ort:
    """An ONNX Runtime session called like a module on a torch tensor."""

    def __init__(self, model: nn.Module, workdir: Path, name: str, threads: int) -> None:
        import onnxruntime as ort

        path = workdir / f"{name}.onnx"
        export_onnx(model, (torch.randn(1, *SHAPE),), path)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name

    def __call__(self, x: torch.Tensor) -> Any:
        return self.session.run(None, {self.input: x.numpy()})


def latency(variants: dict[str, nn.Module], args: argparse.Namespace, workdir: Path) -> list[dict[str, Any]]:
    """Per runtime, thread count and batch: each variant's timing (ms), timed round-robin."""
    out = []
    for threads in args.threads:
        sessions = {k: _Ort(m, workdir, k.replace(" ", "_"), threads) for k, m in variants.items()}
        for runtime, runners in (("torch", variants), ("onnxruntime", sessions)):
            for batch in args.batches:
                torch.set_num_threads(threads)
                x = torch.randn(batch, *SHAPE, generator=torch.Generator().manual_seed(0))
                repeats = args.repeats if batch == 1 else args.repeats_batched
                timed = time_round_robin(runners, x, repeats, args.warmup)
                torch.set_num_threads(1)
                base = timed["dense"]["median_ms"]
                for k, t in timed.items():
                    out.append(
                        {"variant": k, "runtime": runtime, "threads": threads, "batch": batch, **t}
                        | {"latency_speedup": base / t["median_ms"]}
                    )
    return out


def run_model(name: str, data: Any, test: Any, calib: list[torch.Tensor], args: argparse.Namespace) -> dict:
    trained = name == "resnet8"
    model, weights = resnet8(data, args.train_iters, args.baseline) if trained else resnet18(calib)
    model.eval()
    variants: dict[str, nn.Module] = {"dense": model}
    info: dict[str, dict] = {"dense": {"speedup_target": 1.0}}
    if trained:
        info["dense"]["accuracy"] = evaluate(model, test)["accuracy"]
        if args.finetune_iters:
            control = copy.deepcopy(model)
            start = time.perf_counter()
            finetune(control, data, args.finetune_iters)
            info["dense"]["accuracy_dense_finetuned"] = evaluate(control, test)["accuracy"]
            info["dense"]["finetune_s"] = time.perf_counter() - start
        print(f"{name} dense: {info['dense']}", flush=True)
    for scheme in args.schemes:
        for s in args.speedups:
            start = time.perf_counter()
            result = lowrank.approximate(
                model,
                calib,
                speedup=s,
                method=args.method,
                scheme=scheme,
                samples_per_batch=args.samples_per_batch,
                iters=args.iters,
            )
            row: dict[str, Any] = {
                "scheme": scheme,
                "speedup_target": s,
                "decompose_s": time.perf_counter() - start,
                "ranks": result.ranks,
            }
            new = result.model.eval()
            if trained:
                row["accuracy_no_finetune"] = evaluate(new, test)["accuracy"]
                if scheme == "channel":
                    for other in ("svd", "linear"):
                        alt = lowrank.decompose(model, calib, ranks=result.ranks, method=other, speedup=None)
                        row[f"accuracy_no_finetune_{other}"] = evaluate(alt.eval(), test)["accuracy"]
                if args.finetune_iters:
                    start = time.perf_counter()
                    finetune(new, data, args.finetune_iters)
                    row["finetune_s"] = time.perf_counter() - start
                    row["accuracy"] = evaluate(new, test)["accuracy"]
            else:
                row["logits_rel_error"] = logits_error(new, model, torch.stack([data.test[i][0] for i in range(256)]))
            key = f"{scheme} {s:g}x"
            variants[key], info[key] = new, row
            print(f"{name} {key}: {row}", flush=True)
    counts = {k: count(m, SHAPE) for k, m in variants.items()}
    with tempfile.TemporaryDirectory() as tmp:
        timings = latency(variants, args, Path(tmp))
    rows = []
    for t in timings:
        k = t["variant"]
        row = {"model": name, **t, **info[k], "params": counts[k].params, "macs": counts[k].macs}
        row["macs_ratio"] = counts["dense"].macs / counts[k].macs
        rows.append(row)
        print(
            f"{name:9s} {k:13s} {t['runtime']:11s} {t['threads']} thr batch {t['batch']:2d}: "
            f"MACs {row['macs'] / 1e6:6.2f} M (x{row['macs_ratio']:.2f}) latency {t['median_ms']:8.2f} ms "
            f"(x{t['latency_speedup']:.2f})",
            flush=True,
        )
    return {"weights": weights, "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=["resnet8"], choices=["resnet8", "resnet18"])
    parser.add_argument("--baseline", default=None, help="the trained ResNet-8 checkpoint")
    parser.add_argument("--speedups", nargs="+", type=float, default=[1.5, 2.0, 3.0])
    parser.add_argument("--schemes", nargs="+", default=list(lowrank.SCHEMES), choices=lowrank.SCHEMES)
    parser.add_argument("--method", default="nonlinear-asymmetric", choices=lowrank.METHODS)
    parser.add_argument("--calib-batches", type=int, default=8, help="batches of 64 training images")
    parser.add_argument("--samples-per-batch", type=int, default=1024)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--train-iters", type=int, default=250, help="ResNet-8 without a baseline")
    parser.add_argument(
        "--finetune-iters", type=int, default=300, help="batch 128, every variant and the dense control; 0: none"
    )
    parser.add_argument("--test-limit", type=int, default=None, help="first N test images (default: all)")
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 32])
    parser.add_argument("--repeats", type=int, default=30, help="timed passes at batch 1")
    parser.add_argument("--repeats-batched", type=int, default=10, help="timed passes at larger batches")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", nargs="+", type=int, default=[1], help="latency measured with each")
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: 500 test images, 2x only, 10 fine-tune iterations"
    )
    parser.add_argument("--result", default=None, help="name of the results/<name>.json file")
    args = parser.parse_args()
    if args.quick:
        args.test_limit, args.speedups, args.finetune_iters = args.test_limit or 500, [2.0], 10
        args.train_iters = min(args.train_iters, 20)
        args.calib_batches, args.samples_per_batch, args.repeats, args.repeats_batched = 2, 256, 5, 2
    result_name = args.result or ("lowrank_speedup_quick" if args.quick else "lowrank_speedup")
    # Training and decomposition run on one thread: on a shared machine more threads
    # oversubscribe the cores (LAPACK's eigh slows down by 10x and more).
    torch.set_num_threads(1)
    torch.manual_seed(0)

    data = get_dataset("cifar10", str(shared_data() / "cifar10-jpg.tar.gz"), val_fraction=0.0)
    n_test = min(args.test_limit or len(data.test), len(data.test))
    test = make_loader(Subset(data.test, range(n_test)), 256, shuffle=False)
    calib = [x for x, _ in islice(make_loader(data.train, 64, shuffle=True, seed=1), args.calib_batches)]

    start = time.perf_counter()
    results = {name: run_model(name, data, test, calib, args) for name in args.models}
    save(
        result_name,
        {
            "settings": {
                "method": args.method,
                "schemes": args.schemes,
                "calib_images": 64 * args.calib_batches,
                "samples_per_batch": args.samples_per_batch,
                "iters": args.iters,
                "finetune": f"{args.finetune_iters} iterations, batch 128, SGD lr 0.01 poly, momentum 0.9, wd 5e-4",
                "test_images": n_test,
                "threads": args.threads,
                "repeats": [args.repeats, args.repeats_batched],
                "warmup": args.warmup,
                "data": "CIFAR-10, JPEG re-encoding (cifar10-jpg.tar.gz)",
                "weights": {k: v["weights"] for k, v in results.items()},
                "quick": args.quick,
            },
            "seconds": round(time.perf_counter() - start, 1),
            "rows": [r for v in results.values() for r in v["rows"]],
        },
        threads=args.threads,
        quick=args.quick,
    )


if __name__ == "__main__":
    main()
