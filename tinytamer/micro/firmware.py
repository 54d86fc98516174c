"""A firmware-ready folder out of a micro program: everything a user's own build needs.

The deploy folder's model.c / model.h call kernels that live inside this package
(``runtime/``).  :func:`write_firmware` writes one self-contained folder that an
STM32CubeIDE, Zephyr, Arduino or plain Makefile project takes as it is::

    model.c, model.h      the generated model (weights as const data, one static arena)
    tt_model_io.h         input / output layout, scales, zero points, arena size
    tt_*.c, tt_*.h        only the kernel files the model's ops use (each op names its
                          files in the op table), the fixed-point header and the headers
                          those files include
    tinytamer.mk          Makefile fragment: TT_SRCS, TT_CFLAGS, TT_CPU_FLAGS
    CMakeLists.txt        a static library target ``tinytamer_model``
    example/              main.c running the model on one stored input and printing the
                          output; a host board (stdio) and, for Cortex-M, a QEMU board
                          (start-up code, linker script, semihosting) and host/model.c (the
                          same model over the portable kernels, so it runs on a PC); a Makefile
    README.md             how to call it and what it needs

Nothing in the folder refers back to tinytamer.  The folder is written for the device the
program was built for: a Cortex-M folder's model.c calls the DSP kernel variants (it needs
a core with the DSP extension), a ``host`` folder's calls only portable C99 kernels.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from tinytamer.errors import ModelError
from tinytamer.micro import codegen, reference
from tinytamer.micro.codegen import RUNTIME_DIR
from tinytamer.micro.ir import Graph, TensorInfo
from tinytamer.micro.ops import op_def
from tinytamer.micro.toolchain import CPUS

if TYPE_CHECKING:
    from tinytamer.micro.program import MicroProgram

TEMPLATES = RUNTIME_DIR / "firmware"
# What the kernels need from every compiler: C99, and no strict aliasing (they read int8
# buffers through wider pointers).  -O2 is what tinytamer measures with, not a need.
CFLAGS = ("-std=c99", "-fno-strict-aliasing")
QEMU_MACHINES = {name: c.qemu_machine for name, c in CPUS.items()}
_INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"', re.MULTILINE)
_DEF = re.compile(r"^(?:[A-Za-z_][\w \t*()]*[\s*)])?(tt_\w+)\s*\(", re.MULTILINE)
_CALL = re.compile(r"\b(tt_\w+)\s*\(")
_MODEL_API = ("tt_model_run", "tt_model_input")  # defined in model.c itself
_IDENT = re.compile(r"\b(tt_\w+)\b")


@dataclass(frozen=True)
class Firmware:
    """A written folder: where, for which device, and the model's own C files in it."""

    folder: Path
    device: str
    sources: tuple[str, ...]  # the C files a firmware compiles (model.c and its kernels)
    headers: tuple[str, ...]


def _defined(text: str) -> set[str]:
    """The external ``tt_*`` functions a runtime C file defines (house style: the name at
    the start of a line or after its return type, the body's ``{`` before any ``;``)."""
    names = set()
    for m in _DEF.finditer(text):
        brace, semi = text.find("{", m.end()), text.find(";", m.end())
        if brace < 0 or 0 <= semi < brace:
            continue  # a prototype
        line_start = text.rfind("\n", 0, m.start()) + 1
        head = text[line_start : m.start(1)]
        if not head.strip():  # the return type is on the line before
            head = text[text.rfind("\n", 0, max(line_start - 1, 0)) + 1 : line_start]
        if "static" not in head.split():
            names.add(m.group(1))
    return names


def kernel_sources(g: Graph, models: list[str]) -> list[str]:
    """The runtime C files the generated ``models`` (model.c texts) call, directly or
    through each other, among the files the graph's ops name in the op table (plus
    tt_kernels.c, the requantization every kernel shares); in op-table order.  An op's
    table row names every variant's file (int8, packed, sparse): only those whose
    functions the generated code calls are kept."""
    candidates = list(dict.fromkeys(["tt_kernels.c", *(f for op in g.ops for f in op_def(op).kernel_files)]))
    texts = {f: (RUNTIME_DIR / f).read_text() for f in candidates}
    where: dict[str, list[str]] = {}
    for f, text in texts.items():
        for name in _defined(text):
            where.setdefault(name, []).append(f)
    called = {n for text in models for n in _CALL.findall(text)}
    missing = sorted(n for n in called if n not in where and not n.startswith("tt_layer_") and n not in _MODEL_API)
    if missing:
        # A definition this scan cannot read (another layout of the C): every file the op
        # table names for these ops is a superset that still links; a deploy never fails here.
        return candidates
    chosen: set[str] = set()
    todo = [f for n in called for f in where.get(n, [])]
    while todo:
        f = todo.pop()
        if f not in chosen:
            chosen.add(f)
            todo += [g2 for n in _IDENT.findall(texts[f]) for g2 in where.get(n, [])]
    return [f for f in candidates if f in chosen]


def _headers(sources: list[str]) -> list[str]:
    """The runtime headers the sources include, directly or through each other."""
    seen: list[str] = []
    todo = list(sources)
    while todo:
        text = (RUNTIME_DIR / todo.pop()).read_text()
        for name in _INCLUDE.findall(text):
            if name not in seen and (RUNTIME_DIR / name).is_file():
                seen.append(name)
                todo.append(name)
    return sorted(seen)


def _c_bytes(name: str, values: np.ndarray) -> str:
    flat = [str(int(v)) for v in np.asarray(values, np.int8).reshape(-1)]
    rows = ",\n    ".join(", ".join(flat[i : i + 16]) for i in range(0, len(flat), 16))
    return f"static const int8_t {name}[{max(len(flat), 1)}] = {{\n    {rows or '0'}\n}};\n"


def _example_data(example: np.ndarray, expected: np.ndarray) -> str:
    return "\n".join(
        [
            "/* Generated by tinytamer: one quantized input (the first sample tinytamer checked",
            " * the device on) and the output its integer reference computes for it. */",
            "#ifndef TT_EXAMPLE_DATA_H",
            "#define TT_EXAMPLE_DATA_H",
            "#include <stdint.h>",
            '#include "model.h"',
            "",
            _c_bytes("tt_example_input", example) + _c_bytes("tt_example_expected", expected),
            "#endif",
            "",
        ]
    )


def _dims(prefix: str, t: TensorInfo) -> list[str]:
    names = ("HEIGHT", "WIDTH", "CHANNELS") if len(t.shape) == 3 else ("FEATURES",)
    return [f"#define {prefix}_{n} {d}" for n, d in zip(names, t.shape, strict=True)]


def _layout(t: TensorInfo) -> str:
    if len(t.shape) == 3:
        h, w, c = t.shape
        return f"HWC: {h} x {w} x {c} (channels last; PyTorch's N x C x H x W is transposed)"
    return f"a vector of {t.shape[0]} values"


def _io_header(g: Graph, arena: int, device: str) -> str:
    tin, tout = g.tensors[g.input], g.tensors[g.output]
    return "\n".join(
        [
            "/* Generated by tinytamer: what the model takes and gives.",
            " *",
            " * int tt_model_run(const int8_t *in, int8_t *out) (model.h) reads TT_INPUT_SIZE int8",
            " * values from `in` and writes TT_OUTPUT_SIZE int8 values to `out`.  The input lives",
            " * in the arena: write it at tt_model_input() and pass that pointer as `in` (no copy,",
            " * no buffer of your own); any other `in` is copied there first.  Working memory is",
            " * one static array of TT_ARENA_SIZE bytes inside model.c (.bss), the input included:",
            " * no heap, no floating point, and one call at a time (not reentrant).",
            " *",
            " * Quantization (int8, affine):  q = clamp(round(x / SCALE) + ZERO_POINT, -128, 127)",
            " * with round half to even;  x = (q - ZERO_POINT) * SCALE.",
            " */",
            "#ifndef TT_MODEL_IO_H",
            "#define TT_MODEL_IO_H",
            "",
            '#include "model.h"',
            "",
            f'#define TT_MODEL_DEVICE "{device}"',
            f"/* arena: TT_ARENA_SIZE = {arena} bytes (model.h) */",
            "",
            f"/* input: int8, {_layout(tin)} */",
            *_dims("TT_INPUT", tin),
            f"#define TT_INPUT_SCALE {tin.scale:.9g}f",
            f"#define TT_INPUT_ZERO_POINT {tin.zero_point}",
            "",
            f"/* output: int8, {_layout(tout)} */",
            *_dims("TT_OUTPUT", tout),
            f"#define TT_OUTPUT_SCALE {tout.scale:.9g}f",
            f"#define TT_OUTPUT_ZERO_POINT {tout.zero_point}",
            "",
            "#endif",
            "",
        ]
    )


def _makefile_fragment(sources: list[str], cpu_flags: str) -> str:
    return "\n".join(
        [
            "# Generated by tinytamer: the model and its kernels, for a Makefile build.",
            "#   include path/to/this/folder/tinytamer.mk",
            "#   then compile $(TT_SRCS) with $(TT_CFLAGS) (and your CPU flags, or $(TT_CPU_FLAGS)).",
            "TT_DIR := $(patsubst %/,%,$(dir $(lastword $(MAKEFILE_LIST))))",
            f"TT_SRCS := $(addprefix $(TT_DIR)/,{' '.join(sources)})",
            "# C99 and no strict aliasing: the kernels read int8 buffers through wider pointers.",
            f"TT_CFLAGS := {' '.join(CFLAGS)} -I$(TT_DIR)",
            "# The CPU the kernels were chosen for (empty: portable C, any CPU); the float ABI",
            "# must match the rest of your firmware (the model itself uses no floating point).",
            f"TT_CPU_FLAGS := {cpu_flags}",
            "",
        ]
    )


def _cmake(sources: list[str], cpu_flags: str) -> str:
    return "\n".join(
        [
            "# Generated by tinytamer: the model and its kernels as a static library.",
            "#   add_subdirectory(path/to/this/folder tinytamer_model)",
            "#   target_link_libraries(your_firmware PRIVATE tinytamer_model)",
            "# The CPU flags come from your toolchain file; this folder's kernels were chosen for:",
            f"#   {cpu_flags or '(any CPU: portable C99)'}",
            "cmake_minimum_required(VERSION 3.13)",
            "project(tinytamer_model C)",
            f"add_library(tinytamer_model STATIC {' '.join(sources)})",
            "target_include_directories(tinytamer_model PUBLIC ${CMAKE_CURRENT_SOURCE_DIR})",
            "set_target_properties(tinytamer_model PROPERTIES C_STANDARD 99 C_STANDARD_REQUIRED ON C_EXTENSIONS OFF)",
            "# The kernels read int8 buffers through wider pointers.",
            "target_compile_options(tinytamer_model PRIVATE -fno-strict-aliasing)",
            "",
        ]
    )


def _example_makefile(cpu_flags: str, machine: str | None) -> str:
    host_model = "" if machine is None else " host/model.c"
    lines = [
        "# Generated by tinytamer: build and run the example (make -C example TARGET).",
        "#   make run-host        gcc, runs on this computer",
        *([] if machine is None else [f"#   make run-qemu        arm-none-eabi-gcc, runs on QEMU {machine}"]),
        "include ../tinytamer.mk",
        "CC ?= gcc",
        "OPT ?= -O2",
        "",
    ]
    if machine is None:
        lines += ["HOST_SRCS := main.c host/board.c $(TT_SRCS)"]
    else:
        # host/model.c is the same model over the portable kernels (the DSP ones are Arm's).
        lines += ["HOST_SRCS := main.c host/board.c" + host_model + " $(filter-out $(TT_DIR)/model.c,$(TT_SRCS))"]
    lines += [
        "example_host: $(HOST_SRCS)",
        "\t$(CC) -Ihost -I. $(TT_CFLAGS) $(OPT) $(HOST_SRCS) -o $@",
        "",
        "run-host: example_host",
        "\t./example_host",
        "",
    ]
    if machine is not None:
        lines += [
            "ARM_CC ?= arm-none-eabi-gcc",
            "QEMU ?= qemu-system-arm",
            f"CPU_FLAGS ?= {cpu_flags}",
            "ARM_SRCS := main.c qemu/board.c qemu/startup_cm.c qemu/semihost.c $(TT_SRCS)",
            "",
            "example.elf: $(ARM_SRCS) qemu/cortexm.ld",
            "\t$(ARM_CC) $(CPU_FLAGS) -I. -Iqemu $(TT_CFLAGS) $(OPT) -ffunction-sections "
            "-fdata-sections $(ARM_SRCS) -nostartfiles --specs=nano.specs -T qemu/cortexm.ld "
            "-Wl,--gc-sections -o $@",
            "",
            "run-qemu: example.elf",
            f"\t{_qemu_command(machine, '$(QEMU)')}",
            "",
        ]
    lines += [".PHONY: run-host" + (" run-qemu" if machine is not None else ""), ""]
    return "\n".join(lines)


def _qemu_command(machine: str, qemu: str = "qemu-system-arm") -> str:
    return (
        f"{qemu} -M {machine} -nographic -monitor none -serial none "
        "-semihosting-config enable=on,target=native -kernel example.elf"
    )


def _readme(
    g: Graph, device: str, sources: list[str], cpu_flags: str, machine: str | None, arena: int, flash: int | None
) -> str:
    tin, tout = g.tensors[g.input], g.tensors[g.output]
    cflags = " ".join(CFLAGS)
    up = " ".join(f"../{s}" for s in sources)
    if machine is not None:
        target = (
            f"`{device}`: the kernels use the Cortex-M DSP (SIMD) instructions, so the "
            "folder builds for a core that has them (Cortex-M4, M7, M33/M55 with DSP), "
            f"with `-mcpu=` set to it. tinytamer built it with `{cpu_flags}`. Optimize with "
            "`-O1` or above (`-O2` is what tinytamer measures with), or `-O0` for debugging "
            "(the kernels' portable C then runs): under `-Og` GCC cannot give the "
            "convolution's inline assembly the 14 registers it takes."
        )
        host = [
            "On this computer (gcc). `example/host/model.c` is the same model over the "
            "portable kernels (the DSP ones are Arm code); its outputs are the same:",
            "",
            "```sh",
            "make -C example run-host",
            "# or by hand:",
            "cd example && gcc -Ihost -I. -I.. " + cflags + " -O2 main.c host/board.c "
            "host/model.c "
            + " ".join(f"../{s}" for s in sources if s != "model.c")
            + " -o example_host && ./example_host",
            "```",
            "",
            f"On QEMU (`qemu-system-arm`, board {machine}), printing over semihosting:",
            "",
            "```sh",
            "make -C example run-qemu",
            "# or by hand:",
            f"cd example && arm-none-eabi-gcc {cpu_flags} -I. -Iqemu -I.. {cflags} -O2 "
            f"main.c qemu/board.c qemu/startup_cm.c qemu/semihost.c {up} -nostartfiles "
            "--specs=nano.specs -T qemu/cortexm.ld -o example.elf",
            _qemu_command(machine),
            "```",
            "",
        ]
    else:
        target = (
            "`host`: every kernel is portable C99; the folder builds for any CPU "
            "(a PC, or any microcontroller, without the DSP kernels' speed)."
        )
        host = [
            "On this computer (gcc):",
            "",
            "```sh",
            "make -C example run-host",
            "# or by hand:",
            f"cd example && gcc -Ihost -I. -I.. {cflags} -O2 main.c "
            f"host/board.c {up} -o example_host && ./example_host",
            "```",
            "",
        ]
    measured = (
        f" The tinytamer build of this model used {flash:,} bytes of flash "
        "(code + constants, with a small test harness)."
        if flash
        else ""
    )
    return "\n".join(
        [
            f"# int8 model for {device}, generated by tinytamer",
            "",
            "Self-contained: copy this folder into your firmware project (STM32CubeIDE, Zephyr, "
            "an Arduino core, a Makefile). Nothing here needs tinytamer or Python.",
            "",
            "## Calling it",
            "",
            "```c",
            '#include "model.h"',
            '#include "tt_model_io.h"',
            "",
            "static int8_t out[TT_OUTPUT_SIZE];",
            "int8_t *in = tt_model_input(); /* the input's place in the model's arena */",
            "/* fill in[0..TT_INPUT_SIZE): q = round(x / TT_INPUT_SCALE) + TT_INPUT_ZERO_POINT, clamped to int8 */",
            "tt_model_run(in, out); /* nothing copied; another buffer as `in` is copied in first */",
            "/* out[i] means (out[i] - TT_OUTPUT_ZERO_POINT) * TT_OUTPUT_SCALE */",
            "```",
            "",
            f"- input: {tin.size} int8 values, {_layout(tin)}; scale {tin.scale:.9g}, zero point {tin.zero_point}",
            f"- output: {tout.size} int8 values, {_layout(tout)}; scale {tout.scale:.9g}, zero point {tout.zero_point}",
            f"- working memory: one static arena of {arena:,} bytes inside model.c (.bss), the input included; no "
            "heap, no floating point, no libc beyond `memcpy`; not reentrant (one call at a "
            "time).",
            "",
            "## What it needs",
            "",
            f"- Target {target}{measured}",
            f"- Compiler flags: `{cflags}` (GCC or Clang; `-fno-strict-aliasing` is required: the "
            "kernels read int8 buffers through wider pointers). tinytamer measures with `-O2`.",
            f"- Sources: {', '.join(f'`{s}`' for s in sources)} (also listed in `SOURCES`), "
            "with this folder on the include path.",
            "- Makefile: `include tinytamer.mk`, then compile `$(TT_SRCS)` with `$(TT_CFLAGS)`.",
            "- CMake: `add_subdirectory(<this folder> tinytamer_model)` and link `tinytamer_model`.",
            "- CMSIS-NN: not used. These are tinytamer's own kernels (a deploy with the `cmsis-nn` "
            "kernel backend writes no firmware folder: its sources would not be here).",
            "",
            "## The example",
            "",
            "`example/main.c` runs the model on one stored input (`example/example_data.h`), "
            "prints the output as hex and checks it against the output tinytamer's integer "
            "reference computed for that input. Printing goes through `tt_board_print` "
            "(`example/board.h`): write one for your UART.",
            "",
            *host,
        ]
    )


def write_firmware(program: MicroProgram, folder: str | Path, example: np.ndarray) -> Firmware:
    """Write the firmware folder of ``program`` into ``folder`` (replaced if it exists).

    ``example``: one quantized input (int8, ``input_size`` values) the example program runs;
    its expected output is computed here by the integer reference.
    """
    g, cm, device = program.graph, program.cmodel, program.device
    x = np.asarray(example, np.int8).reshape(-1)
    if x.size != cm.input_size:
        raise ModelError(f"firmware example: {x.size} input values, the model takes {cm.input_size}")
    expected = reference.run(g, x.reshape(g.tensors[g.input].shape)).reshape(-1)
    # A Cortex-M folder also carries the model over the portable kernels (example/host).
    portable = codegen.generate(g, dsp=False) if device in CPUS else None
    sources = kernel_sources(g, [cm.files["model.c"], *([portable.files["model.c"]] if portable else [])])
    headers = _headers(sources)
    arm = device in CPUS
    cpu_flags = " ".join(CPUS[device].flags) if arm else ""
    machine = QEMU_MACHINES[device] if arm else None
    flash = program.arm.flash_bytes if program.arm is not None else None

    out = Path(folder)
    # Written beside the final folder, then swapped in: a half-written folder never has
    # the final name, and a stale kernel file from an earlier model never lingers.
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "example" / "host").mkdir(parents=True)
    cm.write(tmp)
    for name in [*sources, *headers]:
        shutil.copyfile(RUNTIME_DIR / name, tmp / name)
    model_sources = ["model.c", *sources]
    texts = {
        "tt_model_io.h": _io_header(g, cm.plan.arena_size, device),
        "SOURCES": "\n".join(model_sources) + "\n",
        "tinytamer.mk": _makefile_fragment(model_sources, cpu_flags),
        "CMakeLists.txt": _cmake(model_sources, cpu_flags),
        "README.md": _readme(g, device, model_sources, cpu_flags, machine, cm.plan.arena_size, flash),
        "example/example_data.h": _example_data(x, expected),
        "example/Makefile": _example_makefile(cpu_flags, machine),
    }
    for name, text in texts.items():
        (tmp / name).write_text(text)
    shutil.copyfile(TEMPLATES / "main.c", tmp / "example" / "main.c")
    shutil.copyfile(TEMPLATES / "board.h", tmp / "example" / "board.h")
    shutil.copyfile(TEMPLATES / "board_host.c", tmp / "example" / "host" / "board.c")
    if arm:
        # The same model over the portable kernels, so the example also runs on a PC.
        portable.write(tmp / "example" / "host")
        (tmp / "example" / "qemu").mkdir()
        shutil.copyfile(TEMPLATES / "board_semihost.c", tmp / "example" / "qemu" / "board.c")
        for name in ("startup_cm.c", "semihost.c", "semihost.h", "cortexm.ld"):
            shutil.copyfile(RUNTIME_DIR / name, tmp / "example" / "qemu" / name)
    if out.exists():
        old = out.with_name(f".{out.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old)
    else:
        os.replace(tmp, out)
    return Firmware(out, device, tuple(model_sources), tuple(["model.h", "tt_model_io.h", *headers]))
