"""tinytamer's kernels against Arm CMSIS-NN's, side by side on the emulated Cortex-M4.

    python benchmarks/micro_vs_cmsis.py [resnet8 dscnn lenet5] [--schedules tuned]

One run, one compiler and flag set (arm-none-eabi-gcc -O2 -mcpu=cortex-m4, the product's
build), one emulator (unicorn, exact instruction counts), one cycle table and the same two
memory profiles (``ideal``: zero-wait flash; ``stm32l4r5``: MLPerf Tiny's reference board,
flash wait states and the ART accelerator).  Both columns are the same integer graph and
memory plan; the ``cmsis-nn`` column runs every op CMSIS-NN runs bit-exactly with CMSIS-NN
(tinytamer/micro/cmsis.py: convolutions, depthwise, dense, max pool, residual add) and the
rest (average pool, softmax: CMSIS-NN rounds them differently) with tinytamer's kernels,
listed per model under ``cmsis_fallbacks``.  CMSIS-NN is the unmodified tree in
../shared/peers/cmsis-nn (PEERS.md there).

Weights are untrained (seeded initialisation, PTQ on random calibration inputs): the
instruction, cycle, flash and SRAM figures do not depend on weight values, and accuracy is
not part of this table.  Both outputs are checked bit-exact against the integer reference.
All cycle figures are estimates (emulator counts under a cycle table), not board measurements.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import REPO, WORK, save  # noqa: E402
from tinytamer import zoo  # noqa: E402
from tinytamer.compress.int8 import quantize_ptq  # noqa: E402
from tinytamer.micro.lower import lower  # noqa: E402
from tinytamer.micro.program import build_program  # noqa: E402

PEER = REPO.parent / "shared" / "peers" / "cmsis-nn"
MODELS = {
    "resnet8": ({"in_channels": 3}, (3, 32, 32)),
    "dscnn": ({"in_channels": 1, "num_classes": 12}, (1, 49, 10)),
    "lenet5": ({"in_channels": 1, "input_size": 28}, (1, 28, 28)),
}
PROFILES = ("ideal", "stm32l4r5")


def _quantized(name: str):
    kw, shape = MODELS[name]
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    gm = quantize_ptq(zoo.create(name, **kw).eval(), [torch.randn(8, *shape, generator=gen) for _ in range(4)])
    return gm, torch.randn(4, *shape, generator=gen)


def measure(name: str, schedules: str) -> dict:
    gm, x = _quantized(name)
    g = lower(gm, x[:1])
    out: dict = {"model": name, "macs": g.macs(), "weights": "untrained (seeded init)"}
    for kernels in ("tinytamer", "cmsis-nn"):
        t0 = time.time()
        prog = build_program(
            gm,
            x[:1],
            "cortex-m4",
            WORK / "micro_vs_cmsis" / f"{name}-{kernels}",
            schedules=schedules,
            kernels=kernels,
            cmsis_nn_root=PEER,
            tuning_log=WORK / "micro_vs_cmsis" / "tuning.jsonl",
        )
        q = prog.quantize_input(x.numpy())
        want = prog.run_reference(q)
        rec: dict = {
            "schedules": schedules if kernels == "tinytamer" else "cmsis-nn",
            "bit_exact_vs_reference": bool(np.array_equal(prog.run_device(q), want)),
            "flash_bytes": prog.arm.flash_bytes,
            "arena_bytes": prog.cmodel.plan.arena_size,
        }
        for profile in PROFILES:
            p = prog.profile(q[0], per_layer=profile == "ideal", memory_profile=profile)
            rec[f"est_cycles_{profile}"] = p["est_cycles"]
            rec["instructions"] = p["instructions"]
            if profile == "ideal":
                rec["per_layer"] = p["layers"]
                # Arena (the input included) + output + measured stack (Deployed.measure's figure).
                rec["sram_bytes"] = prog.cmodel.sram_bytes(p["stack_bytes"])
                rec["stack_bytes"] = p["stack_bytes"]
        if kernels == "cmsis-nn":
            rec["cmsis_fallbacks"] = prog.cmodel.fallbacks
        rec["build_and_profile_s"] = round(time.time() - t0, 1)
        out[kernels] = rec
        print(
            name,
            kernels,
            rec["instructions"],
            rec["est_cycles_ideal"],
            rec["est_cycles_stm32l4r5"],
            rec["flash_bytes"],
            rec["sram_bytes"],
            flush=True,
        )
    ours, theirs = out["tinytamer"], out["cmsis-nn"]
    out["ratio_ours_over_cmsis"] = {
        k: round(ours[k] / theirs[k], 3)
        for k in ("instructions", "est_cycles_ideal", "est_cycles_stm32l4r5", "flash_bytes", "sram_bytes")
    }
    return out


def markdown(results: list[dict]) -> str:
    rows = [
        "| model | kernels | instructions | est. cycles ideal | est. cycles stm32l4r5 | flash B | SRAM B | bit-exact |",
        "|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in results:
        for k in ("tinytamer", "cmsis-nn"):
            v = r[k]
            rows.append(
                f"| {r['model']} | {k} ({v['schedules']}) | {v['instructions']:,} | "
                f"{v['est_cycles_ideal']:,} | {v['est_cycles_stm32l4r5']:,} | "
                f"{v['flash_bytes']:,} | {v['sram_bytes']:,} | "
                f"{v['bit_exact_vs_reference']} |"
            )
        ratio = r["ratio_ours_over_cmsis"]
        rows.append(
            f"| {r['model']} | ours / CMSIS-NN | {ratio['instructions']} | "
            f"{ratio['est_cycles_ideal']} | {ratio['est_cycles_stm32l4r5']} | "
            f"{ratio['flash_bytes']} | {ratio['sram_bytes']} | |"
        )
    return "\n".join(rows)


def model_parser(doc: str) -> argparse.ArgumentParser:
    """The command line of a side-by-side benchmark: the models to run (default: all)."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    # Checked by hand: argparse tests an empty or default list against `choices` as one value.
    ap.add_argument("models", nargs="*", help=f"any of {', '.join(MODELS)} (default: all)")
    return ap


def chosen_models(ap: argparse.ArgumentParser, models: list[str]) -> list[str]:
    """The models asked for, checked, once the CMSIS-NN tree is found; one thread."""
    unknown = sorted(set(models) - set(MODELS))
    if unknown:
        ap.error(f"unknown model(s) {unknown}; choose from {list(MODELS)}")
    if not (PEER / "Include" / "arm_nnfunctions.h").is_file():
        sys.exit(f"no CMSIS-NN tree at {PEER} (see ../shared/peers/PEERS.md)")
    torch.set_num_threads(1)
    return models or list(MODELS)


def main() -> None:
    ap = model_parser(__doc__)
    ap.add_argument(
        "--schedules",
        default="default",
        choices=("default", "tuned"),
        help="tinytamer's schedules (CMSIS-NN has none to tune)",
    )
    args = ap.parse_args()
    results = [measure(m, args.schedules) for m in chosen_models(ap, args.models)]
    suffix = "" if args.schedules == "default" else f"_{args.schedules}"
    save(
        f"micro_vs_cmsis{suffix}",
        {
            "cpu": "cortex-m4",
            "compiler_flags": "-O2 (product build)",
            "cmsis_nn": "../shared/peers/cmsis-nn (PEERS.md version)",
            "models": results,
            "table": markdown(results),
        },
    )
    print(markdown(results))


if __name__ == "__main__":
    main()
