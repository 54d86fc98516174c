"""Detection on the Raccoon set: YOLO-FastestV2 trained from scratch, scored by mAP through
PyTorch and every host runtime (one post-processing, tinytamer.detect.decode), int8 PTQ and
neck/head channel pruning on the way.

Full run (what the results record), one thread:

    python benchmarks/detect_raccoon.py            # ~1 h: 150 epochs at 256 x 256, then the runtimes

Quick check of the path (the figures mean nothing):

    python benchmarks/detect_raccoon.py --quick    # a few minutes: 2 epochs at 128 x 128, 8 test images

Training: Adam (lr 2e-3, weight decay 5e-4, linear decay to 0), batch 16, the ``voc``
dataset's augmentation (random scale +-25 %, translate +-10 %, flip, HSV jitter), anchors by
k-means on the training boxes; no pretrained backbone (the released model starts from an
ImageNet backbone, which is not available here).  Data: ../shared/data/raccoon (or
$TINYTAMER_DATA/raccoon), the ``voc`` dataset's fixed split (139 train / 15 val / 46 test).

Runtimes: PyTorch fp32 (the latency reference), ONNX Runtime fp32 and int8 (static QDQ
calibrated on 4 training batches), ncnn fp32 and fp16; ``--tvm`` adds TVM fp32.  Each compiles
with its parity check, is scored on the test split through its own outputs, and is timed at
batch 1 on ``--threads`` threads; latency ratios are against PyTorch fp32 in the same run.
``--micro`` tries the cortex-m7 target at ``--micro-size``: the trained model is scored in
float at that size, fine-tuned there for ``--micro-epochs`` (objects shrink with the input),
scored again, then quantized and run through the emulated device.  ``--weights`` reuses a
trained state dict (the run then records the file, not the training).  Goal: mAP@0.5 >= 0.60
float, int8 within 2 points of float.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import WORK, save, shared_data  # noqa: E402

from tinytamer.calib import Calibration  # noqa: E402
from tinytamer.compress.channel import prune_channels  # noqa: E402
from tinytamer.compress.int8 import quantize_ptq  # noqa: E402
from tinytamer.data import get_dataset, make_loader  # noqa: E402
from tinytamer.deploy import int8_quantizer  # noqa: E402
from tinytamer.detect import evaluate as evaluate_detector  # noqa: E402
from tinytamer.detect import score  # noqa: E402
from tinytamer.detect.decode import Head, postprocess  # noqa: E402
from tinytamer.detect.evaluate import torch_runner, truths  # noqa: E402
from tinytamer.detect.loss import DetectionLoss  # noqa: E402
from tinytamer.detect.packed import for_micro, packed_runner  # noqa: E402
from tinytamer.detect.plot import plot_predictions  # noqa: E402
from tinytamer.targets import get_target  # noqa: E402
from tinytamer.train import Solver, SolverConfig  # noqa: E402
from tinytamer.zoo import count, create  # noqa: E402

RUNTIMES = [("onnxruntime", "fp32"), ("onnxruntime", "int8"), ("ncnn", "fp32"), ("ncnn", "fp16")]
PRUNE_SELECT = {"regex": ["^lateral", "head"]}  # neck + heads (see the README's detection section)
OUTPUT_LAYERS = ["out_box", "out_obj", "out_cls"]


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="2 epochs at 128 px on 8 test images: checks the path")
    p.add_argument("--size", type=int, default=256, help="input side (a multiple of 32)")
    p.add_argument("--epochs", type=float, default=150)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=30, help="timed runs per runtime")
    p.add_argument("--tvm", action="store_true", help="also TVM fp32 (slow to build)")
    p.add_argument("--micro", action="store_true", help="also the cortex-m7 target at --micro-size")
    p.add_argument("--micro-size", type=int, default=128)
    p.add_argument(
        "--micro-epochs", type=float, default=50, help="fine-tuning at --micro-size before the device (0: none)"
    )
    p.add_argument("--weights", type=Path, help="a state dict from an earlier run: skip training")
    args = p.parse_args()
    if args.quick:
        args.size, args.epochs, args.repeats, args.micro_epochs = 128, 2, 5, 1
    return args


def train(model: torch.nn.Module, data: Any, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    cfg = SolverConfig(
        optimizer="adam",
        base_lr=args.lr,
        lr_policy="poly",
        power=1.0,
        weight_decay=5e-4,
        epochs=args.epochs,
        display=20,
        seed=0,
    )
    loader = make_loader(data.train, args.batch_size, shuffle=True, seed=0, drop_last=True)
    solver = Solver(model, cfg, loader, None, snapshot_dir=work / "snapshots", loss_fn=DetectionLoss(Head.of(model)))
    start = time.perf_counter()
    final = solver.solve()
    seconds = time.perf_counter() - start
    return {
        "epochs": args.epochs,
        "iterations": final["iter"],
        "batch_size": args.batch_size,
        "seconds": round(seconds, 1),
        "final_train_loss": final.get("train_loss"),
        "optimizer": f"adam lr {args.lr:g}, poly(1) decay to 0, weight decay 5e-4",
    }


def runtimes(model: torch.nn.Module, data: Any, head: Head, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    test = make_loader(data.test, 16, shuffle=False)
    example = torch.stack([data.test[0][0]])
    calib = Calibration(make_loader(data.train, 16, shuffle=True, seed=1), limit=4)
    rows: dict[str, Any] = {}
    torch_dep = get_target("torch").compile(model, [example], work / "torch", threads=args.threads)
    ref_ms = torch_dep.measure(batch=1, threads=args.threads, repeats=args.repeats, warmup=3).latency_ms_median
    rows["torch-fp32"] = {"latency_ms": ref_ms, "speedup": 1.0, **score(torch_runner(model), test, head, args.size)}
    pairs = RUNTIMES + ([("tvm", "fp32")] if args.tvm else [])
    for name, prec in pairs:
        key = f"{name}-{prec}"
        print(f"runtime {key}")
        try:
            dep = get_target(name).compile(
                model, [example], work / key, precision=prec, calib=calib, threads=args.threads
            )
        except Exception as exc:  # a backend missing or refusing: record it and go on
            rows[key] = {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}
            continue
        ms = dep.measure(batch=1, threads=args.threads, repeats=args.repeats, warmup=3).latency_ms_median
        rows[key] = {
            "latency_ms": ms,
            "speedup": ref_ms / ms if ms else None,
            "parity": dep.parity,
            **score(lambda x, d=dep: d(x), test, head, args.size),
        }
    return rows


def compressed(model: torch.nn.Module, data: Any, head: Head, args: argparse.Namespace) -> dict[str, Any]:
    """int8 PTQ (tinytamer's own) and neck/head channel pruning (no fine-tuning), in PyTorch."""
    test = make_loader(data.test, 16, shuffle=False)
    calib = Calibration(make_loader(data.train, 16, shuffle=True, seed=1), limit=4)
    q = quantize_ptq(model, calib)
    example = torch.stack([data.test[i][0] for i in range(2)])
    pruned = prune_channels(model, example, ratio=0.5, select=PRUNE_SELECT, ignore=OUTPUT_LAYERS)
    shape = (3, args.size, args.size)
    return {
        "ptq_int8_torch": score(torch_runner(q), test, head, args.size),
        "pruned_neck_heads_50pct": {
            **score(torch_runner(pruned), test, head, args.size),
            "params": count(pruned, shape).params,
            "macs": count(pruned, shape).macs,
            "finetuned": False,
        },
    }


def micro(model: torch.nn.Module, data_root: Path, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """The cortex-m7 target at the micro input size (the model packed to one output, which the
    micro targets need); the float model is re-scored at that size first."""
    size = args.micro_size
    small = get_dataset("voc", data_root, size=size)
    if args.quick:
        small.test.annotations = small.test.annotations[:4]
    scaled = create("yolofastest", num_classes=1, input_size=size).eval()
    scaled.load_state_dict(model.state_dict())
    scaled.anchors.mul_(size / args.size)
    head = Head.of(scaled)
    test = make_loader(small.test, 16, shuffle=False)
    out: dict[str, Any] = {"size": size, "float_torch_before_finetune": score(torch_runner(scaled), test, head, size)}
    if args.micro_epochs > 0:
        # Objects are half as many pixels at the micro size: the float model is fine-tuned there
        # (same recipe, augmented) before it is quantized, so the device's mAP means something.
        tuned_args = argparse.Namespace(**{**vars(args), "epochs": args.micro_epochs, "lr": args.lr / 2})
        out["finetune"] = train(
            scaled.train(), get_dataset("voc", data_root, size=size, augment=True), tuned_args, work / "micro"
        )
        scaled.eval()
    out["float_torch"] = score(torch_runner(scaled), test, head, size)
    try:
        # 16 images: the target also checks parity on them, each one emulated instruction by instruction.
        calib = Calibration(make_loader(small.train, 8, shuffle=True, seed=1), limit=2)
        dep = get_target("cortex-m7").compile(
            for_micro(scaled),
            [small.test[0][0][None]],
            work / "cortex-m7",
            precision="int8",
            calib=calib,
            quantize=int8_quantizer,
        )
        out["device"] = score(packed_runner(lambda x: dep(x), head), test, head, size)
        cost = dep.measure()
        out["cost"] = cost.to_dict()
    except Exception as exc:  # the device path may refuse an op or a size: say which
        out["error"] = f"{type(exc).__name__}: {str(exc)[:400]}"
    return out


def main() -> None:
    args = parse()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    root = shared_data() / "raccoon"
    work = WORK / "detect_raccoon"
    work.mkdir(parents=True, exist_ok=True)
    data = get_dataset("voc", root, size=args.size, augment=True)
    if args.quick:
        data.test.annotations = data.test.annotations[:8]
    model = create("yolofastest", num_classes=1, input_size=args.size, anchors=[list(a) for a in data.meta.anchors])
    if args.weights:
        model.load_state_dict(torch.load(args.weights, weights_only=True))
        training: dict[str, Any] = {"weights": str(args.weights)}
    else:
        training = train(model, data, args, work)
        torch.save(model.state_dict(), work / f"yolofastest-{args.size}.pt")
    model.eval()
    head = Head.of(model)
    shape = (3, args.size, args.size)
    result: dict[str, Any] = {
        "quick": args.quick,
        "size": args.size,
        "threads": args.threads,
        "params": count(model, shape).params,
        "macs": count(model, shape).macs,
        "anchors": head.anchors.round(1).tolist(),
        "training": training,
        "split": {k: len(getattr(data, k)) for k in ("train", "val", "test")},
        "float": evaluate_detector(model, make_loader(data.test, 16, shuffle=False)),
    }
    print(f"float mAP@0.5 {result['float']['map50']:.3f}  mAP@[.5:.95] {result['float']['map50_95']:.3f}")
    result["runtimes"] = runtimes(model, data, head, args, work)
    result["compressed"] = compressed(model, data, head, args)
    if args.micro:
        result["micro"] = micro(model, root, args, work)
    images, dets, gts = [], [], []
    for i in range(min(8, len(data.test))):
        x, y = data.test[i]
        with torch.no_grad():
            out = [o.numpy() for o in model(x[None])]
        dets += postprocess(out, head, clip=args.size)
        gts += truths(y[None])
        images.append(x.permute(1, 2, 0).numpy())
    name = "detect_raccoon_quick" if args.quick else "detect_raccoon"
    plot = plot_predictions(
        images,
        dets,
        gts,
        data.meta.class_names,
        Path(__file__).parent / "results" / f"{name}.png",
        title=f"YOLO-FastestV2, Raccoon test split, {args.size} px (green: truth, red: score >= 0.3)",
    )
    result["plot"] = str(plot.relative_to(Path(__file__).resolve().parents[1]))
    goal = result["float"]["map50"] >= 0.60
    int8 = result["runtimes"].get("onnxruntime-int8", {}).get("map50")
    result["goal"] = {
        "float_map50_at_least_0.60": goal,
        "int8_within_2_points": None if int8 is None else bool(result["float"]["map50"] - int8 <= 0.02),
    }
    save(name, result, quick=args.quick)
    for k, v in result["runtimes"].items():
        print(
            f"{k:18s} mAP@0.5 {v.get('map50', float('nan')):.3f}  latency {v.get('latency_ms') or float('nan'):.2f} ms"
        )


if __name__ == "__main__":
    main()
