"""The MFCC frontend on the device: raw int16 audio in, the network's int8 input out.

The kernel is ``runtime/tt_mfcc.c`` (the fixed-point MLPerf Tiny MFCC of
:mod:`tinytamer.audio.mfcc_fixed`, which is its bit-exact numpy reference); this module
generates its constant tables, computes the int8 reference (the Q16 MFCCs requantized to
the network input's scale and zero point) and builds a keyword spotter: the frontend and a
compiled network in one image, with ``tt_kws_run(audio, logits, scratch)`` running both.

It is not a row of the op table: it runs before the graph's input, on a different input
type (int16 audio), so a program gains it with :func:`build_spotter` rather than lowering.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tinytamer.audio import mfcc as ref
from tinytamer.audio import mfcc_fixed as fx
from tinytamer.errors import ModelError
from tinytamer.micro import toolchain
from tinytamer.micro.codegen import RUNTIME_DIR
from tinytamer.micro.fixedpoint import quantize_multiplier, requantize
from tinytamer.micro.ops.base import c_array

SAMPLES = ref.CLIP_SAMPLES
SCRATCH_WORDS = 2 * fx.FFT


@dataclass(frozen=True)
class OutputQuant:
    """The network input's quantization the frontend writes (Q16 MFCC -> int8)."""

    scale: float
    zero_point: int

    def multiplier(self) -> tuple[int, int]:
        if not self.scale > 0:
            raise ModelError(f"MFCC frontend: the network input scale must be > 0, got {self.scale}")
        return quantize_multiplier(1.0 / (self.scale * (1 << fx.LOG_FRAC_BITS)))


def reference_int8(audio: np.ndarray, quant: OutputQuant) -> np.ndarray:
    """What ``tt_mfcc`` writes: (49, 10) int8 of one second of int16 audio."""
    m, shift = quant.multiplier()
    q = requantize(fx.mfcc_q16(audio).astype(np.int64), m, shift) + quant.zero_point
    return np.clip(q, -128, 127).astype(np.int8)


def tables_c(quant: OutputQuant, name: str = "tt_mfcc_p") -> str:
    """C source of the frontend's tables and its ``tt_mfcc_params`` constant ``name``."""
    m, shift = quant.multiplier()
    arrays = [
        c_array("mfcc_window", "int16_t", fx.WINDOW_Q15),
        c_array("mfcc_twr", "int16_t", fx.TWIDDLE_RE),
        c_array("mfcc_twi", "int16_t", fx.TWIDDLE_IM),
        c_array("mfcc_rev", "int16_t", fx.BIT_REVERSE),
        c_array("mfcc_mel_start", "int16_t", fx.MEL_START),
        c_array("mfcc_mel_len", "int16_t", fx.MEL_LENGTH),
        c_array("mfcc_mel_w", "uint16_t", fx.MEL_WEIGHTS),
        c_array("mfcc_log2", "int32_t", fx.LOG2_LUT),
        c_array("mfcc_dct", "int32_t", fx.DCT_Q20),
    ]
    fields = {
        "window": "mfcc_window",
        "twiddle_re": "mfcc_twr",
        "twiddle_im": "mfcc_twi",
        "bit_reverse": "mfcc_rev",
        "mel_start": "mfcc_mel_start",
        "mel_length": "mfcc_mel_len",
        "mel_weights": "mfcc_mel_w",
        "log2_lut": "mfcc_log2",
        "dct": "mfcc_dct",
        "frames": ref.FRAMES,
        "hop": ref.HOP,
        "window_len": ref.WINDOW,
        "bands": ref.MEL_BANDS,
        "coefficients": ref.COEFFICIENTS,
        "scale_log2": fx.SCALE,
        "log_floor": fx.LOG_FLOOR,
        "out_multiplier": m,
        "out_shift": shift,
        "out_zp": quant.zero_point,
    }
    inits = ", ".join(f".{k} = {v}" for k, v in fields.items())
    return '#include "tt_mfcc.h"\n\n' + "".join(arrays) + f"const tt_mfcc_params {name} = {{{inits}}};\n"


def spotter_c(quant: OutputQuant) -> str:
    """Tables, the entry points a session calls (the frontend alone; audio -> the network's
    int8 output) and a ``main`` that runs both once on silence, which also keeps them
    through the linker's section garbage collection."""
    return (
        tables_c(quant)
        + '#include "model.h"\n\n'
        + "__attribute__((noinline))\nvoid tt_mfcc_run(const int16_t *audio, int8_t *features, int32_t *scratch)\n"
        + "{\n    tt_mfcc(&tt_mfcc_p, audio, features, scratch);\n}\n\n"
        + "__attribute__((noinline))\n"
        + "void tt_kws_run(const int16_t *audio, int8_t *logits, int32_t *scratch, int8_t *features)\n"
        + "{\n    tt_mfcc(&tt_mfcc_p, audio, features, scratch);\n    tt_model_run(features, logits);\n}\n\n"
        + "int main(void)\n{\n"
        + f"    static int16_t audio[{SAMPLES}];\n    static int32_t scratch[TT_MFCC_SCRATCH_WORDS];\n"
        + "    static int8_t features[TT_INPUT_SIZE], logits[TT_OUTPUT_SIZE];\n"
        + "    tt_mfcc_run(audio, features, scratch);\n    tt_kws_run(audio, logits, scratch, features);\n"
        + "    return 0;\n}\n"
    )


def build_spotter(program, workdir: str | Path) -> toolchain.ArmBuild:
    """Build a Cortex-M ``MicroProgram``'s network with the frontend in front, in one image
    (the program's own build flags, linker script and start-up code; :func:`spotter_c`'s main)."""
    if program.device == "host" or program.arm is None:
        raise ModelError("MFCC frontend: a keyword spotter is built for a Cortex-M program, not the host")
    t = program.graph.tensors[program.graph.input]
    if tuple(t.shape) != (ref.FRAMES, ref.COEFFICIENTS, 1):
        raise ModelError(
            f"MFCC frontend: the network takes {tuple(t.shape)} (HWC), "
            f"the frontend gives {(ref.FRAMES, ref.COEFFICIENTS, 1)}"
        )
    c = toolchain.cpu(program.device)
    d = program.cmodel.write(Path(workdir).resolve())
    (d / "spotter.c").write_text(spotter_c(OutputQuant(float(t.scale), int(t.zero_point))))
    elf = d / f"spotter_{c.name}.elf"
    flags = [*c.flags, "-std=c99", "-O2", "-Wall", "-Wextra", "-Werror", "-Wno-unused-parameter"]
    flags += ["-fno-strict-aliasing", "-ffunction-sections", "-fdata-sections", *(["-DTT_DSP=1"] if c.dsp else [])]
    gcc = toolchain.require("arm-none-eabi-gcc")
    runtime = toolchain.runtime_objects(gcc, flags, [*toolchain.KERNEL_SOURCES, "tt_mfcc.c"])
    startup = [str(RUNTIME_DIR / s) for s in ("startup_cm.c", "semihost.c")]
    srcs = [str(d / "model.c"), *runtime, *startup, *map(str, program.cmodel.sources)]
    includes = [f"-I{p}" for p in (d, RUNTIME_DIR, *program.cmodel.include_dirs)]
    link = ["-nostartfiles", "--specs=nano.specs", "-T", str(RUNTIME_DIR / "cortexm.ld"), "-Wl,--gc-sections"]
    cmd = [
        gcc,
        *flags,
        *includes,
        *srcs,
        str(d / "spotter.c"),
        *link,
        "-o",
        str(elf),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise ModelError(f"keyword spotter build for {c.name} failed:\n{proc.stderr[-4000:]}")
    size = subprocess.run([toolchain.require("arm-none-eabi-size"), "-A", str(elf)], capture_output=True, text=True)
    sections = {
        p[0]: int(p[1]) for p in (ln.split() for ln in size.stdout.splitlines()) if len(p) == 3 and p[1].isdigit()
    }
    flash = sections.get(".text", 0) + sections.get(".ARM.exidx", 0) + sections.get(".data", 0)
    sram = sections.get(".data", 0) + sections.get(".bss", 0) + sections.get(".stack", 0)
    return toolchain.ArmBuild(elf, c, flash, sram, sections)
