"""Packed int4 / int2 and k-means shared weights on the emulated Cortex-M4: int8, our two
packed convolution kernels and (int4) CMSIS-NN's s4 kernels, side by side.

    python benchmarks/micro_int4.py [resnet8 dscnn lenet5] [--bits 4|2] [--form int|shared]

One run, one compiler and flag set (arm-none-eabi-gcc -O2 -mcpu=cortex-m4), one emulator
(unicorn: exact instruction counts), one cycle table, the ``ideal`` and ``stm32l4r5`` memory
profiles.  Per model, the same network quantized twice (int8 PTQ with 8-bit weights, and
with ``--bits``-bit weights: every conv / dense layer then stores packed int4 or int2, two
or four weights a byte):

- ``int8``: tinytamer's default schedules on the 8-bit model (the reference point);
- ``int4 quads4`` / ``int2 quads2``: the default for packed convolutions, the quads kernel
  reading the packed words and scaling the fields in registers (tt_conv2d_s4_qx*,
  tt_conv2d_s2_qx*, runtime/tt_conv.c);
- ``int4 packed`` / ``int2 packed``: the same graph with every packed convolution on the
  row-unpacking packed kernel (tt_conv2d_s8_packed, the default before); depthwise layers
  have one packed kernel (tt_depthwise_s8_packed, groups of 4 channels unpacked for the SIMD
  group kernel) and run it in both columns;
- ``int4 cmsis-nn`` (``--bits 4`` only: CMSIS-NN has no 2-bit kernels): the 4-bit graph on
  CMSIS-NN (arm_convolve_s4 and its kin where CMSIS-NN runs the op bit-exactly; the rest on
  ours, listed under ``cmsis_fallbacks``), the unmodified tree in ../shared/peers/cmsis-nn.

``--form shared``: the network's float weights k-means shared first (``compress.share``,
``2^bits`` values a layer, as Deep Compression and HAQ's size search store them), then int8
PTQ; every layer whose int8 weights fit stores the ``shared`` form (codebooks and packed
indices).  Columns: ``int8`` (the same network without sharing), ``shared<bits> blocks``
(the default for shared convolutions: each block of channels' weights unpacked into the
int8 quads layout in the arena, tt_conv2d_s8_qxb) and ``shared<bits> packed`` (every shared
convolution on the row-by-row packed kernel, the default before).  Results:
``results/micro_shared<bits>.json``.

Weights are untrained (seeded initialisation, PTQ on random calibration inputs): instruction,
cycle, flash and SRAM figures do not depend on weight values, and accuracy is not part of
this table (the int4 rows of ``micro_compressed.py`` have it).  Every column is checked
bit-exact against the integer reference of its graph.  Cycles are estimates (emulator counts
under a cycle table), not board measurements.  Results: ``results/micro_int<bits>.json``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import WORK, save  # noqa: E402
from benchmarks.micro_vs_cmsis import MODELS, PEER, PROFILES, chosen_models, model_parser  # noqa: E402
from tinytamer import zoo  # noqa: E402
from tinytamer.compress import share  # noqa: E402
from tinytamer.compress.int8 import quantize_ptq  # noqa: E402
from tinytamer.micro import weights  # noqa: E402
from tinytamer.micro.lower import lower  # noqa: E402
from tinytamer.micro.program import build_program  # noqa: E402


def columns(bits: int, form: str = "int") -> tuple[str, ...]:
    if form == "shared":
        return ("int8", f"shared{bits} blocks", f"shared{bits} packed")
    return ("int8", f"int{bits} quads{bits}", f"int{bits} packed", *(["int4 cmsis-nn"] if bits == 4 else []))


def _quantized(name: str, bits: int, shared: bool = False):
    kw, shape = MODELS[name]
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    calib = [torch.randn(8, *shape, generator=gen) for _ in range(4)]
    model = zoo.create(name, **kw).eval()
    if shared:
        share.finalize(share.kmeans(model, bits=bits, seed=0))
    gm = quantize_ptq(model, calib, weight_bits=8 if shared else bits)
    return gm, torch.randn(4, *shape, generator=gen)


def _column(name: str, column: str, bits: int) -> dict:
    shared = column.startswith("shared")
    gm, x = _quantized(name, 8 if column == "int8" else bits, shared)
    g = lower(gm, x[:1])
    form = "shared" if shared else f"int{bits}"
    if column != "int8":
        # Every layer in the form measured where it fits: at 2 bits lowering would store the
        # layers whose weights are mostly zero sparse, which is not the kernel measured here.
        for op in g.ops:
            if hasattr(op, "weight_form") and weights.FORMS[form].fits(weights.as_rows(op.weight)):
                op.weight_form = form
    forms = sorted({op.weight_form for op in g.ops if hasattr(op, "weight_form")})
    if column.endswith(" packed"):
        for op in g.ops:
            if getattr(op, "weight_form", None) == form and getattr(op, "weight", np.zeros(0)).ndim == 4:
                op.schedule = {"kernel": "packed"}
    kernels = "cmsis-nn" if column == "int4 cmsis-nn" else "tinytamer"
    t0 = time.time()
    prog = build_program(
        gm,
        x[:1],
        "cortex-m4",
        WORK / "micro_int4" / f"{name}-{column.replace(' ', '-')}",
        graph=g,
        kernels=kernels,
        cmsis_nn_root=PEER,
    )
    q = prog.quantize_input(x.numpy())
    rec: dict = {
        "weight_forms": forms,
        "bit_exact_vs_reference": bool(np.array_equal(prog.run_device(q), prog.run_reference(q))),
        "flash_bytes": prog.arm.flash_bytes,
        "conv_kernels": sorted(
            {ln.split("(")[0].strip() for ln in prog.cmodel.files["model.c"].splitlines() if "tt_conv2d_" in ln}
            | {ln.split("(")[0].strip() for ln in prog.cmodel.files["model.c"].splitlines() if "tt_depthwise_" in ln}
            | {ln.split("(")[0].strip() for ln in prog.cmodel.files["model.c"].splitlines() if "arm_convolve" in ln}
        ),
    }
    for profile in PROFILES:
        p = prog.profile(q[0], memory_profile=profile)
        rec[f"est_cycles_{profile}"] = p["est_cycles"]
        rec["instructions"] = p["instructions"]
        rec["sram_bytes"] = prog.cmodel.sram_bytes(p["stack_bytes"])
    if kernels == "cmsis-nn":
        rec["cmsis_fallbacks"] = prog.cmodel.fallbacks
    rec["build_and_profile_s"] = round(time.time() - t0, 1)
    print(name, column, rec["est_cycles_ideal"], rec["est_cycles_stm32l4r5"], rec["flash_bytes"], flush=True)
    return rec


def measure(name: str, bits: int, form: str = "int") -> dict:
    out: dict = {"model": name, "weights": "untrained (seeded init)", "bits": bits, "form": form}
    cols = columns(bits, form)
    for column in cols:
        out[column] = _column(name, column, bits)
    base = out["int8"]
    out["ratio_over_int8"] = {
        c: {
            k: round(out[c][k] / base[k], 3)
            for k in ("instructions", "est_cycles_ideal", "est_cycles_stm32l4r5", "flash_bytes", "sram_bytes")
        }
        for c in cols[1:]
    }
    return out


def markdown(results: list[dict]) -> str:
    rows = [
        "| model | weights / kernels | instructions | est. cycles ideal (x int8) | est. cycles stm32l4r5 (x int8) "
        "| flash B (x int8) | SRAM B | bit-exact |",
        "|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in results:
        for c in columns(r["bits"], r["form"]):
            v, ratio = r[c], r["ratio_over_int8"].get(c)

            def x(k: str, v=v, ratio=ratio) -> str:
                return f"{v[k]:,}" + (f" ({ratio[k]})" if ratio else "")

            rows.append(
                f"| {r['model']} | {c} | {v['instructions']:,} | {x('est_cycles_ideal')} | "
                f"{x('est_cycles_stm32l4r5')} | {x('flash_bytes')} | {v['sram_bytes']:,} | "
                f"{v['bit_exact_vs_reference']} |"
            )
    return "\n".join(rows)


def main() -> None:
    ap = model_parser(__doc__)
    ap.add_argument("--bits", type=int, choices=(4, 2), default=4, help="the packed weights' width")
    ap.add_argument(
        "--form", choices=("int", "shared"), default="int", help="packed intN weights, or k-means shared ones"
    )
    args = ap.parse_args()
    results = [measure(m, args.bits, args.form) for m in chosen_models(ap, args.models)]
    name = f"micro_{'shared' if args.form == 'shared' else 'int'}{args.bits}"
    save(name, {"threads": 1, "results": results, "table": markdown(results)})
    print(markdown(results))


if __name__ == "__main__":
    main()
