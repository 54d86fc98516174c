"""Trained ternary quantization (Zhu et al. 2017) of ResNet-20 on CIFAR-10, stored through the codec.

    python benchmarks/ttq_resnet20.py                 # float 20 epochs + TTQ 8 epochs
    python benchmarks/ttq_resnet20.py --float-control # + the float model fine-tuned 8 epochs
    python benchmarks/ttq_resnet20.py --control-only  # only that control (results/ttq_resnet20_control.json)
    python benchmarks/ttq_resnet20.py --float path/to/resnet20.safetensors   # start from a trained float model
    python benchmarks/ttq_resnet20.py --quick         # smoke run (~2 min)

Duration, estimated from ~0.6 s of CPU per training iteration of batch 128 (augmentation
included) measured on a loaded machine: about 1.2 h on 2 quiet cores, 1.5 h with
``--float-control``; each run records its own times.

The paper's ResNet-20 row (Table 1): float 91.77%, TTQ 91.13% top-1 on CIFAR-10 (-0.64 pt).
Here, with a budget that fits a 2-core machine:

1. Float: ResNet-20 with option A shortcuts (``zoo.resnet20``) trained from scratch for
   ``--float-epochs`` epochs (batch 128, random crop + flip, SGD momentum 0.9, weight decay
   1e-4 as He et al., lr 0.1 decayed linearly to 0, Caffe ``poly`` with power 1); cached in
   ``benchmarks/work/ttq/`` so a rerun skips it.  ``--float`` starts from a given checkpoint.
2. TTQ: every conv / linear but the first and the last (kept in full precision, as in the
   paper) ternarized with threshold factor t = 0.05 (eq. 9), latent weights normalised to
   [-1, 1], scales ``Wp`` / ``Wn`` trained with them for ``--ttq-epochs`` epochs (batch 128,
   same augmentation, ``--ttq-optimizer`` Adam at lr ``--ttq-lr`` 1e-3 decayed linearly to 0,
   no weight decay: the scale gradients of eq. 7 are sums over a layer), then baked.
3. ``--float-control``: the float model fine-tuned for the same TTQ epochs and schedule, to
   show what the extra training alone buys; ``--control-only`` runs that control alone (for a
   TTQ run already recorded) and writes ``ttq_resnet20_control.json``.

Accuracy on the full CIFAR-10 test split (the JPEG re-encoding in the shared data folder,
not directly comparable to published figures).  Storage is MEASURED: the ternary model is
written with ``tinytamer.codec`` (ternary layers forced to the ``ternary`` encoding: 2-bit
codes + two scales; every other tensor its smallest exact encoding) and the file size on
disk is reported beside the float model's codec file; the file is loaded back and checked
to give the same outputs.  Result: ``benchmarks/results/ttq_resnet20.json``.
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.data import Subset  # noqa: E402

from benchmarks._common import WORK, save, shared_data  # noqa: E402
from tinytamer import codec  # noqa: E402
from tinytamer.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from tinytamer.compress import ttq  # noqa: E402
from tinytamer.data import get_dataset, make_loader  # noqa: E402
from tinytamer.train import Solver, SolverConfig, evaluate  # noqa: E402
from tinytamer.zoo import create  # noqa: E402

PAPER = {"float": 0.9177, "ttq": 0.9113, "source": "Zhu et al. 2017, Table 1, ResNet-20 on CIFAR-10"}
BATCH = 128


def float_config(epochs: float) -> SolverConfig:
    return SolverConfig(
        base_lr=0.1, momentum=0.9, weight_decay=1e-4, lr_policy="poly", power=1.0, epochs=epochs, display=0
    )


def ttq_config(epochs: float, optimizer: str, lr: float) -> SolverConfig:
    # momentum: SGD's, or Adam's beta1
    return SolverConfig(
        base_lr=lr, optimizer=optimizer, momentum=0.9, lr_policy="poly", power=1.0, epochs=epochs, display=0
    )


def train(model: nn.Module, config: SolverConfig, loader: Any) -> float:
    start = time.time()
    Solver(model.train(), config, loader, progress=True).solve()
    model.eval()
    return round(time.time() - start, 1)


def float_model(args: argparse.Namespace, loader: Any) -> tuple[nn.Module, dict[str, Any]]:
    if args.float:
        return load_checkpoint(args.float).eval(), {"source": args.float}
    cached = WORK / "ttq" / f"resnet20_float_{args.float_epochs:g}ep.safetensors"
    solver = float_config(args.float_epochs).model_dump(exclude_none=True)
    info: dict[str, Any] = {"source": "trained here", "solver": solver, "batch": BATCH, "augment": True}
    if cached.is_file() and not args.quick:
        return load_checkpoint(cached).eval(), {**info, "cached": str(cached.relative_to(WORK.parents[1]))}
    torch.manual_seed(0)
    model = create("resnet20", num_classes=10, shortcut="A")
    info["train_seconds"] = train(model, float_config(args.float_epochs), loader)
    if not args.quick:
        save_checkpoint(model, cached)
    return model, info


def measured_file(model: nn.Module, ternary: set[str], path: Path) -> dict[str, Any]:
    """Write ``model`` through the codec and report what is on disk."""
    forced = {f"^{name}\\.weight$": "ternary" for name in ternary}
    report = codec.save(model, path, encodings=forced)
    return {
        "file_bytes": report.file_bytes,
        "dense_bytes": report.dense_bytes,
        "by_encoding": report.by_encoding(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--float", default=None, help="a trained float ResNet-20 checkpoint to start from")
    parser.add_argument("--float-epochs", type=float, default=20.0)
    parser.add_argument("--ttq-epochs", type=float, default=8.0)
    parser.add_argument("--ttq-optimizer", default="adam", choices=["adam", "sgd"])
    parser.add_argument("--ttq-lr", type=float, default=1e-3)
    parser.add_argument("--t", type=float, default=0.05, help="threshold factor (eq. 9)")
    parser.add_argument("--float-control", action="store_true", help="also fine-tune the float model as long")
    parser.add_argument(
        "--control-only", action="store_true", help="only that control: no TTQ (writes ttq_resnet20_control.json)"
    )
    parser.add_argument("--test-limit", type=int, default=None, help="first N test images (default: all)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="smoke run: 0.02 + 0.02 epochs, 500 test images")
    args = parser.parse_args()
    if args.quick:
        args.float_epochs, args.ttq_epochs, args.test_limit = 0.02, 0.02, args.test_limit or 500
    torch.set_num_threads(args.threads)

    data = get_dataset("cifar10", str(shared_data() / "cifar10-jpg.tar.gz"), val_fraction=0.0, augment=True)
    train_loader = make_loader(data.train, BATCH, shuffle=True, seed=0)
    n_test = min(args.test_limit or len(data.test), len(data.test))
    test_loader = make_loader(Subset(data.test, range(n_test)), 500, shuffle=False)

    model, float_info = float_model(args, train_loader)
    float_acc = evaluate(model, test_loader)["accuracy"]
    print(f"float ResNet-20: {float_acc:.4f}", flush=True)

    result: dict[str, Any] = {"paper": PAPER, "float": {**float_info, "accuracy": float_acc}, "test_images": n_test}
    config = ttq_config(args.ttq_epochs, args.ttq_optimizer, args.ttq_lr)
    if args.float_control or args.control_only:
        control = copy.deepcopy(model)
        seconds = train(control, config, make_loader(data.train, BATCH, shuffle=True, seed=1))
        result["float_control"] = {
            "accuracy": evaluate(control, test_loader)["accuracy"],
            "train_seconds": seconds,
            "schedule": config.model_dump(exclude_none=True),
        }
        print(f"float, fine-tuned as long as TTQ: {result['float_control']['accuracy']:.4f}", flush=True)
    if args.control_only:
        name = "ttq_resnet20_control_quick" if args.quick else "ttq_resnet20_control"
        save(name, {**result, "quick": args.quick}, threads=args.threads, quick=args.quick)
        return

    tern = ttq.ternarize(copy.deepcopy(model), t=args.t)
    before = evaluate(tern, test_loader)["accuracy"]
    torch.manual_seed(1)
    seconds = train(tern, config, make_loader(data.train, BATCH, shuffle=True, seed=1))
    layers = ttq.ternary_layers(tern)
    ttq.finalize(tern)
    ttq_acc = evaluate(tern, test_loader)["accuracy"]
    print(f"TTQ ResNet-20: {ttq_acc:.4f} (before training {before:.4f})", flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        ternary_file = measured_file(tern, set(layers), Path(tmp) / "resnet20_ttq.tt")
        float_file = measured_file(model, set(), Path(tmp) / "resnet20_float.tt")
        loaded = codec.load(Path(tmp) / "resnet20_ttq.tt").eval()
        x = next(iter(test_loader))[0][:64]
        with torch.no_grad():
            exact = bool(torch.equal(loaded(x), tern(x)))
    result["ttq"] = {
        "t": args.t,
        "schedule": config.model_dump(exclude_none=True),
        "batch": BATCH,
        "train_seconds": seconds,
        "accuracy_after_ternarize": before,
        "accuracy": ttq_acc,
        "drop_pt": 100 * (float_acc - ttq_acc),
        "within_0.7_pt": float_acc - ttq_acc <= 0.007,
        "layers": layers,
        "file": ternary_file,
        "file_loads_back_exact": exact,
    }
    result["float"]["file"] = float_file
    result["file_ratio_float_over_ttq"] = float_file["file_bytes"] / ternary_file["file_bytes"]
    print(
        f"codec file: float {float_file['file_bytes']:,} B, TTQ {ternary_file['file_bytes']:,} B "
        f"({result['file_ratio_float_over_ttq']:.1f}x), loads back exact: {exact}",
        flush=True,
    )
    save(
        "ttq_resnet20_quick" if args.quick else "ttq_resnet20",
        {**result, "quick": args.quick, "note": "CIFAR-10 is the JPEG re-encoding (~q75) of the shared data"},
        threads=args.threads,
        quick=args.quick,
    )


if __name__ == "__main__":
    main()
