"""Compressed weights executed on the emulated Cortex-M4: LeNet-300-100 and LeNet-5 (MNIST)
in dense int8, int4, k-means shared, sparse and sparse + shared (combined) weight forms.

    python benchmarks/micro_compressed.py            # both models (see the timing below)
    python benchmarks/micro_compressed.py --quick    # a smoke run: fewer images
    python benchmarks/micro_compressed.py lenet5 --device-samples 1000

Models:
- dense: the trained baselines ``benchmarks/work/baselines/<model>.safetensors`` (from
  ``benchmarks/baselines.py``), int8 PTQ with 8-bit (``dense int8``) or 4-bit (``int4``,
  no QAT) weights;
- compressed: Deep Compression's retrained model (Han et al. 2016: pruned with retraining,
  k-means shared with centroid fine-tuning), the final file ``huffman.tt`` that
  ``benchmarks/deep_compression.py`` writes into its run folder
  ``benchmarks/work/runs/deep-compression-<model>/`` (its accuracy is the one that
  benchmark reports); int8 PTQ, each shared layer with one weight scale
  (``compress.int8.one_scale_overrides``, as ``tamer deploy`` quantizes), so its centroids
  map to one integer codebook, as the paper keeps one codebook per layer
  (``--per-channel-shared``: per-channel scales, which give each class of channel scales
  its own codebook and a codebook number per row).  When that
  file is missing, a full run first runs ``benchmarks/deep_compression.py <model>`` (its own
  pruning schedule; ``--quick`` stops instead of retraining).

Variants (one integer graph each, the weight form set per layer):
- ``dense int8``: int8 weights;
- ``int4``: packed int4 weights (the forms lowering picks from ``w_bits`` 4);
- ``shared``: the compressed model, forms chosen with no sparse forms (shared where it
  saves, else int8);
- ``sparse``: the compressed model, the sparse (word per non-zero) form where the layer is
  sparse enough, else int8;
- ``combined``: the compressed model, forms chosen by :func:`tinytamer.micro.weights.choose`
  (sparse_shared where it saves).

Figures: weight flash (the bytes of every weight, index, codebook, row-count and
codebook-number array and of the weight descriptors in the linked image, read from its
symbol table, each with the alignment padding after it; the biases and requantization
constants are counted apart as "requant"); flash (code + constants of the linked image);
peak SRAM (arena + I/O tensors + measured stack); exact instructions and estimated cycles
under the ``ideal`` and ``stm32l4r5`` memory profiles (mean over ``--board-samples``
images; both are estimates from the cycle table); accuracy: host = the integer reference
on ``--host-samples`` test images, device = the emulator (ideal profile; the profile does
not change outputs) on the first ``--device-samples`` of them, with a check that every
device output equals the host's.

Timing (both models, 2-core AMD EPYC shared with other jobs): ``--quick`` measured 4 min
(17 min when the machine was busiest); the defaults add the 10,000 reference images, the
1,000 emulated images and two board-profile runs per variant (the ``stm32l4r5`` profile's
per-load hook is the slow part: about 2-8 s per million instructions), an estimated 20-30 min
(about an hour on a busy machine).
Results: ``benchmarks/results/micro_compressed.json`` (``--quick``: under ``benchmarks/work/quick``).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from elftools.elf.elffile import ELFFile

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import REPO, WORK, save, shared_data  # noqa: E402
from tinytamer import codec, zoo  # noqa: E402
from tinytamer.checkpoint import load_weights  # noqa: E402
from tinytamer.compress.int8 import one_scale_overrides, quantize_ptq  # noqa: E402
from tinytamer.data import get_dataset  # noqa: E402
from tinytamer.errors import ModelError  # noqa: E402
from tinytamer.micro import weights  # noqa: E402
from tinytamer.micro.lower import lower  # noqa: E402
from tinytamer.micro.program import build_program  # noqa: E402
from tinytamer.qgraph import one_scale_layers  # noqa: E402

VARIANTS = ("dense int8", "int4", "shared", "sparse", "combined")
# The C arrays of op <i>'s weights in each form (tinytamer.micro.ops, weights.c_packed /
# c_sparse): int8 w, packed bytes wd, codebooks wc, codebook numbers wg, row counts wz,
# stream ws, and the descriptors pw / sw; and its bias / requantization arrays.
WEIGHT_SYMBOLS = ("w", "wd", "wc", "wg", "wz", "ws", "pw", "sw")
REQUANT_SYMBOLS = ("b", "m", "s", "q")


def retrained(name: str, quick: bool) -> Path:
    """Deep Compression's final retrained model file, made first if missing."""
    run = WORK / "runs" / f"deep-compression-{name}"
    found = sorted(run.glob("stages/*/huffman.tt"))
    if not found:
        cmd = [sys.executable, str(Path(__file__).with_name("deep_compression.py")), name]
        if quick:
            sys.exit(f"{name}: no retrained model under {run}; run: {' '.join(cmd)}")
        print(f"{name}: no retrained model under {run}; running {' '.join(cmd)}", flush=True)
        subprocess.run(cmd, check=True)
        found = sorted(run.glob("stages/*/huffman.tt"))
    return found[-1]


def forms(g, variant: str) -> dict[str, str]:
    for op in g.ops:
        if not hasattr(op, "weight_form"):
            continue
        rows = weights.as_rows(op.weight)
        has_sparse = getattr(op, "groups", 1) == 1
        if variant == "shared":
            op.weight_form = weights.choose(op.weight, 8, sparse=False)
        elif variant == "sparse":
            op.weight_form = "sparse" if has_sparse and weights.FORMS["sparse"].fits(rows) else "int8"
        elif variant == "dense int8":
            op.weight_form = "int8"
        # int4 and combined: lowering's own choice.
    return {op.name: op.weight_form for op in g.ops if hasattr(op, "weight_form")}


def image_bytes(elf: Path, g) -> dict:
    """Flash bytes of each weighted op's weight arrays and its requantization arrays in the
    linked image: symbol sizes, each with the alignment padding up to the next object."""
    with open(elf, "rb") as f:
        e = ELFFile(f)
        objs = sorted(
            (s["st_value"], s.name)
            for s in e.get_section_by_name(".symtab").iter_symbols()
            if s["st_info"]["type"] == "STT_OBJECT" and s["st_size"] > 0
        )
        ends = {}
        for sec in e.iter_sections():
            if sec["sh_flags"] & 2:  # allocated
                ends[(sec["sh_addr"], sec["sh_addr"] + sec["sh_size"])] = sec.name
    span = {}
    for (addr, name), nxt in zip(objs, [*objs[1:], (None, None)], strict=True):
        sec_end = next(hi for lo, hi in ends if lo <= addr < hi)
        span[name] = (sec_end if nxt[0] is None else min(nxt[0], sec_end)) - addr
    out: dict = {"layers": {}, "weights": 0, "requant": 0}
    for i, op in enumerate(g.ops):
        if not hasattr(op, "weight_form"):
            continue
        w = sum(span.get(f"{p}{i}", 0) for p in WEIGHT_SYMBOLS)
        r = sum(span.get(f"{p}{i}", 0) for p in REQUANT_SYMBOLS)
        out["layers"][op.name] = {"weights": w, "requant": r, "form": op.weight_form}
        out["weights"] += w
        out["requant"] += r
    return out


def run(name: str, args: argparse.Namespace) -> dict:
    torch.manual_seed(0)
    data = get_dataset("mnist", shared_data() / "mnist", val_fraction=0.0)
    m = zoo.create(name, in_channels=1, input_size=28)
    load_weights(m, WORK / "baselines" / f"{name}.safetensors")
    m.eval()
    path = retrained(name, args.quick)
    c = codec.load(path).eval()
    calib = [torch.stack([data.train[i][0] for i in range(j, j + 64)]) for j in range(0, 512, 64)]
    n = min(args.host_samples, len(data.test))
    xs = torch.stack([data.test[i][0] for i in range(n)])
    ys = np.array([int(data.test[i][1]) for i in range(n)])
    nd, nb = min(args.device_samples, n), min(args.board_samples, n)
    gms = {"dense int8": quantize_ptq(m, calib), "int4": quantize_ptq(m, calib, weight_bits=4)}
    grid = {} if args.per_channel_shared else one_scale_overrides(c)
    gms["shared"] = gms["sparse"] = gms["combined"] = quantize_ptq(c, calib, select={"overrides": grid})
    with torch.no_grad():
        out: dict = {
            "model": name,
            "compressed_model": str(path.relative_to(REPO)),
            "test_samples": n,
            "device_samples": nd,
            "board_samples": nb,
            "fp32_accuracy": float((m(xs).argmax(1).numpy() == ys).mean()),
            "compressed_fp32_accuracy": float((c(xs).argmax(1).numpy() == ys).mean()),
            "per_tensor_layers": one_scale_layers(gms["combined"]),
            "variants": {},
        }
    for variant in VARIANTS:
        t0 = time.time()
        gm = gms[variant]
        g = lower(gm, xs[:1])
        chosen = forms(g, variant)
        workdir = WORK / "micro_compressed" / name / variant.replace(" ", "_")
        prog = build_program(gm, xs[:1], "cortex-m4", workdir, graph=g)
        q = prog.quantize_input(xs.numpy())
        ideal = [prog.profile(r, per_layer=False) for r in q[:nb]]
        try:
            board = [prog.profile(r, per_layer=False, memory_profile="stm32l4r5")["est_cycles"] for r in q[:nb]]
        except ModelError as e:  # recorded, not hidden: the table says the figure is missing
            board, out.setdefault("stm32l4r5_errors", {})[variant] = None, str(e)
        host = prog.run_reference(q)
        dev = prog.run_device(q[:nd])
        flash = image_bytes(prog.arm.elf, g)
        rec = {
            "forms": chosen,
            "weight_flash_bytes": flash["weights"],
            "requant_flash_bytes": flash["requant"],
            "weight_flash_per_layer": flash["layers"],
            "weight_form_bytes": sum(
                weights.FORMS[op.weight_form].flash_bytes(weights.as_rows(op.weight))
                for op in g.ops
                if hasattr(op, "weight_form")
            ),
            "dense_weights": sum(int(op.weight.size) for op in g.ops if hasattr(op, "weight_form")),
            "flash_bytes": prog.arm.flash_bytes,
            "sram_bytes": prog.cmodel.sram_bytes(max(p["stack_bytes"] for p in ideal)),
            "instructions": int(np.mean([p["instructions"] for p in ideal])),
            "est_cycles_ideal": int(np.mean([p["est_cycles"] for p in ideal])),
            "est_cycles_stm32l4r5": None if board is None else int(np.mean(board)),
            "host_accuracy": float((host.argmax(1) == ys).mean()),
            "host_accuracy_on_device_samples": float((host[:nd].argmax(1) == ys[:nd]).mean()),
            "device_accuracy": float((dev.argmax(1) == ys[:nd]).mean()),
            "device_equals_host": bool(np.array_equal(dev, host[:nd])),
            "seconds": round(time.time() - t0, 1),
        }
        out["variants"][variant] = rec
        brief = {k: v for k, v in rec.items() if k not in ("forms", "weight_flash_per_layer")}
        print(name, variant, brief, chosen, flush=True)
    return out


def _k(n: int | None) -> str:
    return "n/a" if n is None else f"{n / 1e3:.0f} k"


def markdown(results: dict) -> str:
    lines = [
        "| model | weights | weight flash (x dense int8 weights) | requant | flash (image) | peak SRAM | "
        "instructions | est. cycles (ideal) | est. cycles (stm32l4r5) | accuracy host (n) | device (n) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        for variant, v in r["variants"].items():
            lines.append(
                f"| {name} | {variant} | {v['weight_flash_bytes'] / 1024:.1f} KiB "
                f"({v['weight_flash_bytes'] / v['dense_weights']:.3f}x) | "
                f"{v['requant_flash_bytes'] / 1024:.1f} KiB | "
                f"{v['flash_bytes'] / 1024:.1f} KiB | {v['sram_bytes'] / 1024:.1f} KiB | "
                f"{v['instructions'] / 1e3:.0f} k | {v['est_cycles_ideal'] / 1e3:.0f} k | "
                f"{_k(v['est_cycles_stm32l4r5'])} | "
                f"{100 * v['host_accuracy']:.2f}% ({r['test_samples']:,}) | "
                f"{100 * v['device_accuracy']:.2f}% ({r['device_samples']:,}; host "
                f"{100 * v['host_accuracy_on_device_samples']:.2f}%, outputs "
                f"{'equal' if v['device_equals_host'] else 'DIFFER'}) |"
            )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("models", nargs="*", default=["lenet300", "lenet5"])
    ap.add_argument("--host-samples", type=int, default=10000, help="test images through the integer reference")
    ap.add_argument("--device-samples", type=int, default=1000, help="of those, through the emulator")
    ap.add_argument("--board-samples", type=int, default=2, help="of those, profiled for cycles")
    ap.add_argument("--quick", action="store_true", help="1,000 / 20 / 1 images; never retrains")
    ap.add_argument(
        "--per-channel-shared",
        action="store_true",
        help="quantize the compressed model's shared layers with per-channel scales (default: one scale per layer)",
    )
    args = ap.parse_args()
    for name in args.models:
        if name not in ("lenet300", "lenet5"):
            ap.error(f"unknown model '{name}' (lenet300, lenet5)")
    if args.quick:
        args.host_samples, args.device_samples, args.board_samples = 1000, 20, 1
    torch.set_num_threads(1)
    start = time.time()
    results = {name: run(name, args) for name in args.models}
    save(
        "micro_compressed" + ("_quick" if args.quick else ""),
        {"results": results, "markdown": markdown(results), "seconds": round(time.time() - start, 1)},
        quick=args.quick,
    )
    print(markdown(results))


if __name__ == "__main__":
    main()
