"""Toolchains: host gcc and arm-none-eabi-gcc builds of a generated model, and QEMU runs.

Every path handed to a tool is absolute: a relative one would be read against the tool's
working directory, and one that starts with '-' as an option.

- host: ``gcc -std=c99 -O2`` (optionally ``-fsanitize=address,undefined``), a program
  that maps stdin inputs to stdout outputs;
- cortex-m4 / cortex-m7: ``arm-none-eabi-gcc -mcpu=... -mthumb -mfloat-abi=hard`` with
  the package's own start-up code (runtime/startup_cm.c), linker script
  (runtime/cortexm.ld) and semihosting; flash and SRAM come from the linked ELF's
  sections (``arm-none-eabi-size -A``); QEMU runs it on mps2-an386 (M4) or
  mps2-an500 (M7).
"""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tinytamer.data.cache import cache_root
from tinytamer.errors import BackendMissing, ModelError
from tinytamer.micro.codegen import RUNTIME_DIR, CModel
from tinytamer.micro.ops import kernel_files

INSTALL_HINT = (
    "run scripts/install-micro-toolchain.sh (Debian: gcc-arm-none-eabi, libnewlib-arm-none-eabi, qemu-system-arm)"
)


@dataclass(frozen=True)
class Cpu:
    name: str
    flags: tuple[str, ...]
    qemu_machine: str
    dsp: bool


CPUS = {
    "cortex-m4": Cpu(
        "cortex-m4", ("-mcpu=cortex-m4", "-mthumb", "-mfloat-abi=hard", "-mfpu=fpv4-sp-d16"), "mps2-an386", True
    ),
    "cortex-m7": Cpu(
        "cortex-m7", ("-mcpu=cortex-m7", "-mthumb", "-mfloat-abi=hard", "-mfpu=fpv5-d16"), "mps2-an500", True
    ),
}
KERNEL_SOURCES = ("tt_kernels.c", *kernel_files())


@dataclass
class ArmBuild:
    elf: Path
    cpu: Cpu
    flash_bytes: int
    sram_bytes: int
    sections: dict[str, int]


def cpu(name: str) -> Cpu:
    if name not in CPUS:
        raise ModelError(f"unknown micro CPU '{name}'; choose one of {sorted(CPUS)}")
    return CPUS[name]


def arm_available() -> bool:
    return shutil.which("arm-none-eabi-gcc") is not None


def qemu_available() -> bool:
    return shutil.which("qemu-system-arm") is not None


def require(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        raise BackendMissing(tool, INSTALL_HINT)
    return path


def _run(cmd: list[str], what: str, **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, **kw)
    if proc.returncode != 0:
        err = proc.stderr.decode(errors="replace") if isinstance(proc.stderr, bytes) else proc.stderr
        raise ModelError(f"{what} failed (exit {proc.returncode}): {' '.join(cmd[:3])} ...\n{err[-4000:]}")
    return proc


@functools.cache
def _compiler_id(compiler: str) -> str:
    proc = _run([compiler, "--version"], f"{compiler} --version", text=True)
    return f"{compiler}\n{proc.stdout}"


def runtime_objects(compiler: str, flags: list[str], names: list[str] | tuple[str, ...]) -> list[str]:
    """The runtime's sources ``names`` compiled with ``compiler`` and ``flags``: object files
    kept in the cache folder (``$TINYTAMER_CACHE/micro-objects``), keyed by the compiler, the
    flags and the text of the source and of every runtime header.  A tuning run or a test
    session makes hundreds of builds that differ only in the model; each then compiles only
    the model.  Linked in the same order as the sources were, the image is the same."""
    headers = hashlib.sha256()
    for h in sorted(RUNTIME_DIR.glob("*.h")):
        headers.update(h.name.encode() + b"\0" + h.read_bytes())
    root = cache_root() / "micro-objects"
    root.mkdir(exist_ok=True)
    objects, missing = [], []
    for name in names:
        src = RUNTIME_DIR / name
        key = hashlib.sha256("\0".join([_compiler_id(compiler), *flags, name]).encode())
        key.update(src.read_bytes() + headers.digest())
        obj = root / f"{src.stem}-{key.hexdigest()[:24]}.o"
        objects.append(str(obj))
        if not obj.is_file():
            missing.append((src, obj))
    if missing:
        # Compiled in a private folder, then moved in whole: a concurrent build never links
        # a half-written object.
        with tempfile.TemporaryDirectory(dir=root, prefix=".build-") as tmp:
            cmd = [compiler, *flags, f"-I{RUNTIME_DIR}", "-c", *(str(src) for src, _ in missing)]
            _run(cmd, f"{Path(compiler).name} build of the runtime", cwd=tmp)
            for src, obj in missing:
                os.replace(Path(tmp) / f"{src.stem}.o", obj)
    return objects


def _sources(cm: CModel, d: Path, main: str, compiler: str, flags: list[str]) -> list[str]:
    """The model, the kernels (compiled once, :func:`runtime_objects`), ``main`` and a kernel
    backend's sources (cmsis-nn)."""
    cm.write(d)
    return [
        str(d / "model.c"),
        *runtime_objects(compiler, flags, KERNEL_SOURCES),
        str(RUNTIME_DIR / main),
        *(str(p) for p in cm.sources),
    ]


def _includes(cm: CModel, d: Path) -> list[str]:
    return [f"-I{p}" for p in (d, RUNTIME_DIR, *cm.include_dirs)]


def host_build(cm: CModel, workdir: str | Path, *, sanitize: bool = False) -> Path:
    """Build the host program (stdin inputs -> stdout outputs); returns the executable."""
    gcc = require("gcc")
    d = Path(workdir).resolve()
    exe = d / ("model_host_san" if sanitize else "model_host")
    flags = ["-std=c99", "-O2", "-Wall", "-Wextra", "-Werror", "-Wno-unused-parameter", "-fno-strict-aliasing"]
    if sanitize:
        flags += ["-g", "-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-fno-omit-frame-pointer"]
    srcs = _sources(cm, d, "main_host.c", gcc, flags)
    _run([gcc, *flags, *_includes(cm, d), *srcs, "-o", str(exe)], "host gcc build")
    return exe


def host_run(exe: Path, inputs: np.ndarray, output_size: int) -> np.ndarray:
    """Run the host program on int8 inputs [N, input_size]; returns int8 [N, output_size]."""
    x = np.ascontiguousarray(inputs, dtype=np.int8)
    env = dict(
        os.environ, ASAN_OPTIONS="detect_leaks=0:abort_on_error=0", UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
    )
    proc = _run([str(Path(exe).resolve())], "host model run", input=x.tobytes(), env=env, timeout=600)
    if proc.stderr:
        raise ModelError(f"host model run reported errors:\n{proc.stderr.decode()[-4000:]}")
    return np.frombuffer(proc.stdout, dtype=np.int8).reshape(len(x), output_size)


def _inputs_c(inputs: np.ndarray) -> str:
    """The embedded inputs, back to back; none: one byte, so that an image built to be
    measured (its flash reported) holds no test data."""
    n, size = inputs.shape
    rows = [", ".join(str(int(v)) for v in row) for row in inputs] or ["0"]
    body = ",\n".join(f"    {r}" for r in rows)
    return (
        '#include <stdint.h>\n#include "model.h"\n'
        f"const int32_t tt_num_inputs = {n};\n"
        f"const int8_t tt_inputs[{max(n * size, 1)}] = {{\n{body}\n}};\n"
    )


def _sizes(elf: Path) -> dict[str, int]:
    out = _run([require("arm-none-eabi-size"), "-A", str(elf)], "arm-none-eabi-size", text=True).stdout
    sections = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0].startswith(".") and parts[1].isdigit():
            sections[parts[0]] = int(parts[1])
    return sections


def arm_build(
    cm: CModel, workdir: str | Path, cpu_name: str = "cortex-m4", *, inputs: np.ndarray | None = None, opt: str = "-O2"
) -> ArmBuild:
    """Cross-compile the model with start-up code, semihosting and embedded test inputs."""
    c = cpu(cpu_name)
    gcc = require("arm-none-eabi-gcc")
    d = Path(workdir).resolve()
    x = np.zeros((0, cm.input_size), np.int8) if inputs is None else np.asarray(inputs, np.int8)
    tmp = d / ".inputs.c.tmp"
    d.mkdir(parents=True, exist_ok=True)
    tmp.write_text(_inputs_c(x.reshape(len(x), cm.input_size)))
    os.replace(tmp, d / "inputs.c")
    elf = d / f"model_{c.name}.elf"
    flags = [
        *c.flags,
        "-std=c99",
        opt,
        "-Wall",
        "-Wextra",
        "-Werror",
        "-Wno-unused-parameter",
        "-fno-strict-aliasing",
        "-ffunction-sections",
        "-fdata-sections",
        *(["-DTT_DSP=1"] if c.dsp else []),
    ]
    srcs = [
        *_sources(cm, d, "main_semihost.c", gcc, flags),
        str(RUNTIME_DIR / "startup_cm.c"),
        str(RUNTIME_DIR / "semihost.c"),
        str(d / "inputs.c"),
    ]
    _run(
        [
            gcc,
            *flags,
            *_includes(cm, d),
            *srcs,
            "-nostartfiles",
            "--specs=nano.specs",
            "-T",
            str(RUNTIME_DIR / "cortexm.ld"),
            f"-Wl,-Map={d / 'model.map'}",
            "-Wl,--gc-sections",
            "-o",
            str(elf),
        ],
        f"arm-none-eabi-gcc build for {c.name}",
    )
    s = _sizes(elf)
    flash = s.get(".text", 0) + s.get(".ARM.exidx", 0) + s.get(".data", 0)
    sram = s.get(".data", 0) + s.get(".bss", 0) + s.get(".stack", 0)
    return ArmBuild(elf, c, flash, sram, s)


def qemu_run(build: ArmBuild, output_size: int, *, timeout: float = 300) -> np.ndarray:
    """Run the ELF on the QEMU board; returns int8 [N, output_size] parsed from semihosting."""
    qemu = require("qemu-system-arm")
    cmd = [
        qemu,
        "-M",
        build.cpu.qemu_machine,
        "-nographic",
        "-monitor",
        "none",
        "-serial",
        "none",
        "-semihosting-config",
        "enable=on,target=native",
        "-kernel",
        str(build.elf.resolve()),
    ]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        raise ModelError(f"QEMU {build.cpu.qemu_machine} run of {build.elf.name} timed out after {timeout} s") from e
    if proc.returncode != 0:
        raise ModelError(
            f"QEMU {build.cpu.qemu_machine} run of {build.elf.name} failed "
            f"(exit {proc.returncode}): {proc.stdout[-2000:]}{proc.stderr[-2000:]}"
        )
    # QEMU writes the semihosting console to stderr; each output is one hex line.
    lines = [ln.strip() for ln in proc.stderr.splitlines() if ln.strip()]
    rows = [
        np.frombuffer(bytes.fromhex(ln), dtype=np.int8)
        for ln in lines
        if len(ln) == 2 * output_size and all(ch in "0123456789abcdef" for ch in ln)
    ]
    if len(rows) != len(lines):
        raise ModelError(f"QEMU output is malformed: {proc.stderr[-500:]}")
    return np.stack(rows) if rows else np.zeros((0, output_size), np.int8)
