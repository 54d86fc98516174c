"""Memory profiles, the unicorn/QEMU instruction-count agreement and the emulator memory check."""

from __future__ import annotations

import re
import subprocess

import numpy as np
import pytest
import torch

from tinytamer.deploy import int8_quantizer
from tinytamer.errors import ModelError
from tinytamer.micro import codegen, toolchain
from tinytamer.micro.builder import random_graph
from tinytamer.micro.profiles import PROFILES, get_profile
from tinytamer.micro.session import RAM_BASE, Session

arm = pytest.mark.skipif(
    not toolchain.arm_available(), reason="arm-none-eabi-gcc missing: run scripts/install-micro-toolchain.sh"
)
qemu = pytest.mark.skipif(
    not (toolchain.arm_available() and toolchain.qemu_available()),
    reason="ARM toolchain or QEMU missing: run scripts/install-micro-toolchain.sh",
)

# sum_stride(table, n, stride): n word loads from flash, `stride` bytes apart.  The function
# fits one 32-byte line; the table starts on a line.
_PATTERN = r"""
    .syntax unified
    .thumb
    .section .text.sum_stride,"ax"
    .balign 32
    .global sum_stride
    .thumb_func
sum_stride:
    movs r3, #0
1:  ldr r12, [r0]
    add r3, r3, r12
    add r0, r0, r2
    subs r1, r1, #1
    bne 1b
    mov r0, r3
    bx lr
    .global tt_reset_handler
    .thumb_func
tt_reset_handler:
    b tt_reset_handler
    .section .rodata.table,"a"
    .balign 32
    .global table
table:
    .fill 1024, 4, 1
"""


@pytest.fixture(scope="module")
def pattern_elf(tmp_path_factory):
    d = tmp_path_factory.mktemp("pattern")
    (d / "pattern.S").write_text(_PATTERN)
    elf = d / "pattern.elf"
    subprocess.run(
        [
            toolchain.require("arm-none-eabi-gcc"),
            *toolchain.cpu("cortex-m4").flags,
            "-nostartfiles",
            "-nostdlib",
            "-T",
            str(codegen.RUNTIME_DIR / "cortexm.ld"),
            str(d / "pattern.S"),
            "-o",
            str(elf),
        ],
        check=True,
        capture_output=True,
    )
    return elf


def test_profiles_cite_their_documents_and_parts():
    assert PROFILES["ideal"].ideal and PROFILES["ideal"].clock_hz is None
    for name in ("stm32l4r5", "stm32f746"):
        p = PROFILES[name]
        assert not p.ideal and p.clock_hz and p.flash_bytes and p.sram_bytes
        assert "RM0" in p.source and p.assumed
    assert PROFILES["stm32l4r5"].clock_hz == 120e6 and PROFILES["stm32l4r5"].fetch_wait == 5
    with pytest.raises(ModelError, match="cortex-m7 part"):
        get_profile("stm32f746", "cortex-m4")
    with pytest.raises(ModelError, match="unknown memory profile"):
        get_profile("stm32h743")


@arm
def test_memory_model_on_a_hand_made_access_pattern(pattern_elf):
    # stm32l4r5: 5 wait states, data cache 8 lines x 32 bytes, instruction cache 32 lines.
    with Session("cortex-m4", elf=pattern_elf, profile="stm32l4r5") as sess:
        table = sess.symbols["table"]
        calls = [(64, 4), (64, 4), (72, 4), (72, 4), (16, 32)]
        got = [sess.call("sum_stride", table, n, stride) for n, stride in calls]
    # 64 sequential words = 8 lines: 8 data misses, plus the function's one line fetched once.
    assert (got[0].flash_reads, got[0].data_misses, got[0].fetch_misses) == (64, 8, 1)
    assert got[0].memory_cycles == 5 * (8 + 1) == got[0].est_cycles - got[0].core_cycles
    # The same 8 lines again: all cached, nothing charged.
    assert (got[1].data_misses, got[1].fetch_misses, got[1].memory_cycles) == (0, 0, 0)
    # 9 lines: the ninth misses and evicts line 0 ...
    assert (got[2].data_misses, got[2].memory_cycles) == (1, 5)
    # ... and a second sweep of 9 lines through an 8-line LRU cache misses every line.
    assert (got[3].data_misses, got[3].memory_cycles) == (9, 45)
    # One word per line: every read misses.
    assert (got[4].flash_reads, got[4].data_misses, got[4].memory_cycles) == (16, 16, 80)
    # The ideal profile charges nothing and installs no memory hooks.
    with Session("cortex-m4", elf=pattern_elf) as sess:
        r = sess.call("sum_stride", sess.symbols["table"], 64, 4)
    assert r.memory_profile == "ideal" and r.est_cycles == r.core_cycles == got[0].core_cycles
    assert r.flash_reads == 0 and r.instructions == got[0].instructions == 1 + 5 * 64 + 2


@arm
def test_memory_check_reports_accesses_outside_the_call_regions(pattern_elf):
    with Session("cortex-m4", elf=pattern_elf, count=False, check_memory=True) as sess:
        ok = sess.call("sum_stride", sess.symbols["table"], 8, 4)  # flash: allowed
        bad = sess.call("sum_stride", RAM_BASE + (1 << 20), 3, 4)  # unallocated SRAM
        t = sess.alloc(16, np.int32)
        passed = sess.call("sum_stride", t, 16, 4)  # a tensor handed to the call
    assert ok.stray_count == 0 and passed.stray_count == 0
    assert bad.stray_count == 3
    assert [(a, n, k) for _, a, n, k in bad.stray] == [(RAM_BASE + (1 << 20) + 4 * i, 4, "read") for i in range(3)]


def _model_build(tmp_path, x: np.ndarray):
    g = random_graph(0, size=8, channels=4)
    cm = codegen.generate(g, dsp=True)
    return g, cm, toolchain.arm_build(cm, tmp_path, "cortex-m4", inputs=x.reshape(1, -1))


@qemu
def test_unicorn_instruction_count_equals_qemu(tmp_path):
    g = random_graph(0, size=8, channels=4)
    x = np.random.default_rng(0).integers(-128, 128, (1, *g.tensors[g.input].shape), dtype=np.int8)
    _, cm, build = _model_build(tmp_path, x)
    with Session("cortex-m4", elf=build.elf) as sess:
        t_in, t_out = sess.alloc(cm.input_size), sess.alloc(cm.output_size)
        sess.write(t_in, x.reshape(-1))
        ours = sess.call("tt_model_run", t_in, t_out).instructions
        entry, main = sess.symbols["tt_model_run"] & ~1, sess.symbols["main"] & ~1
        main_end = main + sess.symbol_sizes["main"]
    # QEMU, one instruction per translation block, logs every executed instruction's PC:
    # count from tt_model_run's entry until control is back in main.
    log = tmp_path / "exec.log"
    subprocess.run(
        [
            toolchain.require("qemu-system-arm"),
            "-M",
            build.cpu.qemu_machine,
            "-nographic",
            "-monitor",
            "none",
            "-serial",
            "none",
            "-semihosting-config",
            "enable=on,target=native",
            "-singlestep",
            "-d",
            "exec,nochain",
            "-D",
            str(log),
            "-kernel",
            str(build.elf),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    pcs = [int(m, 16) for m in re.findall(r"\[[0-9a-f]+/([0-9a-f]+)/", log.read_text())]
    start = pcs.index(entry)
    back = next(i for i in range(start + 1, len(pcs)) if main <= pcs[i] < main_end)
    assert back - start == ours > 10_000


_ZOO = {
    "lenet5": ({"in_channels": 1, "input_size": 28}, (1, 28, 28)),
    "dscnn": ({"in_channels": 1, "num_classes": 12}, (1, 49, 10)),
    "resnet8": ({"in_channels": 3}, (3, 32, 32)),
}


@arm
@pytest.mark.parametrize("name", ["lenet5", "dscnn", "resnet8"])
def test_zoo_model_memory_check(tmp_path, name):
    """Every data access of tt_model_run lands in the arena, the I/O tensors, the stack or
    the flash image: the DSP and assembly kernels are checked, not only the portable ones."""
    from tinytamer import zoo
    from tinytamer.compress.int8 import quantize_ptq
    from tinytamer.micro.program import build_program

    kw, shape = _ZOO[name]
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    calib = [torch.randn(4, *shape, generator=gen) for _ in range(2)]
    gm = quantize_ptq(zoo.create(name, **kw).eval(), calib)
    prog = build_program(gm, calib[0][:1], "cortex-m4", tmp_path)
    q = prog.quantize_input(calib[1][:1].numpy())
    with Session("cortex-m4", elf=prog.arm.elf, count=False, check_memory=True) as sess:
        out = prog.run_in_session(sess, q)
        r = sess.history[-1]
    assert r.stray_count == 0, [(hex(pc), hex(a), n, k) for pc, a, n, k in r.stray]
    np.testing.assert_array_equal(out, prog.run_reference(q))


@qemu
def test_measure_reports_under_the_board_profile(tmp_path):
    from torch import nn

    from tinytamer.targets.base import get_target

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 5)).eval()
    gen = torch.Generator().manual_seed(1)
    calib = [torch.randn(16, 1, 8, 8, generator=gen) for _ in range(2)]
    dep = get_target("cortex-m4").compile(model, [calib[0][:1]], tmp_path, calib=calib, quantize=int8_quantizer)
    board = dep.measure()
    dep.memory_profile = "ideal"
    ideal = dep.measure()
    assert board.memory_profile == "stm32l4r5" and ideal.memory_profile == "ideal"
    assert board.instructions == ideal.instructions
    # The board pays for its flash: the weights are read through 5 wait states.
    assert board.extra["flash_reads"] > 0 and ideal.extra["flash_reads"] == 0
    assert board.est_cycles == ideal.est_cycles + board.extra["memory_cycles"] > ideal.est_cycles
    assert board.extra["est_cycles_ideal"] == ideal.est_cycles
    # The time is an estimate at the board's clock; the ideal profile is no part, has none.
    assert board.est_time_ms == pytest.approx(board.est_cycles / 120e6 * 1e3)
    assert ideal.est_time_ms is None and board.latency_ms_median is None
    # Peak SRAM counts the input tensor (it lives in the arena) and the output; flash is the
    # linked image, not the ELF file.
    p = dep.program
    assert p.cmodel.input_offset is not None and p.cmodel.plan.arena_size >= p.cmodel.input_size
    assert board.sram_bytes == p.cmodel.plan.arena_size + p.cmodel.output_size + board.extra["stack_bytes"]
    assert board.flash_bytes == p.arm.flash_bytes < p.arm.elf.stat().st_size


def test_the_summary_line_names_the_profile_and_no_file_size():
    from tinytamer.cli import _record_line
    from tinytamer.records import DeployRecord

    r = DeployRecord(
        stage="deploy",
        index=3,
        target="cortex-m4",
        precision="int8",
        artifacts=["model.elf"],
        bytes=987_654,
        parity={"ok": True, "precision": "int8", "tolerance": {}, "outputs": []},
        instructions=123_456,
        est_cycles=150_000,
        memory_profile="stm32l4r5",
        est_time_ms=1.25,
        flash_bytes=20_000,
        sram_bytes=6_000,
    )
    line = _record_line(r)
    assert (
        "instructions 123,456  est_cycles 150,000 (stm32l4r5)  est. 1.250 ms at 120 MHz  "
        "flash_bytes 20,000  sram_bytes 6,000"
    ) in line
    assert "987,654" not in line and "latency" not in line
